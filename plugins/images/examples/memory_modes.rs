//! Time and peak memory of one Stable Diffusion UNet step or one VAE decode with a memory
//! mode, on a diffusers `unet/` or `vae/` folder (the figures of the README's "Memory modes").
//!
//! One mode per process, since the peak resident memory only grows: the model is loaded, the
//! peak is reset (`/proc/self/clear_refs`, Linux), then the step runs `--repeat` times. It
//! prints one line: the resident memory once loaded, the peak while running and the part of it
//! above the loaded model, and the fastest run's time.
//!
//! ```sh
//! cargo xtask cargo build --release -p flowgym-images --example memory_modes
//! OMP_NUM_THREADS=1 target/release/examples/memory_modes unet /tmp/memmodes/sd2-unet --slicing auto
//! OMP_NUM_THREADS=1 target/release/examples/memory_modes vae /tmp/memmodes/vae --tile 256
//! ```
//!
//! (The README's "Memory modes" writes those folders, the published configurations with random
//! weights.)

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use flowgym_images::hub::read_config;
use flowgym_images::models::attention_slicing::AttentionSlicing;
use flowgym_images::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use flowgym_images::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use flowgym_images::models::vae_tiling::VaeTiling;
use flowgym_images::weights::{model_files, Weights};
use tch::{Device, Kind, Tensor};

/// What to run.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Part {
    /// One guided UNet step: a batch of `2 * batch` latents (unconditional and conditional).
    Unet,
    /// One VAE decode of `batch` latents, `chunk` at a time.
    Vae,
}

/// Time and peak memory of a UNet step or a VAE decode with a memory mode.
#[derive(Debug, Parser)]
struct Cli {
    /// `unet` or `vae`.
    part: Part,
    /// The diffusers folder of that part (`config.json` and its weights).
    dir: PathBuf,
    /// Image edge in pixels (latents are a eighth of it).
    #[arg(long, default_value_t = 512)]
    size: i64,
    /// Images.
    #[arg(long, default_value_t = 1)]
    batch: i64,
    /// UNet: `attention_slicing` as JSON (`null`, `"auto"`, `"max"`, a number); plain `auto`
    /// and `max` are accepted too.
    #[arg(long, default_value = "null")]
    slicing: String,
    /// VAE: tile edge in pixels (0: decode whole).
    #[arg(long, default_value_t = 0)]
    tile: i64,
    /// VAE: images decoded at a time (`decode_chunk`).
    #[arg(long, default_value_t = 1)]
    chunk: i64,
    /// Runs timed; the fastest is reported.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tch::manual_seed(0);
    let weights = Weights::from_files(&model_files(&cli.dir), Kind::Float, Device::Cpu)
        .with_context(|| format!("reading the weights of {}", cli.dir.display()))?;
    let run: Box<dyn Fn() -> Tensor> = match cli.part {
        Part::Unet => unet_step(&cli, &weights)?,
        Part::Vae => vae_decode(&cli, &weights)?,
    };
    weights.finish()?;
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak memory")?;
    let loaded = status_mib("VmRSS:")?;
    let mut fastest = f64::INFINITY;
    for _ in 0..cli.repeat {
        let start = Instant::now();
        let out = tch::no_grad(&run);
        fastest = fastest.min(start.elapsed().as_secs_f64());
        drop(out);
    }
    let peak = status_mib("VmHWM:")?;
    println!(
        "{:?} size {} batch {} slicing {} tile {} chunk {}: loaded {loaded:.0} MiB, peak \
         {peak:.0} MiB, above loaded {:.0} MiB, time {fastest:.2} s (threads {})",
        cli.part,
        cli.size,
        cli.batch,
        cli.slicing,
        cli.tile,
        cli.chunk,
        peak - loaded,
        tch::get_num_threads()
    );
    Ok(())
}

fn unet_step(cli: &Cli, weights: &Weights) -> Result<Box<dyn Fn() -> Tensor>> {
    let config: UNet2DConditionConfig = read_config(&cli.dir.join("config.json"))?;
    let mut unet = UNet2DConditionModel::new(&weights.root(), &config)?;
    let json = match cli.slicing.as_str() {
        "auto" | "max" => format!("\"{}\"", cli.slicing),
        other => other.to_string(),
    };
    let slicing: AttentionSlicing = serde_json::from_str(&json)?;
    unet.set_attention_slicing(slicing)?;
    let cross = config
        .cross_attention_dim
        .per_level("cross_attention_dim", 1)?[0];
    let latent = cli.size / 8;
    let x = Tensor::randn(
        [2 * cli.batch, 4, latent, latent],
        (Kind::Float, Device::Cpu),
    );
    let context = Tensor::randn([2 * cli.batch, 77, cross], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[500.0f32]);
    Ok(Box::new(move || unet.forward(&x, &t, &context)))
}

fn vae_decode(cli: &Cli, weights: &Weights) -> Result<Box<dyn Fn() -> Tensor>> {
    let config: AutoencoderKLConfig = read_config(&cli.dir.join("config.json"))?;
    let mut vae = AutoencoderKL::new(&weights.root(), &config)?;
    if cli.tile > 0 {
        if !VaeTiling::fits(cli.tile, 8) {
            bail!("--tile {} is not a multiple of 32", cli.tile);
        }
        vae.set_tiling(Some(VaeTiling::new(cli.tile, 8)));
    }
    let latent = cli.size / 8;
    let z = Tensor::randn([cli.batch, 4, latent, latent], (Kind::Float, Device::Cpu));
    let chunk = cli.chunk.max(1);
    Ok(Box::new(move || {
        let parts: Vec<Tensor> = z.split(chunk, 0).iter().map(|p| vae.decode(p)).collect();
        Tensor::cat(&parts, 0)
    }))
}

/// A `kB` field of `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(Path::new("/proc/self/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("no value")?
        .parse()?;
    Ok(kib / 1024.0)
}
