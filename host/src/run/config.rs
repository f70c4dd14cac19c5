//! The resolved configuration of a run: defaults, overridden by a TOML file, overridden by
//! flags. It is written to the run directory and read back by `--resume`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::sde::{ControlPoint, Diffusion, FinalStep, TimeGrid};
use crate::value::ValueArch;
use crate::value_matching::{LrSchedule, ValueLoss};

/// Everything that determines a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Base model id.
    pub model: String,
    /// Reward id.
    pub reward: String,
    /// Arguments of the model (a table; passed to the plugin as JSON).
    pub model_args: toml::Table,
    /// Arguments of the reward.
    pub reward_args: toml::Table,
    /// Arguments of a second instance of the reward that only scores the samples drawn before
    /// and after training, for `summary.json` (`evaluation`); empty: none. For example
    /// `{digit = 3, form = "hit"}` reports the share of samples `images/digit` classifies as 3.
    pub eval_reward_args: toml::Table,
    /// Value Matching iterations.
    pub iterations: usize,
    /// Trajectories per iteration.
    pub batch_size: usize,
    /// Euler-Maruyama steps per trajectory (0: 200 for flat data and point sets, 100 for images
    /// and latents, where each step is a call of an image network).
    pub steps: usize,
    /// Reward scale `lambda`: the target is `p_base(x) exp(lambda r(x))`.
    pub reward_scale: f64,
    /// Adam learning rate (the peak of the schedule).
    pub lr: f64,
    /// How the learning rate moves over the run.
    pub lr_schedule: LrSchedule,
    /// Optimiser steps per iteration, each on an equal share of the batch's points.
    pub fit_steps: usize,
    /// Regress on the cost-to-go plus the stochastic integral of the control, which has the
    /// same mean and vanishing spread as the control nears the optimum.
    pub martingale_target: bool,
    /// How the value network's predictions are compared with their targets.
    pub value_loss: ValueLoss,
    /// Batches fitted each iteration: the newest and up to `replay - 1` before it (0: 4 for
    /// the MLP value network, 1 for the CNN, whose image batches are large).
    pub replay: usize,
    /// Decay per iteration of a moving average of the value network's weights, which steers
    /// sampling in place of the latest weights (0: none).
    pub value_average: f64,
    /// Gradient-norm clip.
    pub grad_clip: f64,
    /// First time of the grid.
    pub t0: f64,
    /// How the steps are spread over `[t0, 1]`: `auto` (`karras` on discrete diffusion
    /// schedules, `uniform` on the others), `uniform`, `noise_level` or `karras`.
    pub time_grid: TimeGrid,
    /// Diffusion coefficient: `memoryless` or a constant level.
    pub noise: Diffusion,
    /// Where in each step the control is evaluated: `midpoint` (half a step of the base drift
    /// ahead) or `start` (the Euler-Maruyama rule).
    pub control_point: ControlPoint,
    /// What the last step returns when a control steers: `tilted` (the steered process's
    /// endpoint estimate) or `base` (the base model's). Training batches always end at the
    /// base model's, so that the fit's targets stay those of the chain it estimates.
    pub final_step: FinalStep,
    /// Value network: `auto`, `mlp` or `cnn`.
    pub value_net: ValueArch,
    /// Largest number of trajectories simulated at once (0: the whole batch).
    pub sample_chunk: usize,
    /// Points per gradient-accumulation chunk when fitting the value (0: all at once for flat
    /// data, 256 for images).
    pub train_chunk: usize,
    /// Samples drawn before and after training for the figures (0: 10000 for flat data,
    /// 16 for images, 256 for images of 16 pixels a side or less).
    pub eval_samples: usize,
    /// Iterations between checkpoints (one is also written at the end and on Ctrl-C).
    pub checkpoint_every: usize,
    /// Run seed.
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// libtorch intra-op threads (0: one for small batches on the CPU, where more
    /// only wait on each other, and libtorch's default otherwise).
    pub threads: usize,
    /// Directories plugins may look for weights in.
    pub weights: Vec<PathBuf>,
    /// Run the reward in a sandboxed child process (Unix), so that a crash, a hang or
    /// exhausted memory stops the run with an error and a checkpoint instead of killing it.
    pub isolate_reward: bool,
    /// Seconds an isolated reward may take to start or to score one batch (0: no limit).
    pub reward_timeout: f64,
    /// Times an isolated reward that crashed or hung is started again and sent the batch again.
    pub reward_retries: usize,
    /// Memory limit of an isolated reward in MiB (0: none).
    pub reward_memory_mib: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            model: "1d/gmm".into(),
            reward: "1d/binary".into(),
            model_args: toml::Table::new(),
            reward_args: toml::Table::new(),
            eval_reward_args: toml::Table::new(),
            iterations: 300,
            batch_size: 128,
            steps: 0,
            reward_scale: 5.0,
            lr: 1e-3,
            lr_schedule: LrSchedule::Cosine {
                warmup: 20,
                final_fraction: 0.1,
            },
            fit_steps: 64,
            martingale_target: true,
            value_loss: ValueLoss::Exponential,
            replay: 0,
            value_average: 0.95,
            grad_clip: 1.0,
            t0: 0.02,
            time_grid: TimeGrid::Auto,
            noise: Diffusion::Memoryless,
            control_point: ControlPoint::Midpoint,
            final_step: FinalStep::Tilted,
            value_net: ValueArch::Auto,
            sample_chunk: 0,
            train_chunk: 0,
            eval_samples: 0,
            checkpoint_every: 50,
            seed: 0,
            device: "cpu".into(),
            threads: 0,
            weights: Vec::new(),
            isolate_reward: false,
            reward_timeout: 300.0,
            reward_retries: 0,
            reward_memory_mib: 8192,
        }
    }
}

impl RunConfig {
    /// Reads a TOML file; keys it omits keep their defaults (not validated: see
    /// [`RunConfig::validate`]).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let config: RunConfig = toml::from_str(&text).with_context(|| {
            format!(
                "config file {} is not a valid run configuration",
                path.display()
            )
        })?;
        Ok(config)
    }

    /// This configuration with the keys of `overrides` replaced (the argument tables
    /// `model_args` and `reward_args` are merged key by key). Unknown keys and wrong types are
    /// named.
    pub fn with_overrides(self, overrides: toml::Table) -> Result<Self> {
        let mut table = toml::Table::try_from(&self)?;
        for (key, value) in overrides {
            match (table.get_mut(&key), value) {
                (Some(toml::Value::Table(args)), toml::Value::Table(new)) => args.extend(new),
                (_, value) => {
                    table.insert(key, value);
                }
            }
        }
        toml::Value::Table(table)
            .try_into()
            .context("the options do not form a valid run configuration")
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// The model's arguments as the JSON document plugins read.
    pub fn model_args_json(&self) -> Result<String> {
        Ok(serde_json::to_string(&self.model_args)?)
    }

    /// The evaluation reward's arguments as the JSON document plugins read, if there is one.
    pub fn eval_reward_args_json(&self) -> Result<Option<String>> {
        if self.eval_reward_args.is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::to_string(&self.eval_reward_args)?))
    }

    /// The reward's arguments as the JSON document plugins read.
    pub fn reward_args_json(&self) -> Result<String> {
        Ok(serde_json::to_string(&self.reward_args)?)
    }

    /// The keys that may change when a run is resumed: they decide how the reward runs, not
    /// what the run computes.
    pub const RESUMABLE_KEYS: [&'static str; 5] = [
        "iterations",
        "isolate_reward",
        "reward_timeout",
        "reward_retries",
        "reward_memory_mib",
    ];

    /// How an isolated reward runs, from this configuration; `executable` is the worker.
    #[cfg(unix)]
    pub fn isolation(&self, executable: PathBuf) -> crate::isolate::IsolationOptions {
        crate::isolate::IsolationOptions {
            executable,
            timeout: (self.reward_timeout > 0.0)
                .then(|| std::time::Duration::from_secs_f64(self.reward_timeout)),
            retries: self.reward_retries,
            memory_bytes: self.reward_memory_mib.saturating_mul(1 << 20),
            threads: self.threads,
        }
    }

    /// Refuses values that cannot run, naming the key.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("batch_size", self.batch_size),
            ("checkpoint_every", self.checkpoint_every),
            ("fit_steps", self.fit_steps),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("`{key}` must be at least 1");
            }
        }
        if !(self.reward_scale > 0.0 && self.reward_scale.is_finite()) {
            bail!("`reward_scale` must be positive, got {}", self.reward_scale);
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("`lr` must be positive, got {}", self.lr);
        }
        if let LrSchedule::Cosine { final_fraction, .. } = self.lr_schedule {
            if !(0.0..=1.0).contains(&final_fraction) {
                bail!("`lr_schedule.final_fraction` must lie in [0, 1], got {final_fraction}");
            }
        }
        if !(0.0..1.0).contains(&self.value_average) {
            bail!(
                "`value_average` is a decay per iteration in [0, 1), got {}",
                self.value_average
            );
        }
        if self.grad_clip.is_nan() || self.grad_clip <= 0.0 {
            bail!("`grad_clip` must be positive, got {}", self.grad_clip);
        }
        if !(self.t0 > 0.0 && self.t0 < 1.0) {
            bail!("`t0` must lie in (0, 1), got {}", self.t0);
        }
        if !(self.reward_timeout >= 0.0 && self.reward_timeout.is_finite()) {
            bail!(
                "`reward_timeout` must be a non-negative number of seconds, got {}",
                self.reward_timeout
            );
        }
        if let Diffusion::Constant(level) = self.noise {
            if !(level >= 0.0 && level.is_finite()) {
                bail!("a constant `noise` level must be non-negative, got {level}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trips_and_fills_defaults() {
        let config: RunConfig = toml::from_str(
            "model = \"images/cifar\"\nreward_scale = 2.0\n[reward_args]\nquality = 50\n[noise]\nkind = \"constant\"\nlevel = 0.5\n",
        )
        .unwrap();
        assert_eq!(config.model, "images/cifar");
        assert_eq!(config.steps, 0, "left to the data");
        assert_eq!(config.noise, Diffusion::Constant(0.5));
        assert_eq!(config.reward_args_json().unwrap(), r#"{"quality":50}"#);
        let again: RunConfig = toml::from_str(&config.to_toml().unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn overrides_replace_keys_and_merge_argument_tables() {
        let config: RunConfig =
            toml::from_str("steps = 7\n[reward_args]\nquality = 50\nsubsampling = \"4:2:0\"\n")
                .unwrap();
        let overrides: toml::Table =
            toml::from_str("lr = 0.01\n[reward_args]\nquality = 20\n").unwrap();
        let merged = config.with_overrides(overrides).unwrap();
        assert_eq!((merged.steps, merged.lr), (7, 0.01));
        assert_eq!(
            merged.reward_args_json().unwrap(),
            r#"{"quality":20,"subsampling":"4:2:0"}"#
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = toml::from_str::<RunConfig>("learning_rate = 0.1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `learning_rate`"), "{err}");
        let err = toml::from_str::<RunConfig>("final_step = \"sideways\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown variant `sideways`, expected `tilted` or `base`"),
            "{err}"
        );
        let base: RunConfig = toml::from_str("final_step = \"base\"").unwrap();
        assert_eq!(base.final_step, FinalStep::Base);
        let config = RunConfig {
            fit_steps: 0,
            ..RunConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "`fit_steps` must be at least 1"
        );
        let config = RunConfig {
            value_average: 1.0,
            ..RunConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "`value_average` is a decay per iteration in [0, 1), got 1"
        );
    }
}
