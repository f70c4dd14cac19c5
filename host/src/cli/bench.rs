//! `flowgym-host bench`: figures for speed, printed (no thresholds).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{args, warn_refused, Cli};
use crate::bench;
use crate::compose::{construct_context, open_model, open_reward};
use crate::device::parse_device;

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[command(subcommand)]
    pub which: Which,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum Which {
    /// Value Matching on the toy (1d/gmm + 1d/binary): seconds per iteration, sampling steps
    /// per second, and the host's overhead over the same loop written directly in libtorch.
    Vm {
        /// Trajectories per iteration.
        #[arg(long, default_value_t = 128)]
        batch_size: usize,
        /// Steps per trajectory.
        #[arg(long, default_value_t = 100)]
        steps: usize,
        /// Timed iterations (after two warm-up ones).
        #[arg(long, default_value_t = 10)]
        iterations: usize,
        /// libtorch threads (0: libtorch's default).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Base-model sampling: seconds per denoising step and images per second at 100 steps.
    Sampling {
        /// Base model id.
        #[arg(long)]
        model: String,
        /// Model arguments as a JSON object.
        #[arg(long, value_name = "JSON", value_parser = args::json_object)]
        model_args: Option<toml::Table>,
        /// Samples denoised at once.
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// libtorch threads (0: libtorch's default).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// `cpu`, `cuda` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// A directory the plugin may look for weights in (repeatable).
        #[arg(long = "weights", value_name = "DIR")]
        weights: Vec<PathBuf>,
    },
}

fn set_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

/// Runs the benchmark and prints its figures, then one JSON line.
pub fn run(cli: &Cli, args: &BenchArgs) -> Result<ExitCode> {
    let registry = cli.registry();
    warn_refused(&registry);
    match &args.which {
        Which::Vm {
            batch_size,
            steps,
            iterations,
            threads,
        } => {
            set_threads(*threads);
            let ctx = construct_context(tch::Device::Cpu, &[])?;
            let (mut model, _) = open_model(&registry, "1d/gmm", "{}", &ctx)?;
            let (mut reward, _) = open_reward(&registry, "1d/binary", "{}", &ctx)?;
            let f = bench::value_matching(
                &mut model,
                &mut reward,
                *batch_size,
                *steps,
                (*iterations).max(1),
            )?;
            println!("Value Matching, 1d/gmm + 1d/binary, batch {}, {} steps, MLP value network, {} libtorch thread(s):", f.batch_size, f.steps, f.threads);
            println!(
                "  seconds per iteration (host, through plugins): {:.4}",
                f.seconds_per_iteration
            );
            println!(
                "  seconds per iteration (direct libtorch loop):  {:.4}",
                f.floor_seconds_per_iteration
            );
            println!(
                "  share of wall time the host adds outside libtorch: {:.1}%",
                100.0 * f.host_overhead_share
            );
            println!("  controlled sampling: {:.0} steps per second ({:.4} s per batch of {} trajectories)", f.sampling_steps_per_second, f.sampling_seconds, f.batch_size);
            println!("json: {}", serde_json::to_string(&f)?);
        }
        Which::Sampling {
            model,
            model_args,
            batch_size,
            warmup,
            steps,
            threads,
            device,
            weights,
        } => {
            set_threads(*threads);
            let device = parse_device(device)?;
            let ctx = construct_context(device, weights)?;
            let model_args = args::json_text(&model_args.clone().unwrap_or_default());
            let (mut model, _) = open_model(&registry, model, &model_args, &ctx)?;
            let f = bench::sampling(
                &mut model,
                *batch_size,
                (*warmup).max(1),
                (*steps).max(1),
                device,
            )?;
            println!(
                "{} sampling, batch {}, {} libtorch thread(s):",
                f.model, f.batch_size, f.threads
            );
            println!("  seconds per denoising step: {:.4}", f.seconds_per_step);
            println!(
                "  images per second at 100 steps: {:.4}",
                f.images_per_second_at_100_steps
            );
            println!("json: {}", serde_json::to_string(&f)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
