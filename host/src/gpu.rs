//! What this host knows about GPUs: the libtorch it was built with (CPU or CUDA build), its
//! CUDA library, the machine's NVIDIA driver, and, when libtorch sees no CUDA device, why.
//! Everything here reads files and runs `nvidia-smi` at most; nothing fails or panics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The CUDA release of the CUDA build of libtorch 2.13 that `cargo xtask` fetches.
pub const CUDA_VERSION: &str = "13.0";
/// The oldest Linux driver branch that runs CUDA 13.x programs.
pub const MIN_DRIVER_MAJOR: u32 = 580;

/// The libtorch this host was built against.
#[derive(Debug, Clone)]
pub struct Libtorch {
    /// Its `lib` directory, when the build recorded it.
    pub lib_dir: Option<PathBuf>,
    /// The content of its `build-version` file (`2.13.0+cu130`), when it has one.
    pub version: Option<String>,
    /// Whether its `lib` directory holds `libtorch_cuda` (a CUDA build).
    pub has_cuda_library: bool,
}

/// The libtorch recorded when the host was built.
pub fn libtorch() -> Libtorch {
    let lib_dir = option_env!("FLOWGYM_LIBTORCH_LIB").map(PathBuf::from);
    let version = lib_dir
        .as_deref()
        .and_then(Path::parent)
        .and_then(|root| std::fs::read_to_string(root.join("build-version")).ok())
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty());
    let has_cuda_library = lib_dir
        .as_deref()
        .is_some_and(|dir| cuda_library_path(dir).exists());
    Libtorch {
        lib_dir,
        version,
        has_cuda_library,
    }
}

fn cuda_library_path(dir: &Path) -> PathBuf {
    dir.join(format!(
        "{}torch_cuda{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

/// The outcome of loading `libtorch_cuda`, which registers libtorch's CUDA backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaLibrary {
    /// The libtorch directory has no `libtorch_cuda`: a CPU build.
    Absent,
    /// Loaded (or already loaded by the linker).
    Loaded,
    /// Present but the loader refused it; the loader's message.
    Failed(String),
}

/// Loads `libtorch_cuda` from the libtorch directory, once: the linker may have dropped it as
/// unused, and libtorch sees no CUDA device without it.
pub fn load_cuda_library() -> CudaLibrary {
    static LOADED: OnceLock<CudaLibrary> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let Some(dir) = option_env!("FLOWGYM_LIBTORCH_LIB") else {
                return CudaLibrary::Absent;
            };
            let path = cuda_library_path(Path::new(dir));
            if !path.exists() {
                return CudaLibrary::Absent;
            }
            // SAFETY: loading libtorch's own CUDA library, which only registers its backend.
            match unsafe { libloading::Library::new(&path) } {
                Ok(library) => {
                    std::mem::forget(library);
                    CudaLibrary::Loaded
                }
                Err(err) => CudaLibrary::Failed(err.to_string()),
            }
        })
        .clone()
}

/// The machine's NVIDIA driver, as far as it can be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Driver {
    /// The driver version (`580.95.05`).
    pub version: Option<String>,
    /// The newest CUDA release the driver runs (`13.0`), from `nvidia-smi`.
    pub cuda: Option<String>,
}

/// The NVIDIA driver: `/proc/driver/nvidia/version`, then `nvidia-smi`; `None` when neither
/// answers.
pub fn driver() -> Option<Driver> {
    let proc_version = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .map(|text| driver_version_from_proc(&text));
    let smi = Command::new("nvidia-smi")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    if proc_version.is_none() && smi.is_none() {
        return None;
    }
    let from_smi = |key: &str| smi.as_deref().and_then(|text| smi_field(text, key));
    Some(Driver {
        version: proc_version
            .flatten()
            .or_else(|| from_smi("Driver Version:")),
        cuda: from_smi("CUDA Version:"),
    })
}

/// The driver version in the text of `/proc/driver/nvidia/version`.
pub fn driver_version_from_proc(text: &str) -> Option<String> {
    let line = text.lines().find(|line| line.starts_with("NVRM version"))?;
    line.split_whitespace()
        .find(|word| word.contains('.') && word.split('.').all(|p| p.parse::<u32>().is_ok()))
        .map(str::to_string)
}

/// The value after `key` in `nvidia-smi`'s header (`Driver Version: 580.95.05`).
pub fn smi_field(text: &str, key: &str) -> Option<String> {
    let at = text.find(key)? + key.len();
    text[at..].split_whitespace().next().map(str::to_string)
}

/// Why a driver of `version` cannot run the CUDA 13.0 build, when it cannot.
pub fn driver_too_old(version: &str) -> Option<String> {
    let major: u32 = version.split('.').next()?.trim().parse().ok()?;
    (major < MIN_DRIVER_MAJOR).then(|| {
        format!(
            "the NVIDIA driver {version} is too old for CUDA {CUDA_VERSION}, which needs driver {MIN_DRIVER_MAJOR} or newer: update the NVIDIA driver, or run on --device cpu"
        )
    })
}

/// Why libtorch sees no CUDA device, from what this host was built with and what the machine
/// has: the first of a CPU-only libtorch, a `libtorch_cuda` that does not load, no driver, a
/// driver too old, and a driver that shows no GPU to this process.
pub fn why_no_cuda(libtorch: &Libtorch, library: &CudaLibrary, driver: Option<&Driver>) -> String {
    let dir = libtorch
        .lib_dir
        .as_ref()
        .map_or("an unknown directory".to_string(), |d| {
            d.display().to_string()
        });
    if let CudaLibrary::Failed(message) = library {
        return format!(
            "libtorch_cuda in {dir} does not load ({message}); its NVIDIA runtime libraries may be missing: remove that libtorch from the cache and run `cargo xtask` again to fetch it whole"
        );
    }
    let Some(driver) = driver else {
        return "no NVIDIA driver on this machine (no /proc/driver/nvidia/version, and nvidia-smi does not answer)".to_string();
    };
    if let Some(too_old) = driver.version.as_deref().and_then(driver_too_old) {
        return too_old;
    }
    if !libtorch.has_cuda_library || *library == CudaLibrary::Absent {
        return format!(
            "this host is built with the CPU-only libtorch in {dir} (no libtorch_cuda): rebuild with `cargo xtask`, which fetches the CUDA build when it finds the NVIDIA driver (FLOWGYM_CUDA=1 forces it), or set LIBTORCH to a CUDA libtorch 2.13"
        );
    }
    let visible = std::env::var("CUDA_VISIBLE_DEVICES")
        .map(|v| format!(" (CUDA_VISIBLE_DEVICES={v:?})"))
        .unwrap_or_default();
    format!("the NVIDIA driver shows no GPU to this process{visible}; `nvidia-smi` lists what the driver sees")
}

/// The message and the fixes for an error text of libtorch that reports a GPU out of memory.
pub fn out_of_memory_hint(text: &str) -> Option<&'static str> {
    const SIGNS: &[&str] = &[
        "CUDA out of memory",
        "CUDA error: out of memory",
        "CUBLAS_STATUS_ALLOC_FAILED",
        "CUDNN_STATUS_ALLOC_FAILED",
        "OutOfMemoryError",
    ];
    SIGNS.iter().any(|sign| text.contains(sign)).then_some(
        "the GPU ran out of memory: lower --batch-size (training) or --sample-chunk (sampling and evaluation, run and sample), free the GPU of other processes (nvidia-smi lists them), or choose another device with --device cuda:N or cpu",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMI: &str = "\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.95.05              Driver Version: 580.95.05      CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
";

    #[test]
    fn driver_and_cuda_versions_are_read_from_proc_and_nvidia_smi() {
        let proc_text = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U22)  Tue Sep 23 09:55:41 UTC 2025\nGCC version:  gcc 12.3.0\n";
        assert_eq!(
            driver_version_from_proc(proc_text).as_deref(),
            Some("580.95.05")
        );
        assert_eq!(driver_version_from_proc(""), None);
        assert_eq!(
            smi_field(SMI, "Driver Version:").as_deref(),
            Some("580.95.05")
        );
        assert_eq!(smi_field(SMI, "CUDA Version:").as_deref(), Some("13.0"));
        assert_eq!(smi_field("no header", "CUDA Version:"), None);
    }

    #[test]
    fn the_reason_names_the_missing_piece() {
        let cpu = Libtorch {
            lib_dir: Some("/cache/libtorch-2.13.0-cpu/lib".into()),
            version: Some("2.13.0+cpu".into()),
            has_cuda_library: false,
        };
        let cuda = Libtorch {
            lib_dir: Some("/cache/libtorch-2.13.0-cu130/lib".into()),
            has_cuda_library: true,
            ..cpu.clone()
        };
        let new = Driver {
            version: Some("580.95.05".into()),
            cuda: Some("13.0".into()),
        };
        let old = Driver {
            version: Some("535.183.01".into()),
            cuda: Some("12.2".into()),
        };
        let no_driver = why_no_cuda(&cuda, &CudaLibrary::Loaded, None);
        assert!(
            no_driver.starts_with("no NVIDIA driver on this machine"),
            "{no_driver}"
        );
        let cpu_only = why_no_cuda(&cpu, &CudaLibrary::Absent, Some(&new));
        assert!(
            cpu_only.contains("CPU-only libtorch in /cache/libtorch-2.13.0-cpu/lib"),
            "{cpu_only}"
        );
        let too_old = why_no_cuda(&cuda, &CudaLibrary::Loaded, Some(&old));
        assert!(
            too_old.contains(
                "driver 535.183.01 is too old for CUDA 13.0, which needs driver 580 or newer"
            ),
            "{too_old}"
        );
        let broken = CudaLibrary::Failed("libcublas.so.13: cannot open shared object file".into());
        let failed = why_no_cuda(&cuda, &broken, Some(&new));
        assert!(
            failed.contains("does not load (libcublas.so.13"),
            "{failed}"
        );
        assert!(failed.contains("fetch it whole"), "{failed}");
        let hidden = why_no_cuda(&cuda, &CudaLibrary::Loaded, Some(&new));
        assert!(hidden.contains("shows no GPU to this process"), "{hidden}");
        assert!(driver_too_old("580.65.06").is_none());
        assert!(driver_too_old("garbage").is_none());
    }

    #[test]
    fn out_of_memory_errors_of_libtorch_get_the_fixes() {
        let torch = "Torch(\"CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which 1.2 GiB is free.\")";
        let hint = out_of_memory_hint(torch).unwrap();
        assert!(hint.starts_with("the GPU ran out of memory"), "{hint}");
        assert!(
            hint.contains("--batch-size") && hint.contains("--sample-chunk"),
            "{hint}"
        );
        assert!(
            out_of_memory_hint("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate").is_some()
        );
        assert!(out_of_memory_hint("shape mismatch").is_none());
    }
}
