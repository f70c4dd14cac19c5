//! The sampler and the control, checked against the exact optimum without any learning.
//!
//! For the toy (`1d/gmm` to 0.5 N(0,1) + 0.5 N(3, 0.4^2), binary reward on [0, 1]) the
//! optimal value is known in closed form: with the memoryless noise schedule, `X_1` given
//! `X_t = x` follows the posterior of `x_t = t x_1 + (1 - t) x_0`, a Gaussian mixture, so
//! `V*(x, t) = -log(1 + (e^lambda - 1) P(X_1 in [0, 1] | X_t = x))`. Steering the sampler with
//! `u = -s grad V*` must then produce the tilted distribution `p* ~ p_base exp(lambda r)`, up to
//! the discretisation of the time grid.
//!
//! The same holds on a discrete diffusion schedule with the epsilon output: the 2-d box of the
//! quality suite (a correlated Gaussian, `exact-problems`' `vec/gmm` on DDPM's schedule, and
//! `vec/box`), whose `X_1` given `X_t = x` is Gaussian with a constant covariance, so that
//! `P(X_1 in box | X_t = x)` is a one-dimensional integral.

use flowgym_host::model::Model;
use flowgym_host::quality::{
    sliced_wasserstein1, suite, ModelSchedule, OptimumOptions, Problem, RewardSpec,
};
use flowgym_host::reward::Reward;
use flowgym_host::run::defaults::FLAT_DATA_STEPS;
use flowgym_host::run::{sampler_options, RunConfig};
use flowgym_host::sde::{
    never_stop, sample, Control, ControlPoint, FinalStep, Interpolant, SampleRequest,
    SamplerOptions, TimeGrid, Trajectory,
};
use flowgym_host::state::State;
use flowgym_host::value::ValueNetwork;
use flowgym_plugin_api::{
    Arguments, BaseModelAdapter, Capabilities, ConstructContext, RewardAdapter,
};
use flowgym_toy::gmm::{GmmArgs, GmmFlow, Mixture};
use flowgym_toy_rewards::{Binary, BinaryArgs};
use std::sync::Mutex;

use tch::{nn, Device, Kind, Tensor};

const LAMBDA: f64 = 5.0;

/// `V* / lambda = -log(1 + (e^lambda - 1) p) / lambda` for an indicator reward, from the
/// probability `p` of ending where it is 1.
fn indicator_value(p: Tensor, lambda: f64) -> Tensor {
    let h = p * (lambda.exp() - 1.0) + 1.0;
    (-h.log() / lambda).to_kind(Kind::Float)
}

/// `V* / lambda` for the toy and the binary reward.
struct ExactValue {
    vs: nn::VarStore,
    mixture: Mixture,
}

impl ValueNetwork for ExactValue {
    fn forward(&self, x: &State, t: &Tensor) -> Tensor {
        let x = x
            .floating()
            .next()
            .unwrap()
            .to_kind(Kind::Double)
            .view([-1, 1]);
        let t = t.to_kind(Kind::Double).view([-1, 1]);
        let row = |v: Vec<f64>| Tensor::from_slice(&v).view([1, -1]);
        let mu = row(self.mixture.means.clone());
        let s2 = row(self.mixture.stds.iter().map(|s| s * s).collect());
        let log_w = row(self.mixture.weights.iter().map(|w| w.ln()).collect());
        let beta = t.ones_like() - &t;
        let var_t = &t * &t * &s2 + &beta * &beta;
        let dev = &x - &t * &mu;
        let posterior =
            (log_w - var_t.log() * 0.5 - dev.square() / (&var_t * 2.0)).softmax(1, Kind::Double);
        let mean = &mu + &t * &s2 / &var_t * &dev;
        let var = &s2 - &t * &t * s2.square() / &var_t;
        let phi = |z: Tensor| (z / std::f64::consts::SQRT_2).erf() * 0.5 + 0.5;
        let sd = var.sqrt();
        let inside = phi((mean.ones_like() - &mean) / &sd) - phi((-&mean) / &sd);
        indicator_value(
            (posterior * inside).sum_dim_intlist(1, false, Kind::Double),
            LAMBDA,
        )
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn describe(&self) -> String {
        "exact V*".into()
    }
}

fn normal_pdf(x: f64, m: f64, s: f64) -> f64 {
    (-0.5 * ((x - m) / s).powi(2)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt())
}

/// E_p*[r] and W1(samples, p*) by quadrature on a fine grid.
fn against_optimum(samples: &[f64]) -> (f64, f64) {
    let h = 1e-3;
    let grid: Vec<f64> = (0..16_001).map(|i| -8.0 + i as f64 * h).collect();
    let r = |x: f64| if (0.0..=1.0).contains(&x) { 1.0 } else { 0.0 };
    let density: Vec<f64> = grid
        .iter()
        .map(|&x| {
            (0.5 * normal_pdf(x, 0.0, 1.0) + 0.5 * normal_pdf(x, 3.0, 0.4)) * (LAMBDA * r(x)).exp()
        })
        .collect();
    let z: f64 = density.iter().sum::<f64>() * h;
    let reward = grid
        .iter()
        .zip(&density)
        .map(|(&x, d)| d * r(x))
        .sum::<f64>()
        * h
        / z;
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (mut cdf, mut below, mut w1) = (0.0, 0usize, 0.0);
    for (x, d) in grid.iter().zip(&density) {
        cdf += d * h / z;
        while below < sorted.len() && sorted[below] <= *x {
            below += 1;
        }
        w1 += (below as f64 / sorted.len() as f64 - cdf).abs() * h;
    }
    (reward, w1)
}

/// libtorch's random generator is global: sampling seeds it once and then draws from it, so
/// two tests sampling at once would reseed each other's noise mid-run.
static ONE_SAMPLER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Samples of the toy steered by `value`.
fn toy_samples(
    value: &dyn ValueNetwork,
    options: &SamplerOptions,
    n: usize,
) -> anyhow::Result<Trajectory> {
    let _turn = ONE_SAMPLER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let ctx = ConstructContext::cpu();
    let mixture = Mixture::from_args(&GmmArgs::default()).unwrap();
    let flow = GmmFlow::new(&mixture, Device::Cpu);
    let mut model = Model::new(
        "1d/gmm",
        "1d",
        BaseModelAdapter::new("1d/gmm", Box::new(flow)).into_box(),
    )
    .unwrap();
    let binary = Binary::new(BinaryArgs::from_json("").unwrap(), &ctx).unwrap();
    let mut reward = Reward::new(
        "1d/binary",
        Capabilities::default(),
        RewardAdapter::new("1d/binary", Box::new(binary)).into_box(),
    );
    let request = SampleRequest {
        n,
        seed: 5,
        control: Some(Control {
            value,
            scale: LAMBDA,
        }),
        record: false,
        device: Device::Cpu,
        stop_after_step: &never_stop,
    };
    sample(&mut model, Some(&mut reward), options, &request)
}

fn exact_samples(
    steps: usize,
    n: usize,
    control_point: ControlPoint,
    final_step: FinalStep,
) -> (Vec<f64>, f64, f64) {
    let value = ExactValue {
        vs: nn::VarStore::new(Device::Cpu),
        mixture: Mixture::from_args(&GmmArgs::default()).unwrap(),
    };
    let options = SamplerOptions {
        steps,
        control_point,
        final_step,
        ..SamplerOptions::default()
    };
    let trajectory = toy_samples(&value, &options, n).unwrap();
    let x = Vec::<f64>::try_from(
        trajectory
            .sample
            .floating()
            .next()
            .unwrap()
            .to_kind(Kind::Double)
            .view([-1]),
    )
    .unwrap();
    let r = Vec::<f64>::try_from(trajectory.scores.reward.to_kind(Kind::Double)).unwrap();
    let cost = trajectory
        .control_cost()
        .mean(Kind::Double)
        .double_value(&[]);
    let mean = r.iter().sum::<f64>() / r.len() as f64;
    (x, mean, cost)
}

/// A value whose gradient is 0 before `t = 0.99` and NaN after: on the toy's 100-step grid only
/// the last step (`t = 0.9902`) sees the NaN.
struct NanAtTheEnd {
    vs: nn::VarStore,
}

impl ValueNetwork for NanAtTheEnd {
    fn forward(&self, x: &State, t: &Tensor) -> Tensor {
        let x = x.floating().next().unwrap().view([-1]);
        let late = t.to_kind(Kind::Double).view([-1]).double_value(&[0]) >= 0.99;
        x * if late { f64::NAN } else { 0.0 }
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn describe(&self) -> String {
        "NaN after t = 0.99".into()
    }
}

/// The steered endpoint estimate's shift costs nothing, but a NaN in it is reported as the
/// control's, at the last step, as at any other; the base estimate does not use the gradient.
#[test]
fn a_nan_gradient_at_the_last_step_is_named_as_the_control() {
    let value = NanAtTheEnd {
        vs: nn::VarStore::new(Device::Cpu),
    };
    let tilted = SamplerOptions::default();
    let err = toy_samples(&value, &tilted, 16).unwrap_err().to_string();
    assert!(
        err.contains("the value network's control became NaN or infinite at step 99"),
        "{err}"
    );
    let base = SamplerOptions {
        final_step: FinalStep::Base,
        ..SamplerOptions::default()
    };
    let trajectory = toy_samples(&value, &base, 16).unwrap();
    assert!(bool::try_from(
        trajectory
            .sample
            .floating()
            .next()
            .unwrap()
            .isfinite()
            .all()
    )
    .unwrap());
}

/// With the exact value and 400 steps the samples follow p*: the mean reward within 0.01 of
/// E_p*[r] = 0.968 (the grid's bias is about -0.002 with the control at each step's midpoint,
/// the standard error of 50000 samples 0.0008) and W1 below 0.03; the control cost is the KL
/// divergence of p* from the base, lambda E_p*[r] - log E_base[e^{lambda r}] = 1.58, within 0.1.
#[test]
fn the_exact_optimal_control_reproduces_the_tilted_distribution() {
    let (x, mean, cost) = exact_samples(400, 50_000, ControlPoint::Midpoint, FinalStep::Tilted);
    let (optimum, w1) = against_optimum(&x);
    eprintln!("400 steps, exact control: mean reward {mean:.4} (E_p*[r] {optimum:.4}), W1 {w1:.4}, control cost {cost:.4}");
    // Independently: the tilt of a binary reward puts mass e^lambda q / (e^lambda q + 1 - q)
    // on [0, 1], with q = P_base([0, 1]) from the normal CDF (Phi(1) = 0.8413447461,
    // Phi(-5) = 2.8665e-7 from tables).
    let q = 0.5 * (0.841_344_746_068_543 - 0.5) + 0.5 * 2.866_515_7e-7;
    let closed_form = LAMBDA.exp() * q / (LAMBDA.exp() * q + 1.0 - q);
    assert!(
        (optimum - closed_form).abs() < 1e-4,
        "{optimum} vs {closed_form}"
    );
    assert!(
        (mean - optimum).abs() < 0.01,
        "mean reward {mean:.4} vs E_p*[r] {optimum:.4}"
    );
    assert!(w1 < 0.03, "W1 {w1:.4}");
    let kl = LAMBDA * optimum - (q * LAMBDA.exp() + 1.0 - q).ln();
    assert!(
        (cost - kl).abs() < 0.1,
        "control cost {cost:.4} vs KL {kl:.4}"
    );
}

/// The default 100-step grid: the discretisation floor that learned controls are judged
/// against in the end-to-end tests. With the base model's endpoint at the end and the control
/// at each step's midpoint the bias in the mean reward is about -0.006, half that of the
/// Euler-Maruyama rule's start of the step (about -0.013); the steered endpoint estimate (the
/// default) takes it to about -0.0003. The runs draw the same noise, so the comparisons are
/// nearly free of sampling error; the bounds are the biases plus about ten standard errors of
/// 100000 samples (0.00065 each), so they hold on any machine and fail when the grid or the
/// sampler gets worse.
#[test]
fn the_default_grid_is_close_to_the_optimum_with_the_exact_control() {
    let (x, mean, _) = exact_samples(100, 100_000, ControlPoint::Midpoint, FinalStep::Base);
    let (optimum, w1) = against_optimum(&x);
    let (_, start, _) = exact_samples(100, 100_000, ControlPoint::Start, FinalStep::Base);
    let (x_tilted, tilted, _) =
        exact_samples(100, 100_000, ControlPoint::Midpoint, FinalStep::Tilted);
    let (_, w1_tilted) = against_optimum(&x_tilted);
    eprintln!("100 steps, exact control: mean reward {mean:.4} at the midpoints, {start:.4} at the starts, {tilted:.4} with the tilted endpoint (E_p*[r] {optimum:.4}), W1 {w1:.4} and {w1_tilted:.4} tilted");
    assert!(
        (mean - optimum).abs() < 0.012,
        "mean reward {mean:.4} vs E_p*[r] {optimum:.4}"
    );
    assert!(w1 < 0.02, "W1 {w1:.4}");
    assert!(
        w1_tilted < 0.02,
        "W1 {w1_tilted:.4} with the tilted endpoint"
    );
    assert!(
        (mean - optimum).abs() < 0.7 * (start - optimum).abs(),
        "the midpoint's bias {:.4} is not clearly below the start's {:.4}",
        mean - optimum,
        start - optimum
    );
    assert!(
        (tilted - optimum).abs() < 0.7 * (mean - optimum).abs(),
        "the tilted endpoint's bias {:.4} is not clearly below the base endpoint's {:.4}",
        tilted - optimum,
        mean - optimum
    );
}

/// The 2-d box of the quality suite: `N(m, S)` with `m = (1, -0.5)`, `S = [[1, 0.6], [0.6,
/// 0.5]]`, the box `[1.5, 3] x [-1.5, -0.5]`, epsilon output on DDPM's schedule.
const BOX_MEAN: [f64; 2] = [1.0, -0.5];
const BOX_COVARIANCE: [[f64; 2]; 2] = [[1.0, 0.6], [0.6, 0.5]];
const BOX_LOW: [f64; 2] = [1.5, -1.5];
const BOX_HIGH: [f64; 2] = [3.0, -0.5];

fn normal_cdf(z: &Tensor) -> Tensor {
    (z / std::f64::consts::SQRT_2).erf() * 0.5 + 0.5
}

/// `P(Y in box)` for `Y ~ N((m1, m2), [[c11, c12], [c12, c22]])`, one per entry of `m1`, `m2`:
/// the first coordinate integrated by the midpoint rule with `nodes` points over its own
/// quantiles inside the box, the second in closed form given the first.
fn box_probability(m1: &Tensor, m2: &Tensor, c: [f64; 3], nodes: i64) -> Tensor {
    let [c11, c12, c22] = c;
    let sd1 = c11.sqrt();
    let slope = c12 / c11;
    let sd21 = (c22 - c12 * c12 / c11).max(1e-300).sqrt();
    let low = normal_cdf(&((BOX_LOW[0] - m1) / sd1)).view([-1, 1]);
    let high = normal_cdf(&((BOX_HIGH[0] - m1) / sd1)).view([-1, 1]);
    let u = (Tensor::arange(nodes, (Kind::Double, Device::Cpu)) + 0.5) / nodes as f64;
    let u = (&low + (&high - &low) * u.view([1, -1])).clamp(1e-15, 1.0 - 1e-15);
    let z1 = (u * 2.0 - 1.0).erfinv() * std::f64::consts::SQRT_2;
    let given = m2.view([-1, 1]) + z1 * (sd1 * slope);
    let inside =
        normal_cdf(&((BOX_HIGH[1] - &given) / sd21)) - normal_cdf(&((BOX_LOW[1] - &given) / sd21));
    inside.mean_dim(1, false, Kind::Double) * (high - low).view([-1])
}

/// `V* / lambda` for the 2-d box: `X_1` given `X_t = x` is `N(m + a S A^-1 (x - a m),
/// S - a^2 S A^-1 S)` with `A = a^2 S + b^2 I`, at the `alpha`, `beta` of the discrete step the
/// host maps `t` to.
struct ExactBoxValue {
    vs: nn::VarStore,
    alpha_bar: Vec<f64>,
}

impl ValueNetwork for ExactBoxValue {
    fn forward(&self, x: &State, t: &Tensor) -> Tensor {
        let x = x
            .floating()
            .next()
            .unwrap()
            .to_kind(Kind::Double)
            .view([-1, 2]);
        let t = t.to_kind(Kind::Double).view([-1]).double_value(&[0]);
        let at = Interpolant::Discrete {
            alpha_bar: self.alpha_bar.clone(),
        }
        .at(t);
        let (a, b) = (at.alpha, at.beta);
        let s = BOX_COVARIANCE;
        let (a11, a12, a22) = (
            a * a * s[0][0] + b * b,
            a * a * s[0][1],
            a * a * s[1][1] + b * b,
        );
        let det = a11 * a22 - a12 * a12;
        let (i11, i12, i22) = (a22 / det, -a12 / det, a11 / det);
        // G = S A^-1
        let g = [
            [s[0][0] * i11 + s[0][1] * i12, s[0][0] * i12 + s[0][1] * i22],
            [s[1][0] * i11 + s[1][1] * i12, s[1][0] * i12 + s[1][1] * i22],
        ];
        let c11 = s[0][0] - a * a * (g[0][0] * s[0][0] + g[0][1] * s[1][0]);
        let c12 = s[0][1] - a * a * (g[0][0] * s[0][1] + g[0][1] * s[1][1]);
        let c22 = s[1][1] - a * a * (g[1][0] * s[0][1] + g[1][1] * s[1][1]);
        let d1 = x.select(1, 0) - a * BOX_MEAN[0];
        let d2 = x.select(1, 1) - a * BOX_MEAN[1];
        let m1 = (&d1 * (a * g[0][0]) + &d2 * (a * g[0][1])) + BOX_MEAN[0];
        let m2 = (&d1 * (a * g[1][0]) + &d2 * (a * g[1][1])) + BOX_MEAN[1];
        indicator_value(box_probability(&m1, &m2, [c11, c12, c22], 96), LAMBDA)
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn describe(&self) -> String {
        "exact V* of the 2-d box".into()
    }
}

/// `exact-problems`' `vec/gmm` and `vec/box`, from their arguments as JSON.
fn gmm_and_box(model_args: &str, reward_args: &str) -> (Model, Reward) {
    let args = exact_problems::gmm::GmmArgs::from_json(model_args).unwrap();
    let flow = exact_problems::gmm::ExactFlow::from_args(&args).unwrap();
    let model = Model::new(
        "vec/gmm",
        "vec",
        BaseModelAdapter::new("vec/gmm", Box::new(flow)).into_box(),
    )
    .unwrap();
    let args = exact_problems::rewards::BoxArgs::from_json(reward_args).unwrap();
    let box_reward =
        exact_problems::rewards::BoxReward::new(args, &ConstructContext::cpu()).unwrap();
    let reward = Reward::new(
        "vec/box",
        Capabilities::default(),
        RewardAdapter::new("vec/box", Box::new(box_reward)).into_box(),
    );
    (model, reward)
}

/// The mean reward of `n` samples of the 2-d box steered by its exact value.
fn exact_box_reward(n: usize, final_step: FinalStep) -> f64 {
    let _turn = ONE_SAMPLER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (mut model, mut reward) = gmm_and_box(
        r#"{"weights": [1.0], "means": [[1.0, -0.5]], "covariances": [[[1.0, 0.6], [0.6, 0.5]]],
            "output": "epsilon", "schedule": "ddpm"}"#,
        r#"{"low": [1.5, -1.5], "high": [3.0, -0.5]}"#,
    );
    let value = ExactBoxValue {
        vs: nn::VarStore::new(Device::Cpu),
        alpha_bar: exact_problems::gmm::ddpm_alpha_bar(),
    };
    let options = SamplerOptions {
        grid: TimeGrid::Karras,
        final_step,
        ..SamplerOptions::default()
    };
    let request = SampleRequest {
        n,
        seed: 5,
        control: Some(Control {
            value: &value,
            scale: LAMBDA,
        }),
        record: false,
        device: Device::Cpu,
        stop_after_step: &never_stop,
    };
    let trajectory = sample(&mut model, Some(&mut reward), &options, &request).unwrap();
    trajectory
        .scores
        .reward
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

/// On DDPM's schedule (the default Karras grid, 100 steps, the control at each step's
/// midpoint), the base model's endpoint at the end leaves samples that the last stretch of
/// steering would carry over the box's edges where the base leaves them: with the exact value
/// it reached 0.963 of the possible improvement (0.966 at 400 steps, in a run of 10000), and
/// the steered endpoint estimate 0.999. The bounds: the standard error of the normalised
/// improvement of 20000 samples is 0.004, and both runs draw the same noise.
#[test]
fn the_tilted_endpoint_reaches_the_box_optimum_on_a_diffusion_schedule() {
    let (m, s) = (BOX_MEAN, BOX_COVARIANCE);
    let q = box_probability(
        &Tensor::from_slice(&[m[0]]),
        &Tensor::from_slice(&[m[1]]),
        [s[0][0], s[0][1], s[1][1]],
        200_000,
    )
    .double_value(&[0]);
    let optimum = LAMBDA.exp() * q / (LAMBDA.exp() * q + 1.0 - q);
    let normalised = |r: f64| (r - q) / (optimum - q);
    let base = normalised(exact_box_reward(20_000, FinalStep::Base));
    let tilted = normalised(exact_box_reward(20_000, FinalStep::Tilted));
    eprintln!("2-d box, exact control, 100 steps: P_base(box) {q:.5}, E_p*[r] {optimum:.4}; normalised improvement {base:.3} with the base endpoint, {tilted:.3} tilted");
    // The quality suite's own Monte Carlo estimate of P_base(box) is 0.02140 (4e6 draws).
    assert!((q - 0.0214).abs() < 5e-4, "P_base(box) = {q}");
    assert!(tilted > 0.975, "tilted endpoint: {tilted:.3}");
    assert!(
        tilted > base + 0.015,
        "tilted {tilted:.3} vs base {base:.3}"
    );
}

/// `P(Y in [low, high])` for `Y ~ N(mean_n, L L^T)`, one per row of `mean` (`[n, d]`), by the
/// GHK simulator: coordinate by coordinate, the probability of landing inside the box given the
/// coordinates before it, times a draw from the normal truncated to the box there, each draw
/// from the fixed uniforms `u` (`[M, d]`). The estimate is a smooth function of `mean`, so its
/// gradient can steer.
fn ghk_box_probability(
    mean: &Tensor,
    l: &[Vec<f64>],
    low: &[f64],
    high: &[f64],
    u: &Tensor,
) -> Tensor {
    let (n, m) = (mean.size()[0], u.size()[0]);
    let mut inside: Vec<Tensor> = Vec::with_capacity(low.len());
    let mut z: Vec<Tensor> = Vec::with_capacity(low.len());
    for i in 0..low.len() {
        let start = mean.select(1, i as i64).view([-1, 1]).expand([n, m], false);
        let shift = z
            .iter()
            .enumerate()
            .fold(start, |shift, (j, zj)| shift + zj * l[i][j]);
        let below = normal_cdf(&((low[i] - &shift) / l[i][i]));
        let here = normal_cdf(&((high[i] - &shift) / l[i][i])) - &below;
        if i + 1 < low.len() {
            let v =
                (&below + &here * u.select(1, i as i64).view([1, -1])).clamp(1e-15, 1.0 - 1e-15);
            z.push((v * 2.0 - 1.0).erfinv() * std::f64::consts::SQRT_2);
        }
        inside.push(here);
    }
    Tensor::stack(&inside, 0)
        .prod_dim_int(0, false, Kind::Double)
        .mean_dim(1, false, Kind::Double)
}

/// `V* / lambda` of a quality-suite problem whose base is a Gaussian mixture and whose reward is
/// a box: given `X_t = x`, component `k` has posterior weight `∝ pi_k N(x; a m_k, A_k)` and
/// `X_1` follows `N(m_k + a S_k A_k^-1 (x - a m_k), S_k - a^2 S_k A_k^-1 S_k)` in it, with
/// `A_k = a^2 S_k + b^2 I` at the problem's `alpha`, `beta`; the box probability of each
/// component's posterior comes from [`ghk_box_probability`].
struct ExactMixtureBoxValue {
    vs: nn::VarStore,
    problem: Problem,
    interpolant: Interpolant,
    uniforms: Tensor,
}

impl ExactMixtureBoxValue {
    /// The value of `problem` with `draws` GHK draws per sample.
    fn new(problem: &Problem, draws: i64) -> Self {
        let interpolant = match problem.schedule {
            ModelSchedule::OptimalTransport => Interpolant::OptimalTransport,
            ModelSchedule::Cosine => Interpolant::Cosine { nu: 1.0 },
            ModelSchedule::Ddpm => Interpolant::Discrete {
                alpha_bar: exact_problems::gmm::ddpm_alpha_bar(),
            },
        };
        tch::manual_seed(11);
        Self {
            vs: nn::VarStore::new(Device::Cpu),
            problem: problem.clone(),
            interpolant,
            uniforms: Tensor::rand([draws, problem.dim() as i64], (Kind::Double, Device::Cpu)),
        }
    }
}

impl ValueNetwork for ExactMixtureBoxValue {
    fn forward(&self, x: &State, t: &Tensor) -> Tensor {
        let RewardSpec::Box { low, high } = &self.problem.reward else {
            panic!("not a box reward: {:?}", self.problem.reward);
        };
        let d = self.problem.dim() as i64;
        let x = x
            .floating()
            .next()
            .unwrap()
            .to_kind(Kind::Double)
            .view([-1, d]);
        let at = self
            .interpolant
            .at(t.to_kind(Kind::Double).view([-1]).double_value(&[0]));
        let (a, b) = (at.alpha, at.beta);
        let eye = Tensor::eye(d, (Kind::Double, Device::Cpu));
        let base = &self.problem.base;
        let (mut log_weights, mut inside) = (Vec::new(), Vec::new());
        for k in 0..base.components() {
            let s = Tensor::from_slice(&base.covariances[k].concat()).view([d, d]);
            let m = Tensor::from_slice(&base.means[k]).view([1, d]);
            let a_k = &s * (a * a) + &eye * (b * b);
            let a_inv = a_k.inverse();
            let gain = s.matmul(&a_inv);
            let dev = &x - &m * a;
            let mean = dev.matmul(&gain.tr()) * a + &m;
            let c = &s - gain.matmul(&s) * (a * a);
            let c = (&c + c.tr()) * 0.5 + &eye * 1e-12;
            let l = Vec::<Vec<f64>>::try_from(c.linalg_cholesky(false)).unwrap();
            log_weights.push(
                (dev.matmul(&a_inv) * &dev).sum_dim_intlist(1, false, Kind::Double) * -0.5
                    + base.weights[k].ln()
                    - a_k.logdet().double_value(&[]) * 0.5,
            );
            inside.push(ghk_box_probability(&mean, &l, low, high, &self.uniforms));
        }
        let posterior = Tensor::stack(&log_weights, 1).softmax(1, Kind::Double);
        let p = (posterior * Tensor::stack(&inside, 1)).sum_dim_intlist(1, false, Kind::Double);
        indicator_value(p, self.problem.lambda)
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn describe(&self) -> String {
        format!("exact V* of {}", self.problem.name)
    }
}

/// `n` samples of a box problem of the quality suite steered by `value`, on the grid a run of
/// flat data uses by default, and their mean reward.
fn box_problem_samples(
    problem: &Problem,
    n: usize,
    value: &dyn ValueNetwork,
) -> (Vec<Vec<f64>>, f64) {
    let _turn = ONE_SAMPLER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (mut model, mut reward) = gmm_and_box(&problem.model_args_json, &problem.reward_args_json);
    let options = sampler_options(&RunConfig {
        steps: FLAT_DATA_STEPS,
        ..RunConfig::default()
    });
    let request = SampleRequest {
        n,
        seed: 5,
        control: Some(Control {
            value,
            scale: problem.lambda,
        }),
        record: false,
        device: Device::Cpu,
        stop_after_step: &never_stop,
    };
    let trajectory = sample(&mut model, Some(&mut reward), &options, &request).unwrap();
    let d = problem.dim() as i64;
    let x = trajectory
        .sample
        .floating()
        .next()
        .unwrap()
        .to_kind(Kind::Double)
        .view([-1, d]);
    let points = Vec::<Vec<f64>>::try_from(x).unwrap();
    let reward = trajectory
        .scores
        .reward
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    (points, reward)
}

/// The quality suite's 8-d box (a two-mode mixture with correlated components, OT schedule,
/// velocity output, lambda 5), steered by its exact value on the default 200-step grid: what
/// the sampler reaches when the value is not the limit. Learned values reach 0.939-0.962 of
/// the possible improvement there (seeds 0-2); the exact one reached 0.995, its distance to
/// `p*` 0.8 times the floor. The bound is about four standard errors of 2000 samples (0.008)
/// below that, still above the goal of 0.95: the test fails when the sampler or the grid would
/// hold a perfect value under the goal.
#[test]
fn the_exact_value_reaches_the_8d_box_optimum_on_the_default_grid() {
    let problem = suite()
        .into_iter()
        .find(|p| p.name == "8d-two-modes-box")
        .unwrap();
    let n = 2000;
    let optimum = problem
        .optimum(8 * n, 3, &OptimumOptions::default())
        .unwrap();
    let (base, best) = (optimum.base_reward_mean.value, optimum.reward_mean.value);
    // At t = 0 (alpha 0, beta 1) the posterior is the base itself, so the exact value there
    // gives P_base(box) = E_base[r]: its GHK estimate against the suite's Monte Carlo one
    // (standard errors about 0.0003 and 0.0001).
    let at_start = ExactMixtureBoxValue::new(&problem, 100_000)
        .forward(
            &State::new(
                "vec",
                vec![(
                    "x".to_string(),
                    Tensor::zeros([1, problem.dim() as i64], (Kind::Float, Device::Cpu)),
                )],
            ),
            &Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        )
        .double_value(&[0]);
    let lambda = problem.lambda;
    let p_base = ((-lambda * at_start).exp() - 1.0) / (lambda.exp() - 1.0);
    assert!(
        (p_base - base).abs() < 0.002,
        "GHK {p_base:.5} vs Monte Carlo {base:.5}"
    );
    let value = ExactMixtureBoxValue::new(&problem, 64);
    let (points, reward) = box_problem_samples(&problem, n, &value);
    let normalised = (reward - base) / (best - base);
    let draws: Vec<&[Vec<f64>]> = optimum.samples.chunks(n).collect();
    let distance = |a: &[Vec<f64>], b: &[Vec<f64>]| sliced_wasserstein1(a, b, 64, 7);
    let to_optimum = draws.iter().map(|b| distance(&points, b)).sum::<f64>() / 8.0;
    let floor = draws
        .chunks(2)
        .map(|pair| distance(pair[0], pair[1]))
        .sum::<f64>()
        / 4.0;
    eprintln!(
        "8-d box, exact value, {FLAT_DATA_STEPS} steps, {n} samples: mean reward {reward:.4} \
         (base {base:.4}, by GHK {p_base:.4}; E_p*[r] {best:.4}), normalised improvement {normalised:.3}; \
         sliced W1 to p* {to_optimum:.4}, noise floor {floor:.4}, ratio {:.2}",
        to_optimum / floor
    );
    assert!(normalised > 0.965, "normalised improvement {normalised:.3}");
    assert!(
        to_optimum < 1.5 * floor,
        "{to_optimum:.4} vs floor {floor:.4}"
    );
}
