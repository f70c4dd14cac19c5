//! Test fixture: a dynamic library with no Flow Gym root module.

/// Something a library might export.
#[no_mangle]
pub extern "C" fn not_a_plugin_answer() -> i32 {
    42
}
