//! Exact base distributions (Gaussian mixtures), rewards, and the tilted optimum
//! `p*(x) ∝ p_base(x) exp(lambda r(x))` that Value Matching should reach.
//!
//! What is computed how ([`tilted_optimum`]):
//!
//! | reward | `E_base[r]` | `E_p*[r]`, `log Z` | samples of `p*` |
//! |---|---|---|---|
//! | linear | closed form | closed form (the tilt is a mixture) | exact, from that mixture |
//! | half-space | closed form (normal CDF) | closed form | rejection from exact base draws |
//! | box, diagonal covariances or d = 1 | closed form (normal CDF) | closed form | rejection |
//! | box, full covariances | Monte Carlo | self-normalised importance sampling | rejection |
//! | bump, d = 1 | closed form | quadrature (composite Simpson) | rejection |
//! | bump, d > 1 | closed form | self-normalised importance sampling | rejection |
//!
//! Here `Z = E_base[exp(lambda r)]`. Monte Carlo and importance sampling use
//! [`OptimumOptions::reference_samples`] exact base draws and report their standard error (and
//! the effective sample size); closed forms report a standard error of 0. Rejection sampling
//! accepts a base draw with probability `exp(lambda (r - sup r))`, so its samples are exact; a
//! problem whose acceptance rate is below [`OptimumOptions::min_acceptance`], or that would need
//! more than [`OptimumOptions::max_base_draws`] draws, is refused rather than approximated.

use super::linalg::{derive_seed, dot, mat_vec, Cholesky, Rng};
use super::special::{normal_interval, normal_sf};

/// A Gaussian mixture `sum_k weights[k] N(means[k], covariances[k])` in `d` dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Gmm {
    /// Mixture weights (positive; [`Gmm::new`] normalises them to sum to 1).
    pub weights: Vec<f64>,
    /// Means, `d` coordinates each.
    pub means: Vec<Vec<f64>>,
    /// Full covariances, `d` rows of `d` numbers each, symmetric positive definite.
    pub covariances: Vec<Vec<Vec<f64>>>,
}

/// A mixture checked and factorised for sampling.
struct Prepared {
    weights: Vec<f64>,
    means: Vec<Vec<f64>>,
    /// Row-major `d x d`.
    covariances: Vec<Vec<f64>>,
    factors: Vec<Cholesky>,
    /// Cumulative weights, for picking a component.
    cumulative: Vec<f64>,
}

impl Prepared {
    fn dim(&self) -> usize {
        self.means[0].len()
    }

    /// One exact draw, written into `out` (`z` is scratch space of length `d`).
    fn draw_into(&self, rng: &mut Rng, z: &mut [f64], out: &mut [f64]) {
        let u = rng.uniform();
        let k = self
            .cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.weights.len() - 1);
        for v in z.iter_mut() {
            *v = rng.normal();
        }
        self.factors[k].mul_lower_into(z, out);
        for (o, m) in out.iter_mut().zip(&self.means[k]) {
            *o += m;
        }
    }

    fn sample(&self, n: usize, seed: u64) -> Vec<Vec<f64>> {
        let d = self.dim();
        let mut rng = Rng::new(seed);
        let mut z = vec![0.0; d];
        (0..n)
            .map(|_| {
                let mut x = vec![0.0; d];
                self.draw_into(&mut rng, &mut z, &mut x);
                x
            })
            .collect()
    }
}

impl Gmm {
    /// A mixture, checked: one or more components, positive finite weights (normalised here),
    /// means of one dimension, symmetric positive-definite `d x d` covariances.
    pub fn new(
        weights: Vec<f64>,
        means: Vec<Vec<f64>>,
        covariances: Vec<Vec<Vec<f64>>>,
    ) -> Result<Self, String> {
        let gmm = Self {
            weights,
            means,
            covariances,
        };
        let prepared = gmm.prepare()?;
        Ok(Self {
            weights: prepared.weights,
            ..gmm
        })
    }

    /// A mixture whose component `k` has covariance `stds[k]^2 I`.
    pub fn isotropic(
        weights: Vec<f64>,
        means: Vec<Vec<f64>>,
        stds: Vec<f64>,
    ) -> Result<Self, String> {
        let d = means.first().map_or(0, Vec::len);
        let covariances = stds
            .iter()
            .map(|s| {
                (0..d)
                    .map(|i| (0..d).map(|j| if i == j { s * s } else { 0.0 }).collect())
                    .collect()
            })
            .collect();
        Self::new(weights, means, covariances)
    }

    /// The dimension `d`.
    pub fn dim(&self) -> usize {
        self.means.first().map_or(0, Vec::len)
    }

    /// The number of components.
    pub fn components(&self) -> usize {
        self.weights.len()
    }

    /// `n` exact draws, determined by `seed`.
    pub fn sample(&self, n: usize, seed: u64) -> Result<Vec<Vec<f64>>, String> {
        Ok(self.prepare()?.sample(n, seed))
    }

    /// The mean `sum_k pi_k m_k`.
    pub fn mean(&self) -> Vec<f64> {
        let total: f64 = self.weights.iter().sum();
        let mut mean = vec![0.0; self.dim()];
        for (w, m) in self.weights.iter().zip(&self.means) {
            for (a, b) in mean.iter_mut().zip(m) {
                *a += w / total * b;
            }
        }
        mean
    }

    /// Whether every covariance is diagonal.
    pub fn is_diagonal(&self) -> bool {
        self.covariances.iter().all(|s| {
            s.iter()
                .enumerate()
                .all(|(i, row)| row.iter().enumerate().all(|(j, v)| i == j || *v == 0.0))
        })
    }

    fn prepare(&self) -> Result<Prepared, String> {
        let k = self.weights.len();
        if k == 0 {
            return Err("the mixture has no components".into());
        }
        if let Some(w) = self.weights.iter().find(|w| !(**w > 0.0 && w.is_finite())) {
            return Err(format!(
                "mixture weights must be positive and finite, got {w}"
            ));
        }
        if self.means.len() != k || self.covariances.len() != k {
            return Err(format!(
                "the mixture has {k} weights, {} means and {} covariances",
                self.means.len(),
                self.covariances.len()
            ));
        }
        let d = self.dim();
        if d == 0 {
            return Err("the mixture's means have no coordinates".into());
        }
        let mut covariances = Vec::with_capacity(k);
        let mut factors = Vec::with_capacity(k);
        for i in 0..k {
            if self.means[i].len() != d || self.means[i].iter().any(|v| !v.is_finite()) {
                return Err(format!(
                    "mean {i} must be {d} finite numbers, got {:?}",
                    self.means[i]
                ));
            }
            let rows = &self.covariances[i];
            if rows.len() != d || rows.iter().any(|row| row.len() != d) {
                return Err(format!("covariance {i} must be {d} rows of {d} numbers"));
            }
            let flat: Vec<f64> = rows.iter().flatten().copied().collect();
            if flat.iter().any(|v| !v.is_finite()) {
                return Err(format!("covariance {i} is not finite"));
            }
            for r in 0..d {
                for c in 0..r {
                    let (a, b) = (flat[r * d + c], flat[c * d + r]);
                    if (a - b).abs() > 1e-9 * a.abs().max(b.abs()).max(1.0) {
                        return Err(format!("covariance {i} is not symmetric"));
                    }
                }
            }
            let factor = Cholesky::new(&flat, d)
                .ok_or_else(|| format!("covariance {i} is not positive definite"))?;
            covariances.push(flat);
            factors.push(factor);
        }
        let total: f64 = self.weights.iter().sum();
        let weights: Vec<f64> = self.weights.iter().map(|w| w / total).collect();
        let mut acc = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += w;
                acc
            })
            .collect();
        Ok(Prepared {
            weights,
            means: self.means.clone(),
            covariances,
            factors,
            cumulative,
        })
    }
}

/// A reward whose tilt of a Gaussian mixture is known exactly or to high precision. Each
/// variant is one entry of the `exact-problems` plugin ([`RewardSpec::plugin_id`]).
#[derive(Debug, Clone, PartialEq)]
pub enum RewardSpec {
    /// `1[normal . x >= offset]` (`vec/halfspace`).
    HalfSpace {
        /// Normal of the half-space, not zero.
        normal: Vec<f64>,
        /// Threshold.
        offset: f64,
    },
    /// `1[low <= x <= high]` elementwise (`vec/box`).
    Box {
        /// Lower corner.
        low: Vec<f64>,
        /// Upper corner.
        high: Vec<f64>,
    },
    /// `exp(-|x - center|^2 / (2 width^2))` (`vec/bump`).
    Bump {
        /// Centre.
        center: Vec<f64>,
        /// Width, positive.
        width: f64,
    },
    /// `weights . x + bias` (`vec/linear`).
    Linear {
        /// Weights.
        weights: Vec<f64>,
        /// Constant.
        bias: f64,
    },
}

impl RewardSpec {
    /// The reward at `x`, computed as the plugin computes it (in `f64`).
    pub fn eval(&self, x: &[f64]) -> f64 {
        match self {
            RewardSpec::HalfSpace { normal, offset } => {
                if dot(normal, x) >= *offset {
                    1.0
                } else {
                    0.0
                }
            }
            RewardSpec::Box { low, high } => {
                let inside = x
                    .iter()
                    .zip(low.iter().zip(high))
                    .all(|(v, (lo, hi))| lo <= v && v <= hi);
                if inside {
                    1.0
                } else {
                    0.0
                }
            }
            RewardSpec::Bump { center, width } => {
                let sq: f64 = x.iter().zip(center).map(|(v, c)| (v - c).powi(2)).sum();
                (-sq / (2.0 * width * width)).exp()
            }
            RewardSpec::Linear { weights, bias } => dot(weights, x) + bias,
        }
    }

    /// The id of the plugin entry that computes this reward.
    pub fn plugin_id(&self) -> &'static str {
        match self {
            RewardSpec::HalfSpace { .. } => "vec/halfspace",
            RewardSpec::Box { .. } => "vec/box",
            RewardSpec::Bump { .. } => "vec/bump",
            RewardSpec::Linear { .. } => "vec/linear",
        }
    }

    /// The plugin entry's argument document for this reward.
    pub fn plugin_args(&self) -> serde_json::Value {
        match self {
            RewardSpec::HalfSpace { normal, offset } => {
                serde_json::json!({ "normal": normal, "offset": offset })
            }
            RewardSpec::Box { low, high } => serde_json::json!({ "low": low, "high": high }),
            RewardSpec::Bump { center, width } => {
                serde_json::json!({ "center": center, "width": width })
            }
            RewardSpec::Linear { weights, bias } => {
                serde_json::json!({ "weights": weights, "bias": bias })
            }
        }
    }

    /// A short name of the kind: `half-space`, `box`, `bump`, `linear`.
    pub fn kind(&self) -> &'static str {
        match self {
            RewardSpec::HalfSpace { .. } => "half-space",
            RewardSpec::Box { .. } => "box",
            RewardSpec::Bump { .. } => "bump",
            RewardSpec::Linear { .. } => "linear",
        }
    }

    /// `sup r`, for bounded rewards.
    pub fn sup(&self) -> Option<f64> {
        match self {
            RewardSpec::Linear { .. } => None,
            _ => Some(1.0),
        }
    }

    /// Checks the parameters and that the vectors have dimension `d`.
    pub fn validate(&self, d: usize) -> Result<(), String> {
        let vector = |name: &str, v: &[f64]| -> Result<(), String> {
            if v.len() != d {
                return Err(format!(
                    "{} reward: `{name}` has {} entries but the base has dimension {d}",
                    self.kind(),
                    v.len()
                ));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("{} reward: `{name}` is not finite", self.kind()));
            }
            Ok(())
        };
        match self {
            RewardSpec::HalfSpace { normal, offset } => {
                vector("normal", normal)?;
                if normal.iter().all(|v| *v == 0.0) || !offset.is_finite() {
                    return Err(
                        "half-space reward: `normal` must not be zero and `offset` must be finite"
                            .into(),
                    );
                }
            }
            RewardSpec::Box { low, high } => {
                vector("low", low)?;
                vector("high", high)?;
                if low.iter().zip(high).any(|(l, h)| l > h) {
                    return Err("box reward: `low` exceeds `high`".into());
                }
            }
            RewardSpec::Bump { center, width } => {
                vector("center", center)?;
                if !(*width > 0.0 && width.is_finite()) {
                    return Err(format!(
                        "bump reward: `width` must be positive, got {width}"
                    ));
                }
            }
            RewardSpec::Linear { weights, bias } => {
                vector("weights", weights)?;
                if !bias.is_finite() {
                    return Err("linear reward: `bias` must be finite".into());
                }
            }
        }
        Ok(())
    }
}

/// A number with its standard error (0 for closed forms and quadrature).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The value.
    pub value: f64,
    /// Its Monte Carlo standard error; 0 when computed in closed form.
    pub std_error: f64,
}

impl Estimate {
    /// A closed-form value.
    pub fn exact(value: f64) -> Self {
        Self {
            value,
            std_error: 0.0,
        }
    }
}

/// The tilted optimum `p*(x) ∝ p_base(x) exp(lambda r(x))` of a problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Optimum {
    /// `E_base[r]`.
    pub base_reward_mean: Estimate,
    /// `E_p*[r]`.
    pub reward_mean: Estimate,
    /// `log Z = log E_base[exp(lambda r)]`: the optimal value of `lambda E_p[r] - KL(p || p_base)`.
    pub log_normalizer: Estimate,
    /// Exact samples of `p*`.
    pub samples: Vec<Vec<f64>>,
    /// How each quantity was obtained, in words.
    pub method: String,
    /// The rejection sampler's acceptance rate `Z exp(-lambda sup r)` (exact or estimated), if
    /// rejection sampling was used.
    pub acceptance: Option<f64>,
    /// The effective sample size of the importance sampling, if it was used.
    pub ess: Option<f64>,
    /// The number of exact base draws behind the Monte Carlo estimates (0: none).
    pub reference_samples: usize,
}

impl Optimum {
    /// `KL(p* || p_base) = lambda E_p*[r] - log Z`.
    pub fn kl_from_base(&self, lambda: f64) -> f64 {
        lambda * self.reward_mean.value - self.log_normalizer.value
    }
}

/// How hard [`tilted_optimum_with`] may work.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimumOptions {
    /// Exact base draws for Monte Carlo and importance sampling.
    pub reference_samples: usize,
    /// Refuse rejection sampling below this acceptance rate.
    pub min_acceptance: f64,
    /// Refuse rejection sampling that would need more base draws than this.
    pub max_base_draws: u64,
    /// Refuse importance sampling whose effective sample size is below this.
    pub min_ess: f64,
}

impl Default for OptimumOptions {
    /// 4 million reference draws; acceptance at least `1e-5`; at most `2e9` base draws; an
    /// effective sample size of at least 1000.
    fn default() -> Self {
        Self {
            reference_samples: 4_000_000,
            min_acceptance: 1e-5,
            max_base_draws: 2_000_000_000,
            min_ess: 1000.0,
        }
    }
}

/// The tilted optimum of `base` under `reward` at `lambda`, with `n` exact samples, using the
/// default [`OptimumOptions`]. Errors (never guesses) when it cannot be computed.
pub fn tilted_optimum(
    base: &Gmm,
    reward: &RewardSpec,
    lambda: f64,
    n: usize,
    seed: u64,
) -> Result<Optimum, String> {
    tilted_optimum_with(base, reward, lambda, n, seed, &OptimumOptions::default())
}

/// [`tilted_optimum`] with explicit options.
pub fn tilted_optimum_with(
    base: &Gmm,
    reward: &RewardSpec,
    lambda: f64,
    n: usize,
    seed: u64,
    options: &OptimumOptions,
) -> Result<Optimum, String> {
    if !(lambda >= 0.0 && lambda.is_finite()) {
        return Err(format!(
            "lambda must be finite and non-negative, got {lambda}"
        ));
    }
    let prepared = base.prepare()?;
    let d = prepared.dim();
    reward.validate(d)?;
    match reward {
        RewardSpec::Linear { weights, bias } => linear(&prepared, weights, *bias, lambda, n, seed),
        RewardSpec::HalfSpace { normal, offset } => {
            let q: Vec<f64> = (0..prepared.weights.len())
                .map(|k| {
                    let sd = dot(normal, &mat_vec(&prepared.covariances[k], normal)).sqrt();
                    normal_sf((offset - dot(normal, &prepared.means[k])) / sd)
                })
                .collect();
            let method = "closed form: P(normal . x >= offset) per component from the normal distribution function";
            indicator(&prepared, reward, &q, method, lambda, n, seed, options)
        }
        RewardSpec::Box { low, high } if d == 1 || base.is_diagonal() => {
            let q: Vec<f64> = (0..prepared.weights.len())
                .map(|k| {
                    (0..d)
                        .map(|i| {
                            let sd = prepared.covariances[k][i * d + i].sqrt();
                            let m = prepared.means[k][i];
                            normal_interval((low[i] - m) / sd, (high[i] - m) / sd)
                        })
                        .product()
                })
                .collect();
            let method = "closed form: box probability per component as a product of normal intervals (diagonal covariances)";
            indicator(&prepared, reward, &q, method, lambda, n, seed, options)
        }
        RewardSpec::Box { .. } => monte_carlo(&prepared, reward, None, lambda, n, seed, options),
        RewardSpec::Bump { center, width } => {
            let base_mean: f64 = (0..prepared.weights.len())
                .map(|k| prepared.weights[k] * bump_mean(&prepared, k, center, *width))
                .sum();
            if d == 1 {
                quadrature_1d(&prepared, reward, base_mean, lambda, n, seed, options)
            } else {
                monte_carlo(&prepared, reward, Some(base_mean), lambda, n, seed, options)
            }
        }
    }
}

/// `E[exp(-|x - c|^2 / (2 h^2))]` under component `k`:
/// `h^d / sqrt(det(S + h^2 I)) exp(-(m - c)' (S + h^2 I)^{-1} (m - c) / 2)`.
fn bump_mean(prepared: &Prepared, k: usize, center: &[f64], width: f64) -> f64 {
    let d = prepared.dim();
    let mut a = prepared.covariances[k].clone();
    for i in 0..d {
        a[i * d + i] += width * width;
    }
    let factor = Cholesky::new(&a, d).expect("S + h^2 I is positive definite");
    let diff: Vec<f64> = prepared.means[k]
        .iter()
        .zip(center)
        .map(|(m, c)| m - c)
        .collect();
    let quad = dot(&diff, &factor.solve(&diff));
    (d as f64 * width.ln() - 0.5 * factor.log_det() - 0.5 * quad).exp()
}

/// `log sum_k exp(a_k)`.
fn log_sum_exp(a: &[f64]) -> f64 {
    let top = a.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    top + a.iter().map(|v| (v - top).exp()).sum::<f64>().ln()
}

/// Linear rewards: the tilt of a Gaussian mixture by `exp(lambda w . x)` is the mixture with
/// means `m_k + lambda S_k w` and weights `∝ pi_k exp(lambda w . m_k + lambda^2 w' S_k w / 2)`.
fn linear(
    prepared: &Prepared,
    w: &[f64],
    bias: f64,
    lambda: f64,
    n: usize,
    seed: u64,
) -> Result<Optimum, String> {
    let k = prepared.weights.len();
    let sw: Vec<Vec<f64>> = (0..k)
        .map(|i| mat_vec(&prepared.covariances[i], w))
        .collect();
    let log_tilted: Vec<f64> = (0..k)
        .map(|i| {
            prepared.weights[i].ln()
                + lambda * dot(w, &prepared.means[i])
                + 0.5 * lambda * lambda * dot(w, &sw[i])
        })
        .collect();
    let lse = log_sum_exp(&log_tilted);
    let tilted_weights: Vec<f64> = log_tilted.iter().map(|l| (l - lse).exp()).collect();
    let tilted_means: Vec<Vec<f64>> = (0..k)
        .map(|i| {
            prepared.means[i]
                .iter()
                .zip(&sw[i])
                .map(|(m, s)| m + lambda * s)
                .collect()
        })
        .collect();
    let base_mean: f64 = (0..k)
        .map(|i| prepared.weights[i] * dot(w, &prepared.means[i]))
        .sum::<f64>()
        + bias;
    let reward_mean: f64 = (0..k)
        .map(|i| tilted_weights[i] * dot(w, &tilted_means[i]))
        .sum::<f64>()
        + bias;
    let mut acc = 0.0;
    let tilted = Prepared {
        cumulative: tilted_weights
            .iter()
            .map(|v| {
                acc += v;
                acc
            })
            .collect(),
        weights: tilted_weights,
        means: tilted_means,
        covariances: prepared.covariances.clone(),
        factors: prepared.factors.clone(),
    };
    Ok(Optimum {
        base_reward_mean: Estimate::exact(base_mean),
        reward_mean: Estimate::exact(reward_mean),
        log_normalizer: Estimate::exact(lambda * bias + lse),
        samples: tilted.sample(n, derive_seed(seed, 2)),
        method: "closed form: the tilt of a Gaussian mixture by exp(lambda w.x) is the mixture with means m_k + lambda S_k w and weights ∝ pi_k exp(lambda w.m_k + lambda^2 w'S_k w / 2); exact samples from it".into(),
        acceptance: None,
        ess: None,
        reference_samples: 0,
    })
}

/// Indicator rewards with known per-component probabilities `q_k`: `p = sum pi_k q_k`,
/// `Z = 1 + p (e^lambda - 1)`, `E_p*[r] = p e^lambda / Z`.
#[allow(clippy::too_many_arguments)]
fn indicator(
    prepared: &Prepared,
    reward: &RewardSpec,
    q: &[f64],
    method: &str,
    lambda: f64,
    n: usize,
    seed: u64,
    options: &OptimumOptions,
) -> Result<Optimum, String> {
    let p: f64 = prepared.weights.iter().zip(q).map(|(w, q)| w * q).sum();
    let log_z = (p * lambda.exp_m1()).ln_1p();
    let reward_mean = if p == 0.0 {
        0.0
    } else {
        1.0 / (1.0 + (1.0 - p) / p * (-lambda).exp())
    };
    let acceptance = (log_z - lambda).exp();
    let samples = rejection(prepared, reward, 1.0, lambda, acceptance, n, seed, options)?;
    Ok(Optimum {
        base_reward_mean: Estimate::exact(p),
        reward_mean: Estimate::exact(reward_mean),
        log_normalizer: Estimate::exact(log_z),
        samples,
        method: format!(
            "{method}; E_p*[r] = p e^lambda / (p e^lambda + 1 - p); samples by rejection from exact base draws (acceptance {acceptance:.4e})"
        ),
        acceptance: Some(acceptance),
        ess: None,
        reference_samples: 0,
    })
}

/// Monte Carlo for `E_base[r]` (unless given in closed form) and self-normalised importance
/// sampling from exact base draws for `E_p*[r]` and `log Z`, with weights
/// `exp(lambda (r - sup r))`.
#[allow(clippy::too_many_arguments)]
fn monte_carlo(
    prepared: &Prepared,
    reward: &RewardSpec,
    closed_base_mean: Option<f64>,
    lambda: f64,
    n: usize,
    seed: u64,
    options: &OptimumOptions,
) -> Result<Optimum, String> {
    let sup = reward.sup().ok_or_else(|| {
        format!(
            "the {} reward is unbounded and has no closed form here; its optimum cannot be computed",
            reward.kind()
        )
    })?;
    let big_n = options.reference_samples;
    if big_n < 2 {
        return Err("Monte Carlo needs at least 2 reference samples".into());
    }
    let d = prepared.dim();
    let mut rng = Rng::new(derive_seed(seed, 1));
    let (mut z, mut x) = (vec![0.0; d], vec![0.0; d]);
    // Sums for r, r^2, w, w^2, w r, w^2 r, w^2 r^2.
    let (mut sr, mut srr, mut sw, mut sww, mut swr, mut swwr, mut swwrr) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let mut positive = 0usize;
    for _ in 0..big_n {
        prepared.draw_into(&mut rng, &mut z, &mut x);
        let r = reward.eval(&x);
        let w = (lambda * (r - sup)).exp();
        if r > 0.0 {
            positive += 1;
        }
        sr += r;
        srr += r * r;
        sw += w;
        sww += w * w;
        swr += w * r;
        swwr += w * w * r;
        swwrr += w * w * r * r;
    }
    let nf = big_n as f64;
    if positive == 0 {
        return Err(format!(
            "no one of {big_n} exact base draws has a positive {} reward; its optimum cannot be estimated",
            reward.kind()
        ));
    }
    let mu = swr / sw;
    // sum w^2 (r - mu)^2
    let spread = (swwrr - 2.0 * mu * swwr + mu * mu * sww).max(0.0);
    let ess = sw * sw / sww;
    if ess < options.min_ess {
        return Err(format!(
            "importance sampling for the {} reward has an effective sample size of {ess:.0} of {big_n} draws (below {}); its optimum cannot be estimated reliably",
            reward.kind(),
            options.min_ess
        ));
    }
    let mean_w = sw / nf;
    let var_w = (sww / nf - mean_w * mean_w).max(0.0) * nf / (nf - 1.0);
    let base_mean = match closed_base_mean {
        Some(value) => Estimate::exact(value),
        None => {
            let mean = sr / nf;
            let var = (srr / nf - mean * mean).max(0.0) * nf / (nf - 1.0);
            Estimate {
                value: mean,
                std_error: (var / nf).sqrt(),
            }
        }
    };
    let acceptance = mean_w;
    let samples = rejection(prepared, reward, sup, lambda, acceptance, n, seed, options)?;
    let base_how = if closed_base_mean.is_some() {
        "E_base[r] in closed form (Gaussian integral of the bump)"
    } else {
        "E_base[r] by Monte Carlo"
    };
    Ok(Optimum {
        base_reward_mean: base_mean,
        reward_mean: Estimate {
            value: mu,
            std_error: spread.sqrt() / sw,
        },
        log_normalizer: Estimate {
            value: lambda * sup + mean_w.ln(),
            std_error: (var_w / nf).sqrt() / mean_w,
        },
        samples,
        method: format!(
            "{base_how}; E_p*[r] and log Z by self-normalised importance sampling from {big_n} exact base draws (effective sample size {ess:.0}); samples by rejection from exact base draws (acceptance {acceptance:.4e})"
        ),
        acceptance: Some(acceptance),
        ess: Some(ess),
        reference_samples: big_n,
    })
}

/// One-dimensional rewards: `Z` and `E_p*[r]` by composite Simpson quadrature of
/// `p_base(x) exp(lambda r(x))` over the mixture's `±12` standard deviations, on a grid fine
/// against both the components' and the reward's scales.
#[allow(clippy::too_many_arguments)]
fn quadrature_1d(
    prepared: &Prepared,
    reward: &RewardSpec,
    base_mean: f64,
    lambda: f64,
    n: usize,
    seed: u64,
    options: &OptimumOptions,
) -> Result<Optimum, String> {
    let sup = reward
        .sup()
        .expect("quadrature is used for bounded rewards");
    let sds: Vec<f64> = prepared.covariances.iter().map(|s| s[0].sqrt()).collect();
    let lo = (0..sds.len())
        .map(|k| prepared.means[k][0] - 12.0 * sds[k])
        .fold(f64::INFINITY, f64::min);
    let hi = (0..sds.len())
        .map(|k| prepared.means[k][0] + 12.0 * sds[k])
        .fold(f64::NEG_INFINITY, f64::max);
    let mut scale = sds.iter().copied().fold(f64::INFINITY, f64::min);
    if let RewardSpec::Bump { width, .. } = reward {
        // exp(lambda r) varies on the scale width / sqrt(lambda) near the centre.
        scale = scale.min(width / lambda.max(1.0).sqrt());
    }
    let intervals = (((hi - lo) / (scale / 200.0)).ceil() as usize).clamp(1_000, 20_000_000);
    let intervals = intervals + intervals % 2;
    let h = (hi - lo) / intervals as f64;
    let density = |x: f64| -> f64 {
        (0..sds.len())
            .map(|k| {
                let z = (x - prepared.means[k][0]) / sds[k];
                prepared.weights[k] * (-0.5 * z * z).exp()
                    / (sds[k] * (2.0 * std::f64::consts::PI).sqrt())
            })
            .sum()
    };
    let (mut z_sum, mut r_sum) = (0.0, 0.0);
    for i in 0..=intervals {
        let x = lo + i as f64 * h;
        let coefficient = if i == 0 || i == intervals {
            1.0
        } else if i % 2 == 1 {
            4.0
        } else {
            2.0
        };
        let r = reward.eval(&[x]);
        let f = coefficient * density(x) * (lambda * (r - sup)).exp();
        z_sum += f;
        r_sum += f * r;
    }
    let z_scaled = z_sum * h / 3.0;
    let acceptance = z_scaled;
    let samples = rejection(prepared, reward, sup, lambda, acceptance, n, seed, options)?;
    Ok(Optimum {
        base_reward_mean: Estimate::exact(base_mean),
        reward_mean: Estimate::exact(r_sum / z_sum),
        log_normalizer: Estimate::exact(lambda * sup + z_scaled.ln()),
        samples,
        method: format!(
            "E_base[r] in closed form; E_p*[r] and log Z by composite Simpson quadrature ({intervals} intervals on [{lo:.3}, {hi:.3}]); samples by rejection from exact base draws (acceptance {acceptance:.4e})"
        ),
        acceptance: Some(acceptance),
        ess: None,
        reference_samples: 0,
    })
}

/// `n` exact samples of `p*` by rejection from exact base draws, accepting with probability
/// `exp(lambda (r - sup))`; refused when the (expected) acceptance rate makes it infeasible.
#[allow(clippy::too_many_arguments)]
fn rejection(
    prepared: &Prepared,
    reward: &RewardSpec,
    sup: f64,
    lambda: f64,
    acceptance: f64,
    n: usize,
    seed: u64,
    options: &OptimumOptions,
) -> Result<Vec<Vec<f64>>, String> {
    if acceptance.is_nan() || acceptance < options.min_acceptance {
        return Err(format!(
            "rejection sampling of the optimum for the {} reward at lambda = {lambda} would accept {acceptance:.3e} of base draws (below {:e}); refusing",
            reward.kind(),
            options.min_acceptance
        ));
    }
    let expected = n as f64 / acceptance;
    if expected > options.max_base_draws as f64 {
        return Err(format!(
            "rejection sampling {n} samples of the optimum for the {} reward would take about {expected:.3e} base draws (more than {}); refusing",
            reward.kind(),
            options.max_base_draws
        ));
    }
    let d = prepared.dim();
    let mut rng = Rng::new(derive_seed(seed, 3));
    let mut z = vec![0.0; d];
    let mut x = vec![0.0; d];
    let mut samples = Vec::with_capacity(n);
    let mut draws: u64 = 0;
    // Ten times the expected number of draws: beyond that the acceptance estimate was wrong.
    let limit = (10.0 * expected).max(1e4) as u64;
    while samples.len() < n {
        draws += 1;
        if draws > limit {
            return Err(format!(
                "rejection sampling for the {} reward accepted only {} of {draws} draws, far below the expected rate {acceptance:.3e}; refusing",
                reward.kind(),
                samples.len()
            ));
        }
        prepared.draw_into(&mut rng, &mut z, &mut x);
        let accept = (lambda * (reward.eval(&x) - sup)).exp();
        if rng.uniform() < accept {
            samples.push(x.clone());
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(reference_samples: usize) -> OptimumOptions {
        OptimumOptions {
            reference_samples,
            ..OptimumOptions::default()
        }
    }

    /// A 2-d mixture with full covariances.
    fn mixture_2d() -> Gmm {
        Gmm::new(
            vec![0.3, 0.7],
            vec![vec![-2.0, 1.0], vec![2.5, -0.5]],
            vec![
                vec![vec![1.0, 0.6], vec![0.6, 0.8]],
                vec![vec![0.5, -0.2], vec![-0.2, 1.5]],
            ],
        )
        .unwrap()
    }

    fn mean_sd(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, (var / n).sqrt())
    }

    /// Plain Monte Carlo of E_base[r] and of E_p*[r] = E[r e^{lambda r}] / E[e^{lambda r}]
    /// from base draws, independent of the code under test except the sampler.
    fn brute_force(base: &Gmm, reward: &RewardSpec, lambda: f64, n: usize) -> ((f64, f64), f64) {
        let xs = base.sample(n, 99).unwrap();
        let r: Vec<f64> = xs.iter().map(|x| reward.eval(x)).collect();
        let w: Vec<f64> = r.iter().map(|r| (lambda * r).exp()).collect();
        let tilted = r.iter().zip(&w).map(|(r, w)| r * w).sum::<f64>() / w.iter().sum::<f64>();
        (mean_sd(&r), tilted)
    }

    #[test]
    fn exact_samples_have_the_mixture_moments() {
        let base = mixture_2d();
        let xs = base.sample(400_000, 1).unwrap();
        let mean = base.mean();
        for j in 0..2 {
            let (m, se) = mean_sd(&xs.iter().map(|x| x[j]).collect::<Vec<_>>());
            assert!(
                (m - mean[j]).abs() < 4.0 * se,
                "coordinate {j}: {m} vs {}",
                mean[j]
            );
        }
        // Cov(x0, x1) = sum pi_k (S_k01 + m_k0 m_k1) - mean0 mean1
        let want = 0.3 * (0.6 + -2.0 * 1.0) + 0.7 * (-0.2 + 2.5 * -0.5) - mean[0] * mean[1];
        let (got, se) = mean_sd(
            &xs.iter()
                .map(|x| (x[0] - mean[0]) * (x[1] - mean[1]))
                .collect::<Vec<_>>(),
        );
        assert!((got - want).abs() < 4.0 * se, "{got} vs {want}");
        assert_eq!(base.sample(3, 5).unwrap(), base.sample(3, 5).unwrap());
    }

    #[test]
    fn half_space_closed_form_agrees_with_monte_carlo() {
        let base = mixture_2d();
        let reward = RewardSpec::HalfSpace {
            normal: vec![1.0, 1.0],
            offset: 2.5,
        };
        let opt = tilted_optimum(&base, &reward, 3.0, 20_000, 7).unwrap();
        let ((mc, se), _) = brute_force(&base, &reward, 3.0, 1_000_000);
        assert!(
            (opt.base_reward_mean.value - mc).abs() < 4.0 * se,
            "{:?} vs {mc} ± {se}",
            opt.base_reward_mean
        );
        assert_eq!(opt.base_reward_mean.std_error, 0.0);
        // The rejection samples' mean reward is the closed-form E_p*[r].
        let r: Vec<f64> = opt.samples.iter().map(|x| reward.eval(x)).collect();
        let (m, se) = mean_sd(&r);
        assert!(
            (m - opt.reward_mean.value).abs() < 4.0 * se,
            "{m} ± {se} vs {:?}",
            opt.reward_mean
        );
        assert!(opt.reward_mean.value > 2.0 * opt.base_reward_mean.value);
    }

    #[test]
    fn diagonal_box_closed_form_agrees_with_monte_carlo() {
        let base = Gmm::isotropic(
            vec![0.5, 0.5],
            vec![vec![-1.0, 0.0], vec![2.0, 1.0]],
            vec![1.0, 0.5],
        )
        .unwrap();
        let reward = RewardSpec::Box {
            low: vec![1.0, 0.0],
            high: vec![3.0, 2.0],
        };
        let opt = tilted_optimum(&base, &reward, 2.0, 20_000, 3).unwrap();
        assert!(opt.method.starts_with("closed form"));
        let ((mc, se), tilted) = brute_force(&base, &reward, 2.0, 1_000_000);
        assert!((opt.base_reward_mean.value - mc).abs() < 4.0 * se);
        let r: Vec<f64> = opt.samples.iter().map(|x| reward.eval(x)).collect();
        let (m, se) = mean_sd(&r);
        assert!((m - opt.reward_mean.value).abs() < 4.0 * se);
        assert!((tilted - opt.reward_mean.value).abs() < 0.01);
    }

    #[test]
    fn full_covariance_box_is_estimated_with_its_error() {
        let base = mixture_2d();
        let reward = RewardSpec::Box {
            low: vec![1.0, -1.0],
            high: vec![3.0, 0.5],
        };
        let opt = tilted_optimum_with(&base, &reward, 2.0, 20_000, 4, &options(500_000)).unwrap();
        assert!(opt.base_reward_mean.std_error > 0.0 && opt.reward_mean.std_error > 0.0);
        assert!(opt.ess.unwrap() > 1000.0);
        let ((mc, se), _) = brute_force(&base, &reward, 2.0, 500_000);
        let both = (se.powi(2) + opt.base_reward_mean.std_error.powi(2)).sqrt();
        assert!((opt.base_reward_mean.value - mc).abs() < 4.0 * both);
        // For an indicator, E_p*[r] = p e^l / (p e^l + 1 - p), here from the same draws (up to
        // the rounding of sums over 500 000 terms).
        let p = opt.base_reward_mean.value;
        let g = p * 2f64.exp() / (p * 2f64.exp() + 1.0 - p);
        assert!((opt.reward_mean.value - g).abs() < 1e-9);
        let r: Vec<f64> = opt.samples.iter().map(|x| reward.eval(x)).collect();
        let (m, se) = mean_sd(&r);
        let both = (se.powi(2) + opt.reward_mean.std_error.powi(2)).sqrt();
        assert!((m - opt.reward_mean.value).abs() < 4.0 * both);
    }

    #[test]
    fn bump_closed_form_mean_and_importance_sampling_agree_with_monte_carlo() {
        let base = mixture_2d();
        let reward = RewardSpec::Bump {
            center: vec![0.0, 0.5],
            width: 0.7,
        };
        let opt = tilted_optimum_with(&base, &reward, 5.0, 20_000, 5, &options(1_000_000)).unwrap();
        let ((mc, se), _) = brute_force(&base, &reward, 5.0, 1_000_000);
        assert!(
            (opt.base_reward_mean.value - mc).abs() < 4.0 * se,
            "{:?} vs {mc} ± {se}",
            opt.base_reward_mean
        );
        let r: Vec<f64> = opt.samples.iter().map(|x| reward.eval(x)).collect();
        let (m, se) = mean_sd(&r);
        let both = (se.powi(2) + opt.reward_mean.std_error.powi(2)).sqrt();
        assert!(
            (m - opt.reward_mean.value).abs() < 4.0 * both,
            "{m} vs {:?}",
            opt.reward_mean
        );
    }

    #[test]
    fn one_dimensional_bump_quadrature_agrees_with_importance_sampling() {
        let base =
            Gmm::isotropic(vec![0.5, 0.5], vec![vec![-1.5], vec![1.5]], vec![0.6, 0.6]).unwrap();
        let reward = RewardSpec::Bump {
            center: vec![0.0],
            width: 0.2,
        };
        let lambda = 10.0;
        let opt = tilted_optimum(&base, &reward, lambda, 20_000, 6).unwrap();
        assert!(opt.method.contains("quadrature"));
        // Against plain self-normalised importance sampling of exact base draws.
        let xs = base.sample(2_000_000, 8).unwrap();
        let r: Vec<f64> = xs.iter().map(|x| reward.eval(x)).collect();
        let w: Vec<f64> = r.iter().map(|r| (lambda * (r - 1.0)).exp()).collect();
        let sw: f64 = w.iter().sum();
        let mu = r.iter().zip(&w).map(|(r, w)| r * w).sum::<f64>() / sw;
        let se = r
            .iter()
            .zip(&w)
            .map(|(r, w)| (w * (r - mu)).powi(2))
            .sum::<f64>()
            .sqrt()
            / sw;
        assert!(
            (opt.reward_mean.value - mu).abs() < 4.0 * se,
            "{:?} vs {mu} ± {se}",
            opt.reward_mean
        );
        let log_z = lambda + (sw / xs.len() as f64).ln();
        assert!(
            (opt.log_normalizer.value - log_z).abs() < 0.02,
            "{:?} vs {log_z}",
            opt.log_normalizer
        );
        let (m, se) = mean_sd(
            &opt.samples
                .iter()
                .map(|x| reward.eval(x))
                .collect::<Vec<_>>(),
        );
        assert!((m - opt.reward_mean.value).abs() < 4.0 * se);
    }

    #[test]
    fn linear_tilt_is_the_shifted_mixture() {
        // One Gaussian: p* = N(m + lambda S w, S), E_p*[r] = w.m + lambda w'Sw + b.
        let base = Gmm::new(
            vec![1.0],
            vec![vec![1.0, -0.5]],
            vec![vec![vec![1.0, 0.6], vec![0.6, 0.5]]],
        )
        .unwrap();
        let reward = RewardSpec::Linear {
            weights: vec![1.0, 1.0],
            bias: 0.25,
        };
        let opt = tilted_optimum(&base, &reward, 2.0, 200_000, 9).unwrap();
        assert!((opt.base_reward_mean.value - 0.75).abs() < 1e-14);
        let wsw = 1.0 + 2.0 * 0.6 + 0.5;
        assert!((opt.reward_mean.value - (0.75 + 2.0 * wsw)).abs() < 1e-12);
        // log Z = lambda (w.m + b) + lambda^2 w'Sw / 2
        assert!((opt.log_normalizer.value - (2.0 * 0.75 + 2.0 * wsw)).abs() < 1e-12);
        let (m, se) = mean_sd(
            &opt.samples
                .iter()
                .map(|x| reward.eval(x))
                .collect::<Vec<_>>(),
        );
        assert!((m - opt.reward_mean.value).abs() < 4.0 * se);
        // A mixture: the closed form against importance sampling of base draws.
        let base = mixture_2d();
        let reward = RewardSpec::Linear {
            weights: vec![0.5, -0.3],
            bias: 0.0,
        };
        let opt = tilted_optimum(&base, &reward, 1.0, 10, 9).unwrap();
        let ((mc, se), tilted) = brute_force(&base, &reward, 1.0, 2_000_000);
        assert!((opt.base_reward_mean.value - mc).abs() < 4.0 * se);
        assert!(
            (opt.reward_mean.value - tilted).abs() < 0.01,
            "{:?} vs {tilted}",
            opt.reward_mean
        );
    }

    #[test]
    fn infeasible_and_malformed_problems_are_refused() {
        let base = Gmm::isotropic(vec![1.0], vec![vec![0.0, 0.0]], vec![1.0]).unwrap();
        let far = RewardSpec::HalfSpace {
            normal: vec![1.0, 0.0],
            offset: 8.0,
        };
        let err = tilted_optimum(&base, &far, 20.0, 100, 1).unwrap_err();
        assert!(err.starts_with("rejection sampling of the optimum for the half-space reward at lambda = 20 would accept"), "{err}");
        let never = RewardSpec::Box {
            low: vec![30.0, 30.0],
            high: vec![31.0, 31.0],
        };
        let full = Gmm::new(
            vec![1.0],
            vec![vec![0.0, 0.0]],
            vec![vec![vec![1.0, 0.5], vec![0.5, 1.0]]],
        )
        .unwrap();
        let err = tilted_optimum_with(&full, &never, 1.0, 100, 1, &options(10_000)).unwrap_err();
        assert!(
            err.starts_with("no one of 10000 exact base draws has a positive box reward"),
            "{err}"
        );
        let wrong = RewardSpec::Linear {
            weights: vec![1.0],
            bias: 0.0,
        };
        assert_eq!(
            tilted_optimum(&base, &wrong, 1.0, 10, 1).unwrap_err(),
            "linear reward: `weights` has 1 entries but the base has dimension 2"
        );
        assert_eq!(
            tilted_optimum(&base, &far, f64::NAN, 10, 1).unwrap_err(),
            "lambda must be finite and non-negative, got NaN"
        );
        assert_eq!(
            Gmm::new(
                vec![1.0],
                vec![vec![0.0, 0.0]],
                vec![vec![vec![1.0, 2.0], vec![2.0, 1.0]]]
            )
            .unwrap_err(),
            "covariance 0 is not positive definite"
        );
        assert_eq!(
            Gmm::isotropic(vec![1.0, -1.0], vec![vec![0.0], vec![1.0]], vec![1.0, 1.0])
                .unwrap_err(),
            "mixture weights must be positive and finite, got -1"
        );
    }

    #[test]
    fn kl_of_the_optimum_is_consistent() {
        // lambda = 0: p* = p_base, KL = 0.
        let base = mixture_2d();
        let reward = RewardSpec::HalfSpace {
            normal: vec![0.0, 1.0],
            offset: 0.0,
        };
        let opt = tilted_optimum(&base, &reward, 0.0, 10, 1).unwrap();
        assert!(opt.kl_from_base(0.0).abs() < 1e-15);
        assert!((opt.reward_mean.value - opt.base_reward_mean.value).abs() < 1e-15);
        let opt = tilted_optimum(&base, &reward, 4.0, 10, 1).unwrap();
        assert!(opt.kl_from_base(4.0) > 0.0);
    }
}
