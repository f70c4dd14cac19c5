//! The quality benchmark: Value Matching with the default configuration on problems whose
//! optimum is known ([`crate::quality::suite`]), judged by the normalised improvement
//! `(adapted - base) / (optimum - base)` of the mean reward and by the distance of the adapted
//! samples to exact samples of `p*`, against the same distance between two independent exact
//! samples of `p*` (the noise floor).

use std::path::Path;

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::plugins::Registry;
use crate::quality::{sliced_wasserstein1, OptimumOptions, Problem};
use crate::run::{Run, RunConfig, Start};

/// Random directions of the sliced 1-Wasserstein distance (one suffices in 1-d).
const PROJECTIONS: usize = 64;

/// Independent pairs of exact samples of `p*` over which the noise floor is averaged (and the
/// distances to `p*` over their `2 * FLOOR_PAIRS` samples). One pair's distance is itself a
/// noisy statistic: for a mixture in 1-d its standard deviation is a quarter of its mean, as
/// each sample's share of each mode varies.
const FLOOR_PAIRS: usize = 8;

/// What one problem reached.
#[derive(Debug, Clone, Serialize)]
pub struct QualityFigures {
    /// The problem's name.
    pub problem: String,
    /// Dimension of the samples.
    pub dimension: usize,
    /// `lambda`.
    pub reward_scale: f64,
    /// Sampling steps of the run.
    pub steps: usize,
    /// `E_base[r]`, exact or to high precision.
    pub base_reward: f64,
    /// Mean reward of the adapted model's evaluation samples.
    pub adapted_reward: f64,
    /// `E_p*[r]`, exact or to high precision.
    pub optimum_reward: f64,
    /// Its standard error (0 for a closed form or quadrature).
    pub optimum_std_error: f64,
    /// `(adapted - base) / (optimum - base)`.
    pub normalised_improvement: f64,
    /// Distance of the base model's samples to exact samples of `p*` (sliced W1; W1 in 1-d),
    /// averaged over independent exact samples of the same size.
    pub distance_before: f64,
    /// Distance of the adapted samples to exact samples of `p*`, averaged likewise.
    pub distance_after: f64,
    /// The same distance between two independent exact samples of `p*` of the same size,
    /// averaged over independent pairs.
    pub noise_floor: f64,
    /// `distance_after / noise_floor`.
    pub distance_ratio: f64,
    /// How the optimum was computed.
    pub method: String,
    /// Seconds the run took.
    pub seconds: f64,
}

/// Runs Value Matching on `problem` with `config` (model, reward and reward scale replaced by
/// the problem's) in `dir`, and compares the outcome with the exact optimum.
pub fn run_problem(
    registry: &Registry,
    problem: &Problem,
    config: &RunConfig,
    dir: &Path,
) -> Result<QualityFigures> {
    let exact = |n: usize| {
        problem
            .optimum(n, config.seed, &OptimumOptions::default())
            .map_err(|e| anyhow!("{e}; refusing to judge it against a guess"))
    };
    // Refused before anything runs when the optimum cannot be computed.
    exact(16)?;
    let config = RunConfig {
        model: problem.model_id().to_string(),
        reward: problem.reward_id.clone(),
        model_args: json_table(&problem.model_args_json)?,
        reward_args: json_table(&problem.reward_args_json)?,
        reward_scale: problem.lambda,
        ..config.clone()
    };
    let mut run = Run::open(
        registry,
        Start::New {
            config: Box::new(config),
            dir: dir.to_path_buf(),
        },
    )?;
    let (_, summary) = run.execute()?;
    let points = |name: &str| -> Result<Vec<Vec<f64>>> {
        let samples = match name {
            "before" => run.before(),
            _ => run.after(),
        }
        .ok_or_else(|| anyhow!("the run drew no {name} samples"))?;
        Ok(samples.points())
    };
    let (before, after) = (points("before")?, points("after")?);
    let optimum = exact(2 * FLOOR_PAIRS * after.len())?;
    let draws: Vec<&[Vec<f64>]> = optimum.samples.chunks(after.len().max(1)).collect();
    let distance = |a: &[Vec<f64>], b: &[Vec<f64>]| sliced_wasserstein1(a, b, PROJECTIONS, 7);
    let mean_distance_to_optimum =
        |a: &[Vec<f64>]| draws.iter().map(|b| distance(a, b)).sum::<f64>() / draws.len() as f64;
    let adapted_reward = summary.after.map_or(f64::NAN, |stats| stats.reward_mean);
    let (base, best) = (optimum.base_reward_mean.value, optimum.reward_mean.value);
    let noise_floor = draws
        .chunks(2)
        .map(|pair| distance(pair[0], pair[1]))
        .sum::<f64>()
        / FLOOR_PAIRS as f64;
    let distance_after = mean_distance_to_optimum(&after);
    Ok(QualityFigures {
        problem: problem.name.clone(),
        dimension: problem.dim(),
        reward_scale: problem.lambda,
        steps: run.config().steps,
        base_reward: base,
        adapted_reward,
        optimum_reward: best,
        optimum_std_error: optimum.reward_mean.std_error,
        normalised_improvement: (adapted_reward - base) / (best - base),
        distance_before: mean_distance_to_optimum(&before),
        distance_after,
        noise_floor,
        distance_ratio: distance_after / noise_floor,
        method: optimum.method.clone(),
        seconds: summary.seconds,
    })
}

fn json_table(json: &str) -> Result<toml::Table> {
    Ok(serde_json::from_str(json)?)
}
