//! The reference figure of `bench sampling --reference`: diffusers' `DDPMPipeline` on the same
//! diffusers folder, timed by a small Python script (carried in the host binary) in the
//! interpreter the user names, else `$FLOWGYM_PYTHON`, else the reference environment
//! `~/.cache/flowgym/pyref/bin/python`, else `python3`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The script, written to a temporary file for each run.
const SCRIPT: &str = include_str!("ddpm_pipeline.py");

/// What the script measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineFigures {
    /// The pipeline and scheduler.
    pub pipeline: String,
    /// The PyTorch release.
    pub torch: String,
    /// PyTorch threads.
    pub threads: i32,
    /// Images per call.
    pub batch_size: usize,
    /// Denoising steps per call.
    pub steps: usize,
    /// Median seconds of one call.
    pub seconds: f64,
    /// `seconds / steps`.
    pub seconds_per_step: f64,
    /// `batch_size / seconds`.
    pub images_per_second: f64,
}

/// The Python interpreter: `explicit`, else `$FLOWGYM_PYTHON`, else the reference environment,
/// else `python3`.
pub fn python(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    if let Some(path) = std::env::var_os("FLOWGYM_PYTHON") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("FLOWGYM_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/flowgym")));
    match home.map(|h| h.join("pyref/bin/python")) {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from("python3"),
    }
}

/// Times diffusers' pipeline on `folder`: `steps` steps on a batch of `batch_size`, with
/// `threads` PyTorch threads (0: PyTorch's default), the median of `repeats` calls.
pub fn ddpm_pipeline(
    python: &Path,
    folder: &Path,
    batch_size: usize,
    steps: usize,
    threads: usize,
    repeats: usize,
) -> Result<PipelineFigures> {
    if !folder.is_dir() {
        bail!("--reference {}: no such folder", folder.display());
    }
    let script =
        std::env::temp_dir().join(format!("flowgym-ddpm-pipeline-{}.py", std::process::id()));
    std::fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    let output = Command::new(python)
        .arg(&script)
        .arg(folder)
        .args([batch_size, steps, threads, repeats].map(|v| v.to_string()))
        .output();
    let _ = std::fs::remove_file(&script);
    let output = output.with_context(|| {
        format!(
            "cannot start {} for the diffusers reference (set --python or FLOWGYM_PYTHON to a \
             Python with torch and diffusers)",
            python.display()
        )
    })?;
    if !output.status.success() {
        bail!(
            "the diffusers reference failed ({} with torch and diffusers is needed): {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("reading the reference's answer {line:?}"))
}
