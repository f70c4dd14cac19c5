//! The `flowgym-host` command line.

mod args;
mod bench;
mod check;
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
    /// Never use the network: plugins only read weights already on disk (sets HF_HUB_OFFLINE=1
    /// for them, as the Hugging Face tools read it).
    #[arg(long, global = true)]
    pub offline: bool,
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
    if cli.offline {
        // Before any plugin is loaded or constructed, and before any thread starts.
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let result = match &cli.command {
        Command::List(args) => list::run(&cli, args),
        Command::Check(args) => check::run(&cli, args),
        Command::Run(args) => run::run(&cli, args),
        Command::Sample(args) => sample::run(&cli, args),
        Command::Bench(args) => bench::run(&cli, args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
