//! The root module every plugin file exports, and [`export_plugin!`](crate::export_plugin).
//!
//! The root module is an `abi_stable` prefix type: fields can be appended in minor versions of
//! this crate and older plugins keep loading. The host reads the plugin-api version abi_stable
//! records with it (`VERSION_STRINGS`) and accepts the file only when that version is
//! semver-compatible with its own; layouts are checked by abi_stable on top of that.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::library::RootModule;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{ROption, RResult, RStr, RVec};
use abi_stable::StableAbi;

use crate::data::{DataTypeAdapter, DataTypeMeta, DataTypeOpsBox, DataTypeOps_TO};
use crate::entry::{Constructor, DataTypeRegistration, EntryMeta, EntryRegistration};
use crate::error::{guard, PluginError};
use crate::model::{BaseModelAdapter, BaseModelBox, ConstructContext};
use crate::reward::{RewardAdapter, RewardBox};

/// The root module of a plugin file.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The libtorch release (`2.13.0`) the plugin links, or none for plugins without libtorch.
    /// Plugins that link libtorch share the host's copy, so the host refuses another release.
    pub libtorch_version: ROption<RStr<'static>>,
    /// Metadata of every entry in the file.
    pub entries: extern "C" fn() -> RResult<RVec<EntryMeta>, PluginError>,
    /// Metadata of every data type the file defines.
    pub data_types: extern "C" fn() -> RResult<RVec<DataTypeMeta>, PluginError>,
    /// Constructs the base model `id` from a JSON argument document.
    pub construct_base_model: extern "C" fn(
        id: RStr<'_>,
        args_json: RStr<'_>,
        ctx: &ConstructContext,
    ) -> RResult<BaseModelBox, PluginError>,
    /// Constructs the reward `id` from a JSON argument document.
    pub construct_reward: extern "C" fn(
        id: RStr<'_>,
        args_json: RStr<'_>,
        ctx: &ConstructContext,
    ) -> RResult<RewardBox, PluginError>,
    /// The batch operations of the custom data type `name`, if this file defines it.
    #[sabi(last_prefix_field)]
    pub data_type_ops:
        extern "C" fn(name: RStr<'_>) -> RResult<ROption<DataTypeOpsBox>, PluginError>,
}

impl RootModule for PluginModuleRef {
    abi_stable::declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "flowgym_plugin";
    const NAME: &'static str = "flowgym plugin";
    const VERSION_STRINGS: VersionStrings = abi_stable::package_version_strings!();
}

/// The crate a plugin file was built from, which the host shows next to the file. Added in 1.1,
/// outside the root module (whose layout stays that of 1.0, see the crate docs): a file built
/// against 1.0 has no [`PACKAGE_SYMBOL`], and the host shows no package for it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginPackage {
    /// The crate's package name (`CARGO_PKG_NAME`).
    pub name: RStr<'static>,
    /// The crate's version (`CARGO_PKG_VERSION`).
    pub version: RStr<'static>,
}

/// The symbol of the `extern "C" fn() -> PluginPackage` that [`export_plugin!`](crate::export_plugin) exports (1.1).
pub const PACKAGE_SYMBOL: &str = "flowgym_plugin_package_v1";

/// The version of this crate, which every plugin records and the host checks.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

extern "C" fn entries() -> RResult<RVec<EntryMeta>, PluginError> {
    guard("listing entries", || {
        Ok(inventory::iter::<EntryRegistration>
            .into_iter()
            .map(|registration| (registration.meta)())
            .collect())
    })
}

extern "C" fn data_types() -> RResult<RVec<DataTypeMeta>, PluginError> {
    guard("listing data types", || {
        Ok(inventory::iter::<DataTypeRegistration>
            .into_iter()
            .map(|registration| (registration.meta)())
            .collect())
    })
}

fn find_constructor(id: &str) -> Option<Constructor> {
    inventory::iter::<EntryRegistration>
        .into_iter()
        .find(|registration| {
            catch_unwind(AssertUnwindSafe(|| (registration.meta)().id.as_str() == id))
                .unwrap_or(false)
        })
        .map(|registration| registration.constructor)
}

extern "C" fn construct_base_model(
    id: RStr<'_>,
    args_json: RStr<'_>,
    ctx: &ConstructContext,
) -> RResult<BaseModelBox, PluginError> {
    let id = id.as_str();
    guard("the constructor", || match find_constructor(id) {
        Some(Constructor::BaseModel(construct)) => {
            let model = construct(args_json.as_str(), ctx)?;
            Ok(BaseModelAdapter::new(id, model).into_box())
        }
        Some(Constructor::Reward(_)) => Err(PluginError::new(format!(
            "`{id}` is a reward, not a base model"
        ))),
        None => Err(PluginError::new(format!("this plugin has no entry `{id}`"))),
    })
}

extern "C" fn construct_reward(
    id: RStr<'_>,
    args_json: RStr<'_>,
    ctx: &ConstructContext,
) -> RResult<RewardBox, PluginError> {
    let id = id.as_str();
    guard("the constructor", || match find_constructor(id) {
        Some(Constructor::Reward(construct)) => {
            let reward = construct(args_json.as_str(), ctx)?;
            Ok(RewardAdapter::new(id, reward).into_box())
        }
        Some(Constructor::BaseModel(_)) => Err(PluginError::new(format!(
            "`{id}` is a base model, not a reward"
        ))),
        None => Err(PluginError::new(format!("this plugin has no entry `{id}`"))),
    })
}

extern "C" fn data_type_ops(name: RStr<'_>) -> RResult<ROption<DataTypeOpsBox>, PluginError> {
    let name = name.as_str();
    guard(&format!("data type `{name}`"), || {
        for registration in inventory::iter::<DataTypeRegistration> {
            let meta = (registration.meta)();
            if meta.id.name.as_str() == name {
                return Ok(registration
                    .ops
                    .map(|make| {
                        let adapter = DataTypeAdapter {
                            name: name.to_string(),
                            inner: make(),
                        };
                        DataTypeOps_TO::from_value(adapter, abi_stable::sabi_trait::TD_Opaque)
                    })
                    .into());
            }
        }
        Ok(ROption::RNone)
    })
}

/// Builds the root module of the plugin being compiled (called by
/// [`export_plugin!`](crate::export_plugin)).
pub fn plugin_module(libtorch_version: ROption<RStr<'static>>) -> PluginModuleRef {
    PluginModule {
        libtorch_version,
        entries,
        data_types,
        construct_base_model,
        construct_reward,
        data_type_ops,
    }
    .leak_into_prefix()
}

/// Exports the plugin's root module. Call it once, at the root of the plugin crate (a
/// `cdylib`; it needs no dependency but this crate):
///
/// ```
/// flowgym_plugin_api::export_plugin!(); // a plugin without libtorch
/// # fn main() {}
/// ```
///
/// A plugin that links libtorch (feature `tch`) writes `export_plugin!(libtorch)` instead, so
/// that the host can refuse it when its libtorch release differs.
#[macro_export]
macro_rules! export_plugin {
    () => {
        $crate::export_plugin!(@with $crate::abi_stable::std_types::ROption::RNone);
    };
    (libtorch) => {
        $crate::export_plugin!(@with $crate::abi_stable::std_types::ROption::RSome(
            $crate::abi_stable::std_types::RStr::from_str($crate::LIBTORCH_VERSION)
        ));
    };
    (@with $libtorch:expr) => {
        #[doc(hidden)]
        mod __flowgym_plugin_root {
            /// The root module of this Flow Gym plugin.
            pub fn flowgym_plugin_root_module() -> $crate::PluginModuleRef {
                $crate::root::plugin_module($libtorch)
            }
            /// The crate this plugin file was built from (`PACKAGE_SYMBOL`).
            #[doc(hidden)]
            #[unsafe(no_mangle)]
            pub extern "C" fn flowgym_plugin_package_v1() -> $crate::PluginPackage {
                $crate::PluginPackage {
                    name: $crate::abi_stable::std_types::RStr::from_str(env!("CARGO_PKG_NAME")),
                    version: $crate::abi_stable::std_types::RStr::from_str(env!(
                        "CARGO_PKG_VERSION"
                    )),
                }
            }

            // What `#[abi_stable::export_root_module]` expands to, written with paths through
            // this crate, so that a plugin needs no dependency on `abi_stable` of its own. The
            // symbol is abi_stable 0.11's `ROOT_MODULE_LOADER_NAME` (checked by a test).
            #[doc(hidden)]
            #[unsafe(no_mangle)]
            #[allow(non_upper_case_globals)]
            pub static _1as_0lib_1header_0root_bmodule_bloader:
                $crate::abi_stable::library::LibHeader = {
                pub extern "C" fn erased() -> $crate::abi_stable::library::RootModuleResult {
                    $crate::abi_stable::library::__call_root_module_loader(
                        flowgym_plugin_root_module,
                    )
                }
                // SAFETY: the constructor returns the root module type it is declared with,
                // and the layout check stays on, as `export_root_module` does by default.
                unsafe {
                    $crate::abi_stable::library::LibHeader::from_constructor::<
                        $crate::PluginModuleRef,
                    >(erased, $crate::abi_stable::library::CheckTypeLayout::Yes)
                }
            };
        }
    };
}

/// The symbol [`export_plugin!`] exports, as abi_stable's loader looks for it.
#[doc(hidden)]
pub const EXPORTED_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exported_symbol_is_the_one_abi_stable_loads() {
        assert_eq!(
            EXPORTED_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
    use crate::data::{Aggregate, Batch, DataType};
    use crate::error::PluginResult;
    use crate::tensor::ManagedTensor;

    /// A ragged data type: sample `i` owns `counts[i]` consecutive entries of `values`, so
    /// its batch length, slices and sums cannot be derived from dimension 0.
    struct Ragged;

    fn parts(batch: &Batch) -> PluginResult<(Vec<f32>, Vec<i64>)> {
        Ok((
            batch.require("values")?.to_vec()?,
            batch.require("counts")?.to_vec()?,
        ))
    }

    fn ragged(values: Vec<f32>, counts: Vec<i64>) -> Batch {
        let n = values.len();
        Batch::new(
            "ragged",
            [
                (
                    "values".to_string(),
                    ManagedTensor::from_vec(values, &[n]).unwrap(),
                ),
                ("counts".to_string(), ManagedTensor::from_slice(&counts)),
            ],
        )
    }

    impl DataType for Ragged {
        fn len(&self, batch: &Batch) -> PluginResult<usize> {
            Ok(batch.require("counts")?.len())
        }

        fn slice(&self, batch: &Batch, start: usize, end: usize) -> PluginResult<Batch> {
            let (values, counts) = parts(batch)?;
            let offset: i64 = counts[..start].iter().sum();
            let len: i64 = counts[start..end].iter().sum();
            let values = values[offset as usize..(offset + len) as usize].to_vec();
            Ok(ragged(values, counts[start..end].to_vec()))
        }

        fn collate(&self, batches: &[Batch]) -> PluginResult<Batch> {
            let (mut values, mut counts) = (Vec::new(), Vec::new());
            for batch in batches {
                let (v, c) = parts(batch)?;
                values.extend(v);
                counts.extend(c);
            }
            Ok(ragged(values, counts))
        }

        fn aggregate(
            &self,
            batch: &Batch,
            values: &Batch,
            how: Aggregate,
        ) -> PluginResult<ManagedTensor> {
            let counts: Vec<i64> = batch.require("counts")?.to_vec()?;
            let per_entry: Vec<f32> = values.require("values")?.to_vec()?;
            let mut start = 0usize;
            let sums: Vec<f32> = counts
                .iter()
                .map(|&c| {
                    let s: f32 = per_entry[start..start + c as usize].iter().sum();
                    start += c as usize;
                    match how {
                        Aggregate::Sum => s,
                        Aggregate::Mean => s / c.max(1) as f32,
                    }
                })
                .collect();
            Ok(ManagedTensor::from_slice(&sums))
        }
    }

    crate::register_data_type! {
        name: "ragged",
        version: "0.1.0",
        description: "test: variable-length samples",
        ops: Ragged,
    }

    #[test]
    fn custom_data_types_are_listed_and_serve_their_operations_across_the_abi() {
        let types = data_types().unwrap();
        let meta = types
            .iter()
            .find(|d| d.id.name.as_str() == "ragged")
            .unwrap();
        assert_eq!(meta.layout, crate::DataLayout::Custom);
        let ops = data_type_ops(RStr::from_str("ragged")).unwrap().unwrap();
        let batch = ragged(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![1, 3, 2]);
        assert_eq!(ops.len(&batch).unwrap(), 3);
        let tail = ops.slice(&batch, 1, 3).unwrap();
        assert_eq!(
            tail.require("values").unwrap().to_vec::<f32>().unwrap(),
            vec![2.0, 3.0, 4.0, 5.0, 6.0]
        );
        let head = ops.slice(&batch, 0, 1).unwrap();
        let joined = ops.collate(vec![head, tail].as_slice().into()).unwrap();
        assert_eq!(
            joined.require("counts").unwrap().to_vec::<i64>().unwrap(),
            vec![1, 3, 2]
        );
        let sums = ops.aggregate(&batch, &batch, Aggregate::Sum).unwrap();
        assert_eq!(sums.to_vec::<f32>().unwrap(), vec![1.0, 9.0, 11.0]);
        let means = ops.aggregate(&batch, &batch, Aggregate::Mean).unwrap();
        assert_eq!(means.to_vec::<f32>().unwrap(), vec![1.0, 3.0, 5.5]);
        assert!(data_type_ops(RStr::from_str("unknown")).unwrap().is_none());
    }
}
