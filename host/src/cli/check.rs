//! `flowgym-host check`: can this model and this reward run together?

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use flowgym_plugin_api::EntryKind;

use super::{args, warn_refused, Cli};
use crate::compat::pair_problems;
use crate::compose::{construct_context, open_model, open_reward};
use crate::device::parse_device;
use crate::plugins::Registry;
use crate::sde::{never_stop, sample, SampleRequest, SamplerOptions};

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Base model id (`data_type/name`).
    #[arg(long)]
    pub model: String,
    /// Reward id (`data_type/name`).
    #[arg(long)]
    pub reward: String,
    /// Model arguments as a JSON object. With this or `--reward-args`, both entries are also
    /// constructed with their arguments and run end to end on two samples.
    #[arg(long, value_name = "JSON", value_parser = args::json_object)]
    pub model_args: Option<toml::Table>,
    /// Reward arguments as a JSON object (see `--model-args`).
    #[arg(long, value_name = "JSON", value_parser = args::json_object)]
    pub reward_args: Option<toml::Table>,
    /// Where the end-to-end trial computes: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A directory the plugins may look for weights in (repeatable).
    #[arg(long = "weights", value_name = "DIR")]
    pub weights: Vec<PathBuf>,
}

/// Samples in the end-to-end trial.
const TRIAL_SAMPLES: usize = 2;
/// Sampling steps of the trial: the first Euler-Maruyama step and the endpoint step.
const TRIAL_STEPS: usize = 2;

/// Constructs both entries with their arguments and draws, denoises, post-processes and
/// scores two samples, so that whatever would stop a run at its start stops here.
fn trial(registry: &Registry, args: &CheckArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    let ctx = construct_context(device, &args.weights)?;
    let text = |table: &Option<toml::Table>| args::json_text(&table.clone().unwrap_or_default());
    let (mut model, _) = open_model(registry, &args.model, &text(&args.model_args), &ctx)?;
    let (mut reward, _) = open_reward(registry, &args.reward, &text(&args.reward_args), &ctx)?;
    let options = SamplerOptions {
        steps: TRIAL_STEPS,
        ..SamplerOptions::default()
    };
    let request = SampleRequest {
        n: TRIAL_SAMPLES,
        seed: 0,
        control: None,
        record: false,
        device,
        stop_after_step: &never_stop,
    };
    let _no_grad = tch::no_grad_guard();
    sample(&mut model, Some(&mut reward), &options, &request)
        .map(|_| ())
        .context("the end-to-end trial on two samples failed")
}

/// Resolves both entries and compares their metadata; with arguments, also constructs and
/// runs them.
pub fn run(cli: &Cli, args: &CheckArgs) -> Result<ExitCode> {
    let registry = cli.registry()?;
    warn_refused(&registry);
    let model = registry.resolve(&args.model, EntryKind::BaseModel)?;
    let reward = registry.resolve(&args.reward, EntryKind::Reward)?;
    let problems = pair_problems(model.meta, reward.meta);
    let with_arguments = args.model_args.is_some() || args.reward_args.is_some();
    if problems.is_empty() && with_arguments {
        trial(&registry, args)?;
        println!("ok: constructed with these arguments, two samples drawn, denoised and scored");
    }
    if problems.is_empty() {
        let leaves: Vec<String> = model.meta.leaves.iter().map(|l| l.to_string()).collect();
        println!(
            "ok: model `{}` and reward `{}` can run together (data type {}; samples {})",
            model.id(),
            reward.id(),
            model.meta.data_type,
            leaves.join(", ")
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "model `{}` and reward `{}` cannot run together:",
            model.id(),
            reward.id()
        );
        for problem in problems {
            println!("  - {problem}");
        }
        Ok(ExitCode::FAILURE)
    }
}
