//! The sampling benchmark: seconds per denoising step of a base model (any plugin), and images
//! per second at 100 steps.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;
use tch::Device;

use super::median;
use crate::model::Model;
use crate::sde::{sample, Interrupted, SampleRequest, SamplerOptions};

/// Figures of the sampling benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct SamplingFigures {
    /// Model id.
    pub model: String,
    /// Samples denoised at once.
    pub batch_size: usize,
    /// Steps timed (after the warm-up ones).
    pub timed_steps: usize,
    /// libtorch threads.
    pub threads: i32,
    /// Median seconds per denoising step of the whole batch.
    pub seconds_per_step: f64,
    /// `batch_size / (100 * seconds_per_step)`.
    pub images_per_second_at_100_steps: f64,
}

/// Times `timed` base-model denoising steps (after `warmup`) on a batch of `batch_size`, on the
/// model's own 100-step time grid.
pub fn sampling(
    model: &mut Model,
    batch_size: usize,
    warmup: usize,
    timed: usize,
    device: Device,
) -> Result<SamplingFigures> {
    let options = SamplerOptions {
        steps: 100,
        ..SamplerOptions::default()
    };
    let marks = std::cell::RefCell::new(vec![Instant::now()]);
    let total = warmup + timed;
    let mark = |k: usize| {
        marks.borrow_mut().push(Instant::now());
        k + 1 >= total
    };
    let request = SampleRequest {
        n: batch_size,
        seed: 0,
        control: None,
        record: false,
        device,
        stop_after_step: &mark,
    };
    let result = sample(model, None, &options, &request);
    match result {
        Err(e) if e.is::<Interrupted>() => {}
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let marks = marks.into_inner();
    let per_step: Vec<f64> = marks
        .windows(2)
        .skip(warmup)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    if per_step.is_empty() {
        bail!("no steps were timed");
    }
    let seconds_per_step = median(per_step);
    Ok(SamplingFigures {
        model: model.id.clone(),
        batch_size,
        timed_steps: timed,
        threads: tch::get_num_threads(),
        seconds_per_step,
        images_per_second_at_100_steps: batch_size as f64 / (100.0 * seconds_per_step),
    })
}
