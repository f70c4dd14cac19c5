//! A training run and everything it writes.
//!
//! [`Run`] goes through four phases: [`Run::open`] (resolve and check the model and reward,
//! construct them, size the value network, restore a checkpoint), [`Run::sample_before`] (the
//! base model's samples), [`Run::train`] (the Value Matching loop with metrics and checkpoints)
//! and [`Run::finish`] (the adapted samples, figures and the summary). It owns every write to
//! the run directory; an interrupted or failed run keeps everything finished so far and can be
//! resumed.

pub mod checkpoint;
pub mod config;
pub mod defaults;
pub mod dir;
pub mod evaluation;
#[cfg(feature = "figures")]
mod figures;
pub mod metrics;
mod progress;
mod ranks;
pub mod samples;
pub mod summary;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tch::Device;

pub use config::RunConfig;
pub use dir::RunDir;
use metrics::MetricsLog;
use progress::Progress;
use samples::EvalSamples;
pub use summary::Summary;

use crate::compose::{check_pair, construct_context, open_model, open_reward};
use crate::device::{intra_op_threads, parse_device};
use crate::distributed::{self, TeamRef};
use crate::interrupt;
use crate::model::Model;
use crate::reward::Reward;
use crate::sde::sampler::sample_part;
use crate::sde::{Interrupted, SampleRequest, SamplerOptions, Trajectory};
use crate::seed::derive_seed;
use crate::value;
use crate::value_matching::{Diverged, IterationStats, ValueMatching, VmSettings};

/// Where a run starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// A new run in `dir` (which must not hold one yet).
    New {
        /// The configuration, not yet validated.
        config: Box<RunConfig>,
        /// The run directory.
        dir: PathBuf,
    },
    /// Continue the run in `dir` from its latest checkpoint, with its own configuration;
    /// `overrides` may set the keys of [`RunConfig::RESUMABLE_KEYS`] (a new total number of
    /// iterations, how the reward runs).
    Resume {
        /// The run directory.
        dir: PathBuf,
        /// Keys to change.
        overrides: toml::Table,
    },
}

/// How a run's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every iteration ran and the adapted samples were drawn.
    Finished,
    /// Ctrl-C: a checkpoint was written; resume to continue.
    Interrupted,
}

/// Whether a phase ran to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// It ran to its end.
    Done,
    /// Ctrl-C stopped it; what it finished is kept.
    Interrupted,
}

/// A training run: its configuration, its directory, the model, reward and trainer, and what
/// it has produced so far.
pub struct Run {
    config: RunConfig,
    dir: RunDir,
    device: Device,
    model: Model,
    reward: Reward,
    trainer: ValueMatching,
    value_description: String,
    iterations_done: usize,
    /// The metrics file (rank 0 alone writes the run directory).
    metrics: Option<MetricsLog>,
    /// Every finished iteration's statistics, earlier sessions' included.
    history: Vec<IterationStats>,
    before: Option<EvalSamples>,
    after: Option<EvalSamples>,
    /// Whether the samples before and after are drawn (on every rank; only rank 0 holds them).
    drawn: [bool; 2],
    /// The ranks sharing the run ([`distributed::Solo`] in a single process).
    team: TeamRef,
    /// The evaluation reward (`eval_reward_args`), if any; rank 0 alone scores with it.
    evaluation: Option<evaluation::Evaluation>,
    started: Instant,
    /// Seconds of each iteration of this session.
    session_seconds: Vec<f64>,
    /// Seconds of this session's iterations spent in exchanges between ranks.
    exchange_seconds: f64,
}

/// The sampler options of `config`.
pub fn sampler_options(config: &RunConfig) -> SamplerOptions {
    SamplerOptions {
        steps: config.steps,
        t0: config.t0,
        grid: config.time_grid,
        diffusion: config.noise,
        control_point: config.control_point,
        final_step: config.final_step,
        chunk_size: config.sample_chunk,
    }
}

/// The configuration and directory a run starts from, validated once, and whether it resumes.
fn resolve(start: Start) -> Result<(RunConfig, RunDir, bool)> {
    match start {
        Start::New { config, dir } => {
            if dir.join(dir::CONFIG).exists() {
                bail!(
                    "{} already holds a run; continue it with --resume {0}, or choose another --out",
                    dir.display()
                );
            }
            config.validate()?;
            Ok((*config, RunDir::at(&dir), false))
        }
        Start::Resume { dir, overrides } => {
            let dir = RunDir::open(&dir)?;
            if let Some(key) = overrides
                .keys()
                .find(|k| !RunConfig::RESUMABLE_KEYS.contains(&k.as_str()))
            {
                bail!("`{key}` cannot change when a run is resumed");
            }
            let config = dir.read_config()?.with_overrides(overrides)?;
            config.validate()?;
            Ok((config, dir, true))
        }
    }
}

/// The run's reward, in the host's process or, when the configuration says so, in a sandboxed
/// child process.
fn open_run_reward(
    registry: &crate::plugins::Registry,
    config: &RunConfig,
    ctx: &flowgym_plugin_api::ConstructContext,
) -> Result<Reward> {
    let args = config.reward_args_json()?;
    if !config.isolate_reward {
        return Ok(open_reward(registry, &config.reward, &args, ctx)?.0);
    }
    #[cfg(unix)]
    {
        let executable = std::env::current_exe()
            .context("cannot find the host executable to start the isolated reward")?;
        let options = config.isolation(executable);
        Ok(crate::compose::open_isolated_reward(
            registry,
            &config.reward,
            &args,
            &config.weights,
            options,
        )?
        .0)
    }
    #[cfg(not(unix))]
    bail!("`isolate_reward` needs a Unix system")
}

/// The trainer's settings from a run configuration.
fn trainer_settings(config: &RunConfig, device: Device) -> VmSettings {
    VmSettings {
        reward_scale: config.reward_scale,
        lr: config.lr,
        grad_clip: config.grad_clip,
        batch_size: config.batch_size,
        train_chunk: config.train_chunk,
        sampler: sampler_options(config),
        seed: config.seed,
        device,
        iterations: config.iterations,
        lr_schedule: config.lr_schedule,
        fit_steps: config.fit_steps,
        martingale_target: config.martingale_target,
        value_loss: config.value_loss,
        replay: config.replay,
        value_average: config.value_average,
    }
}

impl Run {
    /// Opens a new or resumed run: resolves and checks the pair, constructs the model and the
    /// reward, builds the value network and restores the latest checkpoint.
    pub fn open(registry: &crate::plugins::Registry, start: Start) -> Result<Self> {
        Self::open_on(registry, start, distributed::solo())
    }

    /// [`Run::open`] for one rank of a data-parallel run: every rank opens the same run (their
    /// configurations and plugin files are compared first), each samples its share of every
    /// batch, and rank 0 alone writes the run directory.
    pub fn open_on(
        registry: &crate::plugins::Registry,
        start: Start,
        team: TeamRef,
    ) -> Result<Self> {
        let started = Instant::now();
        let start = ranks::same_directory(team.as_ref(), start)?;
        let (config, dir, resume) = team.agree(resolve(start))?;
        ranks::check_agreement(team.as_ref(), registry, &config)?;
        let opened = team.agree(Self::construct(registry, &config, team.as_ref()));
        let (device, model, reward, example, network) = opened?;
        let evaluation = team.agree(if team.is_root() {
            construct_context(device, &config.weights).and_then(|ctx| {
                evaluation::Evaluation::open(registry, &config, &ctx, &dir.samples_dir())
            })
        } else {
            Ok(None)
        })?;
        let value_description = network.describe();
        let small_images = defaults::small_images(registry, &config.model);
        let config = team.agree(defaults::fill(config, &example, small_images))?;
        team.agree(crate::sde::sampler::check_stability(
            &sampler_options(&config),
            &model.interpolant,
        ))?;
        ranks::check_shares(team.as_ref(), config.batch_size, config.eval_samples)?;
        let settings = trainer_settings(&config, device);
        let mut trainer = ValueMatching::new(network, settings).with_team(team.clone());
        if config.value_average > 0.0 {
            trainer = trainer.with_twin(value::build(
                config.value_net,
                &example,
                device,
                &model.interpolant,
            )?);
        }
        // The configuration is written once it has been checked against the plugins, so a
        // run that cannot start leaves no directory that looks like a run.
        if team.is_root() {
            team.agree(dir.create().and_then(|()| dir.write_config(&config)))?;
        } else {
            team.agree(Ok(()))?;
        }
        let iterations_done = match resume {
            true => team.agree(restore(&dir, &mut trainer, team.is_root()))?,
            false => 0,
        };
        let (metrics, history, before, after) = if team.is_root() {
            let loaded = (|| {
                let (metrics, history) = MetricsLog::open(&dir.metrics(), iterations_done)?;
                let before = samples::load(&dir.samples_dir(), "before")?;
                let after = samples::load(&dir.samples_dir(), "after")?;
                Ok((Some(metrics), history, before, after))
            })();
            team.agree(loaded)?
        } else {
            team.agree(Ok((None, Vec::new(), None, None)))?
        };
        let drawn = team.broadcast(&[before.is_some(), after.is_some()])?;
        if team.is_root() {
            eprintln!(
                "model {} -> reward {} (scale {}), value network: {value_description}, {} libtorch thread(s){}, run directory: {}",
                config.model,
                config.reward,
                config.reward_scale,
                tch::get_num_threads(),
                ranks::describe(team.as_ref()),
                dir.root.display()
            );
        }
        Ok(Self {
            config,
            dir,
            device,
            model,
            reward,
            trainer,
            value_description,
            iterations_done,
            metrics,
            history,
            before,
            after,
            drawn,
            team,
            evaluation,
            started,
            session_seconds: Vec::new(),
            exchange_seconds: 0.0,
        })
    }

    /// What each rank builds alone: the device, the model and the reward, an example batch
    /// and the value network (the same initial weights on every rank, from the run's seed).
    #[allow(clippy::type_complexity)]
    fn construct(
        registry: &crate::plugins::Registry,
        config: &RunConfig,
        team: &dyn distributed::Team,
    ) -> Result<(
        Device,
        Model,
        Reward,
        crate::state::State,
        Box<dyn value::ValueNetwork>,
    )> {
        check_pair(registry, &config.model, &config.reward)?;
        let device = ranks::device(team, parse_device(&config.device)?, &config.device);
        let ctx = construct_context(device, &config.weights)?;
        let (mut model, _) = open_model(registry, &config.model, &config.model_args_json()?, &ctx)?;
        let reward = open_run_reward(registry, config, &ctx)?;
        let example = {
            let _guard = tch::no_grad_guard();
            tch::manual_seed(derive_seed(config.seed, "shape", 0) as i64);
            model.sample_p0(2, 0)?.0
        };
        let threads = intra_op_threads(config.threads, device, config.batch_size, &example)
            .or_else(|| ranks::threads_per_rank(config.threads));
        if let Some(threads) = threads {
            tch::set_num_threads(threads as i32);
        }
        tch::manual_seed(derive_seed(config.seed, "init", 0) as i64);
        let network = value::build(config.value_net, &example, device, &model.interpolant)?;
        Ok((device, model, reward, example, network))
    }

    /// Every phase in turn: samples before, training, samples after, figures and summary. An
    /// error is also recorded in the run directory (`failed.txt`), which a later session that
    /// ends well removes.
    pub fn execute(&mut self) -> Result<(RunEnd, Summary)> {
        match self.phases() {
            Ok(done) => {
                if self.team.is_root() {
                    self.dir.clear_failure()?;
                }
                Ok(done)
            }
            Err(error) => {
                if !self.team.is_root() {
                    return Err(error);
                }
                if let Err(note) = self.dir.record_failure(&error) {
                    eprintln!(
                        "warning: could not record the failure in the run directory: {note:#}"
                    );
                }
                Err(error)
            }
        }
    }

    fn phases(&mut self) -> Result<(RunEnd, Summary)> {
        interrupt::install();
        let mut end = RunEnd::Finished;
        for phase in [Self::sample_before, Self::train, Self::sample_after] {
            if phase(self)? == Phase::Interrupted {
                end = RunEnd::Interrupted;
                break;
            }
        }
        Ok((end, self.finish()?))
    }

    /// The run directory.
    pub fn dir(&self) -> &RunDir {
        &self.dir
    }

    /// The run's configuration, with the keys it left to the data filled in.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The base model's evaluation samples, once drawn.
    pub fn before(&self) -> Option<&EvalSamples> {
        self.before.as_ref()
    }

    /// The adapted model's evaluation samples, once drawn.
    pub fn after(&self) -> Option<&EvalSamples> {
        self.after.as_ref()
    }

    /// Draws and saves the base model's samples, unless an earlier session did.
    pub fn sample_before(&mut self) -> Result<Phase> {
        if self.drawn[0] {
            return Ok(Phase::Done);
        }
        match self.evaluate(false, "base model samples") {
            Ok(before) => {
                self.before = self.save_samples("before", before)?;
                self.drawn[0] = true;
                Ok(Phase::Done)
            }
            Err(e) if e.is::<Interrupted>() => Ok(Phase::Interrupted),
            Err(e) => Err(e),
        }
    }

    /// Value Matching iterations up to the configured number, with metrics after every one
    /// and checkpoints every `checkpoint_every` and at the end. An error keeps the last good
    /// state (checkpoint, metrics, figures) and says how to resume.
    pub fn train(&mut self) -> Result<Phase> {
        let total = self.config.iterations;
        if self.iterations_done >= total {
            return Ok(Phase::Done);
        }
        if self
            .team
            .broadcast(&!self.dir.latest_checkpoint().exists())?
        {
            // The untrained state is the first good one: a run that fails or diverges before
            // its first checkpoint can still be resumed from it.
            self.checkpoint()?;
        }
        let bar = Progress::iterations(total, self.iterations_done, self.team.is_root());
        let mut phase = Phase::Done;
        while self.iterations_done < total {
            let done = self.iterations_done;
            let exchanged = self.team.exchange_seconds();
            self.reward
                .set_label(format!("the batch of iteration {}", done + 1));
            let result = self
                .trainer
                .iteration(&mut self.model, &mut self.reward, done, &|_| {
                    interrupt::requested()
                });
            let stats = match result {
                Ok(stats) => stats,
                Err(e) if e.is::<Interrupted>() => {
                    phase = Phase::Interrupted;
                    break;
                }
                Err(e) => {
                    bar.abandon();
                    return Err(self.stop_with(e));
                }
            };
            self.exchange_seconds += self.team.exchange_seconds() - exchanged;
            let recorded = self.record(stats);
            self.team.agree(recorded)?;
            bar.iteration_done(self.iterations_done, &stats);
            if self
                .iterations_done
                .is_multiple_of(self.config.checkpoint_every)
                || self.iterations_done == total
            {
                self.checkpoint()?;
                bar.log_checkpoint(self.iterations_done, total, &stats);
            }
            if self.team.any(interrupt::requested()) {
                phase = Phase::Interrupted;
                break;
            }
        }
        bar.finish();
        self.checkpoint()?;
        Ok(phase)
    }

    /// Draws and saves the adapted samples once training is complete.
    pub fn sample_after(&mut self) -> Result<Phase> {
        if self.iterations_done < self.config.iterations {
            return Ok(Phase::Done);
        }
        match self.evaluate(true, "adapted samples") {
            Ok(after) => {
                self.after = self.save_samples("after", after)?;
                self.drawn[1] = true;
                Ok(Phase::Done)
            }
            Err(e) if e.is::<Interrupted>() => Ok(Phase::Interrupted),
            Err(e) => Err(e),
        }
    }

    /// Writes the figures and `summary.json` from what this run holds, and returns the summary.
    pub fn finish(&mut self) -> Result<Summary> {
        let summary = self.summary();
        if self.team.is_root() {
            self.write_figures()?;
            crate::atomic_file::write_bytes_atomically(
                &self.dir.summary(),
                serde_json::to_string_pretty(&summary)?.as_bytes(),
            )?;
        }
        Ok(summary)
    }

    fn record(&mut self, stats: IterationStats) -> Result<()> {
        if let Some(metrics) = &mut self.metrics {
            metrics.append(&stats)?;
        }
        self.history.push(stats);
        self.session_seconds.push(stats.seconds);
        self.iterations_done += 1;
        Ok(())
    }

    /// After a failed iteration: keeps the last good state and names it in the error. A
    /// diverged trainer's state is not saved: the checkpoint on disk is the last good one.
    fn stop_with(&mut self, error: anyhow::Error) -> anyhow::Error {
        if error.is::<Diverged>() {
            if self.team.is_root() {
                let _ = self.write_figures();
            }
            let kept = checkpoint::load(&self.dir.latest_checkpoint())
                .map(|(done, _)| {
                    format!(
                        "the last good checkpoint, after {done} iterations, is {}",
                        self.dir.latest_checkpoint().display()
                    )
                })
                .unwrap_or_else(|_| "no checkpoint was written before it".to_string());
            return error.context(format!(
                "{kept}; start a new run with a lower --lr (now {}) or --reward-scale (now {})",
                self.config.lr, self.config.reward_scale
            ));
        }
        let done = self.iterations_done;
        if let Err(e) = self.checkpoint() {
            return error.context(format!("the run stopped at iteration {done}, and its checkpoint could not be written: {e:#}"));
        }
        if self.team.is_root() {
            let _ = self.write_figures();
        }
        error.context(format!(
            "the run stopped at iteration {done}; the last good state (after {done} iterations) is in {}; resume with `flowgym-host run --resume {}`",
            self.dir.latest_checkpoint().display(),
            self.dir.root.display()
        ))
    }

    /// Samples for the figures, from the same noise before and after training.
    fn evaluate(&mut self, controlled: bool, what: &str) -> Result<Trajectory> {
        let options = sampler_options(&self.config);
        let n = self.config.eval_samples;
        let chunks = match options.chunk_size {
            0 => 1,
            size => n.div_ceil(size),
        };
        let part = self.team.share(n);
        let bar = Progress::steps(self.config.steps * chunks, what, self.team.is_root());
        let stop = |_| {
            bar.inc();
            interrupt::requested()
        };
        let request = SampleRequest {
            n,
            seed: derive_seed(self.config.seed, "eval", 0),
            control: if controlled {
                self.trainer.control()
            } else {
                None
            },
            record: false,
            device: self.device,
            stop_after_step: &stop,
        };
        self.reward.set_label(format!("the {what}"));
        let result = sample_part(
            &mut self.model,
            Some(&mut self.reward),
            &options,
            &request,
            part,
        );
        bar.finish();
        self.team.agree(result)
    }

    /// Gathers the ranks' shares of evaluation samples on rank 0, which writes them and scores
    /// them with the evaluation reward, if the run has one; returns what the figures and
    /// summary need of them there (`None` on the other ranks).
    fn save_samples(&mut self, name: &str, trajectory: Trajectory) -> Result<Option<EvalSamples>> {
        let saved = ranks::gather_samples(self.team.as_ref(), trajectory).and_then(|gathered| {
            gathered
                .map(|trajectory| {
                    let saved = samples::save(
                        &self.dir.samples_dir(),
                        name,
                        &trajectory,
                        Some(&self.dir.figure(name)),
                    )?;
                    if let Some(evaluation) = &mut self.evaluation {
                        evaluation.score(name, &trajectory, self.device)?;
                    }
                    Ok(saved)
                })
                .transpose()
        });
        self.team.agree(saved)
    }

    /// Writes the latest checkpoint (and a numbered one every `checkpoint_every`). On a team
    /// every rank takes part (the replayed batches are gathered) and rank 0 writes.
    fn checkpoint(&self) -> Result<()> {
        let done = self.iterations_done;
        let state = self.trainer.state()?;
        if !self.team.is_root() {
            return self.team.agree(Ok(()));
        }
        let written = (|| {
            checkpoint::save(&self.dir.latest_checkpoint(), &state, done)?;
            if done > 0 && done.is_multiple_of(self.config.checkpoint_every) {
                checkpoint::save(&self.dir.checkpoint_at(done), &state, done)?;
            }
            Ok(())
        })();
        self.team.agree(written)
    }

    fn summary(&self) -> Summary {
        Summary {
            model: self.config.model.clone(),
            reward: self.config.reward.clone(),
            reward_scale: self.config.reward_scale,
            iterations_done: self.iterations_done,
            iterations: self.config.iterations,
            value_network: self.value_description.clone(),
            device: self.config.device.clone(),
            before: self.before.as_ref().map(|s| s.stats),
            after: self.after.as_ref().map(|s| s.stats),
            optimum: summary::optimum(
                self.before.as_ref(),
                self.after.as_ref(),
                self.config.reward_scale,
            ),
            evaluation: self.evaluation.as_ref().map(|e| e.summary()),
            final_loss: self.history.last().map(|r| r.loss),
            seconds_per_iteration: (!self.session_seconds.is_empty()).then(|| {
                self.session_seconds.iter().sum::<f64>() / self.session_seconds.len() as f64
            }),
            seconds: self.started.elapsed().as_secs_f64(),
            peak_rss_mib: crate::memory::peak_rss_mib(),
            data_parallel: self.data_parallel(),
        }
    }

    /// What exchanging cost this session's iterations, on a team.
    fn data_parallel(&self) -> Option<summary::DataParallel> {
        let iterations = self.session_seconds.len();
        if self.team.size() == 1 || iterations == 0 {
            return None;
        }
        let seconds: f64 = self.session_seconds.iter().sum();
        Some(summary::DataParallel {
            ranks: self.team.size(),
            exchange_seconds_per_iteration: self.exchange_seconds / iterations as f64,
            exchange_share: self.exchange_seconds / seconds.max(f64::MIN_POSITIVE),
        })
    }

    #[cfg(feature = "figures")]
    fn write_figures(&self) -> Result<()> {
        figures::write(
            &self.dir,
            &self.config,
            &self.history,
            self.before.as_ref(),
            self.after.as_ref(),
        )
    }

    #[cfg(not(feature = "figures"))]
    fn write_figures(&self) -> Result<()> {
        Ok(())
    }
}

/// Restores the newest readable checkpoint of `dir` into `trainer`; returns its finished
/// iterations (0 when there is none). Unreadable newer files are named and passed over.
fn restore(dir: &RunDir, trainer: &mut ValueMatching, report: bool) -> Result<usize> {
    let Some(restored) = checkpoint::load_newest(&dir.checkpoints_newest_first()) else {
        return Ok(0);
    };
    if report {
        for (path, reason) in &restored.unreadable {
            eprintln!("warning: passing over {}: {reason}", path.display());
        }
    }
    let path = restored.path.clone();
    trainer
        .load_state(restored.tensors)
        .with_context(|| format!("resuming from {}", path.display()))?;
    let done = restored.iterations_done;
    if !report {
        return Ok(done);
    }
    if restored.unreadable.is_empty() {
        eprintln!("resuming {} after iteration {done}", dir.root.display());
    } else {
        eprintln!(
            "resuming {} from the newest readable checkpoint, {} (after iteration {done})",
            dir.root.display(),
            path.display()
        );
    }
    Ok(done)
}
