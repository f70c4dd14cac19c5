//! The Value Matching benchmark: seconds per iteration through the plugins, controlled
//! sampling steps per second, and the host's overhead over the same iteration issued directly
//! against libtorch.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{cpu_seconds, median};
use crate::model::Model;
use crate::reward::Reward;
use crate::sde::{
    never_stop, sample, sde_coefficients, time_grid, Diffusion, Interpolant, SampleRequest,
    SamplerOptions, TimeGrid,
};
use crate::state::State;
use crate::value::{mlp::MlpValue, ValueNetwork};
use crate::value_matching::adam::Adam;
use crate::value_matching::{ValueMatching, VmSettings};

/// Figures of the Value Matching benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct VmFigures {
    /// Trajectories per iteration.
    pub batch_size: usize,
    /// Steps per trajectory.
    pub steps: usize,
    /// libtorch threads.
    pub threads: i32,
    /// Median seconds per iteration through the host and plugins.
    pub seconds_per_iteration: f64,
    /// Median seconds per iteration of the direct libtorch loop.
    pub floor_seconds_per_iteration: f64,
    /// `1 - floor / host`.
    pub host_overhead_share: f64,
    /// Median CPU seconds per iteration through the host and plugins (where measurable).
    pub cpu_seconds_per_iteration: Option<f64>,
    /// Median CPU seconds per iteration of the direct libtorch loop.
    pub floor_cpu_seconds_per_iteration: Option<f64>,
    /// `1 - floor / host` in CPU time, which a loaded machine disturbs less than wall time.
    pub host_overhead_cpu_share: Option<f64>,
    /// Controlled sampling steps (whole batch) per second through the host.
    pub sampling_steps_per_second: f64,
    /// Median seconds of the sampling part of an iteration.
    pub sampling_seconds: f64,
}

/// Times Value Matching iterations of `model` + `reward` through the host, and the direct
/// libtorch floor of the toy (`1d/gmm` with `1d/binary`, default arguments).
pub fn value_matching(
    model: &mut Model,
    reward: &mut Reward,
    batch_size: usize,
    steps: usize,
    iterations: usize,
) -> Result<VmFigures> {
    if model.id != "1d/gmm" || reward.id != "1d/binary" {
        bail!("the Value Matching benchmark compares against the toy's closed form: use --model 1d/gmm --reward 1d/binary");
    }
    let device = Device::Cpu;
    let options = SamplerOptions {
        steps,
        ..SamplerOptions::default()
    };
    let settings = VmSettings {
        reward_scale: 5.0,
        lr: 1e-3,
        grad_clip: 1.0,
        batch_size,
        train_chunk: 0,
        sampler: options,
        seed: 0,
        device,
        iterations,
        lr_schedule: crate::value_matching::LrSchedule::Constant,
        fit_steps: 1,
        martingale_target: false,
        value_loss: crate::value_matching::ValueLoss::Squared,
        replay: 1,
        value_average: 0.0,
    };
    tch::manual_seed(0);
    let example = State::new(
        "1d",
        vec![("x".into(), Tensor::zeros([1, 1], (Kind::Float, device)))],
    );
    let network = crate::value::build(
        crate::value::ValueArch::Mlp,
        &example,
        device,
        &Interpolant::OptimalTransport,
    )?;
    let mut trainer = ValueMatching::new(network, settings);
    // Host and floor iterations alternate, so that both see the same machine load.
    let warmup = 2;
    let mut reference = DirectLoop::new(batch_size, steps, device);
    let (mut host, mut floor) = (Vec::new(), Vec::new());
    let (mut host_cpu, mut floor_cpu) = (Vec::new(), Vec::new());
    for i in 0..warmup + iterations {
        let (start, cpu) = (Instant::now(), cpu_seconds());
        trainer.iteration(model, reward, i, &never_stop)?;
        let host_seconds = start.elapsed().as_secs_f64();
        let host_cpu_seconds = cpu_seconds().zip(cpu).map(|(b, a)| b - a);
        let (start, cpu) = (Instant::now(), cpu_seconds());
        reference.iteration(i as i64);
        let floor_seconds = start.elapsed().as_secs_f64();
        let floor_cpu_seconds = cpu_seconds().zip(cpu).map(|(b, a)| b - a);
        if i >= warmup {
            host.push(host_seconds);
            floor.push(floor_seconds);
            host_cpu.extend(host_cpu_seconds);
            floor_cpu.extend(floor_cpu_seconds);
        }
    }
    let mut sampling = Vec::new();
    for i in 0..iterations {
        let start = Instant::now();
        let request = SampleRequest {
            n: batch_size,
            seed: i as u64,
            control: trainer.control(),
            record: true,
            device,
            stop_after_step: &never_stop,
        };
        sample(model, Some(reward), &options, &request)?;
        sampling.push(start.elapsed().as_secs_f64());
    }
    let (host, floor, sampling) = (median(host), median(floor), median(sampling));
    let (host_cpu, floor_cpu) = if host_cpu.is_empty() {
        (None, None)
    } else {
        (Some(median(host_cpu)), Some(median(floor_cpu)))
    };
    Ok(VmFigures {
        batch_size,
        steps,
        threads: tch::get_num_threads(),
        seconds_per_iteration: host,
        floor_seconds_per_iteration: floor,
        host_overhead_share: 1.0 - floor / host,
        cpu_seconds_per_iteration: host_cpu,
        floor_cpu_seconds_per_iteration: floor_cpu,
        host_overhead_cpu_share: host_cpu.zip(floor_cpu).map(|(h, f)| 1.0 - f / h),
        sampling_steps_per_second: steps as f64 / sampling,
        sampling_seconds: sampling,
    })
}

/// The toy's Value Matching iteration written directly against libtorch: the floor the host's
/// own cost is measured against. Same arithmetic as the host path (closed-form velocity of the
/// default mixture, binary reward on [0, 1], the MLP value network, Adam with clipping).
struct DirectLoop {
    value: MlpValue,
    adam: Adam,
    batch_size: i64,
    grid: Vec<f64>,
    interpolant: Interpolant,
    means: Tensor,
    variances: Tensor,
    log_weights: Tensor,
}

impl DirectLoop {
    fn new(batch_size: usize, steps: usize, device: Device) -> Self {
        tch::manual_seed(0);
        let value = MlpValue::new(device, 1, Interpolant::OptimalTransport);
        let adam = Adam::new(value.var_store(), 1e-3);
        let row = |v: &[f32]| Tensor::from_slice(v).view([1, -1]).to_device(device);
        Self {
            value,
            adam,
            batch_size: batch_size as i64,
            grid: time_grid(
                steps,
                0.02,
                TimeGrid::default(),
                &Interpolant::OptimalTransport,
            ),
            interpolant: Interpolant::OptimalTransport,
            means: row(&[0.0, 3.0]),
            variances: row(&[1.0, 0.16]),
            log_weights: row(&[0.5f32.ln(), 0.5f32.ln()]),
        }
    }

    fn velocity(&self, x: &Tensor, t: f64) -> Tensor {
        let variance = &self.variances * (t * t) + (1.0 - t) * (1.0 - t);
        let deviation = x - &self.means * t;
        let log_density =
            &self.log_weights - variance.log() * 0.5 - deviation.square() / (&variance * 2.0);
        let posterior = log_density.softmax(1, Kind::Float);
        let component = &self.means + (&self.variances * t - (1.0 - t)) / variance * deviation;
        (posterior * component).sum_dim_intlist(1, true, Kind::Float)
    }

    fn iteration(&mut self, seed: i64) {
        let lambda = 5.0;
        let n = self.batch_size;
        let steps = self.grid.len() - 1;
        let _no_grad = tch::no_grad_guard();
        tch::manual_seed(seed);
        let mut x = Tensor::randn([n, 1], (Kind::Float, Device::Cpu));
        let mut states = Vec::with_capacity(steps);
        let mut costs = Vec::with_capacity(steps);
        let mut weights_sum = vec![0.0; steps];
        let mut dts = vec![0.0; steps];
        for k in 0..steps {
            let (t, dt) = (self.grid[k], self.grid[k + 1] - self.grid[k]);
            let c = sde_coefficients(
                &self.interpolant,
                Diffusion::Memoryless,
                flowgym_plugin_api::OutputType::Velocity,
                t,
            );
            let f = self.velocity(&x, t);
            let base = &x * c.drift.a + f * c.drift.b;
            let midpoint = &x + &base * (0.5 * dt);
            let state = State::new("1d", vec![("x".into(), midpoint)]);
            let grad = self.value.gradient(&state, t + 0.5 * dt).remove(0);
            let u = grad * (-c.s * lambda);
            costs.push(u.square().sum_dim_intlist(1, false, Kind::Float) * 0.5);
            let drift = base + &u * c.s;
            let next = &x + drift * dt + x.randn_like() * (dt.sqrt() * c.s);
            states.push(x);
            x = next;
            weights_sum[k] = c.s * c.s * dt;
            dts[k] = dt;
        }
        let reward = x
            .ge(0.0)
            .logical_and(&x.le(1.0))
            .to_kind(Kind::Float)
            .view([-1]);
        let dt = Tensor::from_slice(&dts).to_kind(Kind::Float).view([-1, 1]);
        let cost = Tensor::stack(&costs, 0) * dt;
        let targets = ((cost.flip([0]).cumsum(0, Kind::Float).flip([0])
            - reward.view([1, -1]) * lambda)
            / lambda)
            .reshape([-1]);
        let mut remaining = 0.0;
        let mut weights = vec![0.0; steps];
        for k in (0..steps).rev() {
            remaining += weights_sum[k];
            weights[k] = 1.0 / (1.0 + 0.5 * remaining);
        }
        let times = Tensor::from_slice(&self.grid[..steps])
            .to_kind(Kind::Float)
            .repeat_interleave_self_int(n, 0, None);
        let weights = Tensor::from_slice(&weights)
            .to_kind(Kind::Float)
            .repeat_interleave_self_int(n, 0, None);
        let all = State::new("1d", vec![("x".into(), Tensor::cat(&states, 0))]);
        self.adam.zero_grad();
        tch::with_grad(|| {
            let prediction = self.value.forward(&all, &times);
            let loss = ((prediction - targets).square() * weights).sum(Kind::Float)
                / (steps as f64 * n as f64);
            loss.backward();
        });
        self.adam.step(1.0);
    }
}
