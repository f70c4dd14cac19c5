//! `flowgym-host sample`: samples from a base model, or from a model steered by the value
//! network a run saved.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::{args, warn_refused, Cli};
use crate::compose::{check_pair, construct_context, open_model, open_reward};
use crate::device::parse_device;
use crate::interrupt;
use crate::report::plot;
use crate::run::{checkpoint, defaults, sampler_options, samples, RunConfig, RunDir};
use crate::sde::{sample, Control, Interpolant, SampleRequest};
use crate::state::State;
use crate::value::{self, ValueNetwork};

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
    #[arg(long, value_name = "JSON", conflicts_with = "run", value_parser = args::json_object)]
    pub model_args: Option<toml::Table>,
    /// Reward id, to score the samples (without --run; a run's own reward scores its samples).
    #[arg(long, conflicts_with = "run")]
    pub reward: Option<String>,
    /// Reward arguments as a JSON object (without --run).
    #[arg(long, value_name = "JSON", conflicts_with = "run", value_parser = args::json_object)]
    pub reward_args: Option<toml::Table>,
    /// Number of samples.
    #[arg(short = 'n', long, default_value_t = 16)]
    pub samples: usize,
    /// Euler-Maruyama steps [default: the run's, else the data's: 200 for flat data and point
    /// sets, 100 for images and latents].
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

/// The configuration samples are drawn with: a run's own, or the base model's.
fn configuration(args: &SampleArgs) -> Result<RunConfig> {
    match &args.run {
        Some(dir) => RunDir::open(dir)?.read_config(),
        None => Ok(RunConfig {
            model: args
                .model
                .clone()
                .expect("clap requires --model without --run"),
            reward: args.reward.clone().unwrap_or_default(),
            model_args: args.model_args.clone().unwrap_or_default(),
            reward_args: args.reward_args.clone().unwrap_or_default(),
            ..RunConfig::default()
        }),
    }
}

/// The value network a run saved, in `checkpoint` or the run's latest.
fn saved_value(
    run: &Path,
    checkpoint: Option<&Path>,
    config: &RunConfig,
    example: &State,
    interpolant: &Interpolant,
    device: tch::Device,
) -> Result<Box<dyn ValueNetwork>> {
    let path = checkpoint
        .map(Path::to_path_buf)
        .unwrap_or_else(|| RunDir::at(run).latest_checkpoint());
    let (done, tensors) = checkpoint::load(&path)?;
    let mut network = value::build(config.value_net, example, device, interpolant)?;
    // A run that averaged its weights was steered by the average: sample with it too.
    let averaged = value::has_average(&tensors);
    let prefix = match averaged {
        true => value::AVERAGE_PREFIX,
        false => value::PREFIX,
    };
    value::load(network.as_mut(), &tensors, prefix)
        .with_context(|| format!("loading {}", path.display()))?;
    eprintln!(
        "steering with {}{} from {} (after {done} iterations)",
        network.describe(),
        if averaged {
            ", the moving average of its weights"
        } else {
            ""
        },
        path.display()
    );
    Ok(network)
}

/// Draws the samples, scores them if a reward is known, and writes them.
pub fn run(cli: &Cli, args: &SampleArgs) -> Result<ExitCode> {
    if args.samples == 0 {
        bail!("-n must be at least 1");
    }
    let config = configuration(args)?;
    let registry = cli.registry()?;
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
    let example = {
        let _guard = tch::no_grad_guard();
        model.sample_p0(2, 0)?.0
    };
    let network = match &args.run {
        Some(dir) => Some(saved_value(
            dir,
            args.checkpoint.as_deref(),
            &config,
            &example,
            &model.interpolant,
            device,
        )?),
        None => None,
    };
    let small_images = defaults::small_images(&registry, &config.model);
    let config = defaults::fill(config, &example, small_images)?;
    let mut options = sampler_options(&config);
    options.steps = args.steps.unwrap_or(config.steps);
    options.chunk_size = args.sample_chunk;
    let stop = |_| interrupt::requested();
    let request = SampleRequest {
        n: args.samples,
        seed: args.seed,
        control: network.as_deref().map(|value| Control {
            value,
            scale: config.reward_scale,
        }),
        record: false,
        device,
        stop_after_step: &stop,
    };
    let trajectory = sample(&mut model, reward.as_mut(), &options, &request)?;
    let out = args.out.clone().unwrap_or_else(|| {
        Path::new("samples").join(chrono::Local::now().format("%Y%m%d-%H%M%S").to_string())
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let figure = out.join("samples.png");
    let saved = samples::save(&out, "samples", &trajectory, Some(&figure))?;
    if saved.is_1d() {
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
        let stats = saved.stats;
        println!(
            "reward `{}`: mean {:.4} +- {:.4} ({:.0}% valid)",
            config.reward,
            stats.reward_mean,
            stats.reward_std,
            100.0 * stats.valid_fraction
        );
    }
    Ok(ExitCode::SUCCESS)
}
