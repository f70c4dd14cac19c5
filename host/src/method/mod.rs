//! Methods that adapt a base model to a reward. Value Matching is the first; classifier
//! guidance or best-of-N baselines would implement the same trait.

pub mod adam;
pub mod value_matching;

use anyhow::Result;

use crate::env::Control;
use crate::model::Model;
use crate::reward::Reward;

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

/// A way of adapting a base model to a reward, one iteration at a time.
pub trait Method {
    /// Short name (`value-matching`).
    fn name(&self) -> &'static str;
    /// Samples with the current control, then improves it.
    fn iteration(
        &mut self,
        model: &mut Model,
        reward: &mut Reward,
        iteration: usize,
        on_step: &dyn Fn(usize) -> bool,
    ) -> Result<IterationStats>;
    /// The control that steers sampling now (none means the base model).
    fn control(&self) -> Option<Control<'_>>;
    /// Everything needed to resume: named tensors.
    fn state(&self) -> Vec<(String, tch::Tensor)>;
    /// Restores what [`Method::state`] saved.
    fn load_state(&mut self, tensors: Vec<(String, tch::Tensor)>) -> Result<()>;
}
