//! Which libtorch build the set-up fetches: the CUDA one on a Linux machine with an NVIDIA
//! driver new enough for it, or when `FLOWGYM_CUDA=1` asks for it; the CPU one otherwise.

use std::process::Command;

/// The CUDA release the Linux torch 2.13.0 wheel on PyPI is built with.
pub const CUDA_VERSION: &str = "13.0";
/// The oldest Linux driver branch that runs CUDA 13.x programs (CUDA's minor-version
/// compatibility: every 13.x runtime runs on a 580 driver).
pub const MIN_DRIVER: (u32, u32) = (580, 0);

/// The libtorch build the set-up uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// CPU only: libtorch_cpu and the CUDA runtime stubs it links.
    Cpu,
    /// CUDA 13.0: the torch wheel's CUDA libraries and the NVIDIA runtime wheels.
    Cuda,
}

impl Variant {
    /// The cache directory suffix and `build-version` local part: `cpu` or `cu130`.
    pub fn tag(self) -> &'static str {
        match self {
            Variant::Cpu => "cpu",
            Variant::Cuda => "cu130",
        }
    }
}

/// What the machine says about its NVIDIA driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driver {
    /// No driver: no `/proc/driver/nvidia/version` and no `nvidia-smi` answering.
    Absent,
    /// A driver, with its version when it could be read.
    Present(Option<String>),
}

/// The choice and the reason it is printed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The build to use.
    pub variant: Variant,
    /// Why, in a few words.
    pub reason: String,
}

/// Looks at this machine: `/proc/driver/nvidia/version`, else `nvidia-smi`.
pub fn detect_driver() -> Driver {
    if !cfg!(target_os = "linux") {
        return Driver::Absent;
    }
    if let Ok(text) = std::fs::read_to_string("/proc/driver/nvidia/version") {
        return Driver::Present(driver_version_from_proc(&text));
    }
    let smi = Command::new("nvidia-smi")
        .args(["--query-gpu=driver_version", "--format=csv,noheader"])
        .output();
    match smi {
        Ok(out) if out.status.success() => Driver::Present(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(|line| line.trim().to_string())
                .filter(|v| parse_version(v).is_some()),
        ),
        _ => Driver::Absent,
    }
}

/// The driver version in the text of `/proc/driver/nvidia/version`
/// (`NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Tue ...`).
pub fn driver_version_from_proc(text: &str) -> Option<String> {
    let line = text.lines().find(|line| line.starts_with("NVRM version"))?;
    line.split_whitespace()
        .find(|word| word.contains('.') && parse_version(word).is_some())
        .map(str::to_string)
}

/// `major.minor` of a driver version such as `580.95.05`.
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// An error naming the driver, what CUDA 13.0 needs and the fix when `version` is too old.
pub fn check_driver(version: &str) -> Result<(), String> {
    match parse_version(version) {
        Some(found) if found < MIN_DRIVER => Err(format!(
            "the NVIDIA driver {version} is too old for the CUDA {CUDA_VERSION} build of libtorch, which needs driver {}.{:02} or newer (CUDA {CUDA_VERSION}). Update the NVIDIA driver to the {} branch or newer, or use the CPU build: FLOWGYM_CUDA=0",
            MIN_DRIVER.0, MIN_DRIVER.1, MIN_DRIVER.0
        )),
        _ => Ok(()),
    }
}

/// The build for `FLOWGYM_CUDA` (`1` forces CUDA, `0` forbids it, unset decides by the
/// driver) on a machine whose driver is `driver`; an error for another setting or a driver too
/// old.
pub fn choose(setting: Option<&str>, driver: &Driver, linux: bool) -> Result<Choice, String> {
    let choice = |variant, reason: &str| Choice {
        variant,
        reason: reason.to_string(),
    };
    let driver_text = match driver {
        Driver::Present(Some(version)) => format!("NVIDIA driver {version} found"),
        Driver::Present(None) => "NVIDIA driver found".to_string(),
        Driver::Absent => "no NVIDIA driver found".to_string(),
    };
    let version = match driver {
        Driver::Present(Some(version)) => Some(version.as_str()),
        _ => None,
    };
    match setting.map(str::trim) {
        Some("0") => Ok(choice(Variant::Cpu, "FLOWGYM_CUDA=0 forbids the CUDA build")),
        Some("1") => {
            if !linux {
                return Err("FLOWGYM_CUDA=1: the CUDA build of libtorch is fetched on Linux only; set LIBTORCH to a CUDA libtorch 2.13 instead".into());
            }
            if let Some(version) = version {
                check_driver(version)?;
            }
            Ok(choice(
                Variant::Cuda,
                &format!("forced by FLOWGYM_CUDA=1 ({driver_text})"),
            ))
        }
        Some("") | None => {
            if !linux || *driver == Driver::Absent {
                let why = if linux {
                    "no NVIDIA driver found (FLOWGYM_CUDA=1 fetches the CUDA build anyway)"
                } else {
                    "the CUDA build is fetched on Linux only"
                };
                return Ok(choice(Variant::Cpu, why));
            }
            if let Some(version) = version {
                check_driver(version)?;
            }
            Ok(choice(
                Variant::Cuda,
                &format!("{driver_text}; FLOWGYM_CUDA=0 uses the CPU build"),
            ))
        }
        Some(other) => Err(format!(
            "FLOWGYM_CUDA={other}: expected 1 (fetch and use the CUDA build of libtorch) or 0 (the CPU build)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_VERSION: &str = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U22-I3-AE18-23-3)  Tue Sep 23 09:55:41 UTC 2025
GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)
";

    #[test]
    fn the_driver_version_is_read_from_proc() {
        assert_eq!(
            driver_version_from_proc(PROC_VERSION).as_deref(),
            Some("580.95.05")
        );
        let old = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n";
        assert_eq!(driver_version_from_proc(old).as_deref(), Some("535.183.01"));
        assert_eq!(driver_version_from_proc("garbage"), None);
    }

    #[test]
    fn an_old_driver_is_refused_with_both_versions_and_the_fix() {
        assert!(check_driver("580.65.06").is_ok());
        assert!(check_driver("590.1").is_ok());
        let err = check_driver("575.57.08").unwrap_err();
        assert!(err.contains("driver 575.57.08 is too old"), "{err}");
        assert!(
            err.contains("needs driver 580.00 or newer (CUDA 13.0)"),
            "{err}"
        );
        assert!(err.contains("FLOWGYM_CUDA=0"), "{err}");
    }

    #[test]
    fn the_variant_follows_the_driver_and_the_setting() {
        let new = Driver::Present(Some("580.95.05".into()));
        let old = Driver::Present(Some("550.54.15".into()));
        let c = choose(None, &new, true).unwrap();
        assert_eq!(c.variant, Variant::Cuda);
        assert!(
            c.reason.starts_with("NVIDIA driver 580.95.05 found"),
            "{}",
            c.reason
        );
        let c = choose(None, &Driver::Absent, true).unwrap();
        assert_eq!(c.variant, Variant::Cpu);
        assert!(
            c.reason.starts_with("no NVIDIA driver found"),
            "{}",
            c.reason
        );
        assert_eq!(choose(Some("0"), &new, true).unwrap().variant, Variant::Cpu);
        let c = choose(Some("1"), &Driver::Absent, true).unwrap();
        assert_eq!(c.variant, Variant::Cuda);
        assert_eq!(
            c.reason,
            "forced by FLOWGYM_CUDA=1 (no NVIDIA driver found)"
        );
        assert!(choose(None, &old, true).unwrap_err().contains("550.54.15"));
        assert!(choose(Some("1"), &old, true).is_err());
        assert_eq!(choose(Some("0"), &old, true).unwrap().variant, Variant::Cpu);
        assert_eq!(choose(None, &new, false).unwrap().variant, Variant::Cpu);
        assert!(choose(Some("yes"), &new, true)
            .unwrap_err()
            .contains("expected 1"));
        // A driver whose version could not be read is given the benefit of the doubt.
        assert_eq!(
            choose(None, &Driver::Present(None), true).unwrap().variant,
            Variant::Cuda
        );
    }
}
