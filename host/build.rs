//! Records where libtorch's libraries are, so that `--device cuda` can load `libtorch_cuda`
//! from the same directory. (The rpath to that directory is set for every binary of the
//! workspace in one place: the `RUSTFLAGS` of `cargo xtask`.)
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-env=FLOWGYM_LIBTORCH_LIB={dir}");
    }
}
