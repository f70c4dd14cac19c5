//! `flowgym-host run`: adapt a model to a reward with Value Matching.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::{warn_refused, Cli};
use crate::env::NoiseSchedule;
use crate::run::train::{train, Outcome};
use crate::run::RunConfig;
use crate::value::ValueArch;

/// Arguments of `run`. Every option overrides the `--config` file, which overrides the
/// defaults (the toy: `1d/gmm` adapted to `1d/binary` at reward scale 5).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A TOML run configuration (keys as in a run directory's config.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Continue the run in DIR from its last checkpoint, with its own configuration
    /// (only --iterations may be changed, to extend it).
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    /// Base model id [default: 1d/gmm].
    #[arg(long)]
    pub model: Option<String>,
    /// Reward id [default: 1d/binary].
    #[arg(long)]
    pub reward: Option<String>,
    /// Model arguments as a JSON object, e.g. '{"weights": "/models/ddpm-cifar10-32"}'.
    #[arg(long, value_name = "JSON")]
    pub model_args: Option<String>,
    /// Reward arguments as a JSON object, e.g. '{"quality": 50}'.
    #[arg(long, value_name = "JSON")]
    pub reward_args: Option<String>,
    /// Value Matching iterations [default: 300].
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Trajectories per iteration [default: 128].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Euler-Maruyama steps [default: 100].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Reward scale lambda: the target is p_base(x) exp(lambda r(x)) [default: 5].
    #[arg(long)]
    pub reward_scale: Option<f64>,
    /// Adam learning rate [default: 3e-4].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Gradient-norm clip [default: 1].
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// First time of the grid [default: 0.02].
    #[arg(long)]
    pub t0: Option<f64>,
    /// Diffusion coefficient: `memoryless` or a constant level such as `0.5` [default: memoryless].
    #[arg(long, value_parser = parse_noise)]
    pub noise: Option<NoiseSchedule>,
    /// Value network [default: auto: CNN for [n, C, H, W] samples, MLP otherwise].
    #[arg(long, value_enum)]
    pub value_net: Option<ValueArch>,
    /// Largest number of trajectories simulated at once (0: the whole batch).
    #[arg(long)]
    pub sample_chunk: Option<usize>,
    /// Points per gradient-accumulation chunk when fitting the value (0: all at once for flat
    /// data, 256 for images).
    #[arg(long)]
    pub train_chunk: Option<usize>,
    /// Samples drawn before and after training (0: 10000 for flat data, 16 for images).
    #[arg(long)]
    pub eval_samples: Option<usize>,
    /// Iterations between checkpoints [default: 50].
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Run seed [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// `cpu`, `cuda` or `cuda:N` [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// libtorch threads (0: libtorch's default).
    #[arg(long)]
    pub threads: Option<usize>,
    /// A directory plugins may look for weights in (repeatable).
    #[arg(long = "weights", value_name = "DIR")]
    pub weights: Vec<PathBuf>,
    /// Run directory [default: runs/<date>-<time>-<model>-<reward>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

fn parse_noise(text: &str) -> Result<NoiseSchedule, String> {
    match text {
        "memoryless" => Ok(NoiseSchedule::Memoryless),
        level => level
            .parse::<f64>()
            .map(NoiseSchedule::Constant)
            .map_err(|_| format!("`{level}`: expected `memoryless` or a number")),
    }
}

/// Parses a JSON object argument into a TOML table.
fn json_table(flag: &str, text: &str) -> Result<toml::Table> {
    let value: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("--{flag} is not valid JSON"))?;
    if !value.is_object() {
        bail!("--{flag} must be a JSON object such as '{{\"name\": 1}}', got {value}");
    }
    toml::Table::try_from(value)
        .with_context(|| format!("--{flag} cannot be stored in the run's TOML config"))
}

impl RunArgs {
    /// The configuration options set on the command line, by flag name (for --resume).
    fn overrides(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        macro_rules! check {
            ($($field:ident => $flag:literal),*) => {$( if self.$field.is_some() { set.push($flag); } )*};
        }
        check!(model => "--model", reward => "--reward", model_args => "--model-args",
            reward_args => "--reward-args", batch_size => "--batch-size", steps => "--steps",
            reward_scale => "--reward-scale", lr => "--lr", grad_clip => "--grad-clip", t0 => "--t0",
            noise => "--noise", value_net => "--value-net", sample_chunk => "--sample-chunk",
            train_chunk => "--train-chunk", eval_samples => "--eval-samples",
            checkpoint_every => "--checkpoint-every", seed => "--seed", device => "--device",
            threads => "--threads", out => "--out");
        if !self.weights.is_empty() {
            set.push("--weights");
        }
        set
    }

    /// Defaults, then the config file, then the flags.
    pub fn resolve(&self) -> Result<RunConfig> {
        let mut c = match &self.config {
            Some(path) => RunConfig::from_toml_file(path)?,
            None => RunConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$( if let Some(v) = &self.$field { c.$field = v.clone(); } )*};
        }
        set!(
            model,
            reward,
            iterations,
            batch_size,
            steps,
            reward_scale,
            lr,
            grad_clip,
            t0,
            noise,
            value_net,
            sample_chunk,
            train_chunk,
            eval_samples,
            checkpoint_every,
            seed,
            device,
            threads
        );
        if let Some(text) = &self.model_args {
            c.model_args.extend(json_table("model-args", text)?);
        }
        if let Some(text) = &self.reward_args {
            c.reward_args.extend(json_table("reward-args", text)?);
        }
        if !self.weights.is_empty() {
            c.weights = self.weights.clone();
        }
        c.validate()?;
        Ok(c)
    }
}

/// `runs/<date>-<time>-<model>-<reward>` with `/` in ids replaced.
fn default_run_dir(config: &RunConfig) -> PathBuf {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let clean = |id: &str| id.replace(['/', '\\', ' '], "-");
    Path::new("runs").join(format!(
        "{stamp}-{}-{}",
        clean(&config.model),
        clean(&config.reward)
    ))
}

/// Runs or resumes training and reports where everything is.
pub fn run(cli: &Cli, args: &RunArgs) -> Result<ExitCode> {
    let (config, dir, resume) = match &args.resume {
        Some(dir) => {
            let overrides = args.overrides();
            if !overrides.is_empty() {
                bail!(
                    "--resume continues a run with its own configuration ({}); drop {} (only --iterations may change)",
                    dir.join("config.toml").display(),
                    overrides.join(", ")
                );
            }
            let mut config = RunConfig::from_toml_file(&dir.join("config.toml"))
                .with_context(|| format!("{} is not a run directory", dir.display()))?;
            if let Some(iterations) = args.iterations {
                config.iterations = iterations;
                crate::run::dir::write_bytes_atomically(
                    &dir.join("config.toml"),
                    config.to_toml()?.as_bytes(),
                )?;
            }
            (config, dir.clone(), true)
        }
        None => {
            let config = args.resolve()?;
            let dir = args.out.clone().unwrap_or_else(|| default_run_dir(&config));
            if dir.join("config.toml").exists() {
                bail!(
                    "{} already holds a run; continue it with --resume {0}, or choose another --out",
                    dir.display()
                );
            }
            (config, dir, false)
        }
    };
    let registry = cli.registry();
    warn_refused(&registry);
    let (outcome, summary) = train(&registry, config, &dir, resume)?;
    let describe = |s: &Option<crate::run::train::SampleStats>| {
        s.map(|s| format!("{:.4} +- {:.4}", s.reward_mean, s.reward_std))
            .unwrap_or_else(|| "-".into())
    };
    println!("run directory: {}", dir.display());
    println!(
        "iterations: {}/{}",
        summary.iterations_done, summary.iterations
    );
    println!("mean reward before: {}", describe(&summary.before));
    println!("mean reward after:  {}", describe(&summary.after));
    if let Some(o) = &summary.optimum {
        println!(
            "optimum E_p*[r] = {:.4}; W1 to p*: before {:.4}, after {:.4}",
            o.reward_mean, o.w1_before, o.w1_after
        );
    }
    if let Some(s) = summary.seconds_per_iteration {
        println!("{s:.3} s per iteration, {:.1} s in all", summary.seconds);
    }
    if let Some(mib) = summary.peak_rss_mib {
        println!("peak resident memory: {mib:.0} MiB");
    }
    match outcome {
        Outcome::Finished => Ok(ExitCode::SUCCESS),
        Outcome::Interrupted => {
            println!(
                "interrupted: checkpoint written after iteration {}; continue with `flowgym-host run --resume {}`",
                summary.iterations_done,
                dir.display()
            );
            Ok(ExitCode::from(130))
        }
    }
}
