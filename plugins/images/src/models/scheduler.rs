//! The noise schedule of a discrete diffusion, from a published `scheduler_config.json`
//! (`DDPMScheduler`, `DDIMScheduler`, `PNDMScheduler`, ... all share these keys).
//!
//! Only the training schedule is read: the cumulative products `alphas_cumprod` that Flow Gym's
//! `ScheduleSpec::DiscreteDiffusion` carries. They are computed as diffusers computes them, in
//! float32 with libtorch's own kernels, so they equal diffusers' values bit for bit.

use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

/// A scheduler configuration that cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The file could not be read or parsed.
    #[error("cannot read the scheduler config {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A value this implementation does not support.
    #[error("scheduler config: `{key}` = {value} is not supported (supported: {supported})")]
    Unsupported {
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is supported.
        supported: &'static str,
    },
    /// Values that do not make a schedule.
    #[error("scheduler config: {0}")]
    Invalid(String),
}

/// The keys of a published `scheduler_config.json` that define the training noise schedule,
/// with diffusers' defaults. Other keys are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// `_class_name` (`DDPMScheduler`, ...), for messages only.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// Number of discrete training steps `K + 1`.
    pub num_train_timesteps: usize,
    /// First beta.
    pub beta_start: f64,
    /// Last beta.
    pub beta_end: f64,
    /// `linear`, `scaled_linear`, `squaredcos_cap_v2` or `sigmoid`.
    pub beta_schedule: String,
    /// Explicit betas, overriding `beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    /// Rescale to zero terminal SNR (Lin et al. 2023).
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub rescale_betas_zero_snr: bool,
    /// What the model predicts: `epsilon`, `sample` or `v_prediction`.
    pub prediction_type: String,
    /// Clip the predicted clean sample to `[-clip_sample_range, clip_sample_range]` at every
    /// step (diffusers' DDPM and DDIM schedulers; their default is `true`).
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub clip_sample: bool,
    /// The bound of `clip_sample`.
    pub clip_sample_range: f64,
    /// Dynamic thresholding (Imagen); not supported by the DDPM entries.
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub thresholding: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            class_name: None,
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".to_string(),
            trained_betas: None,
            rescale_betas_zero_snr: false,
            prediction_type: "epsilon".to_string(),
            clip_sample: true,
            clip_sample_range: 1.0,
            thresholding: false,
        }
    }
}

impl SchedulerConfig {
    /// Reads a `scheduler_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, SchedulerError> {
        let read_error = |message: String| SchedulerError::Read {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| read_error(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| read_error(e.to_string()))
    }

    /// The betas, float32 `[num_train_timesteps]`, as diffusers computes them.
    pub fn betas(&self) -> Result<Tensor, SchedulerError> {
        let n = self.num_train_timesteps;
        if n < 2 {
            return Err(SchedulerError::Invalid(format!(
                "`num_train_timesteps` is {n}; at least 2 are needed"
            )));
        }
        let options = (Kind::Float, Device::Cpu);
        let steps = n as i64;
        let betas = if let Some(betas) = &self.trained_betas {
            if betas.len() != n {
                return Err(SchedulerError::Invalid(format!(
                    "{} `trained_betas` for {n} `num_train_timesteps`",
                    betas.len()
                )));
            }
            Tensor::from_slice(betas).to_kind(Kind::Float)
        } else {
            match self.beta_schedule.as_str() {
                "linear" => Tensor::linspace(self.beta_start, self.beta_end, steps, options),
                "scaled_linear" => {
                    Tensor::linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), steps, options)
                        .pow_tensor_scalar(2)
                }
                "squaredcos_cap_v2" => {
                    let alpha_bar = |t: f64| {
                        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                            .cos()
                            .powi(2)
                    };
                    let betas: Vec<f64> = (0..n)
                        .map(|i| {
                            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
                        })
                        .collect();
                    Tensor::from_slice(&betas).to_kind(Kind::Float)
                }
                "sigmoid" => {
                    Tensor::linspace(-6.0, 6.0, steps, options).sigmoid()
                        * (self.beta_end - self.beta_start)
                        + self.beta_start
                }
                other => {
                    return Err(SchedulerError::Unsupported {
                        key: "beta_schedule",
                        value: format!("{other:?}"),
                        supported: "\"linear\", \"scaled_linear\", \"squaredcos_cap_v2\", \
                                    \"sigmoid\", or `trained_betas`",
                    })
                }
            }
        };
        Ok(if self.rescale_betas_zero_snr {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        })
    }

    /// diffusers' `alphas_cumprod` as float64: `alpha_bar[k]` for `k = 0..num_train_timesteps`,
    /// index 0 the cleanest. This is the table of `ScheduleSpec::DiscreteDiffusion`.
    pub fn alphas_cumprod(&self) -> Result<Vec<f64>, SchedulerError> {
        let alphas = self.betas()?.neg() + 1.0;
        let cumprod = alphas.cumprod(0, Kind::Float);
        let values = Vec::<f32>::try_from(&cumprod)
            .map_err(|e| SchedulerError::Invalid(format!("reading alphas_cumprod: {e}")))?;
        if let Some(bad) = values
            .iter()
            .find(|v| !(v.is_finite() && **v >= 0.0 && **v <= 1.0))
        {
            return Err(SchedulerError::Invalid(format!(
                "the betas give alphas_cumprod {bad}, outside [0, 1]"
            )));
        }
        Ok(values.into_iter().map(f64::from).collect())
    }
}

/// diffusers' `rescale_zero_terminal_snr`, in float32.
fn rescale_zero_terminal_snr(betas: &Tensor) -> Tensor {
    let alphas = betas.neg() + 1.0;
    let sqrt_bar = alphas.cumprod(0, Kind::Float).sqrt();
    let n = sqrt_bar.size()[0];
    let first = sqrt_bar.get(0).copy();
    let last = sqrt_bar.get(n - 1).copy();
    let shifted = &sqrt_bar - &last;
    let scaled = shifted * (&first / (&first - &last));
    let bar = scaled.pow_tensor_scalar(2);
    let ratios = bar.slice(0, 1, n, 1) / bar.slice(0, 0, n - 1, 1);
    let alphas = Tensor::cat(&[bar.slice(0, 0, 1, 1), ratios], 0);
    alphas.neg() + 1.0
}
