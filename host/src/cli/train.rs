//! `train-base` and `train-classifier`: the image plugin's trainer, `flowgym-train`, which
//! ships next to the host (it links the architectures of the `flowgym-images` plugin, which the
//! host itself does not).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::Args;

/// The trainer's own arguments, passed on as they are.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The trainer's options (`--help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// The trainer's file name on this system.
fn trainer_name() -> String {
    format!("flowgym-train{}", std::env::consts::EXE_SUFFIX)
}

/// `flowgym-train` next to the host's executable, else on `PATH`.
fn find_trainer() -> Result<PathBuf> {
    let name = trainer_name();
    let exe = std::env::current_exe().context("cannot find the host executable")?;
    if let Some(dir) = exe.parent() {
        let beside = dir.join(&name);
        if beside.is_file() {
            return Ok(beside);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(&name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "`{name}` is neither next to {} nor on PATH; build it with \
         `cargo xtask cargo build --release -p flowgym-images` (it comes with the image plugin)",
        exe.display()
    )
}

/// Runs `flowgym-train SUBCOMMAND ARGS...` and returns its exit status.
pub fn run(subcommand: &str, args: &TrainArgs) -> Result<ExitCode> {
    let trainer = find_trainer()?;
    let status = Command::new(&trainer)
        .arg(subcommand)
        .args(&args.args)
        .status()
        .with_context(|| format!("cannot start {}", trainer.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(code.clamp(1, 255) as u8),
        None => ExitCode::FAILURE,
    })
}
