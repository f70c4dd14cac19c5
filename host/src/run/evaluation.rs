//! The evaluation reward: a second instance of the run's reward, constructed with other
//! arguments (`eval_reward_args`), that only scores the samples drawn before and after
//! training, for `summary.json`. It lets a run optimise one form of a reward and report
//! another (for `images/digit`: train on the log-probability, report the share classified
//! as the digit). Its statistics are kept in `samples/NAME-evaluation.json`, so a resumed run
//! reports them too.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flowgym_plugin_api::ConstructContext;
use serde::Serialize;
use tch::Device;

use super::RunConfig;
use crate::compose::open_reward;
use crate::reward::{Reward, RewardStats};
use crate::sde::Trajectory;

/// What `summary.json` reports of the evaluation reward.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationSummary {
    /// Its arguments.
    pub reward_args: serde_json::Value,
    /// Its statistics on the base model's samples.
    pub before: Option<RewardStats>,
    /// Its statistics on the adapted samples.
    pub after: Option<RewardStats>,
}

/// The evaluation reward and what it measured so far.
pub struct Evaluation {
    reward: Reward,
    samples_dir: PathBuf,
    summary: EvaluationSummary,
}

impl Evaluation {
    /// Constructs the evaluation reward when the configuration asks for one, and reads what an
    /// earlier session of the run measured.
    pub fn open(
        registry: &crate::plugins::Registry,
        config: &RunConfig,
        ctx: &ConstructContext,
        samples_dir: &Path,
    ) -> Result<Option<Self>> {
        let Some(args) = config.eval_reward_args_json()? else {
            return Ok(None);
        };
        let (reward, _) = open_reward(registry, &config.reward, &args, ctx)
            .context("constructing the evaluation reward (`eval_reward_args`)")?;
        let read = |name: &str| -> Option<RewardStats> {
            let text = std::fs::read_to_string(stats_path(samples_dir, name)).ok()?;
            serde_json::from_str(&text).ok()
        };
        Ok(Some(Self {
            reward,
            samples_dir: samples_dir.to_path_buf(),
            summary: EvaluationSummary {
                reward_args: serde_json::from_str(&args)?,
                before: read("before"),
                after: read("after"),
            },
        }))
    }

    /// Scores the samples `name` (`before` or `after`) and keeps their statistics.
    pub fn score(&mut self, name: &str, trajectory: &Trajectory, device: Device) -> Result<()> {
        self.reward
            .set_label(format!("the {name} samples (evaluation reward)"));
        let stats = self
            .reward
            .score(
                &trajectory.sample,
                &trajectory.final_state,
                &trajectory.kwargs,
                device,
            )?
            .statistics();
        crate::atomic_file::write_bytes_atomically(
            &stats_path(&self.samples_dir, name),
            serde_json::to_string_pretty(&stats)?.as_bytes(),
        )?;
        if name == "before" {
            self.summary.before = Some(stats);
        } else {
            self.summary.after = Some(stats);
        }
        Ok(())
    }

    /// What to report.
    pub fn summary(&self) -> EvaluationSummary {
        self.summary.clone()
    }
}

fn stats_path(samples_dir: &Path, name: &str) -> PathBuf {
    samples_dir.join(format!("{name}-evaluation.json"))
}
