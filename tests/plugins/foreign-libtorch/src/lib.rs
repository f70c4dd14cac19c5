//! Test fixture: the root module a plugin built against libtorch 2.1.0 would export. The
//! release is written by hand (this fixture links no libtorch); `export_plugin!(libtorch)`
//! records the release the plugin was really built against.

use abi_stable::std_types::{ROption, RStr};

/// The root module, claiming libtorch 2.1.0.
#[abi_stable::export_root_module]
pub fn root_module() -> flowgym_plugin_api::PluginModuleRef {
    flowgym_plugin_api::plugin_module(ROption::RSome(RStr::from_str("2.1.0")))
}
