//! With the `tch` feature: compiles the small C++ bridge to libtorch's own DLPack converter and
//! records which libtorch release this build links, so that plugins can declare it.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_TCH").is_some() {
        #[cfg(feature = "tch")]
        tch_bridge::build();
    }
}

#[cfg(feature = "tch")]
mod tch_bridge {
    use std::path::{Path, PathBuf};

    pub fn build() {
        println!("cargo:rerun-if-changed=src/tch_interop/bridge.cpp");
        let lib_dir = PathBuf::from(
            std::env::var("DEP_TCH_LIBTORCH_LIB")
                .expect("torch-sys reports where libtorch is (DEP_TCH_LIBTORCH_LIB)"),
        );
        let root = lib_dir
            .parent()
            .expect("libtorch's lib directory has a parent");
        let include = root.join("include");
        println!(
            "cargo:rustc-env=FLOWGYM_LIBTORCH_VERSION={}",
            libtorch_version(&include)
        );
        cc::Build::new()
            .cpp(true)
            .pic(true)
            .warnings(false)
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag(format!(
                "-D_GLIBCXX_USE_CXX11_ABI={}",
                std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string())
            ))
            .file("src/tch_interop/bridge.cpp")
            .compile("flowgym_tch_bridge");
    }

    /// Reads `TORCH_VERSION_{MAJOR,MINOR,PATCH}` from the headers of the libtorch being linked.
    fn libtorch_version(include: &Path) -> String {
        let candidates = [
            include.join("torch/headeronly/version.h"),
            include.join("torch/csrc/api/include/torch/version.h"),
        ];
        for header in candidates {
            let Ok(text) = std::fs::read_to_string(&header) else {
                continue;
            };
            let number = |name: &str| {
                text.lines().find_map(|line| {
                    let rest = line.trim().strip_prefix("#define ")?.strip_prefix(name)?;
                    rest.trim().parse::<u32>().ok()
                })
            };
            if let (Some(major), Some(minor), Some(patch)) = (
                number("TORCH_VERSION_MAJOR"),
                number("TORCH_VERSION_MINOR"),
                number("TORCH_VERSION_PATCH"),
            ) {
                return format!("{major}.{minor}.{patch}");
            }
        }
        panic!(
            "cannot read the libtorch version from the headers under {}",
            include.display()
        );
    }
}
