//! Base models: the frozen flow or diffusion model that Value Matching steers.
//!
//! A plugin implements [`BaseModel`] in plain Rust; the registration macro wraps it into the
//! FFI-safe [`FfiBaseModel`] trait object, catching panics on the plugin side. Every tensor that
//! crosses the boundary is passed by value (a [`ManagedTensor`] owns its memory through the
//! DLPack deleter), so no view can outlive the memory it reads.

use abi_stable::sabi_trait;
use abi_stable::std_types::{RBox, ROption, RResult, RString, RVec, Tuple2};
use abi_stable::StableAbi;

use crate::data::Batch;
use crate::error::{guard, PluginError, PluginResult};
use crate::kwargs::Kwargs;
use crate::tensor::{DLDevice, ManagedTensor};

/// What the model's network predicts.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputType {
    /// The noise `x_0` of `x_t = alpha(t) x_1 + beta(t) x_0`.
    Epsilon,
    /// The clean data `x_1`.
    Endpoint,
    /// The velocity `alpha'(t) x_1 + beta'(t) x_0`.
    Velocity,
    /// The score `grad log p_t(x)`.
    Score,
}

impl OutputType {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            OutputType::Epsilon => "epsilon",
            OutputType::Endpoint => "endpoint",
            OutputType::Velocity => "velocity",
            OutputType::Score => "score",
        }
    }
}

/// The description of a model's noise schedule, `x_t = alpha(t) x_1 + beta(t) x_0` with `t = 0`
/// noise and `t = 1` data: the host builds its interpolant (and the SDE) from it.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub enum ScheduleSpec {
    /// `alpha = t`, `beta = 1 - t`.
    OptimalTransport,
    /// `alpha = 1 - cos^2(pi/2 t^nu)`, `beta = 1 - alpha`.
    Cosine {
        /// Exponent of `t`.
        nu: f64,
    },
    /// A discrete-time diffusion with cumulative products `alpha_bar[0..=K]` (index 0 the
    /// cleanest): `alpha = sqrt(alpha_bar[k])`, `beta = sqrt(1 - alpha_bar[k])`, with
    /// `k = round((1 - t) K)`. The model's `forward` receives `k` (as a float), not `t`.
    DiscreteDiffusion {
        /// `alpha_bar[k]` for `k = 0..=K`.
        alpha_bar: RVec<f64>,
    },
    /// Any other schedule, tabulated on an increasing grid of `t` and linearly interpolated.
    Tabulated {
        /// Increasing times in `[0, 1]`.
        t: RVec<f64>,
        /// `alpha(t)` on the grid.
        alpha: RVec<f64>,
        /// `beta(t)` on the grid.
        beta: RVec<f64>,
        /// `alpha'(t)` on the grid.
        alpha_dot: RVec<f64>,
        /// `beta'(t)` on the grid.
        beta_dot: RVec<f64>,
    },
}

/// Where and how an entry is constructed.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct ConstructContext {
    /// The device the host computes on; put weights and outputs there.
    pub device: DLDevice,
    /// Directories the host suggests for weights (from `--weights`), in order of preference.
    pub weight_dirs: RVec<RString>,
}

impl ConstructContext {
    /// On the CPU, with no weight directories.
    pub fn cpu() -> Self {
        Self {
            device: DLDevice::CPU,
            weight_dirs: RVec::new(),
        }
    }
}

/// A base model, as a plugin implements it.
///
/// Samples are [`Batch`]es whose floating leaves evolve from noise (`t = 0`) to data (`t = 1`).
///
/// # What the host passes
///
/// - **Calls** come from one thread at a time (the host never calls one instance
///   concurrently), in this order per batch: `sample_p0`, `preprocess`, then `forward` once
///   per sampling step with `t` increasing, then `postprocess`. A libtorch plugin computes with
///   the host's libtorch threads.
/// - **Tensors** arrive on the device the host computes on (the construction context's
///   device), with the leaves the entry declares; floating leaves are `float32`. Return the
///   same leaves, on the same device, in the same dtypes.
/// - **Seeds.** `sample_p0` gets a seed for every call: at start-up one call with `n = 2` and
///   seed 0 (the host learns the shapes), then one per training batch (a different seed per
///   iteration, derived from the run's seed), and one for the samples before training and after
///   it (the same seed both times, so that both start from the same noise). Large requests
///   are split into chunks, each with a seed of its own. Plugins that use libtorch may draw
///   from its global generator, which the host seeds before every call; others must draw from
///   their own generator seeded with `seed`, so that runs are reproducible.
pub trait BaseModel: Send {
    /// What `forward` predicts.
    fn output_type(&self) -> OutputType;

    /// The description of the noise schedule this model was trained on.
    fn schedule(&self) -> ScheduleSpec;

    /// `n` samples of the source distribution (`t = 0`), with the keyword arguments that go
    /// with each of them (prompts, say, chosen from the model's own arguments; empty
    /// [`Kwargs`] when there are none). They follow their samples through every later call.
    fn sample_p0(&mut self, n: usize, seed: u64) -> PluginResult<(Batch, Kwargs)>;

    /// Work done once per batch before sampling (encoding prompts, say): returns the keyword
    /// arguments `forward` will receive. The default passes them through.
    fn preprocess(&mut self, x: Batch, kwargs: Kwargs) -> PluginResult<Kwargs> {
        drop(x);
        Ok(kwargs)
    }

    /// The network's prediction at `x` and time `t`. `t` is a `float32` tensor of shape `[n]`
    /// on the samples' device, every element the same: the sampler's time in `[t0, 1]` for a
    /// continuous schedule, and for a discrete-diffusion schedule of `K + 1` steps the step
    /// index `k = round((1 - t) K)` as a float (`0` the cleanest), as diffusers' UNets take
    /// it. Returns a batch with the floating leaves of `x`, the prediction of the
    /// [`output_type`](BaseModel::output_type) for each.
    fn forward(&mut self, x: Batch, t: ManagedTensor, kwargs: Kwargs) -> PluginResult<Batch>;

    /// Maps final states to samples a reward reads (decoding latents to pixels, say).
    /// `None`, the default, means the states are the samples.
    fn postprocess(&mut self, x: Batch, kwargs: Kwargs) -> PluginResult<Option<Batch>> {
        drop((x, kwargs));
        Ok(None)
    }
}

/// FFI-safe form of [`BaseModel`]; built by the registration macro, called by the host.
#[sabi_trait]
pub trait FfiBaseModel: Send {
    /// See [`BaseModel::output_type`].
    fn output_type(&self) -> OutputType;
    /// See [`BaseModel::schedule`].
    fn schedule(&self) -> ScheduleSpec;
    /// See [`BaseModel::sample_p0`].
    fn sample_p0(&mut self, n: u64, seed: u64) -> RResult<Tuple2<Batch, Kwargs>, PluginError>;
    /// See [`BaseModel::preprocess`].
    fn preprocess(&mut self, x: Batch, kwargs: Kwargs) -> RResult<Kwargs, PluginError>;
    /// See [`BaseModel::forward`].
    fn forward(
        &mut self,
        x: Batch,
        t: ManagedTensor,
        kwargs: Kwargs,
    ) -> RResult<Batch, PluginError>;
    /// See [`BaseModel::postprocess`].
    #[sabi(last_prefix_field)]
    fn postprocess(&mut self, x: Batch, kwargs: Kwargs) -> RResult<ROption<Batch>, PluginError>;
}

/// A boxed [`FfiBaseModel`] trait object, as the host holds it.
pub type BaseModelBox = FfiBaseModel_TO<'static, RBox<()>>;

/// Wraps a plugin's [`BaseModel`] for the host, catching panics (the host names the entry in
/// its errors).
pub struct BaseModelAdapter {
    id: String,
    inner: Box<dyn BaseModel>,
}

impl BaseModelAdapter {
    /// Wraps `inner`, registered as `id`.
    pub fn new(id: &str, inner: Box<dyn BaseModel>) -> Self {
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
    pub fn into_box(self) -> BaseModelBox {
        FfiBaseModel_TO::from_value(self, abi_stable::sabi_trait::TD_Opaque)
    }
}

impl FfiBaseModel for BaseModelAdapter {
    fn output_type(&self) -> OutputType {
        self.inner.output_type()
    }

    fn schedule(&self) -> ScheduleSpec {
        self.inner.schedule()
    }

    fn sample_p0(&mut self, n: u64, seed: u64) -> RResult<Tuple2<Batch, Kwargs>, PluginError> {
        guard("the call", || {
            self.inner
                .sample_p0(n as usize, seed)
                .map(|(x, kw)| Tuple2(x, kw))
        })
    }

    fn preprocess(&mut self, x: Batch, kwargs: Kwargs) -> RResult<Kwargs, PluginError> {
        guard("the call", || self.inner.preprocess(x, kwargs))
    }

    fn forward(
        &mut self,
        x: Batch,
        t: ManagedTensor,
        kwargs: Kwargs,
    ) -> RResult<Batch, PluginError> {
        guard("the call", || self.inner.forward(x, t, kwargs))
    }

    fn postprocess(&mut self, x: Batch, kwargs: Kwargs) -> RResult<ROption<Batch>, PluginError> {
        guard("the call", || {
            self.inner.postprocess(x, kwargs).map(ROption::from)
        })
    }
}
