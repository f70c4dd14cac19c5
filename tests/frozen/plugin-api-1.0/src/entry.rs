//! Entries (`data_type/name`), their metadata, and how a plugin registers them.
//!
//! Each entry carries metadata the host reads without constructing it: kind, id, data type and
//! version, its own version, a description, its arguments with defaults, the leaves it produces
//! (models) or accepts (rewards), and a reward's capabilities. Registration goes through
//! [`register_base_model!`](crate::register_base_model) and
//! [`register_reward!`](crate::register_reward), which submit to an `inventory` collection that
//! the plugin's root module lists.

use std::fmt;

use abi_stable::std_types::{RString, RVec};
use abi_stable::StableAbi;

use crate::args::ArgSpec;
use crate::data::{DataType, DataTypeMeta, DataTypeRef, LeafSpec};
use crate::error::PluginResult;
use crate::model::{BaseModel, ConstructContext};
use crate::reward::{Capabilities, Reward};

/// Whether an entry is a base model or a reward.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A flow or diffusion model.
    BaseModel,
    /// A reward.
    Reward,
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::BaseModel => "model",
            EntryKind::Reward => "reward",
        })
    }
}

/// Everything the host knows about an entry before constructing it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct EntryMeta {
    /// Base model or reward.
    pub kind: EntryKind,
    /// `data_type/name`, unique across loaded plugins.
    pub id: RString,
    /// The data type it works on.
    pub data_type: DataTypeRef,
    /// The entry's own semantic version.
    pub version: RString,
    /// One line for `flowgym-host list`.
    pub description: RString,
    /// Its arguments, with defaults.
    pub arguments: RVec<ArgSpec>,
    /// Models: the leaves of the samples their postprocess produces. Rewards: the leaves they
    /// accept. The host compares the two before constructing either.
    pub leaves: RVec<LeafSpec>,
    /// Rewards: what they can do. Models: the default, unused.
    pub capabilities: Capabilities,
}

/// Builds a base model from its argument document.
pub type BaseModelConstructor =
    fn(args_json: &str, ctx: &ConstructContext) -> PluginResult<Box<dyn BaseModel>>;
/// Builds a reward from its argument document.
pub type RewardConstructor =
    fn(args_json: &str, ctx: &ConstructContext) -> PluginResult<Box<dyn Reward>>;

/// How to construct an entry.
#[derive(Clone, Copy)]
pub enum Constructor {
    /// A base model.
    BaseModel(BaseModelConstructor),
    /// A reward.
    Reward(RewardConstructor),
}

/// One registered entry (submitted by the registration macros, collected with `inventory`).
pub struct EntryRegistration {
    /// Its metadata (a function, so that it can allocate).
    pub meta: fn() -> EntryMeta,
    /// Its constructor.
    pub constructor: Constructor,
}

inventory::collect!(EntryRegistration);

/// One registered data type.
pub struct DataTypeRegistration {
    /// Its metadata.
    pub meta: fn() -> DataTypeMeta,
    /// Its batch operations, for [`DataLayout::Custom`](crate::DataLayout::Custom) types.
    pub ops: Option<fn() -> Box<dyn DataType>>,
}

inventory::collect!(DataTypeRegistration);

/// Registers a base model. The constructor receives the parsed arguments and the
/// [`ConstructContext`] and returns something that implements [`BaseModel`]. Optional
/// `capabilities:` (before `construct:`) declare a model that computes on the CPU only
/// ([`Capabilities::cpu_only`]); the default is a model that runs on the device it is given.
///
/// ```
/// # use flowgym_plugin_api::*;
/// # arguments! {
/// #     /// Arguments.
/// #     pub struct GmmArgs {
/// #         /// Mean of the second component.
/// #         mean: f64 = 3.0;
/// #     }
/// # }
/// # struct GmmModel;
/// # impl GmmModel {
/// #     fn new(_args: GmmArgs, _ctx: &ConstructContext) -> PluginResult<Self> { Ok(GmmModel) }
/// # }
/// # impl BaseModel for GmmModel {
/// #     fn output_type(&self) -> OutputType { OutputType::Velocity }
/// #     fn schedule(&self) -> ScheduleSpec { ScheduleSpec::OptimalTransport }
/// #     fn sample_p0(&mut self, n: usize, _seed: u64) -> PluginResult<(Batch, Kwargs)> {
/// #         let x = ManagedTensor::from_vec(vec![0.0f32; n], &[n, 1])?;
/// #         Ok((Batch::single("1d", "x", x), Kwargs::new()))
/// #     }
/// #     fn forward(&mut self, x: Batch, _t: ManagedTensor, _kwargs: Kwargs) -> PluginResult<Batch> {
/// #         Ok(x)
/// #     }
/// # }
/// flowgym_plugin_api::register_base_model! {
///     id: "1d/gmm",
///     version: "1.0.0",
///     data_type: ("1d", "1.0.0"),
///     description: "Exact flow to a two-component Gaussian mixture",
///     arguments: GmmArgs,
///     leaves: vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Fixed(1)])],
///     construct: GmmModel::new,
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! register_base_model {
    (
        id: $id:expr,
        version: $version:expr,
        data_type: ($dt_name:expr, $dt_version:expr),
        description: $description:expr,
        arguments: $args:ty,
        leaves: $leaves:expr,
        $(capabilities: $capabilities:expr,)?
        construct: $construct:expr $(,)?
    ) => {
        const _: () = {
            fn __flowgym_meta() -> $crate::EntryMeta {
                #[allow(unused_mut)]
                let mut capabilities = $crate::Capabilities::any_device();
                $(capabilities = $capabilities;)?
                $crate::EntryMeta {
                    kind: $crate::EntryKind::BaseModel,
                    id: $id.into(),
                    data_type: $crate::DataTypeRef::new($dt_name, $dt_version),
                    version: $version.into(),
                    description: $description.into(),
                    arguments: <$args as $crate::Arguments>::specs().into(),
                    leaves: ::core::convert::Into::into($leaves),
                    capabilities,
                }
            }
            fn __flowgym_construct(
                json: &str,
                ctx: &$crate::ConstructContext,
            ) -> $crate::PluginResult<::std::boxed::Box<dyn $crate::BaseModel>> {
                let args = <$args as $crate::Arguments>::from_json(json)?;
                let model = ($construct)(args, ctx)?;
                Ok(::std::boxed::Box::new(model))
            }
            $crate::inventory::submit! {
                $crate::EntryRegistration {
                    meta: __flowgym_meta,
                    constructor: $crate::Constructor::BaseModel(__flowgym_construct),
                }
            }
        };
    };
}

/// Registers a reward. Like [`register_base_model!`](crate::register_base_model), plus its
/// [`Capabilities`] (optional; default: no batch limit, CPU only).
#[macro_export]
macro_rules! register_reward {
    (
        id: $id:expr,
        version: $version:expr,
        data_type: ($dt_name:expr, $dt_version:expr),
        description: $description:expr,
        arguments: $args:ty,
        leaves: $leaves:expr,
        $(capabilities: $capabilities:expr,)?
        construct: $construct:expr $(,)?
    ) => {
        const _: () = {
            fn __flowgym_meta() -> $crate::EntryMeta {
                #[allow(unused_mut)]
                let mut capabilities = <$crate::Capabilities as ::core::default::Default>::default();
                $(capabilities = $capabilities;)?
                $crate::EntryMeta {
                    kind: $crate::EntryKind::Reward,
                    id: $id.into(),
                    data_type: $crate::DataTypeRef::new($dt_name, $dt_version),
                    version: $version.into(),
                    description: $description.into(),
                    arguments: <$args as $crate::Arguments>::specs().into(),
                    leaves: ::core::convert::Into::into($leaves),
                    capabilities,
                }
            }
            fn __flowgym_construct(
                json: &str,
                ctx: &$crate::ConstructContext,
            ) -> $crate::PluginResult<::std::boxed::Box<dyn $crate::Reward>> {
                let args = <$args as $crate::Arguments>::from_json(json)?;
                let reward = ($construct)(args, ctx)?;
                Ok(::std::boxed::Box::new(reward))
            }
            $crate::inventory::submit! {
                $crate::EntryRegistration {
                    meta: __flowgym_meta,
                    constructor: $crate::Constructor::Reward(__flowgym_construct),
                }
            }
        };
    };
}

/// Registers a data type. Plain data (batch on dimension 0 of every leaf) needs only its name,
/// version and description; a custom layout also gives a constructor of its [`DataType`] ops,
/// and, when its samples are sets of elements, the per-element leaves and the sample-index
/// leaf ([`crate::SetLeaves`]) that the host's set value network reads:
///
/// ```
/// # use flowgym_plugin_api::*;
/// # /// Sets of points: `x` `[m, 2]`, `sample` `[m]`, `counts` `[n]` (see the repository's
/// # /// `examples/exact-problems` for the whole implementation).
/// # struct Points;
/// # impl DataType for Points {
/// #     fn len(&self, batch: &Batch) -> PluginResult<usize> {
/// #         Ok(batch.require("counts")?.len())
/// #     }
/// #     fn slice(&self, _: &Batch, _: usize, _: usize) -> PluginResult<Batch> {
/// #         Err(PluginError::new("not in this example"))
/// #     }
/// #     fn collate(&self, _: &[Batch]) -> PluginResult<Batch> {
/// #         Err(PluginError::new("not in this example"))
/// #     }
/// #     fn aggregate(&self, _: &Batch, _: &Batch, _: Aggregate) -> PluginResult<ManagedTensor> {
/// #         Err(PluginError::new("not in this example"))
/// #     }
/// # }
/// flowgym_plugin_api::register_data_type! {
///     name: "points", version: "1.0.0",
///     description: "Sets of points in the plane",
///     ops: Points,
///     elements: ["x"], sample_index: "sample",
/// }
/// # fn main() {}
/// ```
///
/// A standard data type ([`crate::standard`]), declared identically by every plugin that
/// uses it:
///
/// ```
/// flowgym_plugin_api::register_data_type! { standard: flowgym_plugin_api::standard::ONE_D }
/// # fn main() {}
/// ```
///
/// Plain data:
///
/// ```
/// flowgym_plugin_api::register_data_type! {
///     name: "1d", version: "1.0.0",
///     description: "Points on the real line, [n, 1] float32",
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! register_data_type {
    (standard: $declaration:expr $(,)?) => {
        $crate::register_data_type! {
            name: $declaration.name,
            version: $declaration.version,
            description: $declaration.description,
        }
    };
    (
        name: $name:expr,
        version: $version:expr,
        description: $description:expr
        $(, ops: $ops:expr)?
        $(, elements: [$($element:expr),* $(,)?], sample_index: $sample_index:expr)? $(,)?
    ) => {
        const _: () = {
            #[allow(unused_assignments)]
            fn __flowgym_meta() -> $crate::DataTypeMeta {
                #[allow(unused_mut)]
                let mut layout = $crate::DataLayout::Plain;
                $({
                    let _ = stringify!($ops);
                    layout = $crate::DataLayout::Custom;
                })?
                $crate::DataTypeMeta {
                    id: $crate::DataTypeRef::new($name, $version),
                    description: $description.into(),
                    layout,
                    set: {
                        #[allow(unused_mut)]
                        let mut set = $crate::abi_stable::std_types::ROption::RNone;
                        $(
                            set = $crate::abi_stable::std_types::ROption::RSome(
                                $crate::SetLeaves::new([$($element),*], $sample_index),
                            );
                        )?
                        set
                    },
                }
            }
            #[allow(unused_mut, unused_assignments)]
            const OPS: ::core::option::Option<fn() -> ::std::boxed::Box<dyn $crate::DataType>> = {
                let mut ops = None;
                $(
                    fn make() -> ::std::boxed::Box<dyn $crate::DataType> {
                        ::std::boxed::Box::new($ops)
                    }
                    ops = Some(make as fn() -> ::std::boxed::Box<dyn $crate::DataType>);
                )?
                ops
            };
            $crate::inventory::submit! {
                $crate::DataTypeRegistration { meta: __flowgym_meta, ops: OPS }
            }
        };
    };
}
