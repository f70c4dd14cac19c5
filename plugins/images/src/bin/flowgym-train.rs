//! `flowgym-train`: trains the project's image models (`flowgym-host train-base` and
//! `flowgym-host train-classifier` run it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use flowgym_images::train::base::{default_scheduler, default_unet, BaseSettings, BaseTrainer};
use flowgym_images::train::classifier::{train_classifier, ClassifierSettings};
use flowgym_images::train::data::ImageData;
use indicatif::{ProgressBar, ProgressStyle};
use tch::Device;

/// Train image models: a diffusers UNet2DModel as a DDPM, or the digit classifier.
#[derive(Debug, Parser)]
#[command(name = "flowgym-train", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a UNet2DModel as a DDPM and write a diffusers folder.
    Base(BaseArgs),
    /// Train the digit classifier of `images/digit`.
    Classifier(ClassifierArgs),
}

/// `train-base`.
#[derive(Debug, Args)]
struct BaseArgs {
    /// The images: a .safetensors file (`images` [N, C, H, W], uint8 or floats in [0, 1]) or a
    /// .csv / .csv.gz file (one square grey image per row, then its label).
    #[arg(long)]
    data: PathBuf,
    /// The output folder (a diffusers folder, with `checkpoint/` for resuming).
    #[arg(long)]
    out: PathBuf,
    /// Optimiser steps in all.
    #[arg(long, default_value_t = 6000)]
    steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch_size: i64,
    /// Peak learning rate (warm-up over 100 steps, cosine decay to a tenth).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed of the weights and of every step's draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Decay of the exponential moving average written as the model.
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// A UNet2DModel config.json whose keys replace the defaults (3 levels of 32, 64, 64
    /// channels, one resnet per block, attention at the deeper two).
    #[arg(long)]
    unet_config: Option<PathBuf>,
    /// A scheduler_config.json whose keys replace the DDPMScheduler defaults (linear betas
    /// 1e-4 to 0.02, 1000 steps, clip_sample).
    #[arg(long)]
    scheduler_config: Option<PathBuf>,
    /// Continue the checkpoint in --out (only --steps may differ).
    #[arg(long)]
    resume: bool,
    /// CPU threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// `train-classifier`.
#[derive(Debug, Args)]
struct ClassifierArgs {
    /// A labelled dataset (as for `base`).
    #[arg(long)]
    data: PathBuf,
    /// The output folder.
    #[arg(long)]
    out: PathBuf,
    /// Passes over the training images.
    #[arg(long, default_value_t = 40)]
    epochs: u64,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: i64,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed of the split, the weights and the batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of the images held out to measure the accuracy.
    #[arg(long, default_value_t = 0.2)]
    held_out: f64,
    /// CPU threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Base(args) => base(args),
        Command::Classifier(args) => classifier(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `base` of the JSON object in `path`, with its keys replacing those of `base`.
fn overlay(mut base: serde_json::Value, path: Option<&Path>) -> Result<serde_json::Value> {
    let Some(path) = path else { return Ok(base) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let serde_json::Value::Object(keys) =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
    else {
        bail!("{} is not a JSON object", path.display());
    };
    for (key, value) in keys {
        base[key] = value;
    }
    Ok(base)
}

fn base(args: BaseArgs) -> Result<()> {
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        other => match other.strip_prefix("cuda:").map(str::parse) {
            Some(Ok(i)) => Device::Cuda(i),
            _ if other == "cuda" => Device::Cuda(0),
            _ => bail!("--device {other}: expected cpu, cuda or cuda:N"),
        },
    };
    let shape = ImageData::load(&args.data)?.shape();
    let unet = overlay(
        serde_json::to_value(default_unet(shape))?,
        args.unet_config.as_deref(),
    )?;
    let unet = serde_json::from_value(unet).context("the UNet config")?;
    let scheduler = overlay(default_scheduler(), args.scheduler_config.as_deref())?;
    let settings = BaseSettings {
        data: args.data,
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        ema_decay: args.ema_decay,
        checkpoint_every: args.checkpoint_every,
        unet,
        scheduler,
    };
    let mut trainer = BaseTrainer::new(settings, &args.out, args.resume, device)?;
    eprintln!(
        "training a UNet2DModel of {} parameters on {} ({} x {} x {}) into {}{}",
        trainer.parameter_count(),
        trainer.settings().data.display(),
        shape[0],
        shape[1],
        shape[2],
        args.out.display(),
        if trainer.step() > 0 {
            format!(", resuming at step {}", trainer.step())
        } else {
            String::new()
        }
    );
    let bar = ProgressBar::new(trainer.settings().steps);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
    )?);
    bar.set_position(trainer.step());
    let mut average = None;
    trainer.run(
        &mut |step, loss| {
            let a: f64 = average.map_or(loss, |a: f64| 0.98 * a + 0.02 * loss);
            average = Some(a);
            bar.set_position(step);
            bar.set_message(format!("loss {a:.4}"));
        },
        &|| false,
    )?;
    bar.finish();
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn classifier(args: ClassifierArgs) -> Result<()> {
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let settings = ClassifierSettings {
        data: args.data,
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        held_out: args.held_out,
    };
    let bar = ProgressBar::new(settings.epochs);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} epochs [{elapsed_precise}] {msg}",
    )?);
    let report = train_classifier(&settings, &args.out, &mut |epoch, accuracy| {
        bar.set_position(epoch);
        bar.set_message(format!("held-out accuracy {:.2}%", 100.0 * accuracy));
    })?;
    bar.finish();
    println!(
        "held-out accuracy {:.2}% on {} images (trained on {}; training accuracy {:.2}%); wrote {}",
        100.0 * report.held_out_accuracy,
        report.held_out_images,
        report.train_images,
        100.0 * report.train_accuracy,
        args.out.display()
    );
    Ok(())
}
