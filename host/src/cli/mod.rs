//! The `flowgym-host` command line.

mod args;
mod bench;
mod check;
mod doctor;
mod list;
mod run;
mod sample;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::plugins::Registry;

/// Flow Gym: adapt a pre-trained flow or diffusion model to a reward with Value Matching.
#[derive(Debug, Parser)]
#[command(name = "flowgym-host", version, about, long_about = None)]
pub struct Cli {
    /// A directory of plugin files (repeatable). Searched before FLOWGYM_PLUGIN_PATH, the
    /// executable's directory and the user directory (~/.local/share/flowgym/plugins).
    #[arg(long = "plugins", value_name = "DIR", global = true)]
    pub plugin_dirs: Vec<PathBuf>,
    /// When an entry id is defined by several plugin files, use the one in FILE (repeatable).
    #[arg(long, value_name = "FILE", global = true)]
    pub prefer: Vec<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List plugin files, data types, models and rewards with their versions and arguments.
    List(list::ListArgs),
    /// Say whether a model and a reward can run together, and why not.
    Check(check::CheckArgs),
    /// Adapt a model to a reward with Value Matching (default: the 1-d toy).
    Run(Box<run::RunArgs>),
    /// Draw samples from a base model, or from a model adapted by a run.
    Sample(sample::SampleArgs),
    /// Print speed figures (Value Matching on the toy, or a model's sampling throughput).
    Bench(bench::BenchArgs),
    /// Report the libtorch build, the devices it sees, the NVIDIA driver, and why CUDA is
    /// unavailable when it is.
    Doctor(doctor::DoctorArgs),
}

impl Cli {
    /// Loads every plugin the search path finds.
    pub fn registry(&self) -> Registry {
        Registry::discover(&self.plugin_dirs, &self.prefer)
    }
}

/// Prints one warning per refused plugin file to stderr.
pub fn warn_refused(registry: &Registry) {
    for failure in &registry.failures {
        eprintln!("warning: skipped {failure}");
    }
}

/// Runs the command line; errors are printed with their causes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    explain_out_of_memory_panics();
    let result = match &cli.command {
        Command::List(args) => list::run(&cli, args),
        Command::Check(args) => check::run(&cli, args),
        Command::Run(args) => run::run(&cli, args),
        Command::Sample(args) => sample::run(&cli, args),
        Command::Bench(args) => bench::run(&cli, args),
        Command::Doctor(args) => doctor::run(&cli, args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if let Some(hint) = crate::gpu::out_of_memory_hint(&format!("{err:#}")) {
                eprintln!("{hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// libtorch reports a GPU out of memory as an error that tch's tensor operations turn into a
/// panic: after the panic's own message, say what it means and what to change.
fn explain_out_of_memory_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let payload = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(hint) = crate::gpu::out_of_memory_hint(payload) {
            eprintln!("{hint}");
        }
    }));
}
