//! Euler-Maruyama sampling of the (controlled) memoryless SDE, recording what Value Matching
//! trains on.
//!
//! `K` steps on a grid `t_0 < .. < t_K = 1` ([`TimeGrid`]):
//! `x += dt (a x + b f(x, t) + s u) + sqrt(dt) s noise`, with the control `u = -s grad_x V`
//! when a value network steers, its gradient taken where [`ControlPoint`] says (the default
//! memoryless `s` is `sigma_m`); the last step instead returns an endpoint estimate
//! `E[x_1 | x_{t_{K-1}}]`, the base model's or the steered process's ([`FinalStep`]), so
//! that no noise of its own stays in the samples. Then
//! `sample = postprocess(x_K)`, `(r, valid) = reward(sample, x_K)`, and the cost-to-go
//! `C_k = sum_{j >= k} |u_j|^2 / 2 dt - lambda r`.

use std::ops::Range;

use anyhow::{anyhow, bail, Result};
use tch::{Device, Kind, Tensor};

use super::control_point::ControlPoint;
use super::diffusion::Diffusion;
use super::drift::{endpoint_coefficients, sde_coefficients};
use super::final_step::FinalStep;
use super::time_grid::{time_grid, TimeGrid};
use crate::kwargs::HostKwargs;
use crate::model::Model;
use crate::reward::{Reward, Scores};
use crate::state::State;
use crate::value::ValueNetwork;

/// How to discretise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerOptions {
    /// Number of Euler-Maruyama steps `K`.
    pub steps: usize,
    /// First time (avoids the singularity of the interpolant at 0).
    pub t0: f64,
    /// How the steps are spread over `[t_0, 1]`.
    pub grid: TimeGrid,
    /// The diffusion coefficient `s(t)`.
    pub diffusion: Diffusion,
    /// Where in each step the control is evaluated.
    pub control_point: ControlPoint,
    /// Whose endpoint estimate the last step returns when a control steers.
    pub final_step: FinalStep,
    /// Largest number of samples simulated at once; larger requests run in chunks of this size
    /// (0: all at once).
    pub chunk_size: usize,
}

impl Default for SamplerOptions {
    /// The run defaults for images: 100 steps (flat data run 200) from `t0 = 0.02` on the
    /// automatic grid, memoryless noise, the control at each step's midpoint, the steered
    /// endpoint estimate at the end, all samples at once.
    fn default() -> Self {
        Self {
            steps: 100,
            t0: 0.02,
            grid: TimeGrid::default(),
            diffusion: Diffusion::Memoryless,
            control_point: ControlPoint::default(),
            final_step: FinalStep::default(),
            chunk_size: 0,
        }
    }
}

/// What to sample: how many, from which seed, steered by what, and what to keep.
#[derive(Clone, Copy)]
pub struct SampleRequest<'a> {
    /// Number of samples.
    pub n: usize,
    /// Seed of the source samples and the noise (chunk `i` uses a seed derived from it).
    pub seed: u64,
    /// The value network steering the samples; `None` samples the base model.
    pub control: Option<Control<'a>>,
    /// Keep the state at every step (Value Matching trains on them).
    pub record: bool,
    /// Where to compute.
    pub device: Device,
    /// Called after every step with its index; returning `true` stops sampling with
    /// [`Interrupted`].
    pub stop_after_step: &'a dyn Fn(usize) -> bool,
}

/// A `stop_after_step` that never stops.
pub fn never_stop(_step: usize) -> bool {
    false
}

/// A value network steering the sampler: `V(x, t) = scale * value(x, t)`.
#[derive(Clone, Copy)]
pub struct Control<'a> {
    /// The network.
    pub value: &'a dyn ValueNetwork,
    /// The reward scale `lambda` the network's output is measured in.
    pub scale: f64,
}

/// The sampler was asked to stop (Ctrl-C).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// What one call of [`sample`] produced.
#[derive(Debug)]
pub struct Trajectory {
    /// `t_0 .. t_{K-1}`.
    pub times: Vec<f64>,
    /// `t_{k+1} - t_k`.
    pub dts: Vec<f64>,
    /// `s(t_k)`.
    pub diffusion: Vec<f64>,
    /// `x` at `t_0 .. t_{K-1}` (empty unless recorded).
    pub states: Vec<State>,
    /// `|u_k|^2 / 2` per sample: `[K, n]`.
    pub running_cost: Tensor,
    /// `u_k . xi_k sqrt(dt_k)` per sample, with `xi_k` the step's noise: the increments of the
    /// stochastic integral `int u dW`, whose conditional mean is zero (recorded trajectories
    /// only; zeros otherwise): `[K, n]`.
    pub martingale: Tensor,
    /// `x_K`.
    pub final_state: State,
    /// `postprocess(x_K)`.
    pub sample: State,
    /// The keyword arguments of the samples (after preprocess).
    pub kwargs: HostKwargs,
    /// Rewards and validity (zeros and all valid when no reward was given).
    pub scores: Scores,
}

impl Trajectory {
    /// `C_k = sum_{j >= k} |u_j|^2 / 2 dt_j - lambda r`: `[K, n]`.
    pub fn cost_to_go(&self, lambda: f64) -> Tensor {
        let dt = Tensor::from_slice(&self.dts)
            .to_kind(Kind::Float)
            .to_device(self.running_cost.device())
            .view([-1, 1]);
        let cost = &self.running_cost * dt;
        let remaining = cost.flip([0]).cumsum(0, Kind::Float).flip([0]);
        remaining - self.scores.reward.view([1, -1]) * lambda
    }

    /// The cost-to-go plus the remaining stochastic integral, `C_k + sum_{j >= k} u_j . xi_j
    /// sqrt(dt_j)`: the same conditional mean as [`Trajectory::cost_to_go`], and exactly the
    /// optimal value `V*(x_k, t_k)` for every trajectory when the control is optimal, so its
    /// spread shrinks as the control improves (docs/mathematics.md, section 7): `[K, n]`.
    pub fn cost_to_go_with_martingale(&self, lambda: f64) -> Tensor {
        let remaining = self.martingale.flip([0]).cumsum(0, Kind::Float).flip([0]);
        self.cost_to_go(lambda) + remaining
    }

    /// Total control cost `sum_k |u_k|^2 / 2 dt_k` per sample: `[n]`.
    pub fn control_cost(&self) -> Tensor {
        self.cost_to_go(0.0).get(0)
    }
}

/// Seeds libtorch's generator for chunk `chunk` of a call seeded `seed`.
fn chunk_seed(seed: u64, chunk: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(chunk as u64)
}

/// Samples `request.n` trajectories in chunks of `options.chunk_size`, scoring them with
/// `reward` if given.
pub fn sample(
    model: &mut Model,
    reward: Option<&mut Reward>,
    options: &SamplerOptions,
    request: &SampleRequest<'_>,
) -> Result<Trajectory> {
    sample_part(model, reward, options, request, 0..request.n)
}

/// Samples the trajectories `part` of the `request.n` that [`sample`] would draw, with the
/// same source samples and noise: chunk `i` of the whole request keeps its seed, and a chunk
/// that `part` cuts is drawn whole and sliced before any model call. Data-parallel ranks each
/// sample their part of one batch this way, so the batch does not depend on how many ranks
/// share it.
pub fn sample_part(
    model: &mut Model,
    mut reward: Option<&mut Reward>,
    options: &SamplerOptions,
    request: &SampleRequest<'_>,
    part: Range<usize>,
) -> Result<Trajectory> {
    if options.steps == 0 {
        bail!("the sampler needs at least one step");
    }
    check_stability(options, &model.interpolant)?;
    let chunk = match options.chunk_size {
        0 => request.n.max(1),
        size => size,
    };
    let mut parts = Vec::new();
    for (index, start) in (0..request.n).step_by(chunk).enumerate() {
        let end = (start + chunk).min(request.n);
        let (from, to) = (start.max(part.start), end.min(part.end));
        if from >= to {
            continue;
        }
        let part_request = SampleRequest {
            n: end - start,
            seed: chunk_seed(request.seed, index),
            ..*request
        };
        parts.push(sample_chunk(
            model,
            reward.as_deref_mut(),
            options,
            &part_request,
            from - start..to - start,
        )?);
    }
    concatenate(parts)
}

/// What a chunk's steps record, one entry per step. The per-sample records are rows of
/// tensors allocated once for all steps: a small tensor kept from every step would sit
/// between the steps' large temporaries in the heap, and the allocator, unable to reuse the
/// holes they leave, would grow with the number of steps (controlled sampling of 10,000
/// points took 811 MiB at 200 steps that way, 196 MiB with the rows).
struct StepLog {
    states: Vec<State>,
    /// `[K, n]`: `|grad value|^2` per step and sample; the step's running cost is that times
    /// `cost_scales[k]`, applied to all steps at once in [`StepLog::running_cost`].
    gradient_squares: Tensor,
    cost_scales: Vec<f64>,
    /// `[K, n]`: `grad value . xi` per step and sample; times `martingale_scales[k]` it is the
    /// step's increment of the stochastic integral.
    gradient_noise: Tensor,
    martingale_scales: Vec<f64>,
    diffusion: Vec<f64>,
    /// `[K]`: whether the model's output at each step was finite.
    model_ok: Tensor,
}

impl StepLog {
    fn new(steps: usize, n: usize, device: Device) -> Self {
        let rows = [steps as i64, n as i64];
        Self {
            states: Vec::with_capacity(steps),
            gradient_squares: Tensor::zeros(rows, (Kind::Float, device)),
            cost_scales: Vec::with_capacity(steps),
            gradient_noise: Tensor::zeros(rows, (Kind::Float, device)),
            martingale_scales: Vec::with_capacity(steps),
            diffusion: Vec::with_capacity(steps),
            model_ok: Tensor::ones([steps as i64], (Kind::Bool, device)),
        }
    }

    /// Records whether the model's output at step `k` is finite.
    fn model_output(&mut self, k: usize, output: &State) {
        self.model_ok.get(k as i64).copy_(&output.all_finite());
    }

    /// A controlled step's running cost: `cost_scale |g|^2` per sample, for the value's
    /// gradient `g`.
    fn control(&mut self, gradient: &State, cost_scale: f64) -> Result<()> {
        let k = self.cost_scales.len() as i64;
        self.gradient_squares
            .get(k)
            .copy_(&gradient.per_sample_sum(Tensor::square)?);
        self.cost_scales.push(cost_scale);
        Ok(())
    }

    /// A step without control, or whose stochastic integral is not recorded (its row stays 0).
    fn no_control(&mut self) {
        self.cost_scales.push(0.0);
        self.no_martingale();
    }

    fn no_martingale(&mut self) {
        self.martingale_scales.push(0.0);
    }

    /// A recorded step's `g . xi` per sample, to be scaled by `scale`.
    fn martingale(&mut self, products: &State, scale: f64) -> Result<()> {
        let k = self.martingale_scales.len() as i64;
        self.gradient_noise
            .get(k)
            .copy_(&products.per_sample_sum(Tensor::shallow_clone)?);
        self.martingale_scales.push(scale);
        Ok(())
    }

    /// `[K, n]`: the rows, each step's times its scale.
    fn scaled(rows: &Tensor, scales: &[f64]) -> Tensor {
        let scales = Tensor::from_slice(scales)
            .to_kind(Kind::Float)
            .to_device(rows.device())
            .view([-1, 1]);
        rows * scales
    }

    /// `|u_k|^2 / 2` per sample: `[K, n]`.
    fn running_cost(&self) -> Tensor {
        Self::scaled(&self.gradient_squares, &self.cost_scales)
    }

    /// `u_k . xi_k sqrt(dt_k)` per sample: `[K, n]`.
    fn stochastic_integral(&self) -> Tensor {
        Self::scaled(&self.gradient_noise, &self.martingale_scales)
    }
}

/// `grad value` at `x` and time `t`; the control is `u = -s lambda grad value`.
fn value_gradient(steering: Control<'_>, x: &State, t: f64) -> State {
    let mut grads = steering.value.gradient(x, t).into_iter();
    x.map_floating(|_| grads.next().expect("one gradient per floating leaf"))
}

/// A chunk cut to some of its samples: the whole chunk's source state (whose shape its noise
/// takes) and the samples kept.
struct Cut {
    whole: State,
    keep: Range<usize>,
}

impl Cut {
    /// The noise of the whole chunk, sliced to the kept samples.
    fn noise(&self) -> Result<State> {
        self.whole
            .map_floating(Tensor::randn_like)
            .slice(self.keep.start, self.keep.end)
    }
}

/// The samples `keep` of a chunk of `request.n`. A chunk kept whole draws its noise from its
/// own state; a cut one draws the whole chunk's noise and keeps its slice, so each sample
/// gets the same numbers either way.
fn sample_chunk(
    model: &mut Model,
    reward: Option<&mut Reward>,
    options: &SamplerOptions,
    request: &SampleRequest<'_>,
    keep: Range<usize>,
) -> Result<Trajectory> {
    let _no_grad = tch::no_grad_guard();
    let device = request.device;
    tch::manual_seed(request.seed as i64);
    let grid = time_grid(options.steps, options.t0, options.grid, &model.interpolant);
    let (x0, kwargs) = model.sample_p0(request.n, request.seed)?;
    let (x, kwargs, cut) = if keep.len() == request.n {
        (x0.to_device(device), kwargs, None)
    } else {
        let x = x0.slice(keep.start, keep.end)?.to_device(device);
        let kwargs = kwargs.slice(keep.start, keep.end);
        let whole = x0.to_device(device);
        (x, kwargs, Some(Cut { whole, keep }))
    };
    let n = x.len();
    let kwargs = model.preprocess(&x, &kwargs.to_device(device))?;
    let mut x = x;
    let mut log = StepLog::new(options.steps, n, device);
    for k in 0..options.steps {
        let (t, dt) = (grid[k], grid[k + 1] - grid[k]);
        let f = model.forward(&x, t, &kwargs)?;
        log.model_output(k, &f);
        let next = if k + 1 == options.steps {
            endpoint_step(model, options, request, t, (&x, &f), &mut log)?
        } else {
            let noise = match &cut {
                None => x.map_floating(Tensor::randn_like),
                Some(cut) => cut.noise()?,
            };
            euler_maruyama_step(model, options, request, (t, dt), (&x, &f, &noise), &mut log)?
        };
        if request.record {
            log.states.push(x);
        }
        x = next;
        if (request.stop_after_step)(k) {
            return Err(Interrupted.into());
        }
    }
    let (running_cost, martingale) = (log.running_cost(), log.stochastic_integral());
    check_finite(model, &grid, &log.model_ok, &running_cost)?;
    let sample = model.postprocess(&x, &kwargs)?;
    let scores = match reward {
        Some(reward) => reward.score(&sample, &x, &kwargs, device)?,
        None => Scores::unscored(n, device),
    };
    Ok(Trajectory {
        times: grid[..options.steps].to_vec(),
        dts: grid.windows(2).map(|w| w[1] - w[0]).collect(),
        diffusion: log.diffusion,
        states: log.states,
        running_cost,
        martingale,
        final_state: x,
        sample,
        kwargs,
        scores,
    })
}

/// The last step returns an estimate of the endpoint instead of an Euler-Maruyama step, whose
/// noise would stay in the samples (docs/mathematics.md, section 6): the base model's, or with
/// a control and [`FinalStep::Tilted`] the steered process's, which moves it by
/// `-(beta^2 / alpha) lambda grad v`. Neither draws noise, so no running cost is recorded.
fn endpoint_step(
    model: &Model,
    options: &SamplerOptions,
    request: &SampleRequest<'_>,
    t: f64,
    (x, f): (&State, &State),
    log: &mut StepLog,
) -> Result<State> {
    let c = sde_coefficients(&model.interpolant, options.diffusion, model.output_type, t);
    let e = endpoint_coefficients(model.output_type, &c.interpolant);
    log.diffusion.push(0.0);
    let endpoint = x.zip_floating(f, |x, f| x * e.x + f * e.f);
    match (request.control, options.final_step) {
        (Some(steering), FinalStep::Tilted) => {
            let (alpha, beta) = (c.interpolant.alpha, c.interpolant.beta);
            let shift = beta * beta / alpha * steering.scale;
            let gradient = value_gradient(steering, x, t);
            // Counted at a cost of nothing, so that a NaN gradient is still reported as the
            // control's by the finiteness check (0 * NaN is NaN).
            log.control(&gradient, 0.0)?;
            log.no_martingale();
            Ok(endpoint.zip_floating(&gradient, |y, g| y - g * shift))
        }
        _ => {
            log.no_control();
            Ok(endpoint)
        }
    }
}

/// `x + dt (a x + b f + s u) + sqrt(dt) s noise`, recording the control's cost and, for
/// recorded trajectories, its stochastic integral.
fn euler_maruyama_step(
    model: &Model,
    options: &SamplerOptions,
    request: &SampleRequest<'_>,
    (t, dt): (f64, f64),
    (x, f, noise): (&State, &State, &State),
    log: &mut StepLog,
) -> Result<State> {
    let c = sde_coefficients(&model.interpolant, options.diffusion, model.output_type, t);
    log.diffusion.push(c.s);
    let mut drift = x.zip_floating(f, |x, f| x * c.drift.a + f * c.drift.b);
    // With `g = grad value` the control is `u = -s lambda g`: its drift `s u`, its running
    // cost `(s lambda)^2 |g|^2 / 2` and its stochastic integral `-s lambda sqrt(dt) g . xi`;
    // the scalars of the last two are applied to all steps at once at the end.
    let gradient = request.control.map(|steering| {
        let (at, time) = options.control_point.locate(x, &drift, t, dt);
        (value_gradient(steering, &at, time), c.s * steering.scale)
    });
    match &gradient {
        Some((g, s_lambda)) => {
            log.control(g, 0.5 * s_lambda * s_lambda)?;
            drift = drift.zip_floating(g, |d, g| d - g * (c.s * s_lambda));
        }
        None => log.no_control(),
    }
    match (&gradient, request.record) {
        (Some((g, s_lambda)), true) => {
            let products = g.zip_floating(noise, |g, e| g * e);
            log.martingale(&products, -s_lambda * dt.sqrt())?;
        }
        (Some(_), false) => log.no_martingale(),
        (None, _) => {}
    }
    Ok(x.zip_floating(&drift, |x, d| x + d * dt)
        .zip_floating(noise, |y, e| y + e * (dt.sqrt() * c.s)))
}

/// Refuses a constant diffusion level that the Euler-Maruyama steps cannot follow. With a
/// constant `s` the drift pulls a sample towards its data point at rate `s^2 / (2 beta^2)`
/// (for tight data, docs/mathematics.md, section 3), which grows without bound as `beta` goes
/// to 0 near `t = 1`; an explicit step with `rate * dt > 2` overshoots and the samples end
/// far too wide or diverge. The memoryless coefficient never does: its rate stays at the edge.
pub fn check_stability(options: &SamplerOptions, interpolant: &super::Interpolant) -> Result<()> {
    let Diffusion::Constant(level) = options.diffusion else {
        return Ok(());
    };
    let grid = time_grid(options.steps, options.t0, options.grid, interpolant);
    // The last step is the endpoint estimate, not an Euler-Maruyama step.
    for k in 0..options.steps.saturating_sub(1) {
        let dt = grid[k + 1] - grid[k];
        let beta = interpolant.at(grid[k]).beta;
        if level * level * dt > 4.0 * beta * beta {
            let largest = (0..options.steps - 1)
                .map(|j| 2.0 * interpolant.at(grid[j]).beta / (grid[j + 1] - grid[j]).sqrt())
                .fold(f64::INFINITY, f64::min);
            bail!(
                "the constant diffusion level {level} is too stiff for {} steps: at t = {:.4} the drift contracts at rate s^2 / (2 beta^2) = {:.1} per unit time, more than 2 / dt = {:.1}, so the samples would end too wide or diverge; use `memoryless`, a level of at most {largest:.4}, or more steps",
                options.steps,
                grid[k],
                level * level / (2.0 * beta * beta),
                2.0 / dt
            );
        }
    }
    Ok(())
}

/// Names the first step where the model or the control produced NaN or infinite values (one
/// device synchronisation per chunk, not per step); a control that is not finite makes its
/// step's running cost so.
fn check_finite(
    model: &Model,
    grid: &[f64],
    model_ok: &Tensor,
    running_cost: &Tensor,
) -> Result<()> {
    let model_bad = Vec::<bool>::try_from(model_ok)
        .ok()
        .and_then(|ok| ok.iter().position(|ok| !ok));
    let control_bad = Vec::<bool>::try_from(running_cost.isfinite().all_dim(1, false))
        .ok()
        .and_then(|ok| ok.iter().position(|ok| !ok));
    match (model_bad, control_bad) {
        (_, Some(k)) if model_bad.is_none_or(|m| k < m) => Err(anyhow!(
            "the value network's control became NaN or infinite at step {k} (t = {:.4}): training diverged; try a lower learning rate or reward scale",
            grid[k]
        )),
        (Some(k), _) => Err(anyhow!(
            "model `{}` forward returned NaN or infinite values at step {k} (t = {:.4})",
            model.id,
            grid[k]
        )),
        _ => Ok(()),
    }
}

fn concatenate(mut parts: Vec<Trajectory>) -> Result<Trajectory> {
    if parts.len() == 1 {
        return Ok(parts.pop().expect("one part"));
    }
    let first = parts
        .first()
        .ok_or_else(|| anyhow!("no samples were asked for"))?;
    let (times, dts, diffusion) = (
        first.times.clone(),
        first.dts.clone(),
        first.diffusion.clone(),
    );
    let steps = first.states.len();
    let states = (0..steps)
        .map(|k| {
            State::cat(
                &parts
                    .iter()
                    .map(|p| p.states[k].shallow_clone())
                    .collect::<Vec<_>>(),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let costs: Vec<&Tensor> = parts.iter().map(|p| &p.running_cost).collect();
    let martingale: Vec<&Tensor> = parts.iter().map(|p| &p.martingale).collect();
    let rewards: Vec<&Tensor> = parts.iter().map(|p| &p.scores.reward).collect();
    let valids: Vec<&Tensor> = parts.iter().map(|p| &p.scores.valid).collect();
    let finals: Vec<State> = parts
        .iter()
        .map(|p| p.final_state.shallow_clone())
        .collect();
    let samples: Vec<State> = parts.iter().map(|p| p.sample.shallow_clone()).collect();
    let kwargs: Vec<HostKwargs> = parts
        .iter()
        .map(|p| p.kwargs.slice(0, p.sample.len()))
        .collect();
    Ok(Trajectory {
        times,
        dts,
        diffusion,
        states,
        running_cost: Tensor::cat(&costs, 1),
        martingale: Tensor::cat(&martingale, 1),
        final_state: State::cat(&finals)?,
        sample: State::cat(&samples)?,
        kwargs: HostKwargs::cat(&kwargs)?,
        scores: Scores {
            reward: Tensor::cat(&rewards, 0),
            valid: Tensor::cat(&valids, 0),
        },
    })
}
