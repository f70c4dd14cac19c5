//! `summary.json`: what a run achieved, from what it holds in memory.

use serde::Serialize;

use super::samples::EvalSamples;
use crate::optimum::{tilted_optimum, wasserstein1, Weighted};
use crate::reward::RewardStats;

/// Figures for 1-d runs, against the optimum estimated from base samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OptimumStats {
    /// `E_p*[r]`.
    pub reward_mean: f64,
    /// `W1` between the base samples and `p*`.
    pub w1_before: f64,
    /// `W1` between the adapted samples and `p*`.
    pub w1_after: f64,
    /// Effective size of the weighted base sample the optimum is estimated from.
    pub effective_sample_size: f64,
    /// How the optimum was estimated.
    pub method: &'static str,
}

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
    /// 1-d runs: comparison with the optimum.
    pub optimum: Option<OptimumStats>,
    /// Loss of the last iteration.
    pub final_loss: Option<f64>,
    /// Mean seconds per iteration in this session.
    pub seconds_per_iteration: Option<f64>,
    /// Wall-clock seconds of this session.
    pub seconds: f64,
    /// Peak resident memory of this session in MiB (where the system reports it).
    pub peak_rss_mib: Option<f64>,
}

/// The optimum `p* ~ p_base exp(lambda r)` estimated by weighting the base samples, for 1-d
/// runs: its statistics, and the weighted sample itself for the figures.
pub fn optimum_estimate(
    before: Option<&EvalSamples>,
    after: Option<&EvalSamples>,
    lambda: f64,
) -> Option<(OptimumStats, Weighted)> {
    let before = before.filter(|b| b.is_1d())?;
    let (optimum, reward_mean) =
        tilted_optimum(&before.values, &before.reward, &before.valid, lambda);
    let w1_before = wasserstein1(&Weighted::uniform(&before.values), &optimum);
    let w1_after = after.map_or(f64::NAN, |a| {
        wasserstein1(&Weighted::uniform(&a.values), &optimum)
    });
    let stats = OptimumStats {
        reward_mean,
        w1_before,
        w1_after,
        effective_sample_size: optimum.effective_size(),
        method: "base-model samples weighted by exp(reward_scale * reward)",
    };
    Some((stats, optimum))
}

/// The statistics of [`optimum_estimate`].
pub fn optimum(
    before: Option<&EvalSamples>,
    after: Option<&EvalSamples>,
    lambda: f64,
) -> Option<OptimumStats> {
    optimum_estimate(before, after, lambda).map(|(stats, _)| stats)
}
