//! `vec/gmm`: the exact flow (or diffusion) from `N(0, I)` to a Gaussian mixture in `d`
//! dimensions with a full covariance per component.
//!
//! Along `x_t = alpha x_1 + beta x_0`, `x_0 ~ N(0, I)` independent of
//! `x_1 ~ sum_k pi_k N(m_k, S_k)`, component `k` has the marginal `N(alpha m_k, A_k)` with
//! `A_k = alpha^2 S_k + beta^2 I`. With `u_k = A_k^{-1} (x - alpha m_k)` and the posterior
//! responsibilities `gamma_k(x) ∝ pi_k N(x; alpha m_k, A_k)` (log-sum-exp):
//!
//! - endpoint `E[x_1 | x_t = x] = sum_k gamma_k (m_k + alpha S_k u_k)`
//! - epsilon `E[x_0 | x_t = x] = beta sum_k gamma_k u_k` (`= (x - alpha E[x_1|x]) / beta`)
//! - score `grad log p_t(x) = -sum_k gamma_k u_k` (`= -(x - alpha E[x_1|x]) / beta^2`)
//! - velocity `alpha' E[x_1 | x] + beta' E[x_0 | x]`
//!
//! Written through `u_k`, every output stays finite at both ends (`beta = 0` at `t = 1` of the
//! optimal-transport path, where `E[x_0 | x] = 0`). Computation is in `f64` on the CPU.
//!
//! Schedules: `ot` (`alpha = t`, `beta = 1 - t`; the model receives `t`) and `ddpm` (DDPM's
//! linear betas from `1e-4` to `0.02` over 1000 steps; `alpha_bar[k]` their cumulative products,
//! index 0 the cleanest; the model receives the step `k` and evaluates at
//! `alpha = sqrt(alpha_bar[k])`, `beta = sqrt(1 - alpha_bar[k])`, with the host's derivatives
//! `alpha_bar' = K (alpha_bar[k-1] - alpha_bar[k])`, `alpha_bar[-1] = 1`, for a velocity).

use flowgym_plugin_api::{
    arguments, register_base_model, BaseModel, Batch, ConstructContext, DLDevice, DType, Dim,
    Kwargs, LeafSpec, ManagedTensor, OutputType, PluginError, PluginResult, ScheduleSpec,
};

use crate::linalg::{dot, mat_vec, Cholesky, Rng};
use crate::{read_points, DATA_TYPE};

arguments! {
    /// Arguments of `vec/gmm`: the target mixture, what `forward` predicts and the schedule.
    pub struct GmmArgs {
        /// Mixture weights, one per component (positive; normalised to sum to 1).
        weights: Vec<f64> = vec![0.5, 0.5];
        /// Component means: one list of d coordinates per component (d is read from here).
        means: Vec<Vec<f64>> = vec![vec![-2.0, 0.0], vec![2.0, 0.0]];
        /// Full covariances, one d x d nested list per component (symmetric positive definite); or give `stds`; with neither, identity.
        covariances: Vec<Vec<Vec<f64>>> = Vec::new();
        /// Isotropic standard deviations, one per component (covariance std^2 I), instead of `covariances`.
        stds: Vec<f64> = Vec::new();
        /// What `forward` returns.
        output: String = "velocity".to_string()
            => one_of("velocity", "epsilon", "score", "endpoint");
        /// Noise schedule: `ot` (alpha = t, beta = 1 - t), `cosine` (alpha = sin^2(pi t / 2), beta = 1 - alpha) or `ddpm` (DDPM's linear betas, 1000 steps; forward receives the step).
        schedule: String = "ot".to_string() => one_of("ot", "cosine", "ddpm");
    }
}

/// A validated Gaussian mixture.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixture {
    /// Normalised weights.
    pub weights: Vec<f64>,
    /// Means, `d` coordinates each.
    pub means: Vec<Vec<f64>>,
    /// Covariances, row-major `d x d` each, symmetric positive definite.
    pub covariances: Vec<Vec<f64>>,
}

fn all_finite(values: &[f64]) -> bool {
    values.iter().all(|v| v.is_finite())
}

impl Mixture {
    /// The mixture the arguments describe; errors name the argument at fault.
    pub fn from_args(args: &GmmArgs) -> PluginResult<Self> {
        let k = args.weights.len();
        if k == 0 {
            return Err("argument `weights` must list at least one component".into());
        }
        if let Some(w) = args.weights.iter().find(|w| !(**w > 0.0 && w.is_finite())) {
            return Err(format!("argument `weights` must hold positive numbers, got {w}").into());
        }
        if args.means.len() != k {
            return Err(format!(
                "argument `means` has {} components but `weights` has {k}",
                args.means.len()
            )
            .into());
        }
        let d = args.means[0].len();
        if d == 0 {
            return Err("argument `means`: component 0 has no coordinates".into());
        }
        for (i, mean) in args.means.iter().enumerate() {
            if mean.len() != d {
                return Err(format!(
                    "argument `means`: component {i} has {} coordinates, component 0 has {d}",
                    mean.len()
                )
                .into());
            }
            if !all_finite(mean) {
                return Err(format!("argument `means`: component {i} is not finite").into());
            }
        }
        let covariances = match (args.covariances.is_empty(), args.stds.is_empty()) {
            (false, false) => {
                return Err("arguments `covariances` and `stds` both given; give one".into())
            }
            (true, true) => vec![identity(d); k],
            (true, false) => {
                if args.stds.len() != k {
                    return Err(format!(
                        "argument `stds` has {} entries but `weights` has {k}",
                        args.stds.len()
                    )
                    .into());
                }
                if let Some(s) = args.stds.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
                    return Err(
                        format!("argument `stds` must hold positive numbers, got {s}").into(),
                    );
                }
                args.stds
                    .iter()
                    .map(|s| identity(d).iter().map(|v| v * s * s).collect())
                    .collect()
            }
            (false, true) => {
                if args.covariances.len() != k {
                    return Err(format!(
                        "argument `covariances` has {} matrices but `weights` has {k}",
                        args.covariances.len()
                    )
                    .into());
                }
                args.covariances
                    .iter()
                    .enumerate()
                    .map(|(i, rows)| covariance(i, rows, d))
                    .collect::<PluginResult<Vec<_>>>()?
            }
        };
        let total: f64 = args.weights.iter().sum();
        Ok(Self {
            weights: args.weights.iter().map(|w| w / total).collect(),
            means: args.means.clone(),
            covariances,
        })
    }

    /// The dimension `d`.
    pub fn dim(&self) -> usize {
        self.means[0].len()
    }
}

fn identity(d: usize) -> Vec<f64> {
    let mut m = vec![0.0; d * d];
    for i in 0..d {
        m[i * d + i] = 1.0;
    }
    m
}

/// Component `i`'s covariance from nested rows, checked square, symmetric and positive definite.
fn covariance(i: usize, rows: &[Vec<f64>], d: usize) -> PluginResult<Vec<f64>> {
    if rows.len() != d || rows.iter().any(|row| row.len() != d) {
        let shape: Vec<usize> = rows.iter().map(Vec::len).collect();
        return Err(format!(
            "argument `covariances`: component {i} must be {d} rows of {d} numbers, got rows of lengths {shape:?}"
        )
        .into());
    }
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    if !all_finite(&flat) {
        return Err(format!("argument `covariances`: component {i} is not finite").into());
    }
    let mut sym = flat.clone();
    for r in 0..d {
        for c in 0..r {
            let (a, b) = (flat[r * d + c], flat[c * d + r]);
            if (a - b).abs() > 1e-9 * a.abs().max(b.abs()).max(1.0) {
                return Err(format!(
                    "argument `covariances`: component {i} is not symmetric (entry [{r}][{c}] is {a}, [{c}][{r}] is {b})"
                )
                .into());
            }
            let mean = 0.5 * (a + b);
            sym[r * d + c] = mean;
            sym[c * d + r] = mean;
        }
    }
    if Cholesky::new(&sym, d).is_none() {
        return Err(
            format!("argument `covariances`: component {i} is not positive definite").into(),
        );
    }
    Ok(sym)
}

/// `alpha`, `beta` and their time derivatives at one time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coefficients {
    /// Weight of the data `x_1`.
    pub alpha: f64,
    /// Weight of the noise `x_0`.
    pub beta: f64,
    /// `d alpha / dt`.
    pub alpha_dot: f64,
    /// `d beta / dt`.
    pub beta_dot: f64,
}

/// The noise schedule of `vec/gmm`.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// `alpha = t`, `beta = 1 - t`.
    OptimalTransport,
    /// `alpha = sin^2(pi t / 2)`, `beta = 1 - alpha`: the host's cosine schedule with `nu = 1`.
    Cosine,
    /// DDPM's discrete schedule: `alpha_bar[k]`, `k = 0..K`, index 0 the cleanest.
    Ddpm {
        /// The cumulative products.
        alpha_bar: Vec<f64>,
    },
}

/// DDPM's `alpha_bar`: linear betas from `1e-4` to `0.02` over 1000 steps, cumulative products
/// (index 0 the cleanest, `alpha_bar[0] = 1 - 1e-4`), in `f64`.
pub fn ddpm_alpha_bar() -> Vec<f64> {
    const STEPS: usize = 1000;
    let mut product = 1.0;
    (0..STEPS)
        .map(|i| {
            let beta = 1e-4 + (0.02 - 1e-4) * i as f64 / (STEPS - 1) as f64;
            product *= 1.0 - beta;
            product
        })
        .collect()
}

impl Schedule {
    /// The schedule named by the `schedule` argument.
    pub fn from_name(name: &str) -> PluginResult<Self> {
        match name {
            "ot" => Ok(Schedule::OptimalTransport),
            "cosine" => Ok(Schedule::Cosine),
            "ddpm" => Ok(Schedule::Ddpm {
                alpha_bar: ddpm_alpha_bar(),
            }),
            other => Err(format!(
                "argument `schedule` is \"{other}\" (accepted: one of \"ot\", \"cosine\", \"ddpm\")"
            )
            .into()),
        }
    }

    /// The descriptor the host reads.
    pub fn schedule(&self) -> ScheduleSpec {
        match self {
            Schedule::OptimalTransport => ScheduleSpec::OptimalTransport,
            Schedule::Cosine => ScheduleSpec::Cosine { nu: 1.0 },
            Schedule::Ddpm { alpha_bar } => ScheduleSpec::DiscreteDiffusion {
                alpha_bar: alpha_bar.clone().into(),
            },
        }
    }

    /// The coefficients at the time `forward` receives: `t` in `[0, 1]` (`ot`, `cosine`) or the
    /// step `k` (`ddpm`, rounded to the nearest integer).
    pub fn coefficients(&self, time: f64) -> PluginResult<Coefficients> {
        let unit_time = || {
            if (-1e-6..=1.0 + 1e-6).contains(&time) {
                Ok(time.clamp(0.0, 1.0))
            } else {
                Err(PluginError::from(format!("time {time} is outside [0, 1]")))
            }
        };
        match self {
            Schedule::OptimalTransport => {
                let t = unit_time()?;
                Ok(Coefficients {
                    alpha: t,
                    beta: 1.0 - t,
                    alpha_dot: 1.0,
                    beta_dot: -1.0,
                })
            }
            Schedule::Cosine => {
                let phase = std::f64::consts::FRAC_PI_2 * unit_time()?;
                let alpha = phase.sin().powi(2);
                let alpha_dot = std::f64::consts::FRAC_PI_2 * (2.0 * phase).sin();
                Ok(Coefficients {
                    alpha,
                    beta: 1.0 - alpha,
                    alpha_dot,
                    beta_dot: -alpha_dot,
                })
            }
            Schedule::Ddpm { alpha_bar } => {
                let k_max = alpha_bar.len() - 1;
                let k = time.round();
                if !(k >= 0.0 && k <= k_max as f64) {
                    return Err(format!(
                        "time {time} is not a step of the DDPM schedule (0 to {k_max})"
                    )
                    .into());
                }
                let k = k as usize;
                let ab = alpha_bar[k];
                let previous = if k == 0 { 1.0 } else { alpha_bar[k - 1] };
                let ab_dot = k_max as f64 * (previous - ab);
                let (alpha, beta) = (ab.sqrt(), (1.0 - ab).sqrt());
                Ok(Coefficients {
                    alpha,
                    beta,
                    alpha_dot: ab_dot / (2.0 * alpha),
                    beta_dot: -ab_dot / (2.0 * beta),
                })
            }
        }
    }
}

/// Parses the `output` argument.
pub fn output_type(name: &str) -> PluginResult<OutputType> {
    match name {
        "velocity" => Ok(OutputType::Velocity),
        "epsilon" => Ok(OutputType::Epsilon),
        "score" => Ok(OutputType::Score),
        "endpoint" => Ok(OutputType::Endpoint),
        other => Err(format!(
            "argument `output` is \"{other}\" (accepted: one of \"velocity\", \"epsilon\", \"score\", \"endpoint\")"
        )
        .into()),
    }
}

/// The posterior quantities at one point.
#[derive(Debug, Clone, PartialEq)]
pub struct Posterior {
    /// `E[x_1 | x_t = x]`.
    pub endpoint: Vec<f64>,
    /// `E[x_0 | x_t = x]`.
    pub epsilon: Vec<f64>,
    /// `grad log p_t(x)`.
    pub score: Vec<f64>,
    /// `log p_t(x)`.
    pub log_density: f64,
}

/// The mixture's path at one `(alpha, beta)`: each component's `A_k` factorised.
pub struct Marginal<'a> {
    mixture: &'a Mixture,
    alpha: f64,
    beta: f64,
    factors: Vec<Cholesky>,
    /// `ln pi_k - log det(A_k) / 2 - d/2 ln(2 pi)`.
    log_norms: Vec<f64>,
}

impl<'a> Marginal<'a> {
    /// The marginal of `x_t = alpha x_1 + beta x_0`.
    pub fn new(mixture: &'a Mixture, alpha: f64, beta: f64) -> PluginResult<Self> {
        let d = mixture.dim();
        let mut factors = Vec::with_capacity(mixture.weights.len());
        let mut log_norms = Vec::with_capacity(mixture.weights.len());
        for (k, s) in mixture.covariances.iter().enumerate() {
            let mut a: Vec<f64> = s.iter().map(|v| alpha * alpha * v).collect();
            for i in 0..d {
                a[i * d + i] += beta * beta;
            }
            let factor = Cholesky::new(&a, d).ok_or_else(|| {
                PluginError::new(format!(
                    "component {k} has a singular marginal at alpha = {alpha}, beta = {beta}"
                ))
            })?;
            log_norms.push(
                mixture.weights[k].ln()
                    - 0.5 * factor.log_det()
                    - 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln(),
            );
            factors.push(factor);
        }
        Ok(Self {
            mixture,
            alpha,
            beta,
            factors,
            log_norms,
        })
    }

    /// The posterior quantities at `x`.
    pub fn posterior(&self, x: &[f64]) -> Posterior {
        let d = x.len();
        let mut us = Vec::with_capacity(self.factors.len());
        let mut logs = Vec::with_capacity(self.factors.len());
        for (k, factor) in self.factors.iter().enumerate() {
            let diff: Vec<f64> = x
                .iter()
                .zip(&self.mixture.means[k])
                .map(|(xi, mi)| xi - self.alpha * mi)
                .collect();
            let u = factor.solve(&diff);
            logs.push(self.log_norms[k] - 0.5 * dot(&diff, &u));
            us.push(u);
        }
        let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = logs.iter().map(|l| (l - top).exp()).collect();
        let total: f64 = exps.iter().sum();
        let mut endpoint = vec![0.0; d];
        let mut u_mean = vec![0.0; d];
        for (k, u) in us.iter().enumerate() {
            let gamma = exps[k] / total;
            let su = mat_vec(&self.mixture.covariances[k], u);
            for i in 0..d {
                endpoint[i] += gamma * (self.mixture.means[k][i] + self.alpha * su[i]);
                u_mean[i] += gamma * u[i];
            }
        }
        Posterior {
            endpoint,
            epsilon: u_mean.iter().map(|u| self.beta * u).collect(),
            score: u_mean.iter().map(|u| -u).collect(),
            log_density: top + total.ln(),
        }
    }
}

/// The exact model: a mixture, what it predicts and its schedule.
pub struct ExactFlow {
    mixture: Mixture,
    output: OutputType,
    schedule: Schedule,
}

impl ExactFlow {
    /// The model from its parts.
    pub fn new(mixture: Mixture, output: OutputType, schedule: Schedule) -> Self {
        Self {
            mixture,
            output,
            schedule,
        }
    }

    /// The model the arguments describe.
    pub fn from_args(args: &GmmArgs) -> PluginResult<Self> {
        Ok(Self::new(
            Mixture::from_args(args)?,
            output_type(&args.output)?,
            Schedule::from_name(&args.schedule)?,
        ))
    }

    /// The target mixture.
    pub fn mixture(&self) -> &Mixture {
        &self.mixture
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The exact prediction for the points `x` (row-major `[n, d]`) at the model times `time`
    /// (one per point: `t`, or the step `k` for `ddpm`).
    pub fn predict(&self, x: &[f64], time: &[f64]) -> PluginResult<Vec<f64>> {
        let d = self.mixture.dim();
        let n = time.len();
        assert_eq!(x.len(), n * d, "{n} points of dimension {d}");
        let mut out = vec![0.0; n * d];
        // Times usually repeat across the batch: factorise once per distinct time.
        let mut cache: Vec<(u64, Coefficients, Marginal<'_>)> = Vec::new();
        for i in 0..n {
            let key = time[i].to_bits();
            let slot = match cache.iter().position(|(bits, _, _)| *bits == key) {
                Some(slot) => slot,
                None => {
                    let c = self.schedule.coefficients(time[i])?;
                    cache.push((key, c, Marginal::new(&self.mixture, c.alpha, c.beta)?));
                    cache.len() - 1
                }
            };
            let (_, c, marginal) = &cache[slot];
            let post = marginal.posterior(&x[i * d..(i + 1) * d]);
            let row = &mut out[i * d..(i + 1) * d];
            for (j, value) in row.iter_mut().enumerate() {
                *value = match self.output {
                    OutputType::Velocity => {
                        c.alpha_dot * post.endpoint[j] + c.beta_dot * post.epsilon[j]
                    }
                    OutputType::Epsilon => post.epsilon[j],
                    OutputType::Score => post.score[j],
                    OutputType::Endpoint => post.endpoint[j],
                };
            }
        }
        Ok(out)
    }
}

/// Reads a `[n]` tensor of times as `f64`.
fn read_times(t: &ManagedTensor) -> PluginResult<Vec<f64>> {
    match t.dtype() {
        Some(DType::F64) => Ok(t.to_vec::<f64>()?),
        Some(DType::F32) => Ok(t.to_vec::<f32>()?.into_iter().map(f64::from).collect()),
        other => Err(format!(
            "times must be float32 or float64, got {}",
            other.map_or("an unknown type", |d| d.name())
        )
        .into()),
    }
}

impl BaseModel for ExactFlow {
    fn output_type(&self) -> OutputType {
        self.output
    }

    fn schedule(&self) -> ScheduleSpec {
        self.schedule.schedule()
    }

    fn sample_p0(&mut self, n: usize, seed: u64) -> PluginResult<(Batch, Kwargs)> {
        let mut rng = Rng::new(seed);
        let z: Vec<f32> = (0..n * self.mixture.dim())
            .map(|_| rng.normal() as f32)
            .collect();
        let x = ManagedTensor::from_vec(z, &[n, self.mixture.dim()])?;
        Ok((Batch::single(DATA_TYPE, "x", x), Kwargs::new()))
    }

    fn forward(&mut self, x: Batch, t: ManagedTensor, _kwargs: Kwargs) -> PluginResult<Batch> {
        let points = read_points(&x)?;
        let d = self.mixture.dim();
        if points.dim != d {
            return Err(format!(
                "leaf `x` has dimension {}, the mixture has dimension {d}",
                points.dim
            )
            .into());
        }
        let time = read_times(&t)?;
        if time.len() != points.n {
            return Err(format!(
                "{} times for {} samples; expected one per sample",
                time.len(),
                points.n
            )
            .into());
        }
        let out = self.predict(&points.values, &time)?;
        Ok(Batch::single(DATA_TYPE, "x", points.same_dtype(out)?))
    }
}

fn construct(args: GmmArgs, ctx: &ConstructContext) -> PluginResult<ExactFlow> {
    if ctx.device != DLDevice::CPU {
        return Err(format!(
            "`vec/gmm` computes on the CPU only, but the host asked for {}",
            ctx.device
        )
        .into());
    }
    ExactFlow::from_args(&args)
}

register_base_model! {
    id: "vec/gmm",
    version: "1.0.0",
    data_type: (DATA_TYPE, "1.0.0"),
    description: "Exact flow from N(0, I) to a Gaussian mixture in d dimensions with full covariances (velocity, epsilon, score or endpoint; ot or ddpm schedule)",
    arguments: GmmArgs,
    leaves: vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Any])],
    // Plain f64 Rust: under `--device cuda` the host moves the samples to the CPU and back.
    capabilities: flowgym_plugin_api::Capabilities { max_batch: 0, cpu_only: true },
    construct: construct,
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgym_plugin_api::Arguments;

    /// Two well-separated components in 2-d with full, different covariances.
    fn two_components(output: &str, schedule: &str) -> ExactFlow {
        let json = format!(
            r#"{{"weights": [0.3, 0.7], "means": [[-2.0, 1.0], [2.5, -0.5]],
                "covariances": [[[1.0, 0.6], [0.6, 0.8]], [[0.5, -0.2], [-0.2, 1.5]]],
                "output": "{output}", "schedule": "{schedule}"}}"#
        );
        ExactFlow::from_args(&GmmArgs::from_json(&json).unwrap()).unwrap()
    }

    /// An independent density of the mixture's path: sum_k pi_k N(x; alpha m_k, A_k), with the
    /// 2x2 inverse and determinant written out.
    fn density_2d(mixture: &Mixture, alpha: f64, beta: f64, x: [f64; 2]) -> f64 {
        (0..mixture.weights.len())
            .map(|k| {
                let s = &mixture.covariances[k];
                let a = [
                    alpha * alpha * s[0] + beta * beta,
                    alpha * alpha * s[1],
                    alpha * alpha * s[3] + beta * beta,
                ];
                let det = a[0] * a[2] - a[1] * a[1];
                let dx = x[0] - alpha * mixture.means[k][0];
                let dy = x[1] - alpha * mixture.means[k][1];
                let q = (a[2] * dx * dx - 2.0 * a[1] * dx * dy + a[0] * dy * dy) / det;
                mixture.weights[k] * (-0.5 * q).exp() / (2.0 * std::f64::consts::PI * det.sqrt())
            })
            .sum()
    }

    fn points() -> Vec<[f64; 2]> {
        vec![[-1.5, 0.7], [0.0, 0.0], [0.4, -1.1], [2.2, 0.3], [1.0, 2.0]]
    }

    fn predict(flow: &ExactFlow, x: [f64; 2], time: f64) -> Vec<f64> {
        flow.predict(&x, &[time]).unwrap()
    }

    #[test]
    fn score_is_the_gradient_of_the_log_density() {
        let flow = two_components("score", "ot");
        let h = 1e-5;
        for &t in &[0.2, 0.5, 0.8, 0.95] {
            for x in points() {
                let score = predict(&flow, x, t);
                let log_p = |y: [f64; 2]| density_2d(flow.mixture(), t, 1.0 - t, y).ln();
                let fd = [
                    (log_p([x[0] + h, x[1]]) - log_p([x[0] - h, x[1]])) / (2.0 * h),
                    (log_p([x[0], x[1] + h]) - log_p([x[0], x[1] - h])) / (2.0 * h),
                ];
                for j in 0..2 {
                    assert!(
                        (score[j] - fd[j]).abs() < 1e-6 * (1.0 + fd[j].abs()),
                        "t={t} x={x:?}: score {score:?} vs {fd:?}"
                    );
                }
            }
        }
    }

    /// The velocity transports the marginals: d/dt p_t + div(p_t v_t) = 0, by finite
    /// differences against the independent density.
    #[test]
    fn velocity_solves_the_continuity_equation() {
        for schedule in ["ot", "cosine"] {
            let flow = two_components("velocity", schedule);
            let mixture = flow.mixture().clone();
            let p = |x: [f64; 2], t: f64| {
                let c = flow.schedule().coefficients(t).unwrap();
                density_2d(&mixture, c.alpha, c.beta, x)
            };
            let h = 1e-4;
            for &t in &[0.1, 0.5, 0.9] {
                for x in points() {
                    let dp_dt = (p(x, t + h) - p(x, t - h)) / (2.0 * h);
                    let flux = |y: [f64; 2], j: usize| p(y, t) * predict(&flow, y, t)[j];
                    let div = (flux([x[0] + h, x[1]], 0) - flux([x[0] - h, x[1]], 0)) / (2.0 * h)
                        + (flux([x[0], x[1] + h], 1) - flux([x[0], x[1] - h], 1)) / (2.0 * h);
                    assert!(
                        (dp_dt + div).abs() < 1e-6,
                        "{schedule}: continuity violated at x={x:?}, t={t}: {dp_dt} + {div}"
                    );
                }
            }
        }
    }

    #[test]
    fn outputs_satisfy_the_path_identities() {
        let outputs = ["velocity", "epsilon", "score", "endpoint"];
        for schedule in ["ot", "cosine", "ddpm"] {
            let flows: Vec<ExactFlow> = outputs
                .iter()
                .map(|o| two_components(o, schedule))
                .collect();
            let times: &[f64] = if schedule == "ddpm" {
                &[0.0, 10.0, 500.0, 999.0]
            } else {
                &[0.0, 0.3, 0.7, 1.0]
            };
            for &time in times {
                let c = flows[0].schedule().coefficients(time).unwrap();
                for x in points() {
                    let [v, eps, score, x1] = [0, 1, 2, 3].map(|i| predict(&flows[i], x, time));
                    for j in 0..2 {
                        // x = alpha E[x_1|x] + beta E[x_0|x]
                        assert!((c.alpha * x1[j] + c.beta * eps[j] - x[j]).abs() < 1e-9);
                        // v = alpha' E[x_1|x] + beta' E[x_0|x]
                        assert!(
                            (c.alpha_dot * x1[j] + c.beta_dot * eps[j] - v[j]).abs()
                                < 1e-9 * (1.0 + v[j].abs())
                        );
                        // score = -E[x_0|x] / beta
                        if c.beta > 0.0 {
                            assert!(
                                (score[j] + eps[j] / c.beta).abs() < 1e-9 * (1.0 + score[j].abs())
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ends_of_the_path_are_exact() {
        // t = 0: x_t = x_0, so E[x_1|x] is the mixture mean and E[x_0|x] = x.
        let flow = two_components("endpoint", "ot");
        let mean = [0.3 * -2.0 + 0.7 * 2.5, 0.3 * 1.0 + 0.7 * -0.5];
        let x1 = predict(&flow, [0.4, -1.1], 0.0);
        assert!((x1[0] - mean[0]).abs() < 1e-12 && (x1[1] - mean[1]).abs() < 1e-12);
        let eps = predict(&two_components("epsilon", "ot"), [0.4, -1.1], 0.0);
        assert!((eps[0] - 0.4).abs() < 1e-12 && (eps[1] + 1.1).abs() < 1e-12);
        // t = 1: x_t = x_1, so E[x_1|x] = x and E[x_0|x] = 0; the velocity is x.
        let v = predict(&two_components("velocity", "ot"), [0.4, -1.1], 1.0);
        assert!((v[0] - 0.4).abs() < 1e-12 && (v[1] + 1.1).abs() < 1e-12);
    }

    /// One component: the velocity is the affine map m + (t S - (1 - t) I) A^{-1} (x - t m), and
    /// integrating it carries x_0 to m + S^{1/2} x_0 (the symmetric square root).
    #[test]
    fn one_gaussian_follows_the_closed_form_linear_map() {
        let (m, s) = ([1.0, -0.5], [1.0, 0.6, 0.6, 0.5]);
        let args = GmmArgs::from_json(
            r#"{"weights": [1], "means": [[1.0, -0.5]], "covariances": [[[1.0, 0.6], [0.6, 0.5]]]}"#,
        )
        .unwrap();
        let flow = ExactFlow::from_args(&args).unwrap();
        for &t in &[0.0f64, 0.25, 0.6, 0.99] {
            let a = [
                t * t * s[0] + (1.0 - t).powi(2),
                t * t * s[1],
                t * t * s[3] + (1.0 - t).powi(2),
            ];
            let det = a[0] * a[2] - a[1] * a[1];
            let b = [t * s[0] - (1.0 - t), t * s[1], t * s[3] - (1.0 - t)];
            for x in points() {
                let r = [x[0] - t * m[0], x[1] - t * m[1]];
                let u = [
                    (a[2] * r[0] - a[1] * r[1]) / det,
                    (a[0] * r[1] - a[1] * r[0]) / det,
                ];
                let want = [
                    m[0] + b[0] * u[0] + b[1] * u[1],
                    m[1] + b[1] * u[0] + b[2] * u[1],
                ];
                let got = predict(&flow, x, t);
                assert!((got[0] - want[0]).abs() < 1e-12 && (got[1] - want[1]).abs() < 1e-12);
            }
        }
        // sqrt(S) = (S + sqrt(det S) I) / sqrt(tr S + 2 sqrt(det S)) for 2x2 S.
        let root_det = (s[0] * s[3] - s[1] * s[1]).sqrt();
        let norm = (s[0] + s[3] + 2.0 * root_det).sqrt();
        let sqrt_s = [
            (s[0] + root_det) / norm,
            s[1] / norm,
            (s[3] + root_det) / norm,
        ];
        let x0 = [0.8, -1.3];
        let steps = 400;
        let mut x = x0;
        let v = |x: [f64; 2], t: f64| {
            let out = predict(&flow, x, t);
            [out[0], out[1]]
        };
        for i in 0..steps {
            let (t, h) = (i as f64 / steps as f64, 1.0 / steps as f64);
            let k1 = v(x, t);
            let k2 = v(
                [x[0] + 0.5 * h * k1[0], x[1] + 0.5 * h * k1[1]],
                t + 0.5 * h,
            );
            let k3 = v(
                [x[0] + 0.5 * h * k2[0], x[1] + 0.5 * h * k2[1]],
                t + 0.5 * h,
            );
            let k4 = v([x[0] + h * k3[0], x[1] + h * k3[1]], t + h);
            for j in 0..2 {
                x[j] += h / 6.0 * (k1[j] + 2.0 * k2[j] + 2.0 * k3[j] + k4[j]);
            }
        }
        let want = [
            m[0] + sqrt_s[0] * x0[0] + sqrt_s[1] * x0[1],
            m[1] + sqrt_s[1] * x0[0] + sqrt_s[2] * x0[1],
        ];
        assert!(
            (x[0] - want[0]).abs() < 1e-8 && (x[1] - want[1]).abs() < 1e-8,
            "{x:?} vs {want:?}"
        );
    }

    #[test]
    fn ddpm_evaluates_at_the_step_it_receives() {
        let alpha_bar = ddpm_alpha_bar();
        assert_eq!(alpha_bar.len(), 1000);
        assert!((alpha_bar[0] - (1.0 - 1e-4)).abs() < 1e-15);
        // The last cumulative product of DDPM's linear schedule.
        assert!(
            (alpha_bar[999] - 4.0358e-5).abs() < 1e-8,
            "{}",
            alpha_bar[999]
        );
        let ddpm = two_components("epsilon", "ddpm");
        let ot = two_components("epsilon", "ot");
        let c = ddpm.schedule().coefficients(500.0).unwrap();
        assert_eq!(c.alpha, alpha_bar[500].sqrt());
        for x in points() {
            // The OT path at t = alpha / (alpha + beta) is the DDPM path at step k scaled by
            // 1 / (alpha + beta), and E[x_0 | x] is the same.
            let s = c.alpha + c.beta;
            let scaled = [x[0] / s, x[1] / s];
            let want = predict(&ot, scaled, c.alpha / s);
            let got = predict(&ddpm, x, 500.0);
            assert!((got[0] - want[0]).abs() < 1e-10 && (got[1] - want[1]).abs() < 1e-10);
            // Rounding: 499.6 is step 500.
            assert_eq!(predict(&ddpm, x, 499.6), got);
        }
        assert_eq!(
            ddpm.predict(&[0.0, 0.0], &[1000.0]).unwrap_err().message(),
            "time 1000 is not a step of the DDPM schedule (0 to 999)"
        );
        assert_eq!(
            ot.predict(&[0.0, 0.0], &[1.5]).unwrap_err().message(),
            "time 1.5 is outside [0, 1]"
        );
    }

    #[test]
    fn plugin_calls_round_trip_tensors() {
        let mut flow = two_components("velocity", "ot");
        let (x0, _) = flow.sample_p0(4, 11).unwrap();
        let again = flow.sample_p0(4, 11).unwrap().0;
        let values = x0.require("x").unwrap().to_vec::<f32>().unwrap();
        assert_eq!(x0.require("x").unwrap().shape(), &[4, 2]);
        assert_eq!(again.require("x").unwrap().to_vec::<f32>().unwrap(), values);
        assert_ne!(
            flow.sample_p0(4, 12)
                .unwrap()
                .0
                .require("x")
                .unwrap()
                .to_vec::<f32>()
                .unwrap(),
            values
        );
        let t = ManagedTensor::from_slice(&[0.5f32; 4]);
        let out = flow.forward(x0, t, Kwargs::new()).unwrap();
        let v = out.require("x").unwrap();
        assert_eq!(v.shape(), &[4, 2]);
        assert_eq!(v.dtype(), Some(DType::F32));
        let x: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
        let want = flow.predict(&x, &[0.5; 4]).unwrap();
        for (got, want) in v.to_vec::<f32>().unwrap().iter().zip(want) {
            assert_eq!(*got, want as f32);
        }
        let short = ManagedTensor::from_slice(&[0.5f32; 3]);
        let x = Batch::single(
            DATA_TYPE,
            "x",
            ManagedTensor::from_vec(vec![0f32; 8], &[4, 2]).unwrap(),
        );
        assert_eq!(
            flow.forward(x, short, Kwargs::new()).unwrap_err().message(),
            "3 times for 4 samples; expected one per sample"
        );
        let x = Batch::single(
            DATA_TYPE,
            "x",
            ManagedTensor::from_vec(vec![0f32; 6], &[2, 3]).unwrap(),
        );
        assert_eq!(
            flow.forward(x, ManagedTensor::from_slice(&[0.5f32; 2]), Kwargs::new())
                .unwrap_err()
                .message(),
            "leaf `x` has dimension 3, the mixture has dimension 2"
        );
    }

    #[test]
    fn defaults_and_isotropic_stds_build() {
        let flow = ExactFlow::from_args(&GmmArgs::default()).unwrap();
        assert_eq!(flow.mixture().dim(), 2);
        assert_eq!(flow.mixture().covariances[0], vec![1.0, 0.0, 0.0, 1.0]);
        let args =
            GmmArgs::from_json(r#"{"weights": [1, 3], "means": [[0], [4]], "stds": [0.5, 2]}"#)
                .unwrap();
        let mixture = Mixture::from_args(&args).unwrap();
        assert_eq!(mixture.weights, vec![0.25, 0.75]);
        assert_eq!(mixture.covariances, vec![vec![0.25], vec![4.0]]);
    }

    #[test]
    fn malformed_arguments_are_refused_by_name() {
        let cases = [
            (r#"{"weights": []}"#, "argument `weights` must list at least one component"),
            (r#"{"weights": [0.5, -0.5]}"#, "argument `weights` must hold positive numbers, got -0.5"),
            (r#"{"weights": [1]}"#, "argument `means` has 2 components but `weights` has 1"),
            (
                r#"{"means": [[0, 0], [1]]}"#,
                "argument `means`: component 1 has 1 coordinates, component 0 has 2",
            ),
            (
                r#"{"stds": [1, 1], "covariances": [[[1, 0], [0, 1]], [[1, 0], [0, 1]]]}"#,
                "arguments `covariances` and `stds` both given; give one",
            ),
            (r#"{"stds": [1]}"#, "argument `stds` has 1 entries but `weights` has 2"),
            (r#"{"stds": [1, 0]}"#, "argument `stds` must hold positive numbers, got 0"),
            (
                r#"{"covariances": [[[1, 0], [0, 1]]]}"#,
                "argument `covariances` has 1 matrices but `weights` has 2",
            ),
            (
                r#"{"covariances": [[[1, 0], [0, 1]], [[1, 0, 0], [0, 1]]]}"#,
                "argument `covariances`: component 1 must be 2 rows of 2 numbers, got rows of lengths [3, 2]",
            ),
            (
                r#"{"covariances": [[[1, 0.5], [0.4, 1]], [[1, 0], [0, 1]]]}"#,
                "argument `covariances`: component 0 is not symmetric (entry [1][0] is 0.4, [0][1] is 0.5)",
            ),
            (
                r#"{"covariances": [[[1, 0], [0, 1]], [[1, 2], [2, 1]]]}"#,
                "argument `covariances`: component 1 is not positive definite",
            ),
        ];
        for (json, message) in cases {
            let args = GmmArgs::from_json(json).unwrap();
            assert_eq!(
                ExactFlow::from_args(&args).err().unwrap().message(),
                message,
                "{json}"
            );
        }
        assert_eq!(
            GmmArgs::from_json(r#"{"output": "noise"}"#).unwrap_err().to_string(),
            "argument `output` is \"noise\" (accepted: one of \"velocity\", \"epsilon\", \"score\", \"endpoint\")"
        );
        assert_eq!(
            GmmArgs::from_json(r#"{"schedule": "vp"}"#)
                .unwrap_err()
                .to_string(),
            "argument `schedule` is \"vp\" (accepted: one of \"ot\", \"cosine\", \"ddpm\")"
        );
    }

    #[test]
    fn refuses_devices_other_than_the_cpu() {
        let mut ctx = ConstructContext::cpu();
        assert!(construct(GmmArgs::default(), &ctx).is_ok());
        ctx.device = DLDevice::cuda(0);
        assert!(construct(GmmArgs::default(), &ctx)
            .err()
            .unwrap()
            .message()
            .starts_with("`vec/gmm` computes on the CPU only"));
    }
}
