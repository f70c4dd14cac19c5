flowgym_plugin_api::export_plugin!();
