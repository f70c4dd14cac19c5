//! `--mpi`: data-parallel runs over MPI. Builds the host's `mpi` feature, installs what that
//! needs when it is missing (an MPI library with its compiler wrapper, and libclang for the
//! bindings) from the Debian packages, and launches `--ranks N` processes with `mpirun`.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

/// Debian packages the `mpi` feature builds and runs with.
pub const DEBIAN_PACKAGES: &[&str] = &["libopenmpi-dev", "openmpi-bin", "libclang-dev"];

/// What `--mpi` and `--ranks N` asked for, taken out of the arguments.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MpiRequest {
    /// Build (and test) the `mpi` feature.
    pub enabled: bool,
    /// Launch the host as this many ranks with `mpirun`.
    pub ranks: Option<usize>,
}

/// Removes `--mpi` and `--ranks N` (`--ranks=N`) from `args`; `--ranks` implies `--mpi`.
pub fn take_request(args: &mut Vec<OsString>) -> Result<MpiRequest, String> {
    let mut request = MpiRequest::default();
    let mut kept = Vec::with_capacity(args.len());
    let mut iter = std::mem::take(args).into_iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy().into_owned();
        if text == "--" {
            kept.push(arg);
            kept.extend(iter.by_ref());
            break;
        }
        if text == "--mpi" {
            request.enabled = true;
        } else if text == "--ranks" || text.starts_with("--ranks=") {
            let value = match text.strip_prefix("--ranks=") {
                Some(v) => v.to_string(),
                None => iter
                    .next()
                    .map(|v| v.to_string_lossy().into_owned())
                    .ok_or("--ranks needs a number of ranks")?,
            };
            let n: usize = value
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("--ranks {value}: not a positive number of ranks"))?;
            request.ranks = Some(n);
            request.enabled = true;
        } else {
            kept.push(arg);
        }
    }
    *args = kept;
    Ok(request)
}

/// Whether the tools the `mpi` crate builds with are there: an MPI compiler wrapper and
/// libclang.
fn missing() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !on_path("mpicc") || !on_path("mpirun") {
        missing.push("an MPI library with `mpicc` and `mpirun` (libopenmpi-dev, openmpi-bin)");
    }
    if !libclang_present() {
        missing.push("libclang (libclang-dev)");
    }
    missing
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

fn libclang_present() -> bool {
    if let Some(dir) = std::env::var_os("LIBCLANG_PATH") {
        return Path::new(&dir).is_dir();
    }
    let has_libclang = |dir: &Path| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libclang"))
        })
    };
    let llvm = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten();
    llvm.filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
        .any(|e| has_libclang(&e.path().join("lib")))
        || has_libclang(Path::new("/usr/lib/x86_64-linux-gnu"))
        || has_libclang(Path::new("/usr/lib/aarch64-linux-gnu"))
}

/// Installs the Debian packages when something is missing (with `sudo` unless root); says
/// what to install by hand elsewhere.
pub fn ensure_installed() -> Result<(), String> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    if !on_path("apt-get") {
        return Err(format!(
            "--mpi needs {}; install them with your system's package manager (or load your cluster's MPI module) and run again",
            missing.join(" and ")
        ));
    }
    eprintln!(
        "xtask: --mpi needs {}: installing the Debian packages {}",
        missing.join(" and "),
        DEBIAN_PACKAGES.join(" ")
    );
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let mut command = if root {
        Command::new("apt-get")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("apt-get");
        sudo
    };
    command
        .args(["install", "-y", "--no-install-recommends"])
        .args(DEBIAN_PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive");
    let status = command
        .status()
        .map_err(|e| format!("could not start apt-get: {e}"))?;
    if !status.success() {
        return Err(format!(
            "apt-get install {} failed ({status}); if the package lists are stale, run `apt-get update` first",
            DEBIAN_PACKAGES.join(" ")
        ));
    }
    match missing_after_install() {
        None => Ok(()),
        Some(still) => Err(format!("after installing, still missing: {still}")),
    }
}

fn missing_after_install() -> Option<String> {
    let still = missing();
    (!still.is_empty()).then(|| still.join(" and "))
}

/// `mpirun -np N` with the options a single machine needs: `--oversubscribe` when there are
/// more ranks than cores, `--allow-run-as-root` as root (Open MPI refuses root otherwise).
pub fn mpirun(ranks: usize) -> Command {
    let mut command = Command::new("mpirun");
    command.arg("-np").arg(ranks.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let open_mpi = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Open MPI"));
    if open_mpi {
        if ranks > cores {
            command.arg("--oversubscribe");
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if root {
            command.arg("--allow-run-as-root");
        }
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn mpi_flags_are_taken_out_of_the_arguments() {
        let mut args = os(&["--mpi", "--ranks", "2", "--model", "1d/gmm"]);
        let request = take_request(&mut args).unwrap();
        assert_eq!(
            request,
            MpiRequest {
                enabled: true,
                ranks: Some(2)
            }
        );
        assert_eq!(args, os(&["--model", "1d/gmm"]));
        let mut args = os(&["--ranks=3", "--", "--mpi"]);
        let request = take_request(&mut args).unwrap();
        assert_eq!(request.ranks, Some(3));
        assert_eq!(args, os(&["--", "--mpi"]));
        let mut args = os(&["--ranks", "zero"]);
        assert!(take_request(&mut args).unwrap_err().contains("zero"));
        let mut args = os(&["--iterations", "3"]);
        assert_eq!(take_request(&mut args).unwrap(), MpiRequest::default());
    }
}
