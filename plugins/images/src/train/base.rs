//! `train-base`: a diffusers `UNet2DModel` trained as a DDPM (noise prediction, the linear
//! 1000-step schedule of Ho et al. by default) on an image dataset, written as a diffusers
//! folder: `config.json`, `diffusion_pytorch_model.safetensors` (the exponential moving
//! average of the weights) and `scheduler_config.json` (a `DDPMScheduler`).
//!
//! Every `checkpoint_every` steps, and at the end, the folder is rewritten and the training
//! state (weights, their average, Adam's moments, the step) is saved under `checkpoint/`; a run
//! started again with `resume` continues from it exactly: each step draws its batch, times and
//! noise from its own seed ([`super::step_seed`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::adam::{clip_grad_norm, Adam};
use super::data::ImageData;
use super::{step_seed, write_json, write_safetensors, TrainError};
use crate::ddpm::{check_learned_steps, sample_shape};
use crate::models::scheduler::SchedulerConfig;
use crate::models::unet_2d::{SampleSize, UNet2DConfig, UNet2DModel};
use crate::weights::Weights;

/// The diffusers release whose formats the written files follow.
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// Everything that defines a training run (saved with its checkpoints; a resumed run must
/// agree on all but `steps`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseSettings {
    /// The dataset (see [`ImageData`]).
    pub data: PathBuf,
    /// Optimiser steps in all.
    pub steps: u64,
    /// Images per step.
    pub batch_size: i64,
    /// Peak learning rate (linear warm-up over the first 100 steps, cosine decay to a tenth).
    pub lr: f64,
    /// Seed of the initial weights and of every step's draws.
    pub seed: u64,
    /// Decay of the weights' moving average (with diffusers' warm-up `(1 + s) / (10 + s)`).
    pub ema_decay: f64,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// The UNet (channels and `sample_size` are the data's).
    pub unet: UNet2DConfig,
    /// The noise schedule: diffusers' `DDPMScheduler` keys.
    pub scheduler: serde_json::Value,
}

/// The UNet `train-base` builds for `[C, H, W]` images when given no config: up to three
/// levels (32, 64, 64 channels; the deeper two with attention), one resnet per block.
pub fn default_unet(shape: [i64; 3]) -> UNet2DConfig {
    let [c, h, w] = shape;
    let levels = (1..=3)
        .rev()
        .find(|l| {
            let f = 1i64 << (l - 1);
            h % f == 0 && w % f == 0 && h / f >= 2 && w / f >= 2
        })
        .unwrap_or(1);
    let channels = [32, 64, 64];
    let down = ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"];
    let up = ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"];
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    UNet2DConfig {
        sample_size: Some(if h == w {
            SampleSize::Square(h)
        } else {
            SampleSize::Rect([h, w])
        }),
        in_channels: c,
        out_channels: c,
        block_out_channels: channels[..levels].to_vec(),
        down_block_types: strings(&down[..levels]),
        up_block_types: strings(&up[3 - levels..]),
        layers_per_block: 1,
        attention_head_dim: Some(16),
        norm_num_groups: Some(8),
        downsample_padding: 1,
        ..UNet2DConfig::default()
    }
}

/// The default schedule: diffusers' `DDPMScheduler` defaults (linear betas 1e-4 to 0.02 over
/// 1000 steps, noise prediction, clipping of the predicted clean sample).
pub fn default_scheduler() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": null,
        "variance_type": "fixed_small",
        "clip_sample": true,
        "clip_sample_range": 1.0,
        "prediction_type": "epsilon",
        "thresholding": false,
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "rescale_betas_zero_snr": false
    })
}

/// A DDPM training run in progress.
#[derive(Debug)]
pub struct BaseTrainer {
    settings: BaseSettings,
    out: PathBuf,
    unet: UNet2DModel,
    names: Vec<String>,
    params: Vec<Tensor>,
    ema: Vec<Tensor>,
    adam: Adam,
    step: u64,
    images: Tensor,
    alpha_bar: Tensor,
    device: Device,
}

impl BaseTrainer {
    /// Checks the data and the configuration (before any training), builds fresh weights, and
    /// with `resume` restores the checkpoint in `out` (whose settings must match but for
    /// `steps`). Without `resume`, a folder that already holds a checkpoint is refused.
    pub fn new(
        settings: BaseSettings,
        out: &Path,
        resume: bool,
        device: Device,
    ) -> Result<Self, TrainError> {
        check_settings(&settings)?;
        let data = ImageData::load(&settings.data)?;
        let shape = data.shape();
        let mut unet_config = settings.unet.clone();
        fit_to_data(&mut unet_config, shape, &settings.data)?;
        let settings = BaseSettings {
            unet: unet_config,
            ..settings
        };
        sample_shape(&settings.unet, None).map_err(|e| TrainError::Config(e.to_string()))?;
        settings
            .unet
            .validate()
            .map_err(|e| TrainError::Config(format!("the UNet config: {e}")))?;
        let scheduler: SchedulerConfig = serde_json::from_value(settings.scheduler.clone())
            .map_err(|e| TrainError::Config(format!("the scheduler config: {e}")))?;
        if scheduler.prediction_type != "epsilon" {
            return Err(TrainError::Config(format!(
                "the scheduler config: `prediction_type` = {:?}; train-base trains \"epsilon\"",
                scheduler.prediction_type
            )));
        }
        let alpha_bar = scheduler
            .alphas_cumprod()
            .map_err(|e| TrainError::Config(e.to_string()))?;
        check_time_embedding(&settings.unet, alpha_bar.len())?;
        tch::manual_seed(step_seed(settings.seed, u64::MAX));
        let weights = Weights::initialising(Kind::Float, device);
        let unet = UNet2DModel::new(&weights.root(), &settings.unet)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let (names, params): (Vec<String>, Vec<Tensor>) = weights.tensors().into_iter().unzip();
        let ema = params.iter().map(|p| p.detach().copy()).collect();
        let adam = Adam::new(&params, settings.lr);
        let mut trainer = Self {
            out: out.to_path_buf(),
            unet,
            names,
            params,
            ema,
            adam,
            step: 0,
            images: (data.images * 2.0 - 1.0).to_device(device),
            alpha_bar: Tensor::from_slice(&alpha_bar)
                .to_kind(Kind::Float)
                .to_device(device),
            device,
            settings,
        };
        trainer.restore_or_refuse(resume)?;
        Ok(trainer)
    }

    /// The settings, with the UNet fitted to the data.
    pub fn settings(&self) -> &BaseSettings {
        &self.settings
    }

    /// Steps done.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Number of trained parameters (scalars).
    pub fn parameter_count(&self) -> i64 {
        self.params.iter().map(Tensor::numel).sum::<usize>() as i64
    }

    /// Trains to `settings.steps`, calling `on_step(step, loss)` after each step, with
    /// checkpoints every `checkpoint_every` steps and at the end; `stop()` true ends early
    /// after a checkpoint.
    pub fn run(
        &mut self,
        on_step: &mut dyn FnMut(u64, f64),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), TrainError> {
        while self.step < self.settings.steps {
            let loss = self.train_step();
            if !loss.is_finite() {
                return Err(TrainError::Config(format!(
                    "the loss is {loss} at step {}; lower the learning rate",
                    self.step
                )));
            }
            on_step(self.step, loss);
            if self
                .step
                .is_multiple_of(self.settings.checkpoint_every.max(1))
                || stop()
            {
                self.save()?;
            }
            if stop() {
                return Ok(());
            }
        }
        self.save()
    }

    /// One optimiser step; returns the loss.
    pub fn train_step(&mut self) -> f64 {
        let s = &self.settings;
        tch::manual_seed(step_seed(s.seed, self.step));
        let options = (Kind::Int64, self.device);
        let index = Tensor::randint(self.images.size()[0], [s.batch_size], options);
        let x0 = self.images.index_select(0, &index);
        let t = Tensor::randint(self.alpha_bar.size()[0], [s.batch_size], options);
        let noise = x0.randn_like();
        let ab = self.alpha_bar.index_select(0, &t).view([-1, 1, 1, 1]);
        let xt = ab.sqrt() * &x0 + (ab.neg() + 1.0).sqrt() * &noise;
        let prediction = self.unet.forward(&xt, &t.to_kind(Kind::Float));
        let loss = (prediction - noise).square().mean(Kind::Float);
        loss.backward();
        clip_grad_norm(&self.params, 1.0);
        self.adam.lr = learning_rate(s.lr, self.step, s.steps);
        self.adam.step(&mut self.params);
        let decay = s
            .ema_decay
            .min((1.0 + self.step as f64) / (10.0 + self.step as f64));
        tch::no_grad(|| {
            for (e, p) in self.ema.iter_mut().zip(&self.params) {
                let _ = e.g_mul_scalar_(decay).g_add_(&(p * (1.0 - decay)));
            }
        });
        self.step += 1;
        loss.double_value(&[])
    }

    /// Writes the diffusers folder and the checkpoint.
    pub fn save(&self) -> Result<(), TrainError> {
        std::fs::create_dir_all(self.out.join("checkpoint"))
            .map_err(|e| TrainError::io(&self.out, e))?;
        let named = |prefix: &str, tensors: &[Tensor]| -> Vec<(String, Tensor)> {
            self.names
                .iter()
                .zip(tensors)
                .map(|(n, t)| (format!("{prefix}{n}"), t.shallow_clone()))
                .collect()
        };
        write_safetensors(
            &self.out.join("diffusion_pytorch_model.safetensors"),
            &named("", &self.ema),
        )?;
        let mut config =
            serde_json::to_value(&self.settings.unet).map_err(|e| TrainError::io(&self.out, e))?;
        config["_class_name"] = "UNet2DModel".into();
        config["_diffusers_version"] = DIFFUSERS_VERSION.into();
        write_json(&self.out.join("config.json"), &config)?;
        write_json(
            &self.out.join("scheduler_config.json"),
            &self.settings.scheduler,
        )?;
        let mut state = named("param.", &self.params);
        state.extend(named("ema.", &self.ema));
        state.extend(named("adam_m.", &self.adam.m));
        state.extend(named("adam_v.", &self.adam.v));
        state.push(("step".into(), Tensor::from_slice(&[self.step as i64])));
        let dir = self.out.join("checkpoint");
        write_safetensors(&dir.join("state.safetensors"), &state)?;
        let settings = serde_json::to_value(&self.settings).map_err(|e| TrainError::io(&dir, e))?;
        write_json(&dir.join("settings.json"), &settings)
    }

    /// With `resume`, loads the checkpoint (if there is one); without, refuses a folder that
    /// holds one.
    fn restore_or_refuse(&mut self, resume: bool) -> Result<(), TrainError> {
        let dir = self.out.join("checkpoint");
        let state_path = dir.join("state.safetensors");
        if !state_path.is_file() {
            return Ok(());
        }
        if !resume {
            return Err(TrainError::Config(format!(
                "{} already holds a training checkpoint; pass --resume to continue it, or \
                 choose another output folder",
                self.out.display()
            )));
        }
        let saved: BaseSettings = std::fs::read_to_string(dir.join("settings.json"))
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
            .map_err(|e| TrainError::io(&dir.join("settings.json"), e))?;
        let differing = differing_settings(&saved, &self.settings);
        if !differing.is_empty() {
            return Err(TrainError::Config(format!(
                "cannot resume {}: these settings differ from the checkpoint's: {} (only the \
                 number of steps may change)",
                self.out.display(),
                differing.join(", ")
            )));
        }
        let tensors = crate::safetensors_file::read(&state_path)
            .map_err(|e| TrainError::io(&state_path, e))?;
        let find = |name: &str| -> Result<Tensor, TrainError> {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| TrainError::io(&state_path, format!("no tensor `{name}`")))
        };
        tch::no_grad(|| -> Result<(), TrainError> {
            for (i, name) in self.names.iter().enumerate() {
                self.params[i].copy_(&find(&format!("param.{name}"))?);
                self.ema[i].copy_(&find(&format!("ema.{name}"))?);
                self.adam.m[i].copy_(&find(&format!("adam_m.{name}"))?);
                self.adam.v[i].copy_(&find(&format!("adam_v.{name}"))?);
            }
            Ok(())
        })?;
        self.step = find("step")?.int64_value(&[0]) as u64;
        self.adam.steps = self.step as i64;
        Ok(())
    }
}

/// Linear warm-up over 100 steps, then a cosine decay from `peak` to `peak / 10` at `total`.
fn learning_rate(peak: f64, step: u64, total: u64) -> f64 {
    let warmup = 100.0;
    let s = step as f64;
    if s < warmup {
        return peak * (s + 1.0) / warmup;
    }
    let progress = ((s - warmup) / (total as f64 - warmup).max(1.0)).min(1.0);
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// The keys of two settings that differ, `steps` aside.
fn differing_settings(a: &BaseSettings, b: &BaseSettings) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["(unreadable)".to_string()];
    };
    a.iter()
        .filter(|(key, value)| key.as_str() != "steps" && b.get(*key) != Some(value))
        .map(|(key, _)| key.clone())
        .collect()
}

/// Settings that cannot train, named before the data is read.
fn check_settings(s: &BaseSettings) -> Result<(), TrainError> {
    if s.steps == 0 || s.batch_size <= 0 || s.checkpoint_every == 0 {
        return Err(TrainError::Config(
            "steps, batch size and checkpoint interval must be positive".to_string(),
        ));
    }
    if !(s.lr.is_finite() && s.lr > 0.0 && (0.0..1.0).contains(&s.ema_decay)) {
        return Err(TrainError::Config(format!(
            "learning rate {} must be positive and the EMA decay {} in [0, 1)",
            s.lr, s.ema_decay
        )));
    }
    Ok(())
}

/// Sets the UNet's channels and sample size to the data's `[C, H, W]`; a config that names
/// others is refused naming the key.
/// The time embeddings a DDPM trains: `positional`, or `learned` with a row for every step of
/// the schedule (`steps`). A `fourier` embedding takes the logarithm of a noise level, which
/// step 0 does not have.
fn check_time_embedding(config: &UNet2DConfig, steps: usize) -> Result<(), TrainError> {
    if config.time_embedding_type == "fourier" {
        return Err(TrainError::Config(
            "the UNet config: `time_embedding_type` = \"fourier\" is not trained here (it \
             embeds the logarithm of a noise level, and DDPM step 0 has none); use \
             \"positional\" or \"learned\""
                .into(),
        ));
    }
    check_learned_steps(config, steps)
        .map_err(|e| TrainError::Config(format!("the UNet config: {e}")))
}

fn fit_to_data(config: &mut UNet2DConfig, shape: [i64; 3], data: &Path) -> Result<(), TrainError> {
    let [c, h, w] = shape;
    let size = if h == w {
        SampleSize::Square(h)
    } else {
        SampleSize::Rect([h, w])
    };
    let conflict = |key: &str, value: String| {
        TrainError::Config(format!(
            "the UNet config sets `{key}` = {value}, but the images of {} are {c} x {h} x {w}",
            data.display()
        ))
    };
    match &config.sample_size {
        Some(s) if *s != size => return Err(conflict("sample_size", format!("{s:?}"))),
        _ => config.sample_size = Some(size),
    }
    for (key, value) in [
        ("in_channels", config.in_channels),
        ("out_channels", config.out_channels),
    ] {
        if value != c && value != UNet2DConfig::default().in_channels {
            return Err(conflict(key, value.to_string()));
        }
    }
    config.in_channels = c;
    config.out_channels = c;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_learning_rate_warms_up_then_decays_to_a_tenth() {
        assert!((learning_rate(1.0, 0, 1000) - 0.01).abs() < 1e-12);
        assert!((learning_rate(1.0, 100, 1000) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, 1000, 1000) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn default_unets_fit_the_image_size() {
        assert_eq!(default_unet([1, 8, 8]).block_out_channels, [32, 64, 64]);
        assert_eq!(default_unet([3, 6, 6]).block_out_channels, [32, 64]);
        let config = default_unet([1, 8, 8]);
        config.validate().unwrap();
        assert_eq!(config.up_block_types.len(), 3);
    }
}
