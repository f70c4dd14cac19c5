//! Sets an rpath to libtorch's directory, so that this crate's tests run without
//! `LD_LIBRARY_PATH` (the plugin file itself uses the libtorch its host has loaded).
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
