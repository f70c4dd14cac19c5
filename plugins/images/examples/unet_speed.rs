//! Seconds per UNet forward of a diffusers `UNet2DModel` (`cifar`) or `UNet2DConditionModel`
//! (`sd`, guided: a batch of `2 * batch` latents, unconditional and conditional) folder, for
//! several batch sizes in one process: the Flow Gym side of
//! `plugins/images/scripts/bench_unet_eager.py`, which runs diffusers on the same folder.
//!
//! Each batch size runs `--warmup` untimed forwards, then `--repeat` timed ones; one JSON line
//! per batch size gives the seconds of each timed forward. With `--save DIR`, one more forward
//! at the first batch size writes its inputs and output to `DIR/{x,t,context,out}.npy`, for the
//! script to run diffusers on the same inputs.
//!
//! ```sh
//! cargo xtask cargo build --release -p flowgym-images --example unet_speed
//! target/release/examples/unet_speed cifar /tmp/unet-speed/cifar --batches 1,2,4,8 --threads 1
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use flowgym_images::hub::read_config;
use flowgym_images::models::unet_2d::{UNet2DConfig, UNet2DModel};
use flowgym_images::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use flowgym_images::weights::{model_files, Weights};
use tch::{Device, Kind, Tensor};

/// Which UNet the folder holds.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Arch {
    /// `UNet2DModel` on `[batch, in_channels, size, size]` samples at timestep 500.
    Cifar,
    /// `UNet2DConditionModel` on `[2 batch, in_channels, size / 8, size / 8]` latents with a
    /// 77-token context, at timestep 500.
    Sd,
}

/// Seconds per UNet forward for several batch sizes.
#[derive(Debug, Parser)]
struct Cli {
    /// `cifar` or `sd`.
    arch: Arch,
    /// The diffusers UNet folder (`config.json` and its weights).
    dir: PathBuf,
    /// Batch sizes, comma-separated (`sd`: images, each run twice for guidance).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    batches: Vec<i64>,
    /// Sample edge (`cifar`) or image edge in pixels (`sd`, latents are an eighth of it).
    #[arg(long, default_value_t = 32)]
    size: i64,
    /// libtorch threads.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Untimed forwards per batch size.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed forwards per batch size.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// `float32` or `bfloat16`.
    #[arg(long, default_value = "float32")]
    dtype: String,
    /// Write one forward's inputs and output as `.npy` files into this folder.
    #[arg(long)]
    save: Option<PathBuf>,
}

/// The named inputs of one forward and, last, its output (`out`).
type Forward = Box<dyn Fn(i64) -> Vec<(&'static str, Tensor)>>;

fn main() -> Result<()> {
    let cli = Cli::parse();
    tch::set_num_threads(cli.threads);
    tch::manual_seed(0);
    let kind = match cli.dtype.as_str() {
        "float32" => Kind::Float,
        "bfloat16" => Kind::BFloat16,
        other => anyhow::bail!("--dtype {other}: float32 or bfloat16"),
    };
    let weights = Weights::from_files(&model_files(&cli.dir), kind, Device::Cpu)
        .with_context(|| format!("reading the weights of {}", cli.dir.display()))?;
    let forward = model(&cli, &weights, kind)?;
    weights.finish()?;
    let _guard = tch::no_grad_guard();
    for &batch in &cli.batches {
        let mut seconds = Vec::with_capacity(cli.repeat);
        for i in 0..cli.warmup + cli.repeat {
            let start = Instant::now();
            let tensors = forward(batch);
            if i >= cli.warmup {
                seconds.push(start.elapsed().as_secs_f64());
            }
            drop(tensors);
        }
        println!(
            "{}",
            serde_json::json!({"batch": batch, "threads": tch::get_num_threads(), "seconds": seconds})
        );
    }
    if let (Some(dir), Some(&batch)) = (&cli.save, cli.batches.first()) {
        std::fs::create_dir_all(dir)?;
        for (name, tensor) in forward(batch) {
            let path = dir.join(format!("{name}.npy"));
            tensor.to_kind(Kind::Float).write_npy(&path)?;
        }
    }
    Ok(())
}

/// The forward of the folder's UNet on random inputs of a batch size.
fn model(cli: &Cli, weights: &Weights, kind: Kind) -> Result<Forward> {
    let config_path = cli.dir.join("config.json");
    let size = cli.size;
    Ok(match cli.arch {
        Arch::Cifar => {
            let config: UNet2DConfig = read_config(&config_path)?;
            let channels = config.in_channels;
            let unet = UNet2DModel::new(&weights.root(), &config)?;
            Box::new(move |batch| {
                let x = Tensor::randn([batch, channels, size, size], (kind, Device::Cpu));
                let t = Tensor::full([batch], 500.0, (Kind::Float, Device::Cpu));
                let out = unet.forward(&x, &t);
                vec![("x", x), ("t", t), ("out", out)]
            })
        }
        Arch::Sd => {
            let config: UNet2DConditionConfig = read_config(&config_path)?;
            let cross = config
                .cross_attention_dim
                .per_level("cross_attention_dim", 1)?[0];
            let channels = config.in_channels;
            let unet = UNet2DConditionModel::new(&weights.root(), &config)?;
            let latent = size / 8;
            Box::new(move |batch| {
                let x = Tensor::randn([2 * batch, channels, latent, latent], (kind, Device::Cpu));
                let context = Tensor::randn([2 * batch, 77, cross], (kind, Device::Cpu));
                let t = Tensor::from_slice(&[500.0f32]);
                let out = unet.forward(&x, &t, &context);
                vec![("x", x), ("t", t), ("context", context), ("out", out)]
            })
        }
    })
}
