//! `summary.json`: what a run achieved, from what it holds in memory.

use serde::Serialize;

use super::samples::EvalSamples;
use crate::optimum::tilt;
use crate::quality::{sliced_wasserstein1_weighted, Weighted};
use crate::reward::RewardStats;

/// The optimum estimated from the base model's samples, and how close the samples before and
/// after training are to it.
#[derive(Debug, Clone, Serialize)]
pub struct OptimumStats {
    /// `E_p*[r]`, by self-normalised importance weights `exp(lambda r)` on the base samples.
    pub reward_mean: f64,
    /// Effective size of the weighted base sample (Kish): the estimate is trustworthy when
    /// this is in the hundreds or more.
    pub effective_sample_size: f64,
    /// The distance to `p*` (for flat vectors only): `W1` in one dimension, the sliced `W1`
    /// over random directions otherwise.
    pub distance: Option<&'static str>,
    /// The base samples' distance to `p*`.
    pub distance_before: Option<f64>,
    /// The adapted samples' distance to `p*`.
    pub distance_after: Option<f64>,
    /// How the optimum was estimated.
    pub method: &'static str,
}

/// Random directions of the sliced distance.
const PROJECTIONS: usize = 64;

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Model id.
    pub model: String,
    /// Reward id.
    pub reward: String,
    /// Reward scale.
    pub reward_scale: f64,
    /// Iterations finished.
    pub iterations_done: usize,
    /// Iterations asked for.
    pub iterations: usize,
    /// The value network.
    pub value_network: String,
    /// Where it ran.
    pub device: String,
    /// Base model samples.
    pub before: Option<RewardStats>,
    /// Adapted samples.
    pub after: Option<RewardStats>,
    /// The optimum estimated from the base samples, and the distances to it.
    pub optimum: Option<OptimumStats>,
    /// The evaluation reward's statistics before and after (`eval_reward_args`), if any.
    pub evaluation: Option<super::evaluation::EvaluationSummary>,
    /// Loss of the last iteration.
    pub final_loss: Option<f64>,
    /// Mean seconds per iteration in this session.
    pub seconds_per_iteration: Option<f64>,
    /// Wall-clock seconds of this session.
    pub seconds: f64,
    /// Peak resident memory of this session in MiB (where the system reports it).
    pub peak_rss_mib: Option<f64>,
    /// How the ranks of a data-parallel run shared the work (absent for one process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_parallel: Option<DataParallel>,
}

/// The ranks of a data-parallel session and what exchanging cost them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataParallel {
    /// Number of ranks.
    pub ranks: usize,
    /// Rank 0's seconds per training iteration in exchanges with the other ranks (all-reduce
    /// of gradients and statistics, gathers), waiting for the slowest rank included.
    pub exchange_seconds_per_iteration: f64,
    /// The same as a share of rank 0's seconds per iteration.
    pub exchange_share: f64,
}

/// The optimum `p* ~ p_base exp(lambda r)` estimated by weighting the base samples, for any
/// data: its statistics, and for 1-d runs the weighted sample itself for the figures.
pub fn optimum_estimate(
    before: Option<&EvalSamples>,
    after: Option<&EvalSamples>,
    lambda: f64,
) -> Option<(OptimumStats, Option<Weighted>)> {
    let before = before?;
    // A custom layout's first leaf holds the elements of all samples (points, atoms); what the
    // sampler cannot change in them (how many there are) is tilted by the reweighting too, so
    // the estimate would not be the optimum the control can reach.
    if before
        .shape
        .first()
        .is_none_or(|&rows| rows as usize != before.reward.len())
    {
        return None;
    }
    let tilt = tilt(&before.reward, &before.valid, lambda);
    if tilt.indices.is_empty() {
        return None;
    }
    let flat = before.is_flat();
    let distance_to_optimum = |samples: &EvalSamples| -> f64 {
        let optimum_points = before.points();
        let optimum_points: Vec<Vec<f64>> = tilt
            .indices
            .iter()
            .map(|&i| optimum_points[i].clone())
            .collect();
        let points = samples.points();
        let uniform = vec![1.0 / points.len() as f64; points.len()];
        sliced_wasserstein1_weighted(
            (&points, &uniform),
            (&optimum_points, &tilt.weights),
            if before.is_1d() { 1 } else { PROJECTIONS },
            0,
        )
    };
    let stats = OptimumStats {
        reward_mean: tilt.reward_mean,
        effective_sample_size: tilt.effective_size(),
        distance: flat.then_some(if before.is_1d() { "W1" } else { "sliced W1" }),
        distance_before: flat.then(|| distance_to_optimum(before)),
        distance_after: after.filter(|_| flat).map(distance_to_optimum),
        method: "base-model samples weighted by exp(reward_scale * reward)",
    };
    let weighted = before.is_1d().then(|| {
        Weighted::new(
            tilt.indices
                .iter()
                .zip(&tilt.weights)
                .map(|(&i, &w)| (before.values[i], w))
                .collect(),
        )
    });
    Some((stats, weighted))
}

/// The statistics of [`optimum_estimate`].
pub fn optimum(
    before: Option<&EvalSamples>,
    after: Option<&EvalSamples>,
    lambda: f64,
) -> Option<OptimumStats> {
    optimum_estimate(before, after, lambda).map(|(stats, _)| stats)
}
