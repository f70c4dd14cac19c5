//! The Value Matching trainer: one iteration samples a batch of trajectories with the current
//! control and takes one optimiser step on the regression loss.
//!
//! Loss: `sum_k w_k / K * mean_n (V(x_k, t_k) - C_k)^2 / lambda^2` with
//! `w_k = 1 / (1 + 0.5 * integral_{t_k}^1 s^2 dt)` (the integral summed on the time grid) and
//! the mean over samples the reward could score. The network outputs `V / lambda`, so it
//! regresses `C_k / lambda`, the same loss at a scale that does not depend on `lambda`.

use std::time::Instant;

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use super::adam::Adam;
use super::guard::DivergenceGuard;
use super::IterationStats;
use crate::distributed::{self, TeamRef};
use crate::model::Model;
use crate::reward::{Reward, RewardStats};
use crate::sde::sampler::sample_part;
use crate::sde::{Control, FinalStep, SampleRequest, SamplerOptions, Trajectory};
use crate::seed::derive_seed;
use crate::state::State;
use crate::value::{self, ValueNetwork};

/// Points per gradient-accumulation chunk for image data when none is set: activations of
/// the CNN for `K * N` images at once would dwarf everything else.
pub const AUTO_IMAGE_CHUNK: usize = 256;

/// Hyperparameters of Value Matching.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VmSettings {
    /// `lambda`: reward scale.
    pub reward_scale: f64,
    /// Adam learning rate.
    pub lr: f64,
    /// Gradient-norm clip.
    pub grad_clip: f64,
    /// Trajectories per iteration.
    pub batch_size: usize,
    /// Points per gradient-accumulation chunk when fitting the value (0: all at once for flat
    /// data, [`AUTO_IMAGE_CHUNK`] for images).
    pub train_chunk: usize,
    /// The sampler.
    pub sampler: SamplerOptions,
    /// Base seed of the run.
    pub seed: u64,
    /// Where to compute.
    pub device: Device,
    /// Iterations of the run (the learning-rate schedule spans them).
    pub iterations: usize,
    /// How the learning rate moves over the run.
    pub lr_schedule: LrSchedule,
    /// Optimiser steps per iteration, each on an equal share of the batch's points.
    pub fit_steps: usize,
    /// Regress on the cost-to-go plus the stochastic integral of the control
    /// ([`Trajectory::cost_to_go_with_martingale`]) instead of the plain cost-to-go.
    pub martingale_target: bool,
    /// How a prediction is compared with its target.
    pub value_loss: ValueLoss,
    /// Batches fitted each iteration: the newest and up to `replay - 1` before it (1: only
    /// the newest). Older batches' targets stay unbiased for the exponential loss with
    /// the martingale target, whose minimiser does not depend on the control that drew them.
    pub replay: usize,
    /// Decay per iteration of an exponential moving average of the value network's weights,
    /// which then steers sampling in place of the latest weights (0: no average). Early
    /// iterations average over fewer: the decay of iteration `i` is at most
    /// `(1 + i) / (10 + i)`.
    pub value_average: f64,
}

/// How the value network's prediction `v` is compared with the target `c` (both in units of
/// `lambda`), per point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ValueLoss {
    /// `(v - c)^2`: the minimiser is the conditional mean of the target, the value of the
    /// current control; Value Matching iterates towards the optimum.
    Squared,
    /// `2 (e^z - z - 1) / lambda^2` with `z = lambda (v - c)`: the same as `(v - c)^2` for small
    /// `z`, and its minimiser is `-log E[e^{-lambda c}] / lambda`, which with the martingale
    /// target is the optimal value itself, whatever control drew the samples
    /// (docs/mathematics.md, section 7).
    Exponential,
}

/// Beyond this `z` the exponential loss continues linearly, so one rare, very good sample
/// cannot overflow it.
const EXPONENTIAL_LINEAR_FROM: f64 = 20.0;

impl ValueLoss {
    /// The per-point loss of predictions `v` against targets `c`.
    fn per_point(self, v: &Tensor, c: &Tensor, lambda: f64) -> Tensor {
        match self {
            ValueLoss::Squared => (v - c).square(),
            ValueLoss::Exponential => {
                let z = (v - c) * lambda;
                let capped = z.clamp_max(EXPONENTIAL_LINEAR_FROM);
                let beyond = (&z - EXPONENTIAL_LINEAR_FROM).clamp_min(0.0);
                let exp = capped.exp();
                ((&exp * (beyond + 1.0)) - z - 1.0) * (2.0 / (lambda * lambda))
            }
        }
    }
}

/// The learning rate over a run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LrSchedule {
    /// `lr` throughout.
    Constant,
    /// A linear warm-up from 0 over `warmup` iterations, then a cosine decay to
    /// `lr * final_fraction` at the last iteration.
    Cosine {
        /// Warm-up iterations.
        warmup: usize,
        /// The last learning rate, as a fraction of `lr`.
        final_fraction: f64,
    },
}

impl LrSchedule {
    /// The learning rate of iteration `i` of `iterations`, peaking at `lr`.
    pub fn at(self, lr: f64, i: usize, iterations: usize) -> f64 {
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine {
                warmup,
                final_fraction,
            } => {
                if i < warmup {
                    return lr * (i + 1) as f64 / warmup as f64;
                }
                let span = iterations.saturating_sub(warmup).max(1) as f64;
                let progress = ((i - warmup) as f64 / span).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                lr * (final_fraction + (1.0 - final_fraction) * cosine)
            }
        }
    }
}

/// Value Matching with a built-in value network.
pub struct ValueMatching {
    value: Box<dyn ValueNetwork>,
    adam: Adam,
    settings: VmSettings,
    guard: DivergenceGuard,
    /// The points of the latest batches, the newest last.
    replayed: std::collections::VecDeque<Points>,
    /// A constant subtracted from every target (in units of `lambda`), set from the first
    /// batch: the mean of its first step's targets, so that the network starts at its targets'
    /// level (where the exponential loss is steep on one side and flat on the other, a start
    /// far below them overshoots). Constants do not change the control, which is a gradient.
    target_offset: Option<f64>,
    /// The ranks sharing each batch ([`distributed::Solo`] in a single process).
    team: TeamRef,
    /// The moving average of the value's weights, when the settings ask for one: it steers.
    averaged: Option<Box<dyn ValueNetwork>>,
}

/// The checkpoint name of the target offset.
const OFFSET_KEY: &str = "trainer.target_offset";

/// `w_k = 1 / (1 + 0.5 sum_{j >= k} s_j^2 dt_j)`: `[K]`.
pub fn loss_weights(trajectory: &Trajectory) -> Vec<f64> {
    let mut remaining = 0.0;
    let mut weights = vec![0.0; trajectory.times.len()];
    for k in (0..weights.len()).rev() {
        remaining += trajectory.diffusion[k].powi(2) * trajectory.dts[k];
        weights[k] = 1.0 / (1.0 + 0.5 * remaining);
    }
    weights
}

impl ValueMatching {
    /// Value Matching training `value` with `settings` (checked by the caller: a positive,
    /// finite reward scale and learning rate).
    pub fn new(value: Box<dyn ValueNetwork>, settings: VmSettings) -> Self {
        let adam = Adam::new(value.var_store(), settings.lr);
        Self {
            value,
            adam,
            settings,
            guard: DivergenceGuard::default(),
            replayed: std::collections::VecDeque::new(),
            target_offset: None,
            team: distributed::solo(),
            averaged: None,
        }
    }

    /// Keeps the moving average of the weights (decay `value_average`) in `twin`, a second
    /// network of the same architecture whose own weights are replaced.
    pub fn with_twin(mut self, mut twin: Box<dyn ValueNetwork>) -> Self {
        value::average_into(twin.as_mut(), self.value.as_ref(), 0.0);
        self.averaged = Some(twin);
        self
    }

    /// Moves the average towards the weights just fitted in iteration `iteration`.
    fn update_average(&mut self, iteration: usize) {
        if let Some(averaged) = self.averaged.as_mut() {
            let warming = (1 + iteration) as f64 / (10 + iteration) as f64;
            let decay = self.settings.value_average.min(warming);
            value::average_into(averaged.as_mut(), self.value.as_ref(), decay);
        }
    }

    /// Shares every batch with the ranks of `team`: each samples its share, and the ranks add
    /// up gradients and statistics, so every rank takes the same steps.
    pub fn with_team(mut self, team: TeamRef) -> Self {
        self.team = team;
        self
    }

    /// Fits the value network to one batch of trajectories in `fit_steps` optimiser steps on
    /// shuffled shares of its points; returns the mean loss and the last gradient norm.
    fn fit(&mut self, trajectory: &Trajectory, iteration: usize) -> Result<(f64, f64)> {
        let fresh = self.points_of(trajectory)?;
        while self.replayed.len() >= self.settings.replay.max(1) {
            self.replayed.pop_front();
        }
        self.replayed.push_back(fresh);
        let all: Vec<&Points> = self.replayed.iter().collect();
        let joined = Points::cat(&all)?;
        self.fit_points(&joined, iteration)
    }

    /// The training points of a batch of trajectories: every recorded state with its time,
    /// target, loss weight and validity.
    fn points_of(&mut self, trajectory: &Trajectory) -> Result<Points> {
        let lambda = self.settings.reward_scale;
        let device = self.settings.device;
        let steps = trajectory.states.len();
        let n = trajectory.final_state.len() as i64;
        let cost = if self.settings.martingale_target {
            trajectory.cost_to_go_with_martingale(lambda)
        } else {
            trajectory.cost_to_go(lambda)
        };
        let repeat = |values: &[f64]| {
            Tensor::from_slice(values)
                .to_kind(Kind::Float)
                .to_device(device)
                .repeat_interleave_self_int(n, 0, None)
        };
        let targets = (cost / lambda).detach();
        let offset = match self.target_offset {
            Some(offset) => offset,
            None => {
                let first = self.team.gather_cat(&targets.get(0))?;
                let valid = self.team.gather_cat(&trajectory.scores.valid)?;
                *self.target_offset.insert(mean_target(&first, &valid))
            }
        };
        let share = self.team.share(self.settings.batch_size);
        let global_n = self.settings.batch_size as i64;
        let index = (Tensor::arange(steps as i64, (Kind::Int64, device)).view([-1, 1]) * global_n
            + Tensor::arange_start(share.start as i64, share.end as i64, (Kind::Int64, device))
                .view([1, -1]))
        .reshape([-1]);
        Ok(Points {
            index,
            global_len: steps * self.settings.batch_size,
            states: State::cat(
                &trajectory
                    .states
                    .iter()
                    .map(State::shallow_clone)
                    .collect::<Vec<_>>(),
            )?,
            times: repeat(&trajectory.times),
            targets: (targets - offset).reshape([-1]),
            weights: repeat(&loss_weights(trajectory)),
            mask: trajectory
                .scores
                .valid
                .to_kind(Kind::Float)
                .repeat([steps as i64]),
        })
    }

    /// `fit_steps` optimiser steps on shuffled shares of `points`.
    fn fit_points(&mut self, points: &Points, iteration: usize) -> Result<(f64, f64)> {
        let device = self.settings.device;
        let Points {
            states,
            times,
            targets,
            weights,
            mask,
            index,
            global_len: total,
        } = points;
        let total = *total;
        let chunk = match self.settings.train_chunk {
            0 if states.floating().any(|t| t.dim() == 4) => AUTO_IMAGE_CHUNK,
            0 => total,
            c => c,
        };
        let parts = self.settings.fit_steps.clamp(1, total.max(1));
        // The shares are drawn over the points of the whole batch, from a seed of their own,
        // so that they are the same on every rank and for any number of ranks.
        let order = if parts > 1 {
            tch::manual_seed(derive_seed(self.settings.seed, "fit", iteration as u64) as i64);
            Tensor::randperm(total as i64, (Kind::Int64, Device::Cpu)).to_device(device)
        } else {
            Tensor::arange(total as i64, (Kind::Int64, device))
        };
        // Where each point of the whole batch is among this rank's points (-1: elsewhere).
        let local = Tensor::full([total as i64], -1, (Kind::Int64, device)).index_put(
            &[Some(index)],
            &Tensor::arange(states.len() as i64, (Kind::Int64, device)),
            false,
        );
        self.adam.lr =
            self.settings
                .lr_schedule
                .at(self.settings.lr, iteration, self.settings.iterations);
        let share = total.div_ceil(parts);
        let target_variance = self.team.gather_cat(targets)?.var(false).double_value(&[]);
        // Each step's share of the points, this rank's among them, and the valid points of
        // the whole share (the loss's denominator), all exchanged at once.
        let mut steps: Vec<(usize, Tensor)> = (0..total)
            .step_by(share)
            .map(|first| {
                let picked = order.narrow(0, first as i64, share.min(total - first) as i64);
                let mine = local.index_select(0, &picked);
                (picked.size()[0] as usize, mine.masked_select(&mine.ge(0)))
            })
            .collect();
        // A custom layout reorders this rank's points once, through its plugin, so that every
        // share is one contiguous slice (picking each share's samples through the plugin is
        // several times slower).
        let reordered = if states.layout().is_some() && parts > 1 {
            Some(contiguous_shares(
                (states, times, targets, weights, mask),
                &mut steps,
            )?)
        } else {
            None
        };
        let (states, times, targets, weights, mask) = match &reordered {
            Some((states, times, targets, weights, mask)) => {
                (states, times, targets, weights, mask)
            }
            None => (states, times, targets, weights, mask),
        };
        let batch = FitBatch {
            states,
            times,
            targets,
            weights,
            mask,
            chunk,
        };
        let mut denominators: Vec<f64> = steps
            .iter()
            .map(|(_, indices)| {
                mask.index_select(0, indices)
                    .sum(Kind::Float)
                    .double_value(&[])
            })
            .collect();
        self.team.sum_f64(&mut denominators);
        let (mut loss_sum, mut grad_norm) = (0.0, 0.0);
        for ((picked, indices), denominator) in steps.iter().zip(denominators) {
            let fitted = self.loss_and_gradient(&batch, indices, denominator.max(1.0))?;
            let loss = fitted.loss;
            if !loss.is_finite() {
                bail!("the Value Matching loss became {loss} at iteration {iteration}");
            }
            self.guard
                .check_error(iteration, fitted.squared_error, target_variance)?;
            grad_norm = self.adam.step(self.settings.grad_clip);
            if !grad_norm.is_finite() {
                bail!("the value network's gradient became {grad_norm} at iteration {iteration}");
            }
            loss_sum += loss * *picked as f64;
        }
        Ok((loss_sum / total as f64, grad_norm))
    }
}

/// The points (states, times, targets, weights, mask) reordered so that each step's share,
/// given by row indices in `steps`, is one contiguous slice; `steps` then holds those slices.
fn contiguous_shares(
    (states, times, targets, weights, mask): (&State, &Tensor, &Tensor, &Tensor, &Tensor),
    steps: &mut [(usize, Tensor)],
) -> Result<(State, Tensor, Tensor, Tensor, Tensor)> {
    let all: Vec<&Tensor> = steps.iter().map(|(_, rows)| rows).collect();
    let permutation = Tensor::cat(&all, 0);
    let pick = |t: &Tensor| t.index_select(0, &permutation);
    let reordered = (
        states.index_select(&permutation)?,
        pick(times),
        pick(targets),
        pick(weights),
        pick(mask),
    );
    let mut first = 0;
    for (_, rows) in steps.iter_mut() {
        let len = rows.size()[0];
        *rows = Tensor::arange_start(first, first + len, (Kind::Int64, permutation.device()));
        first += len;
    }
    Ok(reordered)
}

/// One optimiser step's loss and the squared error of its predictions (the same for the
/// squared loss). The divergence guard watches the error: one rare, much better sample raises
/// the exponential loss exponentially, which is not an explosion of the fit.
struct Fitted {
    loss: f64,
    squared_error: f64,
}

/// Training points, flattened over steps and samples.
struct Points {
    states: State,
    times: Tensor,
    targets: Tensor,
    weights: Tensor,
    mask: Tensor,
    /// Each point's place among the points of the whole batch (`step * batch_size + sample`),
    /// and past those of the batches before it once joined.
    index: Tensor,
    /// Points of the whole batch (of all of them once joined), on every rank together.
    global_len: usize,
}

/// Checkpoint names of replayed batches: `replay.<i>.<field>` and
/// `replay.<i>.state.<order>.<leaf>`.
const REPLAY_PREFIX: &str = "replay.";

impl Points {
    /// This batch's tensors under checkpoint names for slot `i`.
    fn named(&self, i: usize) -> Vec<(String, Tensor)> {
        let mut named = vec![
            (
                format!("{REPLAY_PREFIX}{i}.times"),
                self.times.shallow_clone(),
            ),
            (
                format!("{REPLAY_PREFIX}{i}.targets"),
                self.targets.shallow_clone(),
            ),
            (
                format!("{REPLAY_PREFIX}{i}.weights"),
                self.weights.shallow_clone(),
            ),
            (
                format!("{REPLAY_PREFIX}{i}.mask"),
                self.mask.shallow_clone(),
            ),
            (
                format!("{REPLAY_PREFIX}{i}.data_type"),
                Tensor::from_slice(self.states.data_type.as_bytes()),
            ),
        ];
        for (j, (leaf, t)) in self.states.leaves.iter().enumerate() {
            named.push((
                format!("{REPLAY_PREFIX}{i}.state.{j:03}.{leaf}"),
                t.shallow_clone(),
            ));
        }
        named
    }

    /// The replayed batches of a checkpoint, oldest first (none in checkpoints without them).
    fn from_named(tensors: &[(String, Tensor)], device: Device) -> Vec<Points> {
        let mut slots = Vec::new();
        for i in 0.. {
            let slot = format!("{REPLAY_PREFIX}{i}.");
            let find = |field: &str| {
                tensors
                    .iter()
                    .find(|(n, _)| *n == format!("{slot}{field}"))
                    .map(|(_, t)| t.to_device(device))
            };
            let (Some(times), Some(targets), Some(weights), Some(mask), Some(data_type)) = (
                find("times"),
                find("targets"),
                find("weights"),
                find("mask"),
                find("data_type"),
            ) else {
                break;
            };
            let leaf_prefix = format!("{slot}state.");
            // Leaves keep the data type's order, which the value network's input follows.
            let mut leaves: Vec<(String, (String, Tensor))> = tensors
                .iter()
                .filter_map(|(n, t)| {
                    let (order, leaf) = n.strip_prefix(&leaf_prefix)?.split_once('.')?;
                    Some((order.to_string(), (leaf.to_string(), t.to_device(device))))
                })
                .collect();
            leaves.sort_by(|a, b| a.0.cmp(&b.0));
            let leaves = leaves.into_iter().map(|(_, leaf)| leaf).collect();
            let data_type = Vec::<u8>::try_from(&data_type).unwrap_or_default();
            let len = times.size()[0];
            slots.push(Points {
                states: State::new(String::from_utf8_lossy(&data_type), leaves),
                times,
                targets,
                weights,
                mask,
                index: Tensor::arange(len, (Kind::Int64, device)),
                global_len: len as usize,
            });
        }
        slots
    }

    fn cat(parts: &[&Points]) -> Result<Points> {
        let join = |f: fn(&Points) -> &Tensor| {
            Tensor::cat(&parts.iter().map(|p| f(p)).collect::<Vec<_>>(), 0)
        };
        Ok(Points {
            states: State::cat(
                &parts
                    .iter()
                    .map(|p| p.states.shallow_clone())
                    .collect::<Vec<_>>(),
            )?,
            times: join(|p| &p.times),
            targets: join(|p| &p.targets),
            weights: join(|p| &p.weights),
            mask: join(|p| &p.mask),
            index: Tensor::cat(
                &parts
                    .iter()
                    .scan(0, |offset, p| {
                        let shifted = &p.index + *offset as i64;
                        *offset += p.global_len;
                        Some(shifted)
                    })
                    .collect::<Vec<_>>(),
                0,
            ),
            global_len: parts.iter().map(|p| p.global_len).sum(),
        })
    }

    /// The points of the whole batch, in its order, from every rank's share (on every rank).
    fn gather(&self, team: &dyn distributed::Team) -> Result<Points> {
        if team.size() == 1 {
            return Ok(Points {
                states: self.states.shallow_clone(),
                times: self.times.shallow_clone(),
                targets: self.targets.shallow_clone(),
                weights: self.weights.shallow_clone(),
                mask: self.mask.shallow_clone(),
                index: self.index.shallow_clone(),
                global_len: self.global_len,
            });
        }
        let device = self.times.device();
        let mut named = vec![
            ("index".to_string(), self.index.shallow_clone()),
            ("times".to_string(), self.times.shallow_clone()),
            ("targets".to_string(), self.targets.shallow_clone()),
            ("weights".to_string(), self.weights.shallow_clone()),
            ("mask".to_string(), self.mask.shallow_clone()),
        ];
        named.extend(
            self.states
                .leaves
                .iter()
                .map(|(n, t)| (format!("leaf.{n}"), t.shallow_clone())),
        );
        let ranks = team.gather_named(&named)?;
        let field = |i: usize| {
            Tensor::cat(
                &ranks
                    .iter()
                    .map(|r| r[i].1.to_device(device))
                    .collect::<Vec<_>>(),
                0,
            )
        };
        let leaves = (0..self.states.leaves.len())
            .map(|j| (self.states.leaves[j].0.clone(), field(5 + j)))
            .collect();
        let joined = Points {
            index: field(0),
            times: field(1),
            targets: field(2),
            weights: field(3),
            mask: field(4),
            states: State::new(self.states.data_type.clone(), leaves),
            global_len: self.global_len,
        };
        joined.subset(&joined.index.argsort(0, false))
    }

    /// The points at `rows`.
    fn subset(&self, rows: &Tensor) -> Result<Points> {
        let pick = |t: &Tensor| t.index_select(0, rows);
        Ok(Points {
            states: self.states.index_select(rows)?,
            times: pick(&self.times),
            targets: pick(&self.targets),
            weights: pick(&self.weights),
            mask: pick(&self.mask),
            index: pick(&self.index),
            global_len: self.global_len,
        })
    }

    /// This rank's share of a whole batch's points (as [`Points::gather`] or a checkpoint
    /// holds them) of `batch_size` trajectories.
    fn share(self, team: &dyn distributed::Team, batch_size: usize) -> Result<Points> {
        if !self.global_len.is_multiple_of(batch_size.max(1)) {
            bail!(
                "a replayed batch in the checkpoint has {} points, not a whole number of steps of {batch_size} trajectories",
                self.global_len
            );
        }
        if team.size() == 1 {
            return Ok(self);
        }
        let share = team.share(batch_size);
        let sample = self.index.remainder(batch_size as i64);
        let mine = sample
            .ge(share.start as i64)
            .logical_and(&sample.lt(share.end as i64));
        self.subset(&mine.nonzero().reshape([-1]))
    }
}

/// The points of one batch of trajectories, flattened over steps and samples.
struct FitBatch<'a> {
    states: &'a State,
    times: &'a Tensor,
    targets: &'a Tensor,
    weights: &'a Tensor,
    mask: &'a Tensor,
    /// Points per gradient-accumulation chunk.
    chunk: usize,
}

impl ValueMatching {
    /// The loss of the points at `indices`, with its gradient accumulated in the network.
    /// On a team, the gradients and the loss are those of the whole share, added up over the
    /// ranks; `denominator` counts its valid points on all of them.
    fn loss_and_gradient(
        &mut self,
        batch: &FitBatch<'_>,
        indices: &Tensor,
        denominator: f64,
    ) -> Result<Fitted> {
        let lambda = self.settings.reward_scale;
        self.adam.zero_grad();
        let mut loss = Tensor::zeros([], (Kind::Float, self.settings.device));
        let mut squared_error = Tensor::zeros([], (Kind::Float, self.settings.device));
        let len = indices.size()[0];
        for start in (0..len).step_by(batch.chunk) {
            let rows = indices.narrow(0, start, (batch.chunk as i64).min(len - start));
            let pick = |t: &Tensor| t.index_select(0, &rows);
            let prediction = self
                .value
                .forward(&batch.states.index_select(&rows)?, &pick(batch.times));
            let targets = pick(batch.targets);
            let per_point = self
                .settings
                .value_loss
                .per_point(&prediction, &targets, lambda);
            let weights = pick(batch.weights) * pick(batch.mask);
            let part = (per_point * &weights).sum(Kind::Float) / denominator;
            part.backward();
            loss += part.detach();
            squared_error +=
                ((prediction.detach() - targets).square() * weights).sum(Kind::Float) / denominator;
        }
        let mut sums = [loss.double_value(&[]), squared_error.double_value(&[])];
        if self.team.size() > 1 {
            if len == 0 {
                self.adam.define_gradients();
            }
            self.team.sum_tensors(&mut self.adam.gradients(), &mut sums);
        }
        Ok(Fitted {
            loss: sums[0],
            squared_error: sums[1],
        })
    }
}

impl ValueMatching {
    /// Samples a batch with the current control, then takes one step on the loss.
    /// `stop_after_step` is called after every sampling step; returning `true` abandons the
    /// iteration with [`crate::sde::Interrupted`].
    pub fn iteration(
        &mut self,
        model: &mut Model,
        reward: &mut Reward,
        iteration: usize,
        stop_after_step: &dyn Fn(usize) -> bool,
    ) -> Result<IterationStats> {
        let start = Instant::now();
        let request = SampleRequest {
            n: self.settings.batch_size,
            seed: derive_seed(self.settings.seed, "train", iteration as u64),
            control: self.control(),
            record: true,
            device: self.settings.device,
            stop_after_step,
        };
        // Training batches end at the base model's endpoint estimate: the tilted one moves the
        // sample by the value's own gradient, and a fit that saw rewards of moved samples could
        // learn to move them further for nothing (the shift has no running cost).
        let options = SamplerOptions {
            final_step: FinalStep::Base,
            ..self.settings.sampler
        };
        let part = self.team.share(self.settings.batch_size);
        let sampled = sample_part(model, Some(reward), &options, &request, part);
        // Sampling and scoring are each rank's own work: the ranks agree on its outcome
        // before they exchange anything else.
        let trajectory = self.team.agree(sampled)?;
        let control_cost = self
            .team
            .gather_cat(&trajectory.control_cost())?
            .mean(Kind::Float)
            .double_value(&[]);
        let reward = self.team.gather_cat(&trajectory.scores.reward)?;
        let valid = self.team.gather_cat(&trajectory.scores.valid)?;
        self.guard.check_control(
            iteration,
            control_cost,
            reward_range(&reward, &valid),
            self.settings.reward_scale,
        )?;
        let (loss, grad_norm) = self.fit(&trajectory, iteration)?;
        self.update_average(iteration);
        let stats = RewardStats::of(&reward, &valid);
        Ok(IterationStats {
            iteration,
            loss,
            reward_mean: stats.reward_mean,
            reward_std: stats.reward_std,
            valid_fraction: stats.valid_fraction,
            control_cost,
            grad_norm,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The control that steers sampling now: the averaged weights' when there are any.
    pub fn control(&self) -> Option<Control<'_>> {
        Some(Control {
            value: self.averaged.as_deref().unwrap_or(self.value.as_ref()),
            scale: self.settings.reward_scale,
        })
    }

    /// Everything needed to resume, as named tensors: the value network's weights
    /// (`value.*`), the optimiser's state and the replayed batches, whole (on a team, every
    /// rank must call it: the ranks' shares of the batches are gathered).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut named = value::named_weights(self.value.as_ref(), value::PREFIX);
        if let Some(averaged) = &self.averaged {
            named.extend(value::named_weights(
                averaged.as_ref(),
                value::AVERAGE_PREFIX,
            ));
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.extend(self.adam.state());
        for (i, points) in self.replayed.iter().enumerate() {
            named.extend(points.gather(self.team.as_ref())?.named(i));
        }
        if let Some(offset) = self.target_offset {
            named.push((OFFSET_KEY.to_string(), Tensor::from_slice(&[offset])));
        }
        Ok(named)
    }

    /// Restores what [`ValueMatching::state`] saved.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>) -> Result<()> {
        value::load(self.value.as_mut(), &tensors, value::PREFIX)?;
        if let Some(averaged) = self.averaged.as_mut() {
            if value::has_average(&tensors) {
                value::load(averaged.as_mut(), &tensors, value::AVERAGE_PREFIX)?;
            } else {
                // A checkpoint of a run without an average: it starts from the weights.
                value::average_into(averaged.as_mut(), self.value.as_ref(), 0.0);
            }
        }
        self.adam.load_state(&tensors)?;
        self.replayed = Points::from_named(&tensors, self.settings.device)
            .into_iter()
            .map(|points| points.share(self.team.as_ref(), self.settings.batch_size))
            .collect::<Result<_>>()?;
        self.target_offset = tensors
            .iter()
            .find(|(n, _)| n == OFFSET_KEY)
            .map(|(_, t)| t.double_value(&[0]));
        Ok(())
    }
}

/// The smallest and largest of the rewards `valid` marks (0, 0 when none is valid).
fn reward_range(reward: &Tensor, valid: &Tensor) -> (f64, f64) {
    if valid.sum(Kind::Int64).int64_value(&[]) == 0 {
        return (0.0, 0.0);
    }
    let reward = reward.masked_select(valid);
    (
        reward.min().double_value(&[]),
        reward.max().double_value(&[]),
    )
}

/// The mean of the first step's targets `c` (`[n]`, units of `lambda`) over the valid samples;
/// 0 when none is valid.
fn mean_target(c: &Tensor, valid: &Tensor) -> f64 {
    let c = c.masked_select(valid).to_kind(Kind::Double);
    if c.size()[0] == 0 {
        return 0.0;
    }
    c.mean(Kind::Double).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean loss and mean squared error of predictions `v` against targets `c`.
    fn loss_and_error(v: &Tensor, c: &Tensor, lambda: f64) -> (f64, f64) {
        let loss = ValueLoss::Exponential
            .per_point(v, c, lambda)
            .mean(Kind::Float);
        let error = (v - c).square().mean(Kind::Float);
        (loss.double_value(&[]), error.double_value(&[]))
    }

    /// The digits demo with log-probability rewards: the value has settled near targets of 13
    /// when a share brings one sample 13 units better than the rest. The exponential loss
    /// jumps millions of times over (its linear continuation past `z = 20`), the squared error
    /// a few times; only the second is a fair sign of divergence.
    #[test]
    fn one_much_better_sample_is_news_not_a_divergence() {
        let lambda = 5.0;
        let options = (Kind::Float, Device::Cpu);
        let prediction = Tensor::full([200], 13.0, options);
        let spread = Tensor::from_slice(&[0.5f32, -0.5]).repeat([100]);
        let settled = &prediction + &spread;
        let news = settled.copy();
        let _ = news.get(0).fill_(0.0);
        let (settled_loss, settled_error) = loss_and_error(&prediction, &settled, lambda);
        let (news_loss, news_error) = loss_and_error(&prediction, &news, lambda);
        assert!(news_loss > 1e6 * settled_loss, "{news_loss} {settled_loss}");
        assert!(
            news_error < 10.0 * settled_error,
            "{news_error} {settled_error}"
        );

        let variance = |t: &Tensor| t.var(false).double_value(&[]);
        let mut by_error = DivergenceGuard::default();
        let mut by_loss = DivergenceGuard::default();
        for i in 0..20 {
            by_error
                .check_error(i, settled_error, variance(&settled))
                .unwrap();
            by_loss
                .check_error(i, settled_loss, variance(&settled))
                .unwrap();
        }
        by_error
            .check_error(20, news_error, variance(&news))
            .unwrap();
        assert!(by_loss.check_error(20, news_loss, variance(&news)).is_err());
    }
}
