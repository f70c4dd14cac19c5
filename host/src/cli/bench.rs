//! `flowgym-host bench`: figures for speed, printed (no thresholds).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{args, warn_refused, Cli};
use crate::bench;
use crate::compose::{construct_context, open_model, open_reward};
use crate::device::{intra_op_threads, parse_device};
use crate::model::Model;
use crate::plugins::Registry;
use crate::quality;
use crate::run::RunConfig;

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
        /// libtorch threads (0: as a run chooses them: one for small batches of flat data on the
        /// CPU, libtorch's default otherwise).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Value Matching with the default configuration on problems whose optimum is known:
    /// normalised improvement and distance to p* against its noise floor, per problem.
    Quality(QualityArgs),
    /// Isolated against in-process reward calls: the JPEG reward (images/compression) on
    /// image batches of 16 and 64, the toy reward (1d/binary) on 10,000 points; the added time
    /// per call, its share of the reward's own time and of an iteration.
    #[cfg(unix)]
    Isolation(IsolationArgs),
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
        /// libtorch threads (0: as a run chooses them: one for small batches of flat data on the
        /// CPU, libtorch's default otherwise).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// `cpu`, `cuda` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// A directory the plugin may look for weights in (repeatable).
        #[arg(long = "weights", value_name = "DIR")]
        weights: Vec<PathBuf>,
        /// A diffusers folder of the same weights: also time diffusers' DDPMPipeline on it
        /// (100 steps, same batch and threads) and print both, e.g.
        /// `--reference plugins/images/weights/digits` for images/digits.
        #[arg(long, value_name = "DIR")]
        reference: Option<PathBuf>,
        /// The Python with torch and diffusers for --reference [default: $FLOWGYM_PYTHON, else
        /// ~/.cache/flowgym/pyref/bin/python, else python3].
        #[arg(long, value_name = "FILE")]
        python: Option<PathBuf>,
    },
    /// Peak resident memory of loading a model and a reward (default: the headline pair,
    /// images/sd2 and images/aesthetic, at their default settings).
    Memory(MemoryArgs),
}

/// Options of `bench memory`.
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Base model id.
    #[arg(long, default_value = "images/sd2")]
    pub model: String,
    /// Model arguments as a JSON object.
    #[arg(long, value_name = "JSON", value_parser = args::json_object)]
    pub model_args: Option<toml::Table>,
    /// Reward id (empty: the model alone).
    #[arg(long, default_value = "images/aesthetic")]
    pub reward: String,
    /// Reward arguments as a JSON object.
    #[arg(long, value_name = "JSON", value_parser = args::json_object)]
    pub reward_args: Option<toml::Table>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A directory the plugins may look for weights in (repeatable).
    #[arg(long = "weights", value_name = "DIR")]
    pub weights: Vec<PathBuf>,
}

fn memory(registry: &crate::plugins::Registry, args: &MemoryArgs) -> Result<ExitCode> {
    let device = parse_device(&args.device)?;
    let ctx = construct_context(device, &args.weights)?;
    let json = |table: &Option<toml::Table>| args::json_text(&table.clone().unwrap_or_default());
    let f: bench::MemoryFigures = bench::memory(
        registry,
        &args.model,
        &json(&args.model_args),
        &args.reward,
        &json(&args.reward_args),
        &ctx,
    )?;
    println!("peak resident memory on {} (MiB):", args.device);
    println!("  host and plugin files loaded: {:.0}", f.peak_mib_start);
    println!("  after loading {}: {:.0}", f.model, f.peak_mib_model);
    if !f.reward.is_empty() {
        println!(
            "  after loading {} too: {:.0}",
            f.reward, f.peak_mib_model_and_reward
        );
    }
    println!("resident once loaded (MiB): {:.0}", f.resident_mib_loaded);
    println!("json: {}", serde_json::to_string(&f)?);
    Ok(ExitCode::SUCCESS)
}

/// Options of `bench isolation`.
#[derive(Debug, Args)]
pub struct IsolationArgs {
    /// Timed calls per case (after two warm-up calls).
    #[arg(long, default_value_t = 20)]
    pub calls: usize,
    /// Image model whose denoising steps make up an image iteration, e.g. `images/cifar`
    /// (without it the image cases report no iteration share).
    #[arg(long)]
    pub image_model: Option<String>,
    /// Its arguments as a JSON object, e.g. '{"weights": "/models/ddpm-cifar10-32"}'.
    #[arg(long, value_name = "JSON", value_parser = args::json_object)]
    pub image_model_args: Option<toml::Table>,
    /// Sampler steps per iteration.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// libtorch threads, in the host and in the worker (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Options of `bench quality`.
#[derive(Debug, Args)]
pub struct QualityArgs {
    /// Only the problems with these names (comma-separated; default: the whole suite).
    #[arg(long, value_delimiter = ',', conflicts_with = "fast")]
    pub problems: Vec<String>,
    /// Only the fast subset the tests run.
    #[arg(long)]
    pub fast: bool,
    /// A run configuration whose other keys apply to every problem (default: the defaults).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Value Matching iterations [default: the configuration's].
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Run seed [default: the configuration's].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the runs go, one directory per problem [default: runs/quality-<date>-<time>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

fn quality(registry: &crate::plugins::Registry, args: &QualityArgs) -> Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => RunConfig::from_toml_file(path)?,
        None => RunConfig::default(),
    };
    config.iterations = args.iterations.unwrap_or(config.iterations);
    config.seed = args.seed.unwrap_or(config.seed);
    config.checkpoint_every = config.iterations.max(1);
    config.validate()?;
    let problems = if args.fast {
        quality::fast_subset()
    } else {
        quality::suite()
    };
    let unknown: Vec<&String> = args
        .problems
        .iter()
        .filter(|name| !problems.iter().any(|p| &p.name == *name))
        .collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = problems.iter().map(|p| p.name.as_str()).collect();
        anyhow::bail!(
            "unknown problem(s) {unknown:?}; the suite has: {}",
            names.join(", ")
        );
    }
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "quality-{}",
            chrono::Local::now().format("%Y%m%d-%H%M%S")
        ))
    });
    let mut rows = Vec::new();
    let mut refused = 0;
    for problem in problems
        .iter()
        .filter(|p| args.problems.is_empty() || args.problems.contains(&p.name))
    {
        eprintln!("quality: {} ({})", problem.name, problem.description);
        match bench::run_problem(registry, problem, &config, &out.join(&problem.name)) {
            Ok(figures) => rows.push(figures),
            Err(e) => {
                refused += 1;
                eprintln!("quality: {} not judged: {e:#}", problem.name);
            }
        }
    }
    print_quality_table(&config, &rows);
    let csv = out.join("quality.csv");
    let mut writer = csv::Writer::from_writer(Vec::new());
    for f in &rows {
        writer.serialize(f)?;
    }
    let bytes = writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(&out)?;
    crate::atomic_file::write_bytes_atomically(&csv, &bytes)?;
    println!(
        "figures per problem in {}, the table in {}",
        out.display(),
        csv.display()
    );
    println!("json: {}", serde_json::to_string(&rows)?);
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_quality_table(config: &RunConfig, rows: &[bench::QualityFigures]) {
    if rows.is_empty() {
        println!("Value Matching quality: no problem was judged");
        return;
    }
    let mut steps: Vec<usize> = rows.iter().map(|row| row.steps).collect();
    steps.sort_unstable();
    steps.dedup();
    let steps: Vec<String> = steps.iter().map(usize::to_string).collect();
    println!(
        "Value Matching quality, default configuration ({} iterations, batch {}, {} steps, lr {}):",
        config.iterations,
        config.batch_size,
        steps.join(" or "),
        config.lr
    );
    println!(
        "{:<28} {:>3} {:>4} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>6}",
        "problem",
        "d",
        "lam",
        "base",
        "adapted",
        "optimum",
        "norm.",
        "dist.0",
        "dist",
        "floor",
        "ratio"
    );
    for f in rows {
        println!(
            "{:<28} {:>3} {:>4} {:>8.4} {:>8.4} {:>8.4} {:>7.3} {:>8.4} {:>8.4} {:>8.4} {:>6.2}",
            f.problem,
            f.dimension,
            f.reward_scale,
            f.base_reward,
            f.adapted_reward,
            f.optimum_reward,
            f.normalised_improvement,
            f.distance_before,
            f.distance_after,
            f.noise_floor,
            f.distance_ratio
        );
    }
}

/// Seconds the model's `steps` denoising steps take at `batch_size` (median of three).
fn model_seconds(
    registry: &Registry,
    id: &str,
    args: &str,
    batch_size: usize,
    steps: usize,
) -> Result<f64> {
    let ctx = construct_context(tch::Device::Cpu, &[])?;
    let (mut model, _) = open_model(registry, id, args, &ctx)?;
    let f = bench::sampling(&mut model, batch_size, 1, 3, tch::Device::Cpu)?;
    Ok(f.seconds_per_step * steps as f64)
}

#[cfg(unix)]
fn isolation(registry: &Registry, args: &IsolationArgs) -> Result<ExitCode> {
    use crate::compose::open_isolated_reward;
    if args.threads > 0 {
        tch::set_num_threads(args.threads as i32);
    }
    let ctx = construct_context(tch::Device::Cpu, &[])?;
    let config = RunConfig {
        threads: args.threads,
        reward_timeout: 0.0,
        ..RunConfig::default()
    };
    let executable = std::env::current_exe()?;
    let image_args = args::json_text(&args.image_model_args.clone().unwrap_or_default());
    let cases: [(&str, &str, usize); 3] = [
        ("images/compression", "{}", 16),
        ("images/compression", "{}", 64),
        ("1d/binary", "{}", 10_000),
    ];
    let mut rows = Vec::new();
    for (id, reward_args, batch) in cases {
        let (mut in_process, meta) = match open_reward(registry, id, reward_args, &ctx) {
            Ok(opened) => opened,
            Err(e) => {
                eprintln!("isolation: {id} skipped: {e:#}");
                continue;
            }
        };
        let (mut isolated, _) = open_isolated_reward(
            registry,
            id,
            reward_args,
            &[],
            config.isolation(executable.clone()),
        )?;
        let model = match (meta.data_type.name.as_str(), &args.image_model) {
            ("1d", _) => Some(model_seconds(registry, "1d/gmm", "{}", batch, args.steps)?),
            (_, Some(model)) => Some(model_seconds(
                registry,
                model,
                &image_args,
                batch,
                args.steps,
            )?),
            _ => None,
        };
        rows.push(bench::isolation(
            &mut in_process,
            &mut isolated,
            &meta,
            batch,
            args.calls.max(1),
            model,
        )?);
    }
    println!(
        "Reward calls in the host's process and in a sandboxed worker, {} libtorch thread(s), median of {} calls:",
        tch::get_num_threads(),
        args.calls.max(1)
    );
    println!(
        "{:<20} {:>6} {:>11} {:>11} {:>11} {:>9} {:>11} {:>9} {:>10} {:>9}",
        "reward",
        "batch",
        "in-process",
        "isolated",
        "added",
        "of reward",
        "added CPU",
        "of reward",
        "iteration",
        "of iter."
    );
    for f in &rows {
        let (iteration, share) = match (f.iteration_seconds, f.added_share_of_iteration) {
            (Some(i), Some(s)) => (format!("{i:.3} s"), format!("{:.3}%", 100.0 * s)),
            _ => ("-".to_string(), "-".to_string()),
        };
        println!(
            "{:<20} {:>6} {:>9.3}ms {:>9.3}ms {:>9.3}ms {:>8.1}% {:>9.3}ms {:>8.1}% {:>10} {:>9}",
            f.reward,
            f.batch_size,
            1e3 * f.in_process_seconds,
            1e3 * f.isolated_seconds,
            1e3 * f.added_seconds,
            100.0 * f.added_share_of_reward,
            1e3 * f.added_cpu_seconds,
            100.0 * f.added_cpu_share_of_reward,
            iteration,
            share
        );
    }
    println!("json: {}", serde_json::to_string(&rows)?);
    Ok(ExitCode::SUCCESS)
}

/// Sets libtorch's threads as a run with these settings would.
fn set_threads(
    threads: usize,
    device: tch::Device,
    batch_size: usize,
    model: &mut Model,
) -> Result<()> {
    let example = {
        let _guard = tch::no_grad_guard();
        model.sample_p0(2, 0)?.0
    };
    if let Some(threads) = intra_op_threads(threads, device, batch_size, &example) {
        tch::set_num_threads(threads as i32);
    }
    Ok(())
}

/// Runs the benchmark and prints its figures, then one JSON line.
pub fn run(cli: &Cli, args: &BenchArgs) -> Result<ExitCode> {
    let registry = cli.registry()?;
    warn_refused(&registry);
    match &args.which {
        Which::Quality(quality_args) => return quality(&registry, quality_args),
        #[cfg(unix)]
        Which::Isolation(isolation_args) => return isolation(&registry, isolation_args),
        Which::Memory(memory_args) => return memory(&registry, memory_args),
        Which::Vm {
            batch_size,
            steps,
            iterations,
            threads,
        } => vm(&registry, *batch_size, *steps, *iterations, *threads)?,
        Which::Sampling {
            model,
            model_args,
            batch_size,
            warmup,
            steps,
            threads,
            device,
            weights,
            reference,
            python,
        } => sampling(
            &registry,
            SamplingBench {
                model,
                model_args,
                batch_size: *batch_size,
                warmup: *warmup,
                steps: *steps,
                threads: *threads,
                device,
                weights,
                reference: reference.as_deref(),
                python: python.as_deref(),
            },
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench vm`: the toy's Value Matching iteration through the host against the direct loop.
fn vm(
    registry: &crate::plugins::Registry,
    batch_size: usize,
    steps: usize,
    iterations: usize,
    threads: usize,
) -> Result<()> {
    let ctx = construct_context(tch::Device::Cpu, &[])?;
    let (mut model, _) = open_model(registry, "1d/gmm", "{}", &ctx)?;
    set_threads(threads, tch::Device::Cpu, batch_size, &mut model)?;
    let (mut reward, _) = open_reward(registry, "1d/binary", "{}", &ctx)?;
    let f = bench::value_matching(
        &mut model,
        &mut reward,
        batch_size,
        steps,
        iterations.max(1),
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
    if let (Some(host), Some(floor), Some(share)) = (
        f.cpu_seconds_per_iteration,
        f.floor_cpu_seconds_per_iteration,
        f.host_overhead_cpu_share,
    ) {
        println!("  CPU seconds per iteration: {host:.4} (host) against {floor:.4} (direct): the host adds {:.1}%", 100.0 * share);
    }
    println!(
        "  controlled sampling: {:.0} steps per second ({:.4} s per batch of {} trajectories)",
        f.sampling_steps_per_second, f.sampling_seconds, f.batch_size
    );
    println!("json: {}", serde_json::to_string(&f)?);
    Ok(())
}

/// What `bench sampling` was asked for.
struct SamplingBench<'a> {
    model: &'a str,
    model_args: &'a Option<toml::Table>,
    batch_size: usize,
    warmup: usize,
    steps: usize,
    threads: usize,
    device: &'a str,
    weights: &'a [PathBuf],
    reference: Option<&'a std::path::Path>,
    python: Option<&'a std::path::Path>,
}

/// `bench sampling`: seconds per denoising step of a model, and diffusers' beside it when asked.
fn sampling(registry: &crate::plugins::Registry, b: SamplingBench<'_>) -> Result<()> {
    let device = parse_device(b.device)?;
    let ctx = construct_context(device, b.weights)?;
    let model_args = args::json_text(&b.model_args.clone().unwrap_or_default());
    let (mut model, _) = open_model(registry, b.model, &model_args, &ctx)?;
    set_threads(b.threads, device, b.batch_size, &mut model)?;
    let f = bench::sampling(
        &mut model,
        b.batch_size,
        b.warmup.max(1),
        b.steps.max(1),
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
    if let Some(folder) = b.reference {
        let python = bench::reference::python(b.python);
        let r = bench::reference::ddpm_pipeline(
            &python,
            folder,
            b.batch_size,
            100,
            f.threads.max(0) as usize,
            b.steps.clamp(1, 3),
        )?;
        println!(
            "diffusers {} on {} (torch {}), batch {}, {} thread(s):",
            r.pipeline,
            folder.display(),
            r.torch,
            r.batch_size,
            r.threads
        );
        println!("  seconds per denoising step: {:.4}", r.seconds_per_step);
        println!(
            "  images per second at 100 steps: {:.4}",
            r.images_per_second
        );
        println!(
            "  Flow Gym / diffusers images per second: {:.2}",
            f.images_per_second_at_100_steps / r.images_per_second
        );
        println!("json: {}", serde_json::to_string(&r)?);
    }
    Ok(())
}
