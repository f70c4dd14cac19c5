//! Value Matching: sample with the current control (no gradients), then regress the value
//! network on the cost-to-go (docs/mathematics.md, section 7).

pub mod adam;
mod guard;
mod trainer;

pub use guard::{Diverged, DivergenceGuard};
pub use trainer::{
    loss_weights, LrSchedule, ValueLoss, ValueMatching, VmSettings, AUTO_IMAGE_CHUNK,
};

/// Statistics of one training iteration.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IterationStats {
    /// Iteration number (0-based).
    pub iteration: usize,
    /// Training loss.
    pub loss: f64,
    /// Mean reward of the valid samples.
    pub reward_mean: f64,
    /// Standard deviation of the valid samples' rewards.
    pub reward_std: f64,
    /// Share of samples the reward could score.
    pub valid_fraction: f64,
    /// Mean control cost `sum_k |u_k|^2 / 2 dt`.
    pub control_cost: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall-clock seconds of the iteration.
    pub seconds: f64,
}
