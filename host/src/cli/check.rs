//! `flowgym-host check`: can this model and this reward run together?

use std::process::ExitCode;

use clap::Args;
use flowgym_plugin_api::EntryKind;

use super::{warn_refused, Cli};
use crate::compat::pair_problems;

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Base model id (`data_type/name`).
    #[arg(long)]
    pub model: String,
    /// Reward id (`data_type/name`).
    #[arg(long)]
    pub reward: String,
}

/// Resolves both entries and compares their metadata; constructs neither.
pub fn run(cli: &Cli, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let registry = cli.registry()?;
    warn_refused(&registry);
    let model = registry.resolve(&args.model, EntryKind::BaseModel)?;
    let reward = registry.resolve(&args.reward, EntryKind::Reward)?;
    let problems = pair_problems(model.meta, reward.meta);
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
