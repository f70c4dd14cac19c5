//! The cost of isolation: the same reward called in the host's process and in its sandboxed
//! worker on the same batch, and what the difference is worth against the reward's own time
//! and against a Value Matching iteration.

use std::time::Instant;

use anyhow::Result;
use flowgym_plugin_api::{Dim, EntryMeta};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::median;
use crate::isolate::process_cpu_seconds;
use crate::kwargs::HostKwargs;
use crate::reward::Reward;
use crate::state::State;

/// Figures of one reward at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct IsolationFigures {
    /// Reward id.
    pub reward: String,
    /// Samples per call.
    pub batch_size: usize,
    /// Median seconds per call in the host's process.
    pub in_process_seconds: f64,
    /// Median seconds per call in the worker (batch copied in, rewards copied out).
    pub isolated_seconds: f64,
    /// Median over pairs of calls of `isolated - in_process`.
    pub added_seconds: f64,
    /// `added / in_process`: the goal is under 10% at batch 16 and more.
    pub added_share_of_reward: f64,
    /// Median over pairs of calls of the CPU seconds the isolated call used (host and worker)
    /// beyond the in-process one: the work isolation adds, without the waits for a busy CPU
    /// that the wall-clock figure includes on a loaded machine.
    pub added_cpu_seconds: f64,
    /// `added_cpu / in_process`.
    pub added_cpu_share_of_reward: f64,
    /// Seconds of one Value Matching iteration at this batch, when known: `steps` model
    /// evaluations and the reward call.
    pub iteration_seconds: Option<f64>,
    /// `added / iteration`.
    pub added_share_of_iteration: Option<f64>,
}

/// A batch the reward accepts, drawn at random: every `Any` extent 32, values uniform in the
/// declared range (standard normal without one).
pub fn batch_for(meta: &EntryMeta, n: usize) -> State {
    let leaves = meta
        .leaves
        .iter()
        .map(|leaf| {
            let shape: Vec<i64> = leaf
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Batch => n as i64,
                    Dim::Fixed(extent) => *extent as i64,
                    Dim::Any => 32,
                })
                .collect();
            let values = match leaf.range.into_option() {
                Some(range) => {
                    Tensor::rand(&shape, (Kind::Float, Device::Cpu)) * (range.1 - range.0) + range.0
                }
                None => Tensor::randn(&shape, (Kind::Float, Device::Cpu)),
            };
            (leaf.name.to_string(), values)
        })
        .collect();
    State::new(meta.data_type.name.as_str(), leaves)
}

/// Seconds of one call: wall-clock, and CPU (the host's, plus the worker's when there is one).
fn timed_call(reward: &mut Reward, sample: &State, latent: &State) -> Result<(f64, f64)> {
    let kwargs = HostKwargs::default();
    let worker_before = reward.worker_cpu_seconds();
    let cpu = process_cpu_seconds();
    let start = Instant::now();
    reward.score(sample, latent, &kwargs, Device::Cpu)?;
    let wall = start.elapsed().as_secs_f64();
    let mut cpu = process_cpu_seconds() - cpu;
    if let (Some(before), Some(after)) = (worker_before, reward.worker_cpu_seconds()) {
        cpu += after - before;
    }
    Ok((wall, cpu))
}

/// Per call of the two rewards on the same batch (after two warm-up calls each): median
/// wall-clock seconds of each, and the medians of the paired differences in wall-clock and CPU
/// seconds. The calls alternate, so that both see the same load on the machine.
fn per_call(
    in_process: &mut Reward,
    isolated: &mut Reward,
    sample: &State,
    latent: &State,
    calls: usize,
) -> Result<[f64; 4]> {
    let (mut walls, mut isolated_walls, mut added, mut added_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for call in 0..calls + 2 {
        let (wall, cpu) = timed_call(in_process, sample, latent)?;
        let (isolated_wall, isolated_cpu) = timed_call(isolated, sample, latent)?;
        if call >= 2 {
            walls.push(wall);
            isolated_walls.push(isolated_wall);
            added.push(isolated_wall - wall);
            added_cpu.push(isolated_cpu - cpu);
        }
    }
    Ok([
        median(walls),
        median(isolated_walls),
        median(added),
        median(added_cpu),
    ])
}

/// Times `calls` calls (after two warm-up ones) of both forms of the reward on one random
/// batch of `batch_size`; `model_seconds_per_iteration` is the model's share of an iteration
/// at this batch, when known.
pub fn isolation(
    in_process: &mut Reward,
    isolated: &mut Reward,
    meta: &EntryMeta,
    batch_size: usize,
    calls: usize,
    model_seconds_per_iteration: Option<f64>,
) -> Result<IsolationFigures> {
    tch::manual_seed(0);
    // As in a run with a model that has no `postprocess` (the toy's and the pixel-space
    // image models): the latent is the sample itself.
    let sample = batch_for(meta, batch_size);
    let latent = sample.shallow_clone();
    let [in_process_seconds, isolated_seconds, added_seconds, added_cpu_seconds] =
        per_call(in_process, isolated, &sample, &latent, calls)?;
    let iteration_seconds = model_seconds_per_iteration.map(|m| m + in_process_seconds);
    Ok(IsolationFigures {
        reward: meta.id.to_string(),
        batch_size,
        in_process_seconds,
        isolated_seconds,
        added_seconds,
        added_share_of_reward: added_seconds / in_process_seconds,
        added_cpu_seconds,
        added_cpu_share_of_reward: added_cpu_seconds / in_process_seconds,
        iteration_seconds,
        added_share_of_iteration: iteration_seconds.map(|i| added_seconds / i),
    })
}
