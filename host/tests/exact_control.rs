//! The sampler and the control, checked against the exact optimum without any learning.
//!
//! For the toy (`1d/gmm` to 0.5 N(0,1) + 0.5 N(3, 0.4^2), binary reward on [0, 1]) the
//! optimal value is known in closed form: with the memoryless noise schedule, `X_1` given
//! `X_t = x` follows the posterior of `x_t = t x_1 + (1 - t) x_0`, a Gaussian mixture, so
//! `V*(x, t) = -log(1 + (e^lambda - 1) P(X_1 in [0, 1] | X_t = x))`. Steering the sampler with
//! `u = -s grad V*` must then produce the tilted distribution `p* ~ p_base exp(lambda r)`, up to
//! the discretisation of the time grid.

use flowgym_host::model::Model;
use flowgym_host::reward::Reward;
use flowgym_host::sde::{never_stop, sample, Control, ControlPoint, SampleRequest, SamplerOptions};
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
        let p = (posterior * inside).sum_dim_intlist(1, false, Kind::Double);
        let h = p * (LAMBDA.exp() - 1.0) + 1.0;
        (-h.log() / LAMBDA).to_kind(Kind::Float)
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

fn exact_samples(steps: usize, n: usize, control_point: ControlPoint) -> (Vec<f64>, f64, f64) {
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
    let value = ExactValue {
        vs: nn::VarStore::new(Device::Cpu),
        mixture,
    };
    let options = SamplerOptions {
        steps,
        control_point,
        ..SamplerOptions::default()
    };
    let control = Control {
        value: &value,
        scale: LAMBDA,
    };
    let request = SampleRequest {
        n,
        seed: 5,
        control: Some(control),
        record: false,
        device: Device::Cpu,
        stop_after_step: &never_stop,
    };
    let trajectory = sample(&mut model, Some(&mut reward), &options, &request).unwrap();
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

/// With the exact value and 400 steps the samples follow p*: the mean reward within 0.01 of
/// E_p*[r] = 0.968 (the grid's bias is about -0.002 with the control at each step's midpoint,
/// the standard error of 50000 samples 0.0008) and W1 below 0.03; the control cost is the KL
/// divergence of p* from the base, lambda E_p*[r] - log E_base[e^{lambda r}] = 1.58, within 0.1.
#[test]
fn the_exact_optimal_control_reproduces_the_tilted_distribution() {
    let (x, mean, cost) = exact_samples(400, 50_000, ControlPoint::Midpoint);
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
/// against in the end-to-end tests. With the control at each step's midpoint its bias in the
/// mean reward is about -0.006, half that of the Euler-Maruyama rule's start of the step
/// (about -0.013). Both runs draw the same noise, so the comparison is nearly free of sampling
/// error; the bounds are the biases plus about ten standard errors of 100000 samples (0.00065
/// each), so they hold on any machine and fail when the grid or the sampler gets worse.
#[test]
fn the_default_grid_is_close_to_the_optimum_with_the_exact_control() {
    let (x, mean, _) = exact_samples(100, 100_000, ControlPoint::Midpoint);
    let (optimum, w1) = against_optimum(&x);
    let (_, start, _) = exact_samples(100, 100_000, ControlPoint::Start);
    eprintln!("100 steps, exact control: mean reward {mean:.4} at the midpoints, {start:.4} at the starts (E_p*[r] {optimum:.4}), W1 {w1:.4}");
    assert!(
        (mean - optimum).abs() < 0.012,
        "mean reward {mean:.4} vs E_p*[r] {optimum:.4}"
    );
    assert!(w1 < 0.02, "W1 {w1:.4}");
    assert!(
        (mean - optimum).abs() < 0.7 * (start - optimum).abs(),
        "the midpoint's bias {:.4} is not clearly below the start's {:.4}",
        mean - optimum,
        start - optimum
    );
}
