//! # flowgym-plugin-api
//!
//! The stable-ABI contract between the Flow Gym host and the plugin files (`.so` / `.dll` /
//! `.dylib`) that provide base models and rewards. It does not link libtorch: a reward can be
//! written in plain Rust, built in seconds and run under any host of a compatible version.
//!
//! A plugin crate is a `cdylib` that depends on this crate alone (its macros reach
//! `abi_stable`, `inventory` and `serde_json` through re-exports), registers its entries and
//! exports its root module:
//!
//! ```
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
//! // `1d` is a standard data type: registered from its one declaration here.
//! register_data_type! { standard: standard::ONE_D }
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
//! # fn main() {}
//! ```
//!
//! ## Data types
//!
//! Every entry names its data type (the part of its id before the `/`), and some loaded
//! plugin must declare it with [`register_data_type!`]; the host refuses an entry whose data
//! type nobody declares, and a data type that two files declare differently (it names both).
//! A data type has one owner: the standard ones are declared in [`standard`] and every plugin
//! that uses them registers that declaration (`register_data_type! { standard:
//! standard::IMAGES }`); a new one is declared by the plugin (or a small crate its models and
//! rewards share) that defines it.
//!
//! Plain data has the batch on dimension 0 of every leaf. A data type whose samples are not
//! rows (sets of points, molecules with a varying number of atoms) declares a custom layout:
//! it implements [`DataType`] (length, slice, collate, per-sample aggregate), which the host
//! calls to chunk, join, shuffle and sum per sample, checking every answer; and when its
//! samples are sets it names its per-element leaves and sample-index leaf ([`SetLeaves`]),
//! from which the host builds a DeepSets value network. The `points` data type of the
//! repository's `examples/exact-problems` is a complete example.
//!
//! ## Tensors at the boundary
//!
//! Every tensor crosses as a [`ManagedTensor`] (DLPack, passed by value: the receiver owns it).
//! `n` is the batch length; "the device" is [`ConstructContext::device`] (the CPU for an entry
//! whose [`Capabilities::cpu_only`] is set: the host moves tensors to and from it).
//!
//! | call | tensor | dtype | device | shape |
//! |---|---|---|---|---|
//! | `sample_p0` | returned leaves | as the entry's [`LeafSpec`]s (floating: `float32`) | the device | as declared, batch `n` |
//! | `sample_p0` | returned per-sample kwargs | any | the device | batch on dimension 0 |
//! | `preprocess` | `x` | as returned by `sample_p0` | the device | as returned |
//! | `forward` | `x` | floating leaves `float32`, others as declared | the device | as returned by `sample_p0` |
//! | `forward` | `t` | `float32` | the device | `[n]`, one value repeated |
//! | `forward` | returned prediction | floating | the device | the floating leaves of `x`, same shapes |
//! | `postprocess` | `x`, returned sample | leaves as the reward's [`LeafSpec`]s | the device | batch `n` |
//! | `reward` | `sample`, `latent` | as produced, `latent` the final state | the reward's (CPU when `cpu_only`) | batch `n` (at most `max_batch`) |
//! | `reward` | returned [`RewardOutput::reward`] | any floating dtype | any | `[n]` |
//! | `reward` | returned [`RewardOutput::valid`] | `bool` | any | `[n]` |
//! | data type | [`DataType::aggregate`] result | floating | the batch's | `[n]` |
//!
//! The host checks what it relies on (batch lengths, the leaves a call must return, the shapes
//! and floating dtypes of predictions, the shapes and dtypes of rewards and validity) and
//! refuses a mismatch with an error that names the entry and the leaf. Integer and bool leaves
//! pass through sampling unchanged.
//!
//! ## Compatibility within 1.x
//!
//! A plugin records the plugin-api version it was built against and the host accepts it when
//! the two are semver-compatible (`^1`), refusing any other major with both versions named.
//! Both directions hold within 1.x: a plugin built against 1.0 runs in a 1.1 host, and one
//! built against 1.1 in a 1.0 host (the repository's tests build a plugin against a frozen
//! copy of 1.0 to prove the first).
//!
//! abi_stable's layout check refuses a file whose root module or trait objects have *fewer*
//! fields or methods than the host expects, so within 1.x the types that cross the boundary
//! keep the layout of 1.0: the root module ([`PluginModule`]), the trait objects
//! ([`FfiBaseModel`], [`FfiReward`], [`DataTypeOps`]) and every type they carry (a [`Batch`], a
//! [`DataTypeMeta`], an [`EntryMeta`], ...). What a minor version may add:
//! - new items in this crate (functions, types, macros, [`standard`] data types);
//! - new exported symbols that the host looks up by name and does without when a file lacks
//!   them, as 1.1 did with the plugin's crate name and version ([`PACKAGE_SYMBOL`]).
//!
//! Anything else (a new field, method or variant; a changed or removed one) is a new major
//! version.
//!
//! The pieces:
//! - [`tensor`]: [`ManagedTensor`], an owning handle in the DLPack layout.
//! - [`data`]: [`Batch`]es of named leaves, data types (plain or custom layouts, [`standard`]
//!   declarations) and their declared [`LeafSpec`]s.
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
pub use root::{
    plugin_module, PluginModule, PluginModuleRef, PluginPackage, API_VERSION, PACKAGE_SYMBOL,
};
pub use tensor::{DLDevice, DLDeviceType, DType, Element, ManagedTensor, TensorError};

/// The libtorch release this build links (feature `tch`), read from its headers.
#[cfg(feature = "tch")]
pub const LIBTORCH_VERSION: &str = env!("FLOWGYM_LIBTORCH_VERSION");
