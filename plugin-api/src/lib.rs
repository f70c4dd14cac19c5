//! # flowgym-plugin-api
//!
//! The stable-ABI contract between the Flow Gym host and the plugin files (`.so` / `.dll` /
//! `.dylib`) that provide base models and rewards. It does not link libtorch: a reward can be
//! written in plain Rust, built in seconds and run under any host of a compatible version.
//!
//! A plugin crate is a `cdylib` that depends on this crate and on `abi_stable`, registers its
//! entries and exports its root module:
//!
//! ```ignore
//! use flowgym_plugin_api::*;
//!
//! arguments! {
//!     /// Arguments of `1d/step`.
//!     pub struct StepArgs {
//!         /// Where the step is.
//!         threshold: f64 = 0.0;
//!     }
//! }
//!
//! struct Step(StepArgs);
//!
//! impl Reward for Step {
//!     fn reward(&mut self, sample: Batch, _latent: Batch, _kwargs: Kwargs) -> PluginResult<RewardOutput> {
//!         let x = sample.require("x")?.to_vec::<f32>()?;
//!         let r: Vec<f32> = x.iter().map(|&v| if f64::from(v) > self.0.threshold { 1.0 } else { 0.0 }).collect();
//!         Ok(RewardOutput::all_valid(ManagedTensor::from_slice(&r)))
//!     }
//! }
//!
//! register_reward! {
//!     id: "1d/step",
//!     version: "1.0.0",
//!     data_type: ("1d", "1.0.0"),
//!     description: "1 right of the threshold, else 0",
//!     arguments: StepArgs,
//!     leaves: vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Fixed(1)])],
//!     construct: |args: StepArgs, _ctx: &ConstructContext| Ok::<_, PluginError>(Step(args)),
//! }
//!
//! export_plugin!();
//! ```
//!
//! The pieces:
//! - [`tensor`]: [`ManagedTensor`], an owning handle in the DLPack layout.
//! - [`data`]: [`Batch`]es of named leaves, data types and their declared [`LeafSpec`]s.
//! - [`kwargs`]: per-batch keyword arguments ([`Kwargs`]).
//! - [`args`]: JSON entry arguments and the [`arguments!`] macro.
//! - [`model`] and [`reward`]: the [`BaseModel`] and [`Reward`] traits.
//! - [`entry`]: metadata and the registration macros.
//! - [`root`]: the root module ([`PluginModule`]) and [`export_plugin!`].
//! - [`error`]: [`PluginError`] and the panic guard.
//! - `tch_interop` (feature `tch`): zero-copy conversions to and from `tch::Tensor`.

#![warn(missing_docs)]
// `#[sabi_trait]` expands to impls inside a generated const block.
#![allow(non_local_definitions)]

pub mod args;
pub mod data;
pub mod entry;
pub mod error;
pub mod kwargs;
pub mod model;
pub mod reward;
pub mod root;
#[cfg(feature = "tch")]
pub mod tch_interop;
pub mod tensor;

pub use abi_stable;
pub use inventory;
pub use serde_json;

pub use args::{ArgSpec, ArgsError, Arguments, NoArguments};
pub use data::{
    standard, Aggregate, Batch, DataLayout, DataType, DataTypeMeta, DataTypeOps, DataTypeOpsBox,
    DataTypeRef, Declaration, Dim, Leaf, LeafSpec, SetLeaves,
};
pub use entry::{
    BaseModelConstructor, Constructor, DataTypeRegistration, EntryKind, EntryMeta,
    EntryRegistration, RewardConstructor,
};
pub use error::{guard, PluginError, PluginResult};
pub use kwargs::{KwargValue, Kwargs};
pub use model::{
    BaseModel, BaseModelAdapter, BaseModelBox, ConstructContext, FfiBaseModel, OutputType,
    ScheduleSpec,
};
pub use reward::{Capabilities, FfiReward, Reward, RewardAdapter, RewardBox, RewardOutput};
pub use root::{plugin_module, PluginModule, PluginModuleRef, API_VERSION};
pub use tensor::{DLDevice, DLDeviceType, DType, Element, ManagedTensor, TensorError};

/// The libtorch release this build links (feature `tch`), read from its headers.
#[cfg(feature = "tch")]
pub const LIBTORCH_VERSION: &str = env!("FLOWGYM_LIBTORCH_VERSION");
