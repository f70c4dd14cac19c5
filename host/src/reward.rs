//! A constructed reward, seen from the host: batches split to its declared limit, samples
//! moved to the CPU when it reads only host memory, and every result checked.

use anyhow::{anyhow, bail, Result};
use flowgym_plugin_api::{Capabilities, RewardBox};
use tch::{Device, Kind, Tensor};

use crate::kwargs::HostKwargs;
use crate::state::State;

/// Rewards and validity of a batch, on the host's device.
#[derive(Debug)]
pub struct Scores {
    /// `[n]` float32 rewards (0 where invalid).
    pub reward: Tensor,
    /// `[n]` bool: whether each sample could be scored.
    pub valid: Tensor,
}

impl Scores {
    /// Zero rewards, all valid: samples drawn without a reward.
    pub fn unscored(n: usize, device: Device) -> Self {
        Self {
            reward: Tensor::zeros([n as i64], (Kind::Float, device)),
            valid: Tensor::ones([n as i64], (Kind::Bool, device)),
        }
    }

    /// Mean and spread of the valid rewards, and the valid share.
    pub fn statistics(&self) -> RewardStats {
        RewardStats::of(&self.reward, &self.valid)
    }
}

/// Reward statistics of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RewardStats {
    /// Number of samples.
    pub samples: usize,
    /// Mean reward of the valid samples (NaN when none is valid).
    pub reward_mean: f64,
    /// Their standard deviation.
    pub reward_std: f64,
    /// Share of valid samples.
    pub valid_fraction: f64,
}

impl RewardStats {
    /// Statistics of `reward` over the samples `valid` marks.
    pub fn of(reward: &Tensor, valid: &Tensor) -> Self {
        let samples = reward.size()[0] as usize;
        let mask = valid.to_kind(Kind::Double);
        let count = mask.sum(Kind::Double).double_value(&[]);
        if count == 0.0 {
            return Self {
                samples,
                reward_mean: f64::NAN,
                reward_std: f64::NAN,
                valid_fraction: 0.0,
            };
        }
        let reward = reward.to_kind(Kind::Double);
        let mean = (&reward * &mask).sum(Kind::Double).double_value(&[]) / count;
        let var = ((reward - mean).square() * &mask)
            .sum(Kind::Double)
            .double_value(&[])
            / count;
        Self {
            samples,
            reward_mean: mean,
            reward_std: var.max(0.0).sqrt(),
            valid_fraction: count / samples.max(1) as f64,
        }
    }
}

/// Where a reward's code runs.
enum Backend {
    /// In the host's process.
    InProcess(RewardBox),
    /// In a sandboxed child process.
    #[cfg(unix)]
    Isolated(Box<crate::isolate::IsolatedReward>),
}

/// A reward loaded from a plugin.
pub struct Reward {
    /// Entry id.
    pub id: String,
    /// What it declared.
    pub capabilities: Capabilities,
    inner: Backend,
    /// What the batches being scored are, for error messages ("iteration 3").
    label: String,
}

impl Reward {
    /// Wraps a constructed plugin reward.
    pub fn new(id: &str, capabilities: Capabilities, inner: RewardBox) -> Self {
        Self {
            id: id.to_string(),
            capabilities,
            inner: Backend::InProcess(inner),
            label: "a batch".to_string(),
        }
    }

    /// Wraps a reward running in a child process.
    #[cfg(unix)]
    pub fn isolated(
        id: &str,
        capabilities: Capabilities,
        inner: crate::isolate::IsolatedReward,
    ) -> Self {
        Self {
            id: id.to_string(),
            capabilities,
            inner: Backend::Isolated(Box::new(inner)),
            label: "a batch".to_string(),
        }
    }

    /// Whether it runs in a child process.
    pub fn is_isolated(&self) -> bool {
        !matches!(self.inner, Backend::InProcess(_))
    }

    /// The CPU time its worker had used by its last answer (None in the host's process).
    pub fn worker_cpu_seconds(&self) -> Option<f64> {
        match &self.inner {
            Backend::InProcess(_) => None,
            #[cfg(unix)]
            Backend::Isolated(inner) => inner.worker_cpu_seconds(),
        }
    }

    /// Names the batches scored from now on in error messages, e.g. `the batch of iteration 3`.
    pub fn set_label(&mut self, label: impl Into<String>) {
        self.label = label.into();
    }

    /// Scores `sample` (from `latent`), returning tensors on `device`.
    pub fn score(
        &mut self,
        sample: &State,
        latent: &State,
        kwargs: &HostKwargs,
        device: Device,
    ) -> Result<Scores> {
        let n = sample.len();
        let chunk = match self.capabilities.max_batch {
            0 => n.max(1),
            limit => limit as usize,
        };
        let mut rewards = Vec::new();
        let mut valids = Vec::new();
        let mut start = 0;
        while start < n {
            let end = (start + chunk).min(n);
            let scores = self.score_chunk(
                &sample.slice(start, end)?,
                &latent.slice(start, end)?,
                &kwargs.slice(start, end),
                start,
            )?;
            rewards.push(scores.reward.to_device(device));
            valids.push(scores.valid.to_device(device));
            start = end;
        }
        if n == 0 {
            return Ok(Scores {
                reward: Tensor::zeros([0], (Kind::Float, device)),
                valid: Tensor::zeros([0], (Kind::Bool, device)),
            });
        }
        Ok(Scores {
            reward: Tensor::cat(&rewards, 0),
            valid: Tensor::cat(&valids, 0),
        })
    }

    fn score_chunk(
        &mut self,
        sample: &State,
        latent: &State,
        kwargs: &HostKwargs,
        offset: usize,
    ) -> Result<Scores> {
        let what = format!("reward `{}`", self.id);
        let n = sample.len();
        let (sample, latent, kwargs) = if self.capabilities.cpu_only {
            (
                sample.to_device(Device::Cpu),
                latent.to_device(Device::Cpu),
                kwargs.to_device(Device::Cpu),
            )
        } else {
            (
                sample.shallow_clone(),
                latent.shallow_clone(),
                kwargs.slice(0, n),
            )
        };
        let (reward, valid) = match &mut self.inner {
            Backend::InProcess(inner) => {
                let out = inner
                    .reward(sample.to_batch()?, latent.to_batch()?, kwargs.to_plugin()?)
                    .into_result()
                    .map_err(|e| anyhow!("{what}: {e}"))?;
                let reward = out.reward.into_tch().map_err(|e| anyhow!("{what}: {e}"))?;
                let valid = match out.valid.into_option() {
                    None => None,
                    Some(v) => Some(v.into_tch().map_err(|e| anyhow!("{what}: {e}"))?),
                };
                (reward, valid)
            }
            #[cfg(unix)]
            Backend::Isolated(inner) => {
                let label = format!("{} (samples {offset}..{})", self.label, offset + n);
                inner.score(&sample, &latent, &kwargs, &label)?
            }
        };
        if reward.size() != [n as i64] {
            bail!(
                "{what} returned rewards of shape {:?} for {n} samples; expected [{n}]",
                reward.size()
            );
        }
        if !reward.is_floating_point() {
            bail!(
                "{what} returned rewards of type {:?}; rewards must be floating point",
                reward.kind()
            );
        }
        let reward = reward.to_kind(Kind::Float);
        let valid = match valid {
            None => Tensor::ones([n as i64], (Kind::Bool, reward.device())),
            Some(valid) => {
                if valid.size() != [n as i64] || valid.kind() != Kind::Bool {
                    bail!(
                        "{what} returned validity of shape {:?} and type {:?}; expected bool [{n}]",
                        valid.size(),
                        valid.kind()
                    );
                }
                valid.to_device(reward.device())
            }
        };
        let bad = reward.isfinite().logical_not().logical_and(&valid);
        if bad.any().int64_value(&[]) != 0 {
            let indices: Vec<i64> = Vec::<i64>::try_from(bad.nonzero().view([-1]))
                .unwrap_or_default()
                .into_iter()
                .take(8)
                .map(|i| i + offset as i64)
                .collect();
            bail!("{what} returned NaN or infinite rewards for valid samples {indices:?}");
        }
        let reward = reward.where_self(&valid, &reward.zeros_like());
        Ok(Scores { reward, valid })
    }
}
