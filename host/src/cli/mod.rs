//! The `flowgym-host` command line.

mod args;
mod bench;
mod check;
mod doctor;
mod list;
mod run;
mod sample;
mod train;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::plugins::trust::{require_trusted, trust_file_path};
use crate::plugins::{Registry, TrustFile, TrustPolicy};

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
    /// Load only plugin files pinned with `flowgym-host trust` and unchanged since, and refuse
    /// plugin directories and files that other users can write. Also on with
    /// FLOWGYM_REQUIRE_TRUSTED=1 or `require_trusted = true` in the trust file
    /// ($FLOWGYM_HOME/trust.toml, else $XDG_CONFIG_HOME/flowgym/trust.toml, else
    /// ~/.config/flowgym/trust.toml).
    #[arg(long, global = true)]
    pub require_trusted: bool,
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
    /// Pin plugin files by sha256 in the trust file ($FLOWGYM_HOME/trust.toml, else
    /// $XDG_CONFIG_HOME/flowgym/trust.toml, else ~/.config/flowgym/trust.toml), unpin them
    /// with --remove, or list the pins (no FILE).
    Trust(trust::TrustArgs),
    /// The isolated reward's worker process (started by the host itself).
    #[cfg(unix)]
    #[command(name = "reward-worker", hide = true)]
    RewardWorker,
    /// Train a diffusers UNet2DModel as a DDPM on an image dataset and write a diffusers
    /// folder, with checkpoints and --resume (`train-base --help` lists the options).
    #[command(name = "train-base", disable_help_flag = true)]
    TrainBase(train::TrainArgs),
    /// Train the digit classifier of `images/digit` on a labelled image dataset and report its
    /// held-out accuracy (`train-classifier --help` lists the options).
    #[command(name = "train-classifier", disable_help_flag = true)]
    TrainClassifier(train::TrainArgs),
    /// Report the libtorch build, the devices it sees, the NVIDIA driver, and why CUDA is
    /// unavailable when it is.
    Doctor(doctor::DoctorArgs),
}

impl Cli {
    /// The trust file and whether only trusted files may load.
    pub fn trust_policy(&self) -> anyhow::Result<TrustPolicy> {
        let trust = TrustFile::load(&trust_file_path()?)?;
        let require_trusted = require_trusted(self.require_trusted, &trust)?;
        Ok(TrustPolicy {
            trust,
            require_trusted,
        })
    }

    /// Loads every plugin the search path finds and the trust policy admits.
    pub fn registry(&self) -> anyhow::Result<Registry> {
        Ok(Registry::discover(
            &self.plugin_dirs,
            &self.prefer,
            self.trust_policy()?,
        ))
    }
}

/// Prints the discovery warnings and one warning per refused plugin file to stderr.
pub fn warn_refused(registry: &Registry) {
    for warning in &registry.warnings {
        eprintln!("warning: {warning}");
    }
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
    explain_out_of_memory_panics();
    if let Some(refusal) = only_run_is_data_parallel(&cli.command) {
        eprintln!("error: {refusal}");
        return ExitCode::FAILURE;
    }
    let result = match &cli.command {
        Command::List(args) => list::run(&cli, args),
        Command::Check(args) => check::run(&cli, args),
        Command::Run(args) => run::run(&cli, args),
        Command::Sample(args) => sample::run(&cli, args),
        Command::Bench(args) => bench::run(&cli, args),
        Command::Trust(args) => trust::run(args),
        #[cfg(unix)]
        Command::RewardWorker => crate::isolate::worker::main().map(|()| ExitCode::SUCCESS),
        Command::Doctor(args) => doctor::run(&cli, args),
        Command::TrainBase(args) => train::run("base", args),
        Command::TrainClassifier(args) => train::run("classifier", args),
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

/// Under an MPI launcher of several ranks only `run` shares its work; any other command would
/// run once per rank, each writing the same files.
fn only_run_is_data_parallel(command: &Command) -> Option<String> {
    #[cfg(unix)]
    if matches!(command, Command::RewardWorker) {
        return None;
    }
    if matches!(command, Command::Run(_)) {
        return None;
    }
    let launch = crate::distributed::launcher::detect().filter(|l| l.size > 1)?;
    Some(format!(
        "{} started this command as rank {} of {}, but only `run` runs on several ranks; start this one as a single process",
        launch.launcher, launch.rank, launch.size
    ))
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
