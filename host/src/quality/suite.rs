//! The problems of `bench quality`: exact base models (`vec/gmm`) and rewards of the
//! `exact-problems` plugin whose tilted optimum [`tilted_optimum`] computes.
//!
//! Each [`Problem`] holds the base mixture and reward as values, and the argument documents of
//! the plugin entries are generated from those same values ([`Problem::new`]), so what the host
//! runs and what the reference computes cannot drift apart.
//!
//! Together the problems cover: dimensions 1, 2 and 8; a single Gaussian with a non-trivial
//! mean and a full, non-diagonal covariance, and mixtures with well-separated modes; half-space
//! and box indicators, a narrow and a wide bump, and a linear reward; `lambda` 1, 5 and 10;
//! velocity (on the `ot` schedule) and epsilon (on `ddpm`) outputs. Every optimum leaves the
//! base far behind (`suite_problems_are_feasible_and_leave_room_to_improve`), and every one is
//! feasible for exact rejection sampling.

use super::exact::{tilted_optimum_with, Estimate, Gmm, Optimum, OptimumOptions, RewardSpec};
use super::linalg::Rng;

/// The plugin entry the base model of every problem on vectors is.
pub const MODEL_ID: &str = "vec/gmm";

/// The plugin entry the base model of every problem on point sets is: `vec/gmm` point by
/// point, with a number of points per sample drawn uniformly from `counts`.
pub const POINTS_MODEL_ID: &str = "points/gmm";

/// What the base model's `forward` predicts (`vec/gmm`'s `output` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelOutput {
    /// The velocity `alpha' E[x_1|x_t] + beta' E[x_0|x_t]`.
    Velocity,
    /// The noise `E[x_0|x_t]`.
    Epsilon,
    /// The score `grad log p_t`.
    Score,
    /// The clean data `E[x_1|x_t]`.
    Endpoint,
}

impl ModelOutput {
    /// The argument value.
    pub fn name(self) -> &'static str {
        match self {
            ModelOutput::Velocity => "velocity",
            ModelOutput::Epsilon => "epsilon",
            ModelOutput::Score => "score",
            ModelOutput::Endpoint => "endpoint",
        }
    }
}

/// The base model's noise schedule (`vec/gmm`'s `schedule` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSchedule {
    /// `alpha = t`, `beta = 1 - t`.
    OptimalTransport,
    /// `alpha = sin^2(pi t / 2)`, `beta = 1 - alpha` (the cosine schedule with `nu = 1`).
    Cosine,
    /// DDPM's linear betas from `1e-4` to `0.02` over 1000 steps.
    Ddpm,
}

impl ModelSchedule {
    /// The argument value.
    pub fn name(self) -> &'static str {
        match self {
            ModelSchedule::OptimalTransport => "ot",
            ModelSchedule::Cosine => "cosine",
            ModelSchedule::Ddpm => "ddpm",
        }
    }
}

/// One problem of the quality suite.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Short unique name (`2d-gaussian-linear`).
    pub name: String,
    /// What it tests, in one line.
    pub description: String,
    /// The arguments of `vec/gmm` ([`MODEL_ID`]), as JSON.
    pub model_args_json: String,
    /// The reward entry (`vec/halfspace`, ...).
    pub reward_id: String,
    /// The reward entry's arguments, as JSON.
    pub reward_args_json: String,
    /// The tilt strength: `p* ∝ p_base exp(lambda r)`.
    pub lambda: f64,
    /// The base distribution the model's flow ends in.
    pub base: Gmm,
    /// The reward.
    pub reward: RewardSpec,
    /// What the model predicts.
    pub output: ModelOutput,
    /// The model's schedule.
    pub schedule: ModelSchedule,
    /// For a problem on point sets (data type `points`): the numbers of points a sample may
    /// have, drawn uniformly; empty for vectors.
    pub counts: Vec<usize>,
}

impl Problem {
    /// A problem, with the plugin argument documents generated from `base`, `output`,
    /// `schedule` and `reward`.
    pub fn new(
        name: &str,
        description: &str,
        base: Gmm,
        output: ModelOutput,
        schedule: ModelSchedule,
        reward: RewardSpec,
        lambda: f64,
    ) -> Self {
        let model_args = serde_json::json!({
            "weights": base.weights,
            "means": base.means,
            "covariances": base.covariances,
            "output": output.name(),
            "schedule": schedule.name(),
        });
        Self {
            name: name.to_string(),
            description: description.to_string(),
            model_args_json: model_args.to_string(),
            reward_id: reward.plugin_id().to_string(),
            reward_args_json: reward.plugin_args().to_string(),
            lambda,
            base,
            reward,
            output,
            schedule,
            counts: Vec::new(),
        }
    }

    /// The same problem on point sets: each sample is a set of points drawn independently
    /// from the base (`points/gmm`), as many as one of `counts` (uniformly), and the reward is
    /// the mean over a sample's points of the per-point reward (`points/<reward>`). With `m`
    /// points the tilt factorises into `exp(lambda / m r(x_i))` per point; the number of
    /// points is not the sampler's to change, so the optimum is this tilt given `m`, averaged
    /// over the counts.
    pub fn on_point_sets(mut self, name: &str, description: &str, counts: &[usize]) -> Self {
        let mut args: serde_json::Value =
            serde_json::from_str(&self.model_args_json).expect("generated above");
        args["counts"] = serde_json::json!(counts);
        self.name = name.to_string();
        self.description = description.to_string();
        self.model_args_json = args.to_string();
        self.reward_id = self.reward.plugin_id().replacen("vec/", "points/", 1);
        self.counts = counts.to_vec();
        self
    }

    /// The base model's entry.
    pub fn model_id(&self) -> &'static str {
        if self.counts.is_empty() {
            MODEL_ID
        } else {
            POINTS_MODEL_ID
        }
    }

    /// The dimension (of each point, for point sets).
    pub fn dim(&self) -> usize {
        self.base.dim()
    }

    /// The problem's optimum with `n` exact samples ([`tilted_optimum_with`]).
    pub fn optimum(
        &self,
        n: usize,
        seed: u64,
        options: &OptimumOptions,
    ) -> Result<Optimum, String> {
        if !self.counts.is_empty() {
            return self
                .point_sets_optimum(n, seed, options)
                .map_err(|e| format!("problem `{}`: {e}", self.name));
        }
        tilted_optimum_with(&self.base, &self.reward, self.lambda, n, seed, options)
            .map_err(|e| format!("problem `{}`: {e}", self.name))
    }

    /// The optimum on point sets: the per-point tilt at `lambda / m` for each count `m`,
    /// averaged over the (uniform) counts; its `samples` are `n` points pooled as the samples'
    /// points are (a count's share is proportional to `m`), in random order.
    fn point_sets_optimum(
        &self,
        n: usize,
        seed: u64,
        options: &OptimumOptions,
    ) -> Result<Optimum, String> {
        let share = 1.0 / self.counts.len() as f64;
        let total_points: usize = self.counts.iter().sum();
        let (mut reward, mut variance, mut samples) = (0.0, 0.0, Vec::with_capacity(n));
        let mut base = None;
        let mut methods = Vec::new();
        for (i, &m) in self.counts.iter().enumerate() {
            let draws = if i + 1 == self.counts.len() {
                n - samples.len()
            } else {
                n * m / total_points
            };
            let lambda = self.lambda / m as f64;
            let opt = tilted_optimum_with(
                &self.base,
                &self.reward,
                lambda,
                draws,
                seed + m as u64,
                options,
            )?;
            reward += share * opt.reward_mean.value;
            variance += (share * opt.reward_mean.std_error).powi(2);
            base.get_or_insert(opt.base_reward_mean);
            methods.push(format!("{m} points: {}", opt.method));
            samples.extend(opt.samples);
        }
        let mut rng = Rng::new(seed ^ 0x5eed);
        for i in (1..samples.len()).rev() {
            let j = ((rng.uniform() * (i + 1) as f64) as usize).min(i);
            samples.swap(i, j);
        }
        Ok(Optimum {
            base_reward_mean: base.ok_or("no counts")?,
            reward_mean: Estimate {
                value: reward,
                std_error: variance.sqrt(),
            },
            log_normalizer: Estimate::exact(f64::NAN),
            samples,
            method: format!(
                "per point, tilted at lambda / m for each number of points m: {}",
                methods.join("; ")
            ),
            acceptance: None,
            ess: None,
            reference_samples: 0,
        })
    }
}

/// `d x d` covariance `D R D` with `R_ij = rho^|i - j|` and `D = diag(stds)`.
fn ar1(stds: &[f64], rho: f64) -> Vec<Vec<f64>> {
    let d = stds.len();
    (0..d)
        .map(|i| {
            (0..d)
                .map(|j| stds[i] * stds[j] * rho.powi((i as i32 - j as i32).abs()))
                .collect()
        })
        .collect()
}

/// 2x2 covariance from standard deviations and a correlation.
fn cov2(sx: f64, sy: f64, rho: f64) -> Vec<Vec<f64>> {
    vec![vec![sx * sx, rho * sx * sy], vec![rho * sx * sy, sy * sy]]
}

fn gmm(weights: Vec<f64>, means: Vec<Vec<f64>>, covariances: Vec<Vec<Vec<f64>>>) -> Gmm {
    Gmm::new(weights, means, covariances).expect("the suite's mixtures are valid")
}

/// Two modes on the line, 0.8 N(-2, 0.5^2) + 0.2 N(2, 0.5^2).
fn two_modes_1d() -> Gmm {
    gmm(
        vec![0.8, 0.2],
        vec![vec![-2.0], vec![2.0]],
        vec![vec![vec![0.25]], vec![vec![0.25]]],
    )
}

/// Two symmetric modes on the line with a valley between them.
fn valley_1d() -> Gmm {
    gmm(
        vec![0.5, 0.5],
        vec![vec![-1.5], vec![1.5]],
        vec![vec![vec![0.36]], vec![vec![0.36]]],
    )
}

/// One Gaussian in 2-d with a non-trivial mean and a correlated, anisotropic covariance.
fn gaussian_2d() -> Gmm {
    gmm(
        vec![1.0],
        vec![vec![1.0, -0.5]],
        vec![vec![vec![1.0, 0.6], vec![0.6, 0.5]]],
    )
}

/// Four well-separated modes at (±2.5, ±2.5) of unequal weights and full covariances.
fn four_modes_2d() -> Gmm {
    gmm(
        vec![0.4, 0.3, 0.2, 0.1],
        vec![
            vec![-2.5, 2.5],
            vec![2.5, 2.5],
            vec![-2.5, -2.5],
            vec![2.5, -2.5],
        ],
        vec![
            cov2(0.5, 0.4, 0.5),
            cov2(0.4, 0.6, -0.4),
            cov2(0.6, 0.5, 0.3),
            cov2(0.5, 0.5, -0.6),
        ],
    )
}

/// One Gaussian in 8-d: mean (0.5, -0.5, 0.3, -0.3, ...), AR(1) correlation 0.6 with
/// standard deviations from 0.6 to 1.3.
fn gaussian_8d() -> Gmm {
    let mean = vec![0.5, -0.5, 0.3, -0.3, 0.2, -0.2, 0.1, -0.1];
    let stds = vec![0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3];
    gmm(vec![1.0], vec![mean], vec![ar1(&stds, 0.6)])
}

/// Two modes in 8-d at -1.5 and +1.5 on every coordinate, weights 0.9 and 0.1, with
/// different full covariances.
fn two_modes_8d() -> Gmm {
    gmm(
        vec![0.9, 0.1],
        vec![vec![-1.5; 8], vec![1.5; 8]],
        vec![ar1(&[0.8; 8], 0.5), ar1(&[0.7; 8], -0.3)],
    )
}

/// The full suite: the problems the defaults were chosen on, then those written after.
pub fn suite() -> Vec<Problem> {
    let mut problems = tuning_problems();
    problems.extend(later_problems());
    problems
}

/// The ten problems the defaults were chosen on. (One list, longer than a function should be:
/// a table reads best in one place, and each entry is a few lines of data.)
fn tuning_problems() -> Vec<Problem> {
    use ModelOutput::{Epsilon, Velocity};
    use ModelSchedule::{Ddpm, OptimalTransport as Ot};
    vec![
        Problem::new(
            "1d-two-modes-halfspace",
            "reweight two modes on the line: move the 20% mode to ~97% (half-space x >= 0)",
            two_modes_1d(),
            Velocity,
            Ot,
            RewardSpec::HalfSpace {
                normal: vec![1.0],
                offset: 0.0,
            },
            5.0,
        ),
        Problem::new(
            "1d-valley-narrow-bump",
            "concentrate mass in the low-density valley between two modes (narrow bump)",
            valley_1d(),
            Epsilon,
            Ddpm,
            RewardSpec::Bump {
                center: vec![0.0],
                width: 0.15,
            },
            10.0,
        ),
        Problem::new(
            "2d-gaussian-linear",
            "shift a correlated Gaussian along a linear reward: p* = N(m + lambda S w, S)",
            gaussian_2d(),
            Velocity,
            Ot,
            RewardSpec::Linear {
                weights: vec![1.0, 1.0],
                bias: 0.0,
            },
            1.0,
        ),
        Problem::new(
            "2d-gaussian-box",
            "move a correlated Gaussian into a box lying against its correlation",
            gaussian_2d(),
            Epsilon,
            Ddpm,
            RewardSpec::Box {
                low: vec![1.5, -1.5],
                high: vec![3.0, -0.5],
            },
            5.0,
        ),
        Problem::new(
            "2d-four-modes-wide-bump",
            "favour the lightest of four modes with a wide bump that also reaches its neighbours",
            four_modes_2d(),
            Velocity,
            Ot,
            RewardSpec::Bump {
                center: vec![2.5, -2.5],
                width: 2.0,
            },
            5.0,
        ),
        Problem::new(
            "2d-four-modes-halfspace",
            "find the lightest (10%) of four modes: half-space x - y >= 3.5 selects it",
            four_modes_2d(),
            Epsilon,
            Ddpm,
            RewardSpec::HalfSpace {
                normal: vec![1.0, -1.0],
                offset: 3.5,
            },
            10.0,
        ),
        Problem::new(
            "8d-gaussian-halfspace",
            "tilt a correlated 8-d Gaussian into a half-space it rarely reaches",
            gaussian_8d(),
            Velocity,
            Ot,
            RewardSpec::HalfSpace {
                normal: vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                offset: 4.0,
            },
            5.0,
        ),
        Problem::new(
            "8d-two-modes-linear",
            "a linear reward switches the dominant mode of an 8-d mixture (closed form)",
            two_modes_8d(),
            Epsilon,
            Ddpm,
            RewardSpec::Linear {
                weights: vec![0.25; 8],
                bias: 0.0,
            },
            1.0,
        ),
        Problem::new(
            "2d-four-modes-halfspace",
            "",
            four_modes_2d(),
            Velocity,
            Ot,
            RewardSpec::HalfSpace {
                normal: vec![1.0, -1.0],
                offset: 3.5,
            },
            10.0,
        )
        .on_point_sets(
            "points-2d-four-modes-halfspace",
            "sets of 1 to 3 points: move each point towards the lightest of four modes (mean of a half-space indicator over the points)",
            &[1, 2, 3],
        ),
        Problem::new(
            "8d-two-modes-box",
            "move an 8-d mixture into a box around its 10% mode",
            two_modes_8d(),
            Velocity,
            Ot,
            RewardSpec::Box {
                low: vec![0.2; 8],
                high: vec![2.8; 8],
            },
            5.0,
        ),
    ]
}

/// Problems written after the defaults were chosen, to check that they carry over to other
/// dimensions, outputs and rewards; the defaults were not tuned on them.
fn later_problems() -> Vec<Problem> {
    use ModelOutput::{Endpoint, Epsilon, Score, Velocity};
    use ModelSchedule::{Cosine, Ddpm, OptimalTransport as Ot};
    vec![
        Problem::new(
            "3d-gaussian-halfspace",
            "tilt a correlated 3-d Gaussian across a diagonal plane (a score model)",
            gmm(
                vec![1.0],
                vec![vec![0.5, -0.5, 0.0]],
                vec![ar1(&[0.7, 1.0, 1.2], 0.4)],
            ),
            Score,
            Ot,
            RewardSpec::HalfSpace {
                normal: vec![1.0, 1.0, 1.0],
                offset: 2.0,
            },
            5.0,
        ),
        Problem::new(
            "4d-gaussian-box",
            "a 4-d box off the Gaussian's centre that holds 3% of it, at lambda 10",
            gmm(
                vec![1.0],
                vec![vec![0.0; 4]],
                vec![ar1(&[1.0, 0.8, 1.1, 0.9], 0.3)],
            ),
            Velocity,
            Ot,
            RewardSpec::Box {
                low: vec![0.5, -1.0, 0.3, -0.5],
                high: vec![2.0, 0.5, 1.8, 1.0],
            },
            10.0,
        ),
        Problem::new(
            "16d-gaussian-linear",
            "a linear reward on a correlated 16-d Gaussian (closed form)",
            gmm(vec![1.0], vec![vec![0.2; 16]], vec![ar1(&[0.9; 16], 0.5)]),
            Epsilon,
            Ddpm,
            RewardSpec::Linear {
                weights: vec![0.3; 16],
                bias: 0.5,
            },
            1.0,
        ),
        Problem::new(
            "12d-two-modes-halfspace",
            "switch a 12-d mixture to its 15% mode with a half-space (an endpoint model)",
            gmm(
                vec![0.85, 0.15],
                vec![vec![-1.0; 12], vec![1.0; 12]],
                vec![ar1(&[0.9; 12], 0.2), ar1(&[0.6; 12], 0.5)],
            ),
            Endpoint,
            Ot,
            RewardSpec::HalfSpace {
                normal: vec![1.0; 12],
                offset: 6.0,
            },
            10.0,
        ),
        Problem::new(
            "5d-three-modes-bump",
            "pull a 5-d mixture of three modes into the gap between them (cosine schedule)",
            gmm(
                vec![0.5, 0.3, 0.2],
                vec![
                    vec![-1.5, 0.5, 0.0, -0.5, 0.0],
                    vec![1.5, -0.5, 0.5, 0.0, 0.5],
                    vec![0.0, 1.5, -1.0, 1.0, -0.5],
                ],
                vec![
                    ar1(&[0.6, 0.7, 0.5, 0.6, 0.7], 0.3),
                    ar1(&[0.5, 0.6, 0.7, 0.5, 0.6], -0.2),
                    ar1(&[0.7, 0.5, 0.6, 0.7, 0.5], 0.5),
                ],
            ),
            Epsilon,
            Cosine,
            RewardSpec::Bump {
                center: vec![0.0, 0.3, 0.0, 0.0, 0.0],
                width: 1.0,
            },
            10.0,
        ),
        Problem::new(
            "6d-two-modes-halfspace",
            "switch a 6-d mixture to its 25% mode across an oblique half-space (cosine schedule)",
            gmm(
                vec![0.75, 0.25],
                vec![
                    vec![-1.0, 0.5, -0.5, 0.0, 1.0, -1.0],
                    vec![1.0, -0.5, 0.5, 1.0, 0.0, 0.5],
                ],
                vec![
                    ar1(&[0.8; 6], 0.4),
                    ar1(&[0.6, 0.9, 0.7, 0.8, 0.6, 0.9], 0.1),
                ],
            ),
            Velocity,
            Cosine,
            RewardSpec::HalfSpace {
                normal: vec![1.0, -0.5, 0.5, 0.5, -0.5, 1.0],
                offset: 1.0,
            },
            5.0,
        ),
    ]
}

/// Two cheap problems for tests (closed forms, low dimension): velocity on `ot` and epsilon on
/// `ddpm`.
pub fn fast_subset() -> Vec<Problem> {
    let keep = [
        "1d-two-modes-halfspace",
        "2d-gaussian-linear",
        "2d-four-modes-halfspace",
    ];
    suite()
        .into_iter()
        .filter(|p| keep.contains(&p.name.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard deviation of component `k` along the unit direction `u`.
    fn sd_along(base: &Gmm, k: usize, u: &[f64]) -> f64 {
        let s = &base.covariances[k];
        let mut q = 0.0;
        for i in 0..u.len() {
            for j in 0..u.len() {
                q += u[i] * s[i][j] * u[j];
            }
        }
        q.sqrt()
    }

    /// The smallest separation of two modes, in units of the sum of their standard deviations
    /// along the line between their means.
    fn separation(base: &Gmm) -> f64 {
        let mut worst = f64::INFINITY;
        for a in 0..base.components() {
            for b in a + 1..base.components() {
                let diff: Vec<f64> = base.means[a]
                    .iter()
                    .zip(&base.means[b])
                    .map(|(x, y)| x - y)
                    .collect();
                let norm = diff.iter().map(|v| v * v).sum::<f64>().sqrt();
                let u: Vec<f64> = diff.iter().map(|v| v / norm).collect();
                worst = worst.min(norm / (sd_along(base, a, &u) + sd_along(base, b, &u)));
            }
        }
        worst
    }

    fn axis_sds(base: &Gmm) -> impl Iterator<Item = f64> + '_ {
        base.covariances
            .iter()
            .flat_map(|s| (0..s.len()).map(move |i| s[i][i].sqrt()))
    }

    #[test]
    fn suite_covers_every_required_axis() {
        let problems = suite();
        assert!(problems.len() >= 8);
        let mut names: Vec<&str> = problems.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), problems.len(), "names must be unique");
        for d in [1, 2] {
            assert!(problems.iter().any(|p| p.dim() == d), "dimension {d}");
        }
        assert!(problems.iter().any(|p| p.dim() >= 8), "dimension >= 8");
        // Gaussian to Gaussian: one component, non-zero mean, full non-diagonal covariance.
        assert!(problems.iter().any(|p| p.base.components() == 1
            && p.base.means[0].iter().any(|m| *m != 0.0)
            && !p.base.is_diagonal()));
        // A mixture with well-separated modes (>= 2 standard deviations each side).
        assert!(problems
            .iter()
            .any(|p| p.base.components() > 1 && separation(&p.base) >= 2.0));
        let has = |kind: &str| problems.iter().any(|p| p.reward.kind() == kind);
        for kind in ["half-space", "box", "bump", "linear"] {
            assert!(has(kind), "reward {kind}");
        }
        // Narrow: at most half the smallest axis standard deviation; wide: at least the largest.
        let bumps = |test: &dyn Fn(&Problem, f64) -> bool| {
            problems
                .iter()
                .any(|p| matches!(p.reward, RewardSpec::Bump { width, .. } if test(p, width)))
        };
        assert!(
            bumps(&|p, w| w <= 0.5 * axis_sds(&p.base).fold(f64::INFINITY, f64::min)),
            "narrow bump"
        );
        assert!(
            bumps(&|p, w| w >= axis_sds(&p.base).fold(0.0, f64::max)),
            "wide bump"
        );
        for lambda in [1.0, 5.0, 10.0] {
            assert!(
                problems.iter().any(|p| p.lambda == lambda),
                "lambda {lambda}"
            );
        }
        for output in [ModelOutput::Velocity, ModelOutput::Epsilon] {
            assert!(problems.iter().any(|p| p.output == output), "{output:?}");
        }
        for schedule in [
            ModelSchedule::OptimalTransport,
            ModelSchedule::Cosine,
            ModelSchedule::Ddpm,
        ] {
            assert!(
                problems.iter().any(|p| p.schedule == schedule),
                "{schedule:?}"
            );
        }
        let fast = fast_subset();
        assert!((2..=3).contains(&fast.len()));
    }

    /// Whether two lists agree to within a few ulp: serde_json (without its `float_roundtrip`
    /// feature, as the plugin parses) may read a number back one ulp off.
    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs()))
    }

    #[test]
    fn plugin_arguments_are_generated_from_the_reference_values() {
        for p in suite() {
            let model: serde_json::Value = serde_json::from_str(&p.model_args_json).unwrap();
            let parse = |v: &serde_json::Value| -> Vec<f64> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            };
            assert!(
                close(&parse(&model["weights"]), &p.base.weights),
                "{}",
                p.name
            );
            let means = model["means"].as_array().unwrap();
            assert_eq!(means.len(), p.base.components());
            for (got, want) in means.iter().zip(&p.base.means) {
                assert!(close(&parse(got), want), "{}", p.name);
            }
            let covariances = model["covariances"].as_array().unwrap();
            assert_eq!(covariances.len(), p.base.components());
            for (got, want) in covariances.iter().zip(&p.base.covariances) {
                let rows = got.as_array().unwrap();
                assert_eq!(rows.len(), want.len());
                for (row, want_row) in rows.iter().zip(want) {
                    assert!(close(&parse(row), want_row), "{}", p.name);
                }
            }
            assert_eq!(model["output"], p.output.name());
            assert_eq!(model["schedule"], p.schedule.name());
            if p.counts.is_empty() {
                assert_eq!(model.as_object().unwrap().len(), 5);
                assert_eq!(p.reward_id, p.reward.plugin_id());
            } else {
                assert_eq!(model["counts"], serde_json::json!(p.counts));
                assert_eq!(model.as_object().unwrap().len(), 6);
                assert_eq!(
                    p.reward_id,
                    p.reward.plugin_id().replacen("vec/", "points/", 1)
                );
            }
            let reward: serde_json::Value = serde_json::from_str(&p.reward_args_json).unwrap();
            assert_eq!(reward, p.reward.plugin_args());
        }
    }

    #[test]
    fn point_sets_optimum_averages_the_per_point_tilt_over_the_counts() {
        // A Gaussian N(m, S) tilted by exp(l w . x) is N(m + l S w, S): with the mean over m
        // points, E*[r | m] = w . m + (lambda / m) w' S w.
        let base = gaussian_2d();
        let weights = vec![1.0, 1.0];
        let problem = Problem::new(
            "2d",
            "",
            base.clone(),
            ModelOutput::Velocity,
            ModelSchedule::OptimalTransport,
            RewardSpec::Linear {
                weights: weights.clone(),
                bias: 0.0,
            },
            2.0,
        )
        .on_point_sets("points", "", &[1, 2, 4]);
        assert_eq!(problem.model_id(), POINTS_MODEL_ID);
        assert_eq!(problem.reward_id, "points/linear");
        let args: serde_json::Value = serde_json::from_str(&problem.model_args_json).unwrap();
        assert_eq!(args["counts"], serde_json::json!([1, 2, 4]));
        let opt = problem.optimum(700, 3, &OptimumOptions::default()).unwrap();
        let s = &base.covariances[0];
        let quad: f64 = (0..2)
            .flat_map(|i| (0..2).map(move |j| (i, j)))
            .map(|(i, j)| weights[i] * s[i][j] * weights[j])
            .sum();
        let mean: f64 = base.means[0].iter().zip(&weights).map(|(a, b)| a * b).sum();
        let want = mean + 2.0 * quad * (1.0 + 0.5 + 0.25) / 3.0;
        assert!(
            (opt.reward_mean.value - want).abs() < 1e-9,
            "{} vs {want}",
            opt.reward_mean.value
        );
        assert!((opt.base_reward_mean.value - mean).abs() < 1e-9);
        assert_eq!(opt.samples.len(), 700);
    }

    #[test]
    fn suite_problems_are_feasible_and_leave_room_to_improve() {
        let options = OptimumOptions {
            reference_samples: 200_000,
            ..OptimumOptions::default()
        };
        for p in suite() {
            let opt = p.optimum(2_000, 1, &options).unwrap();
            assert_eq!(opt.samples.len(), 2_000);
            assert!(
                opt.acceptance.is_none_or(|a| a >= 1e-3),
                "{}: acceptance {:?}",
                p.name,
                opt.acceptance
            );
            let (base, best) = (opt.base_reward_mean.value, opt.reward_mean.value);
            match p.reward.sup() {
                // Bounded rewards in [0, 1]: the optimum closes at least half the gap to 1,
                // from a base that is at most halfway there.
                Some(sup) => {
                    assert!(base <= 0.5 * sup, "{}: base {base}", p.name);
                    assert!(
                        (best - base) / (sup - base) >= 0.5,
                        "{}: {base} -> {best}",
                        p.name
                    );
                }
                // Linear: the optimum gains at least one base standard deviation of r.
                None => {
                    let xs = p.base.sample(100_000, 2).unwrap();
                    let r: Vec<f64> = xs.iter().map(|x| p.reward.eval(x)).collect();
                    let mean = r.iter().sum::<f64>() / r.len() as f64;
                    let sd =
                        (r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / r.len() as f64).sqrt();
                    assert!(best - base >= sd, "{}: {base} -> {best}, sd {sd}", p.name);
                }
            }
        }
    }
}
