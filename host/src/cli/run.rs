//! `flowgym-host run`: adapt a model to a reward with Value Matching.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::{args, warn_refused, Cli};
use crate::reward::RewardStats;
use crate::run::{Run, RunConfig, RunEnd, Start};
use crate::sde::{ControlPoint, Diffusion, FinalStep, TimeGrid};
use crate::value::ValueArch;
use crate::value_matching::ValueLoss;

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A TOML run configuration (keys as in a run directory's config.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Continue the run in DIR from its last checkpoint, with its own configuration
    /// (only --iterations may be changed, to extend it).
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    /// Run directory [default: runs/<date>-<time>-<model>-<reward>].
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// The configuration keys set on the command line.
    #[command(flatten)]
    pub flags: ConfigFlags,
}

/// One option per configuration key: each overrides the `--config` file, which overrides the
/// defaults (the toy: `1d/gmm` adapted to `1d/binary` at reward scale 5). The field names are
/// the keys of `config.toml`.
#[derive(Debug, Default, Args, Serialize)]
pub struct ConfigFlags {
    /// Base model id [default: 1d/gmm].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Reward id [default: 1d/binary].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward: Option<String>,
    /// Model arguments as a JSON object, e.g. '{"weights": "/models/ddpm-cifar10-32"}'.
    #[arg(long, value_name = "JSON", value_parser = args::json_object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_args: Option<toml::Table>,
    /// Reward arguments as a JSON object, e.g. '{"quality": 50}'.
    #[arg(long, value_name = "JSON", value_parser = args::json_object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_args: Option<toml::Table>,
    /// Arguments of a second instance of the reward that only scores the samples before and
    /// after training for summary.json, e.g. '{"digit": 3, "form": "hit"}' for images/digit.
    #[arg(long, value_name = "JSON", value_parser = args::json_object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_reward_args: Option<toml::Table>,
    /// Value Matching iterations [default: 300].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<usize>,
    /// Trajectories per iteration [default: 128].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Euler-Maruyama steps [default: 200 for flat data and point sets, 100 for images and
    /// latents, 50 for images of 16 pixels a side or less].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Reward scale lambda: the target is p_base(x) exp(lambda r(x)) [default: 5].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_scale: Option<f64>,
    /// Adam learning rate, the peak of its schedule [default: 1e-3].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Optimiser steps per iteration, each on an equal share of the batch's points.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fit_steps: Option<usize>,
    /// How the value network is fitted: `exponential` (to the optimal value) or `squared` (to the
    /// current control's value).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_loss: Option<ValueLoss>,
    /// Batches fitted each iteration (the newest and the ones before it) [default: 1 for images
    /// and latents, 4 for other data].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<usize>,
    /// Decay per iteration of a moving average of the value network's weights, which then
    /// steers sampling (0: none).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_average: Option<f64>,
    /// Gradient-norm clip [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// First time of the grid [default: 0.02].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t0: Option<f64>,
    /// How the steps are spread over `[t0, 1]` [default: auto: karras (crowded near the data
    /// end) on discrete diffusion schedules, uniform on the others].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_grid: Option<TimeGrid>,
    /// Where in each step the control is evaluated [default: midpoint: half a step of the base
    /// drift ahead; start: the Euler-Maruyama rule].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_point: Option<ControlPoint>,
    /// What the last step returns when a control steers [default: tilted: the steered
    /// process's endpoint estimate; base: the base model's]. Training batches always end at
    /// the base model's.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_step: Option<FinalStep>,
    /// Diffusion coefficient: `memoryless` or a constant level such as `0.5` [default: memoryless].
    #[arg(long, value_parser = args::diffusion)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise: Option<Diffusion>,
    /// Value network [default: auto: CNN for [n, C, H, W] samples, MLP otherwise].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_net: Option<ValueArch>,
    /// Largest number of trajectories simulated at once (0: the whole batch).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_chunk: Option<usize>,
    /// Points per gradient-accumulation chunk when fitting the value (0: all at once for flat
    /// data, 256 for images).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_chunk: Option<usize>,
    /// Samples drawn before and after training (0: 10000 for flat data, 16 for images).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_samples: Option<usize>,
    /// Iterations between checkpoints [default: 50].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// Run seed [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// `cpu`, `cuda` or `cuda:N` [default: cpu].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// libtorch threads (0: one for small batches on the CPU, libtorch's default otherwise).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// A directory plugins may look for weights in (repeatable).
    #[arg(long = "weights", value_name = "DIR")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<PathBuf>,
    /// Run the reward in a sandboxed child process (config key `isolate_reward`): a crash,
    /// abort, hang or exhausted memory stops the run with an error, keeping its checkpoint.
    /// On Linux the child cannot write outside a private temporary directory or open sockets.
    #[arg(long = "isolate-rewards", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(rename = "isolate_reward", skip_serializing_if = "Option::is_none")]
    pub isolate_reward: Option<bool>,
    /// Seconds an isolated reward may take to start or to score one batch, 0 for no limit
    /// [default: 300].
    #[arg(long, value_name = "SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_timeout: Option<f64>,
    /// Times an isolated reward that crashed or hung is started again for the batch
    /// [default: 0].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_retries: Option<usize>,
    /// Memory limit of an isolated reward in MiB, 0 for none [default: 8192].
    #[arg(long, value_name = "MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_memory_mib: Option<u64>,
}

impl ConfigFlags {
    /// The configuration keys these flags set, as a table.
    fn overrides(&self) -> Result<toml::Table> {
        Ok(toml::Table::try_from(self)?)
    }

    /// Defaults, then the config file, then the flags.
    pub fn resolve(&self, file: Option<&Path>) -> Result<RunConfig> {
        let base = match file {
            Some(path) => RunConfig::from_toml_file(path)?,
            None => RunConfig::default(),
        };
        base.with_overrides(self.overrides()?)
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
    let team = crate::distributed::join()?;
    match run_on(cli, args, &team) {
        // Errors are agreed between the ranks: rank 0 reports them, naming the rank and cause.
        Err(_) if !team.is_root() => Ok(ExitCode::FAILURE),
        outcome => outcome,
    }
}

/// Where a run starts, from the command line (a new run's defaults may come from its model).
fn start_of(args: &RunArgs, registry: &crate::plugins::Registry) -> Result<Start> {
    Ok(match &args.resume {
        Some(dir) => {
            let overrides = args.flags.overrides()?;
            let mut set: Vec<String> = overrides.keys().cloned().collect();
            set.retain(|key| !RunConfig::RESUMABLE_KEYS.contains(&key.as_str()));
            if !set.is_empty() {
                let flags: Vec<String> = set
                    .iter()
                    .map(|key| format!("--{}", key.replace('_', "-")))
                    .collect();
                bail!(
                    "--resume continues a run with its own configuration ({}); drop {} (only --iterations may change); how the reward runs (--isolate-rewards, --reward-timeout, --reward-retries, --reward-memory-mib) may change too",
                    dir.join(crate::run::dir::CONFIG).display(),
                    flags.join(", ")
                );
            }
            Start::Resume {
                dir: dir.clone(),
                overrides,
            }
        }
        None => {
            let config = args.flags.resolve(args.config.as_deref())?;
            let config = crate::run::defaults::with_model_defaults(
                registry,
                config,
                args.config.as_deref(),
                &args.flags.overrides()?,
            )?;
            let dir = args.out.clone().unwrap_or_else(|| default_run_dir(&config));
            Start::New {
                config: Box::new(config),
                dir,
            }
        }
    })
}

fn run_on(cli: &Cli, args: &RunArgs, team: &crate::distributed::TeamRef) -> Result<ExitCode> {
    let registry = team.agree(cli.registry())?;
    if team.is_root() {
        warn_refused(&registry);
    }
    let start = team.agree(start_of(args, &registry))?;
    let mut run = Run::open_on(&registry, start, team.clone())?;
    let (end, summary) = run.execute()?;
    if !team.is_root() {
        return Ok(match end {
            RunEnd::Finished => ExitCode::SUCCESS,
            RunEnd::Interrupted => ExitCode::from(130),
        });
    }
    let dir = run.dir().root.clone();
    let describe = |s: &Option<RewardStats>| {
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
        print!(
            "optimum E_p*[r] = {:.4} (estimated from the base samples, effective size {:.0})",
            o.reward_mean, o.effective_sample_size
        );
        match (o.distance, o.distance_before, o.distance_after) {
            (Some(name), Some(before), Some(after)) => {
                println!("; {name} to p*: before {before:.4}, after {after:.4}")
            }
            _ => println!(),
        }
    }
    if let Some(s) = summary.seconds_per_iteration {
        println!("{s:.3} s per iteration, {:.1} s in all", summary.seconds);
    }
    if let Some(dp) = summary.data_parallel {
        println!(
            "{} ranks: {:.4} s per iteration in exchanges between them ({:.1}% of an iteration)",
            dp.ranks,
            dp.exchange_seconds_per_iteration,
            100.0 * dp.exchange_share
        );
    }
    if let Some(mib) = summary.peak_rss_mib {
        println!("peak resident memory: {mib:.0} MiB");
    }
    match end {
        RunEnd::Finished => Ok(ExitCode::SUCCESS),
        RunEnd::Interrupted => {
            println!(
                "interrupted: checkpoint written after iteration {}; continue with `flowgym-host run --resume {}`",
                summary.iterations_done,
                dir.display()
            );
            Ok(ExitCode::from(130))
        }
    }
}
