//! Records where libtorch's libraries are, so that `--device cuda` can load `libtorch_cuda`
//! from the same directory. (The rpath to that directory is set for every binary of the
//! workspace in one place: the `RUSTFLAGS` of `cargo xtask`.)
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-env=FLOWGYM_LIBTORCH_LIB={dir}");
    }
    if std::env::var_os("CARGO_FEATURE_MPI").is_some() {
        record_mpi_version();
    }
}

/// Records the MPI the host is built against (`mpirun --version`'s first line), so that a run
/// can name it when the library it meets at run time is another one.
fn record_mpi_version() {
    println!("cargo:rerun-if-env-changed=PATH");
    let version = std::process::Command::new("mpirun")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            text.lines()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown (no mpirun on the PATH at build time)".to_string());
    println!("cargo:rustc-env=FLOWGYM_MPI_BUILT_WITH={version}");
}
