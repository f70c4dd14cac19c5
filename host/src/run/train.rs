//! A whole training run: set-up, samples before, Value Matching iterations with progress,
//! checkpoints and metrics, samples after, figures and the summary. An interrupted or failed
//! run keeps everything finished so far and can be resumed.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tch::{Device, Tensor};

use super::checkpoint;
use super::config::RunConfig;
use super::dir::{write_bytes_atomically, RunDir};
use super::metrics::{self, MetricsLog};
use super::samples::{self, Saved};
use crate::device::parse_device;
use crate::env::{sample, Control, Interrupted, SamplerOptions, Trajectory};
use crate::interrupt;
use crate::method::value_matching::{reward_statistics, ValueMatching, VmSettings};
use crate::method::{IterationStats, Method};
use crate::model::Model;
use crate::plugins::Registry;
use crate::report::oned::{tilted_optimum, wasserstein1, Weighted};
use crate::report::plot;
use crate::reward::Reward;
use crate::seed::derive_seed;
use crate::setup::{check_pair, construct_context, open_model, open_reward};
use crate::value;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every iteration ran.
    Finished,
    /// Ctrl-C: a checkpoint was written.
    Interrupted,
}

/// Reward statistics of a set of samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SampleStats {
    /// Number of samples.
    pub samples: usize,
    /// Mean reward of the valid samples.
    pub reward_mean: f64,
    /// Their standard deviation.
    pub reward_std: f64,
    /// Share of valid samples.
    pub valid_fraction: f64,
}

/// Figures for 1-d runs, against the optimum estimated from base samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OptimumStats {
    /// `E_p*[r]`.
    pub reward_mean: f64,
    /// `W1` between the base samples and `p*`.
    pub w1_before: f64,
    /// `W1` between the adapted samples and `p*`.
    pub w1_after: f64,
    /// Effective size of the weighted base sample the optimum is estimated from.
    pub effective_sample_size: f64,
    /// How the optimum was estimated.
    pub method: &'static str,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Model id.
    pub model: String,
    /// Reward id.
    pub reward: String,
    /// Reward scale.
    pub reward_scale: f64,
    /// Iterations finished.
    pub iterations_done: usize,
    /// Iterations asked for.
    pub iterations: usize,
    /// The value network.
    pub value_network: String,
    /// Where it ran.
    pub device: String,
    /// Base model samples.
    pub before: Option<SampleStats>,
    /// Adapted samples.
    pub after: Option<SampleStats>,
    /// 1-d runs: comparison with the optimum.
    pub optimum: Option<OptimumStats>,
    /// Loss of the last iteration.
    pub final_loss: Option<f64>,
    /// Mean seconds per iteration in this session.
    pub seconds_per_iteration: Option<f64>,
    /// Wall-clock seconds of this session.
    pub seconds: f64,
    /// Peak resident memory of this session in MiB (where the system reports it).
    pub peak_rss_mib: Option<f64>,
}

/// Everything a run holds while it trains.
struct Session {
    config: RunConfig,
    dir: RunDir,
    device: Device,
    model: Model,
    reward: Reward,
    method: ValueMatching,
    value_description: String,
    /// Samples drawn before and after training for the figures.
    eval_samples: usize,
}

fn sampler_options(config: &RunConfig, batch: usize) -> SamplerOptions {
    SamplerOptions {
        steps: config.steps,
        t0: config.t0,
        noise: config.noise,
        batch_size: if config.sample_chunk == 0 {
            batch
        } else {
            config.sample_chunk
        },
    }
}

/// Builds the model, reward and value network of `config` (checking the pair first).
fn open_session(registry: &Registry, config: RunConfig, dir: RunDir) -> Result<Session> {
    check_pair(registry, &config.model, &config.reward)?;
    let device = parse_device(&config.device)?;
    if config.threads > 0 {
        tch::set_num_threads(config.threads as i32);
    }
    let ctx = construct_context(device, &config.weights)?;
    let (mut model, _) = open_model(registry, &config.model, &config.model_args_json()?, &ctx)?;
    let (reward, _) = open_reward(registry, &config.reward, &config.reward_args_json()?, &ctx)?;
    let example = {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(derive_seed(config.seed, "shape", 0) as i64);
        model.sample_p0(2, 0)?.0
    };
    tch::manual_seed(derive_seed(config.seed, "init", 0) as i64);
    let network = value::build(config.value_net, &example, device)?;
    let eval_samples = match config.eval_samples {
        0 if samples::is_image(&example) => 16,
        0 => 10_000,
        n => n,
    };
    let value_description = network.describe();
    let settings = VmSettings {
        reward_scale: config.reward_scale,
        lr: config.lr,
        grad_clip: config.grad_clip,
        batch_size: config.batch_size,
        train_chunk: config.train_chunk,
        sampler: sampler_options(&config, config.batch_size),
        seed: config.seed,
        device,
    };
    let method = ValueMatching::new(network, settings)?;
    Ok(Session {
        config,
        dir,
        device,
        model,
        reward,
        method,
        value_description,
        eval_samples,
    })
}

fn step_bar(steps: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>24} [{elapsed_precise}] {bar:32} {pos}/{len} steps")
            .expect("a valid template"),
    );
    bar.set_message(what.to_string());
    bar
}

impl Session {
    /// Samples for the figures, from the same noise before and after training.
    fn evaluate(&mut self, controlled: bool, n: usize, what: &str) -> Result<Trajectory> {
        let options = sampler_options(&self.config, n);
        let seed = derive_seed(self.config.seed, "eval", 0);
        let chunks = n.div_ceil(options.batch_size.max(1));
        let bar = step_bar(self.config.steps * chunks, what);
        let control: Option<Control<'_>> = if controlled {
            self.method.control()
        } else {
            None
        };
        let result = sample(
            &mut self.model,
            Some(&mut self.reward),
            control,
            n,
            &options,
            seed,
            self.device,
            false,
            &|_| {
                bar.inc(1);
                interrupt::requested()
            },
        );
        bar.finish_and_clear();
        result
    }

    fn save_samples(&self, name: &str, trajectory: &Trajectory) -> Result<()> {
        samples::save(
            &self.dir.root.join("samples"),
            name,
            trajectory,
            Some(&self.dir.figure(name)),
        )
    }

    fn checkpoint(&self, iterations_done: usize) -> Result<()> {
        let state = self.method.state();
        checkpoint::save(&self.dir.latest_checkpoint(), &state, iterations_done)?;
        if iterations_done > 0 && iterations_done.is_multiple_of(self.config.checkpoint_every) {
            checkpoint::save(
                &self.dir.checkpoint_at(iterations_done),
                &state,
                iterations_done,
            )?;
        }
        Ok(())
    }
}

/// Runs (or resumes) training in `dir` with `config`.
pub fn train(
    registry: &Registry,
    config: RunConfig,
    dir: &Path,
    resume: bool,
) -> Result<(Outcome, Summary)> {
    let started = Instant::now();
    config.validate()?;
    let dir = RunDir::create(dir)?;
    let mut session = open_session(registry, config, dir)?;
    let dir = session.dir.clone();
    let config = session.config.clone();
    if !resume {
        write_bytes_atomically(&dir.config(), session.config.to_toml()?.as_bytes())?;
    }
    let mut done = 0;
    if resume && dir.latest_checkpoint().exists() {
        let (saved, tensors) = checkpoint::load(&dir.latest_checkpoint())?;
        session
            .method
            .load_state(tensors)
            .with_context(|| format!("resuming from {}", dir.latest_checkpoint().display()))?;
        done = saved;
        eprintln!("resuming {} after iteration {done}", dir.root.display());
    }
    let mut log = MetricsLog::open(&dir.metrics(), done)?;
    let samples_dir = dir.root.join("samples");
    eprintln!(
        "model {} -> reward {} (scale {}), value network: {}, run directory: {}",
        config.model,
        config.reward,
        config.reward_scale,
        session.value_description,
        dir.root.display()
    );

    interrupt::install();
    let eval_n = session.eval_samples;
    if samples::load(&samples_dir, "before")?.is_none() {
        match session.evaluate(false, eval_n, "base model samples") {
            Ok(before) => session.save_samples("before", &before)?,
            Err(e) if e.is::<Interrupted>() => {
                return Ok((Outcome::Interrupted, summarize(&session, done, started)?));
            }
            Err(e) => return Err(e),
        }
    }

    let mut outcome = Outcome::Finished;
    let mut session_seconds = Vec::new();
    if done < config.iterations {
        let bar = ProgressBar::new(config.iterations as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "[{elapsed_precise}] {bar:32} {pos}/{len} iterations ({eta} left)  {msg}",
            )
            .expect("a valid template"),
        );
        bar.set_position(done as u64);
        let hidden = bar.is_hidden();
        while done < config.iterations {
            let result =
                session
                    .method
                    .iteration(&mut session.model, &mut session.reward, done, &|_| {
                        interrupt::requested()
                    });
            let stats: IterationStats = match result {
                Ok(stats) => stats,
                Err(e) if e.is::<Interrupted>() => {
                    outcome = Outcome::Interrupted;
                    break;
                }
                Err(e) => {
                    bar.abandon();
                    session.checkpoint(done)?;
                    let _ = write_figures(&session);
                    return Err(e.context(format!(
                        "the run stopped at iteration {done}; the last good state (after {done} iterations) is in {}; resume with `flowgym-host run --resume {}`",
                        dir.latest_checkpoint().display(),
                        dir.root.display()
                    )));
                }
            };
            log.append(&stats)?;
            session_seconds.push(stats.seconds);
            done += 1;
            bar.set_position(done as u64);
            bar.set_message(format!(
                "loss {:.4}  reward {:.4}",
                stats.loss, stats.reward_mean
            ));
            if done.is_multiple_of(config.checkpoint_every) || done == config.iterations {
                session.checkpoint(done)?;
                if hidden {
                    eprintln!(
                        "iteration {done}/{}: loss {:.5}, reward {:.4} +- {:.4}, {:.3} s/iteration",
                        config.iterations,
                        stats.loss,
                        stats.reward_mean,
                        stats.reward_std,
                        stats.seconds
                    );
                }
            }
            if interrupt::requested() {
                outcome = Outcome::Interrupted;
                break;
            }
        }
        bar.finish_and_clear();
        session.checkpoint(done)?;
    }

    if outcome == Outcome::Finished {
        match session.evaluate(true, eval_n, "adapted samples") {
            Ok(trajectory) => session.save_samples("after", &trajectory)?,
            Err(e) if e.is::<Interrupted>() => outcome = Outcome::Interrupted,
            Err(e) => return Err(e),
        }
    }
    write_figures(&session)?;
    let mut summary = summarize(&session, done, started)?;
    if !session_seconds.is_empty() {
        summary.seconds_per_iteration =
            Some(session_seconds.iter().sum::<f64>() / session_seconds.len() as f64);
    }
    write_bytes_atomically(
        &dir.summary(),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok((outcome, summary))
}

/// The optimum estimated from the base samples, for 1-d runs.
fn optimum_of(before: &Saved, after: Option<&Saved>, lambda: f64) -> (OptimumStats, Weighted) {
    let (optimum, reward_mean) =
        tilted_optimum(&before.values, &before.reward, &before.valid, lambda);
    let w1_before = wasserstein1(&Weighted::uniform(&before.values), &optimum);
    let w1_after = after.map_or(f64::NAN, |a| {
        wasserstein1(&Weighted::uniform(&a.values), &optimum)
    });
    let stats = OptimumStats {
        reward_mean,
        w1_before,
        w1_after,
        effective_sample_size: optimum.effective_size(),
        method: "base-model samples weighted by exp(reward_scale * reward)",
    };
    (stats, optimum)
}

/// The saved samples before and after training, and for 1-d runs the optimum.
struct Outcomes {
    before: Option<Saved>,
    after: Option<Saved>,
    optimum: Option<(OptimumStats, Weighted)>,
}

fn outcomes(session: &Session) -> Result<Outcomes> {
    let samples_dir = session.dir.root.join("samples");
    let before = samples::load(&samples_dir, "before")?;
    let after = samples::load(&samples_dir, "after")?;
    let optimum = before
        .as_ref()
        .filter(|b| b.is_1d())
        .map(|b| optimum_of(b, after.as_ref(), session.config.reward_scale));
    Ok(Outcomes {
        before,
        after,
        optimum,
    })
}

/// The reward curve, the loss curve, and for 1-d runs the histograms against the optimum.
fn write_figures(session: &Session) -> Result<()> {
    let dir = &session.dir;
    let Outcomes {
        before,
        after,
        optimum,
    } = outcomes(session)?;
    let rows = metrics::read(&dir.metrics()).unwrap_or_default();
    if !rows.is_empty() {
        plot::line_chart(
            &dir.figure("reward"),
            &format!(
                "{} adapted to {}",
                session.config.model, session.config.reward
            ),
            "iteration",
            "mean reward",
            &[plot::Series {
                label: "mean reward of the training batch".into(),
                points: rows
                    .iter()
                    .map(|r| (r.iteration as f64, r.reward_mean))
                    .collect(),
                color: plot::ADAPTED_COLOR,
            }],
            optimum
                .as_ref()
                .map(|(o, _)| (o.reward_mean, "optimum E_p*[r]")),
        )?;
        plot::line_chart(
            &dir.figure("loss"),
            "Value Matching loss",
            "iteration",
            "log10 loss",
            &[plot::Series {
                label: "loss".into(),
                points: rows
                    .iter()
                    .filter(|r| r.loss > 0.0)
                    .map(|r| (r.iteration as f64, r.loss.log10()))
                    .collect(),
                color: plotters::style::RGBColor(214, 39, 40),
            }],
            None,
        )?;
    }
    if let (Some((_, optimum)), Some(before)) = (&optimum, &before) {
        let mut sets = vec![(
            "base model (before)",
            before.values.as_slice(),
            plot::BASE_COLOR,
        )];
        if let Some(after) = &after {
            sets.push((
                "adapted (after)",
                after.values.as_slice(),
                plot::ADAPTED_COLOR,
            ));
        }
        plot::histograms(
            &dir.figure("samples"),
            &format!(
                "{} adapted to {} (scale {})",
                session.config.model, session.config.reward, session.config.reward_scale
            ),
            &sets,
            Some((&optimum.points, &optimum.weights)),
        )?;
    }
    Ok(())
}

fn sample_stats(saved: &Saved) -> SampleStats {
    let (reward_mean, reward_std, valid_fraction) = reward_statistics(
        &Tensor::from_slice(&saved.reward),
        &Tensor::from_slice(&saved.valid),
    );
    SampleStats {
        samples: saved.reward.len(),
        reward_mean,
        reward_std,
        valid_fraction,
    }
}

fn summarize(session: &Session, done: usize, started: Instant) -> Result<Summary> {
    let Outcomes {
        before,
        after,
        optimum,
    } = outcomes(session)?;
    let rows = metrics::read(&session.dir.metrics()).unwrap_or_default();
    Ok(Summary {
        model: session.config.model.clone(),
        reward: session.config.reward.clone(),
        reward_scale: session.config.reward_scale,
        iterations_done: done,
        iterations: session.config.iterations,
        value_network: session.value_description.clone(),
        device: session.config.device.clone(),
        before: before.as_ref().map(sample_stats),
        after: after.as_ref().map(sample_stats),
        optimum: optimum.map(|(stats, _)| stats),
        final_loss: rows.last().map(|r| r.loss),
        seconds_per_iteration: None,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_mib: crate::memory::peak_rss_mib(),
    })
}
