//! The loaded components of a Stable Diffusion pipeline and what `StableDiffusionPipeline`
//! computes with them: prompt encoding, the UNet's (guided) noise prediction, VAE decoding.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::hub::{read_config, LoadError};
use crate::models::clip::{ClipError, ClipTextModel};
use crate::models::clip_tokenizer::ClipTokenizer;
use crate::models::resnet::ConfigError;
use crate::models::scheduler::SchedulerConfig;
use crate::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::precision::Precision;
use crate::weights::Weights;

use super::{SdError, SdFiles, CHANNELS};

/// The loaded components of a Stable Diffusion pipeline.
#[derive(Debug)]
pub struct SdPipeline {
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: ClipTextModel,
    tokenizer: ClipTokenizer,
    alpha_bar: Vec<f64>,
    device: Device,
    precision: Precision,
    vae_precision: Precision,
}

impl SdPipeline {
    /// Loads every component of `files` onto `device` for entry `id`, checking that the
    /// weights fit exactly and that the components fit each other. UNet and text encoder
    /// compute in `precision`; so does the VAE, except in float16 when its config sets
    /// `force_upcast` (the published SD 1.5 and 2 VAEs do, by default): it then stays in
    /// float32, as diffusers' SDXL pipelines upcast it (`needs_upcasting = vae.dtype ==
    /// float16 and vae.config.force_upcast`) because float16 decoding can overflow.
    /// (`StableDiffusionPipeline` itself decodes in the pipeline's dtype.)
    pub fn load(
        id: &'static str,
        files: &SdFiles,
        precision: Precision,
        device: Device,
    ) -> Result<Self, SdError> {
        let scheduler =
            SchedulerConfig::from_file(&files.scheduler).map_err(LoadError::ScheduleSpec)?;
        if scheduler.prediction_type != "epsilon" {
            let hint = if scheduler.prediction_type == "v_prediction" {
                "This config predicts the velocity v (as stabilityai/stable-diffusion-2 and \
                 stable-diffusion-2-1 at 768 px do), which needs a velocity output type, not the \
                 epsilon this entry declares; use stable-diffusion-2-base (the default repositories)."
            } else {
                "Supported: \"epsilon\"."
            };
            return Err(SdError::PredictionType {
                path: files.scheduler.clone(),
                value: scheduler.prediction_type,
                id,
                hint,
            });
        }
        let alpha_bar = scheduler
            .alphas_cumprod()
            .map_err(LoadError::ScheduleSpec)?;

        let unet_config: UNet2DConditionConfig = read_config(&files.unet.config)?;
        let vae_config: AutoencoderKLConfig = read_config(&files.vae.config)?;
        let text_config_path = files.text_encoder.join("config.json");
        refuse_attention_mask(&text_config_path)?;
        let tokenizer = ClipTokenizer::from_dir(&files.tokenizer)?;

        let architecture = |path: &Path| {
            let path = path.to_path_buf();
            move |source: ConfigError| LoadError::Architecture { path, source }
        };
        let mut mismatches = Vec::new();
        let vae_precision = match precision {
            Precision::Float16 if vae_config.force_upcast => Precision::Float32,
            other => other,
        };
        let weights = Weights::from_files(&files.unet.weights, precision.kind(), device)
            .map_err(LoadError::from)?;
        let unet = UNet2DConditionModel::new(&weights.root(), &unet_config)
            .map_err(architecture(&files.unet.config))?;
        mismatches.extend(weights.finish().err());
        let weights = Weights::from_files(&files.vae.weights, vae_precision.kind(), device)
            .map_err(LoadError::from)?;
        let vae = AutoencoderKL::new(&weights.root(), &vae_config)
            .map_err(architecture(&files.vae.config))?;
        mismatches.extend(weights.finish().err());
        // `ClipTextModel::load` ignores the `position_ids` buffer of the published exports.
        let text_encoder =
            match ClipTextModel::load_as(&files.text_encoder, precision.kind(), device) {
                Ok(model) => Some(model),
                Err(ClipError::Weights(e)) => {
                    mismatches.push(e);
                    None
                }
                Err(e) => return Err(e.into()),
            };
        let text_encoder = match text_encoder {
            Some(model) if mismatches.is_empty() => model,
            _ => return Err(SdError::Weights(mismatches)),
        };

        let pipeline = Self {
            unet,
            vae,
            text_encoder,
            tokenizer,
            alpha_bar,
            device,
            precision,
            vae_precision,
        };
        pipeline.check_fit(files)?;
        Ok(pipeline)
    }

    /// Checks that the components fit each other.
    fn check_fit(&self, files: &SdFiles) -> Result<(), SdError> {
        let unet = self.unet.config();
        let vae = self.vae.config();
        let text = self.text_encoder.config();
        let levels = unet.block_out_channels.len();
        let cross = unet
            .cross_attention_dim
            .per_level("cross_attention_dim", levels)
            .map_err(|source| LoadError::Architecture {
                path: files.unet.config.clone(),
                source,
            })?;
        if let Some(dim) = cross.iter().find(|d| **d != text.hidden_size) {
            return Err(SdError::Incompatible(format!(
                "the UNet ({}) attends to text features of width {dim} (`cross_attention_dim`), \
                 but the text encoder ({}) produces {} (`hidden_size`)",
                files.unet.config.display(),
                files.text_encoder.display(),
                text.hidden_size
            )));
        }
        if unet.in_channels != vae.latent_channels || unet.out_channels != vae.latent_channels {
            return Err(SdError::Incompatible(format!(
                "the UNet ({}) maps {} to {} channels, but the VAE ({}) has {} latent channels",
                files.unet.config.display(),
                unet.in_channels,
                unet.out_channels,
                files.vae.config.display(),
                vae.latent_channels
            )));
        }
        if vae.out_channels != CHANNELS {
            return Err(SdError::Incompatible(format!(
                "the VAE ({}) decodes to {} channels; RGB images need {CHANNELS}",
                files.vae.config.display(),
                vae.out_channels
            )));
        }
        let length = self.tokenizer.max_length() as i64;
        if length > text.max_position_embeddings {
            return Err(SdError::Incompatible(format!(
                "the tokenizer ({}) pads to {length} tokens, but the text encoder ({}) takes at \
                 most {} (`max_position_embeddings`)",
                files.tokenizer.display(),
                files.text_encoder.display(),
                text.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// The UNet.
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }

    /// The VAE.
    pub fn vae(&self) -> &AutoencoderKL {
        &self.vae
    }

    /// The UNet, to change how it computes (see [`super::memory_modes`]).
    pub fn unet_mut(&mut self) -> &mut UNet2DConditionModel {
        &mut self.unet
    }

    /// The VAE, to change how it decodes (see [`super::memory_modes`]).
    pub fn vae_mut(&mut self) -> &mut AutoencoderKL {
        &mut self.vae
    }

    /// The CLIP text encoder.
    pub fn text_encoder(&self) -> &ClipTextModel {
        &self.text_encoder
    }

    /// The CLIP tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// `alpha_bar[k]`, `k = 0..=K`, index 0 the cleanest (diffusers' `alphas_cumprod`).
    pub fn alpha_bar(&self) -> &[f64] {
        &self.alpha_bar
    }

    /// The precision UNet and text encoder compute in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The precision the VAE computes in (float32 under float16 when `force_upcast`).
    pub fn vae_precision(&self) -> Precision {
        self.vae_precision
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Pixels per latent pixel: `2^(levels - 1)` of the VAE (8 for Stable Diffusion), as
    /// diffusers' `vae_scale_factor`.
    pub fn vae_scale_factor(&self) -> i64 {
        1 << (self.vae.config().block_out_channels.len() - 1)
    }

    /// Channels of the latents.
    pub fn latent_channels(&self) -> i64 {
        self.vae.config().latent_channels
    }

    /// The token ids of `prompts` `[n, 77]`, as the pipeline tokenizes them.
    pub fn tokenize<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Tensor, SdError> {
        Ok(self.tokenizer.encode_batch(prompts, self.device)?)
    }

    /// The conditioning `[n, 77, D]` (float32) of `prompts`: the text encoder's
    /// `last_hidden_state`, as `StableDiffusionPipeline.encode_prompt` computes it, in the
    /// pipeline's precision, then cast to float32 to cross the plugin boundary (the UNet casts
    /// it back, exactly). Each distinct prompt is encoded once.
    pub fn encode_prompts<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Tensor, SdError> {
        let mut unique: Vec<&str> = Vec::new();
        let mut index: Vec<i64> = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let prompt = prompt.as_ref();
            let at = match unique.iter().position(|u| *u == prompt) {
                Some(at) => at,
                None => {
                    unique.push(prompt);
                    unique.len() - 1
                }
            };
            index.push(at as i64);
        }
        let ids = self.tokenize(&unique)?;
        let hidden = tch::no_grad(|| self.text_encoder.forward(&ids))?.to_kind(Kind::Float);
        let index = Tensor::from_slice(&index).to_device(self.device);
        Ok(hidden.index_select(0, &index))
    }

    /// The UNet's noise prediction (float32) for latents `x` `[n, c, h, w]` at steps `k`
    /// `[n]` given the conditioning `context` `[n, 77, D]`. Latents and conditioning are cast
    /// to the pipeline's precision, the timestep embedding is computed in float32 and then
    /// cast (as diffusers' `UNet2DConditionModel` does), and the output is cast to float32.
    pub fn predict(&self, x: &Tensor, k: &Tensor, context: &Tensor) -> Tensor {
        let kind = self.precision.kind();
        tch::no_grad(|| {
            self.unet
                .forward(&x.to_kind(kind), k, &context.to_kind(kind))
                .to_kind(Kind::Float)
        })
    }

    /// Classifier-free guidance as `StableDiffusionPipeline` computes it: one UNet call on
    /// `[x; x]` with `[uncond; cond]` (as [`SdPipeline::predict`]), then
    /// `eps_u + scale * (eps_c - eps_u)` in float32.
    pub fn predict_guided(
        &self,
        x: &Tensor,
        k: &Tensor,
        cond: &Tensor,
        uncond: &Tensor,
        scale: f64,
    ) -> Tensor {
        tch::no_grad(|| {
            let x2 = Tensor::cat(&[x, x], 0);
            let k2 = Tensor::cat(&[k, k], 0);
            let context = Tensor::cat(&[uncond, cond], 0);
            let eps = self.predict(&x2, &k2, &context);
            let parts = eps.chunk(2, 0);
            &parts[0] + (&parts[1] - &parts[0]) * scale
        })
    }

    /// Images `[n, 3, h f, w f]` in `[0, 1]` of latents `[n, c, h, w]`: `vae.decode(latents /
    /// scaling_factor)` mapped by `(x / 2 + 0.5).clamp(0, 1)`, `chunk` latents at a time; the
    /// VAE computes in its precision ([`SdPipeline::vae_precision`]), the mapping in float32.
    pub fn decode(&self, latents: &Tensor, chunk: i64) -> Tensor {
        tch::no_grad(|| {
            let size = latents.size();
            let f = self.vae_scale_factor();
            if size[0] == 0 {
                return Tensor::zeros(
                    [0, CHANNELS, size[2] * f, size[3] * f],
                    (Kind::Float, latents.device()),
                );
            }
            let images: Vec<Tensor> = latents
                .split(chunk.max(1), 0)
                .iter()
                .map(|part| {
                    let decoded = self
                        .vae
                        .decode_latents(&part.to_kind(self.vae_precision.kind()))
                        .to_kind(Kind::Float);
                    (decoded / 2.0 + 0.5).clamp(0.0, 1.0)
                })
                .collect();
            Tensor::cat(&images, 0)
        })
    }
}

/// Refuses a text-encoder config that asks for an attention mask over the padding
/// (`use_attention_mask`), which the SD pipelines then pass and this implementation does not.
fn refuse_attention_mask(path: &Path) -> Result<(), SdError> {
    let config: serde_json::Value = read_config(path)?;
    if config.get("use_attention_mask") == Some(&serde_json::Value::Bool(true)) {
        return Err(SdError::Incompatible(format!(
            "{}: `use_attention_mask` = true is not supported (the published Stable Diffusion \
             text encoders attend over the padding, without a mask)",
            path.display()
        )));
    }
    Ok(())
}
