//! Rewards: black-box scores of final samples.
//!
//! A plugin implements [`Reward`] in plain Rust; the registration macro wraps it into the
//! FFI-safe [`FfiReward`] trait object, catching panics on the plugin side. What a reward can do
//! beyond scoring is declared in its [`Capabilities`], never assumed by the host.

use abi_stable::sabi_trait;
use abi_stable::std_types::{RBox, ROption, RResult};
use abi_stable::StableAbi;

use crate::data::Batch;
use crate::error::{guard, PluginError, PluginResult};
use crate::kwargs::Kwargs;
use crate::tensor::ManagedTensor;

/// The scores of a batch.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct RewardOutput {
    /// Shape `[n]`, floating point: the reward of each sample.
    pub reward: ManagedTensor,
    /// Shape `[n]`, bool: whether each sample could be scored. `None` means all could.
    /// Invalid samples are left out of training and statistics.
    pub valid: ROption<ManagedTensor>,
}

impl RewardOutput {
    /// Rewards for a batch in which every sample is valid.
    pub fn all_valid(reward: ManagedTensor) -> Self {
        Self {
            reward,
            valid: ROption::RNone,
        }
    }
}

/// What a reward or a base model declares about itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Rewards: the largest batch one call accepts (0: no limit); the host splits larger
    /// batches. Models: unused.
    pub max_batch: u64,
    /// Whether the entry reads and writes tensors only in CPU memory (true for plugins that do
    /// not use a GPU library). For a reward the host moves samples to the CPU before each call;
    /// a model is constructed on the CPU ([`crate::ConstructContext::device`]) and under
    /// `--device cuda` the host moves every tensor to the CPU before each call and the results
    /// back to the device after it, so a plain-Rust model runs under any host.
    pub cpu_only: bool,
}

impl Capabilities {
    /// No batch limit, on any device: a model's default.
    pub fn any_device() -> Self {
        Self {
            max_batch: 0,
            cpu_only: false,
        }
    }
}

impl Default for Capabilities {
    /// No batch limit, CPU only: what a plain-Rust reward can do.
    fn default() -> Self {
        Self {
            max_batch: 0,
            cpu_only: true,
        }
    }
}

/// A reward, as a plugin implements it.
pub trait Reward: Send {
    /// Scores final samples. `sample` is what the model's postprocess produced, `latent` the
    /// final state before it, `kwargs` the per-sample keyword arguments (prompts, say).
    fn reward(
        &mut self,
        sample: Batch,
        latent: Batch,
        kwargs: Kwargs,
    ) -> PluginResult<RewardOutput>;
}

/// FFI-safe form of [`Reward`]; built by the registration macro, called by the host.
#[sabi_trait]
pub trait FfiReward: Send {
    /// See [`Reward::reward`]. The methods are those of 1.0 for all of 1.x (see the crate
    /// docs on compatibility).
    #[sabi(last_prefix_field)]
    fn reward(
        &mut self,
        sample: Batch,
        latent: Batch,
        kwargs: Kwargs,
    ) -> RResult<RewardOutput, PluginError>;
}

/// A boxed [`FfiReward`] trait object, as the host holds it.
pub type RewardBox = FfiReward_TO<'static, RBox<()>>;

/// Wraps a plugin's [`Reward`] for the host, catching panics (the host names the entry in
/// its errors).
pub struct RewardAdapter {
    id: String,
    inner: Box<dyn Reward>,
}

impl RewardAdapter {
    /// Wraps `inner`, registered as `id`.
    pub fn new(id: &str, inner: Box<dyn Reward>) -> Self {
        Self {
            id: id.to_string(),
            inner,
        }
    }

    /// The entry id it was registered as.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The FFI trait object.
    pub fn into_box(self) -> RewardBox {
        FfiReward_TO::from_value(self, abi_stable::sabi_trait::TD_Opaque)
    }
}

impl FfiReward for RewardAdapter {
    fn reward(
        &mut self,
        sample: Batch,
        latent: Batch,
        kwargs: Kwargs,
    ) -> RResult<RewardOutput, PluginError> {
        guard("the call", || self.inner.reward(sample, latent, kwargs))
    }
}
