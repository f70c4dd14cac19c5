//! `flowgym-host sample`: samples from a base model, or from a model steered by the value
//! network a run saved.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::{warn_refused, Cli};
use crate::device::parse_device;
use crate::env::{sample, Control, SamplerOptions};
use crate::method::value_matching::{load_value, reward_statistics};
use crate::report::plot;
use crate::run::{checkpoint, samples, RunConfig};
use crate::setup::{check_pair, construct_context, open_model, open_reward};
use crate::value;

/// Arguments of `sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Sample from the adapted model of this run directory (its model, reward, arguments and
    /// latest checkpoint).
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// With --run: a specific checkpoint file instead of the latest.
    #[arg(long, value_name = "FILE", requires = "run")]
    pub checkpoint: Option<PathBuf>,
    /// Base model id (without --run).
    #[arg(long, conflicts_with = "run", required_unless_present = "run")]
    pub model: Option<String>,
    /// Model arguments as a JSON object (without --run).
    #[arg(long, value_name = "JSON", conflicts_with = "run")]
    pub model_args: Option<String>,
    /// Reward id, to score the samples (without --run; a run's own reward scores its samples).
    #[arg(long, conflicts_with = "run")]
    pub reward: Option<String>,
    /// Reward arguments as a JSON object (without --run).
    #[arg(long, value_name = "JSON", conflicts_with = "run")]
    pub reward_args: Option<String>,
    /// Number of samples.
    #[arg(short = 'n', long, default_value_t = 16)]
    pub samples: usize,
    /// Euler-Maruyama steps [default: the run's, else 100].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Largest number of samples simulated at once (0: all).
    #[arg(long, default_value_t = 0)]
    pub sample_chunk: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N` [default: the run's, else cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// A directory plugins may look for weights in (repeatable).
    #[arg(long = "weights", value_name = "DIR")]
    pub weights: Vec<PathBuf>,
    /// Where to write `samples.safetensors` and `samples.png` [default: samples/<date>-<time>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Draws the samples, scores them if a reward is known, and writes them.
pub fn run(cli: &Cli, args: &SampleArgs) -> Result<ExitCode> {
    let config = match &args.run {
        Some(dir) => RunConfig::from_toml_file(&dir.join("config.toml"))
            .with_context(|| format!("{} is not a run directory", dir.display()))?,
        None => {
            let mut config = RunConfig {
                model: args
                    .model
                    .clone()
                    .expect("clap requires --model without --run"),
                reward: args.reward.clone().unwrap_or_default(),
                ..RunConfig::default()
            };
            if let Some(text) = &args.model_args {
                config.model_args =
                    serde_json::from_str(text).context("--model-args is not a JSON object")?;
            }
            if let Some(text) = &args.reward_args {
                config.reward_args =
                    serde_json::from_str(text).context("--reward-args is not a JSON object")?;
            }
            config
        }
    };
    let registry = cli.registry();
    warn_refused(&registry);
    let has_reward = !config.reward.is_empty();
    if has_reward {
        check_pair(&registry, &config.model, &config.reward)?;
    }
    let device = parse_device(args.device.as_deref().unwrap_or(&config.device))?;
    let weights = if args.weights.is_empty() {
        config.weights.clone()
    } else {
        args.weights.clone()
    };
    let ctx = construct_context(device, &weights)?;
    let (mut model, _) = open_model(&registry, &config.model, &config.model_args_json()?, &ctx)?;
    let mut reward = match has_reward {
        true => Some(open_reward(&registry, &config.reward, &config.reward_args_json()?, &ctx)?.0),
        false => None,
    };
    let network = match &args.run {
        Some(dir) => {
            let path = args
                .checkpoint
                .clone()
                .unwrap_or_else(|| dir.join("checkpoints").join("latest.safetensors"));
            let (done, tensors) = checkpoint::load(&path)?;
            let example = {
                let _guard = tch::no_grad_guard();
                model.sample_p0(2, 0)?.0
            };
            let mut network = value::build(config.value_net, &example, device)?;
            load_value(network.as_mut(), &tensors)
                .with_context(|| format!("loading {}", path.display()))?;
            eprintln!(
                "steering with {} from {} (after {done} iterations)",
                network.describe(),
                path.display()
            );
            Some(network)
        }
        None => None,
    };
    if args.samples == 0 {
        bail!("-n must be at least 1");
    }
    let options = SamplerOptions {
        steps: args.steps.unwrap_or(config.steps),
        t0: config.t0,
        noise: config.noise,
        batch_size: if args.sample_chunk == 0 {
            args.samples
        } else {
            args.sample_chunk
        },
    };
    let control = network.as_deref().map(|value| Control {
        value,
        scale: config.reward_scale,
    });
    let trajectory = sample(
        &mut model,
        reward.as_mut(),
        control,
        args.samples,
        &options,
        args.seed,
        device,
        false,
        &|_| crate::interrupt::requested(),
    )?;
    let out = args.out.clone().unwrap_or_else(|| {
        Path::new("samples").join(chrono::Local::now().format("%Y%m%d-%H%M%S").to_string())
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let figure = out.join("samples.png");
    samples::save(&out, "samples", &trajectory, Some(&figure))?;
    if let Some(saved) = samples::load(&out, "samples")?.filter(|s| s.is_1d()) {
        plot::histograms(
            &figure,
            &format!("{} samples", config.model),
            &[("samples", &saved.values, plot::ADAPTED_COLOR)],
            None,
        )?;
    }
    println!("{} samples written to {}", args.samples, out.display());
    if let Some(mib) = crate::memory::peak_rss_mib() {
        println!("peak resident memory: {mib:.0} MiB");
    }
    if has_reward {
        let (mean, std, valid) =
            reward_statistics(&trajectory.scores.reward, &trajectory.scores.valid);
        println!(
            "reward `{}`: mean {mean:.4} +- {std:.4} ({:.0}% valid)",
            config.reward,
            100.0 * valid
        );
    }
    Ok(ExitCode::SUCCESS)
}
