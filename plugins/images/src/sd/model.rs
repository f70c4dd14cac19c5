//! [`SdModel`], the `BaseModel` that `images/sd2` and `images/sd1.5` construct: latents drawn
//! with a prompt each, conditioning in `preprocess`, the guided noise prediction in `forward`
//! and VAE decoding in `postprocess`.

use std::path::PathBuf;

use abi_stable::std_types::{RString, RVec};
use flowgym_plugin_api::tch_interop::device_of;
use flowgym_plugin_api::{
    BaseModel, Batch, ConstructContext, KwargValue, Kwargs, ManagedTensor, OutputType, PluginError,
    PluginResult, ScheduleSpec,
};
use tch::{Device, Kind, Tensor};

use crate::fetch::HubSettings;
use crate::precision::Precision;

use super::args::{check_size, resolve_prompts};
use super::memory_modes;
use super::{SdArgs, SdError, SdFiles, SdPipeline, SdVersion, DATA_TYPE, PUBLISHED_VAE_FACTOR};

/// A Stable Diffusion base model: the pipeline and the run's prompts and guidance settings.
#[derive(Debug)]
pub struct SdModel {
    id: &'static str,
    pipeline: SdPipeline,
    prompts: Vec<String>,
    negative_prompt: String,
    cfg_scale: f64,
    latent_shape: [i64; 3],
    decode_chunk: i64,
    unet_calls: usize,
    unet_rows: usize,
}

impl SdModel {
    /// Constructs the entry `version`: checks the arguments, finds the files and loads them
    /// onto the host's device.
    pub fn new(version: SdVersion, args: SdArgs, ctx: &ConstructContext) -> PluginResult<Self> {
        let device = device_of(ctx.device)?;
        check_size(&args, PUBLISHED_VAE_FACTOR)?;
        resolve_prompts(&args)?;
        let weight_dirs: Vec<PathBuf> = ctx.weight_dirs.iter().map(|d| d.as_str().into()).collect();
        let files = SdFiles::locate(version, &args, &weight_dirs, &HubSettings::from_env())
            .map_err(SdError::from)?;
        Ok(Self::load(version, args, &files, device)?)
    }

    /// Loads the model of `files` onto `device` with the settings of `args`.
    pub fn load(
        version: SdVersion,
        args: SdArgs,
        files: &SdFiles,
        device: Device,
    ) -> Result<Self, SdError> {
        let prompts = resolve_prompts(&args)?;
        let precision = Precision::resolve(&args.dtype, device)?;
        precision.check_device(version.id(), device)?;
        let mut pipeline = SdPipeline::load(version.id(), files, precision, device)?;
        memory_modes::apply(&mut pipeline, &args)?;
        let factor = pipeline.vae_scale_factor();
        check_size(&args, factor as usize)?;
        Ok(Self {
            id: version.id(),
            latent_shape: [
                pipeline.latent_channels(),
                args.height as i64 / factor,
                args.width as i64 / factor,
            ],
            pipeline,
            prompts,
            negative_prompt: args.negative_prompt,
            cfg_scale: args.cfg_scale,
            decode_chunk: args.decode_chunk as i64,
            unet_calls: 0,
            unet_rows: 0,
        })
    }

    /// The entry id (`images/sd2` or `images/sd1.5`).
    pub fn id(&self) -> &'static str {
        self.id
    }

    /// The loaded components.
    pub fn pipeline(&self) -> &SdPipeline {
        &self.pipeline
    }

    /// The prompts samples are given, in order.
    pub fn prompts(&self) -> &[String] {
        &self.prompts
    }

    /// Whether `forward` applies classifier-free guidance (an unconditional pass): `cfg_scale`
    /// neither 0 (off) nor 1 (the guided prediction is the conditional one).
    pub fn guided(&self) -> bool {
        self.cfg_scale != 0.0 && self.cfg_scale != 1.0
    }

    /// `[channels, height / 8, width / 8]` of the latents.
    pub fn latent_shape(&self) -> [i64; 3] {
        self.latent_shape
    }

    /// UNet calls made by `forward` so far, and the latents (batch rows) they evaluated.
    pub fn unet_evaluations(&self) -> (usize, usize) {
        (self.unet_calls, self.unet_rows)
    }

    /// Checks that `x` is `[n, channels, h, w]` latents and returns `n`.
    fn check_latents(&self, x: &Tensor) -> PluginResult<i64> {
        let size = x.size();
        let channels = self.latent_shape[0];
        if size.len() != 4 || size[1] != channels {
            return Err(PluginError::new(format!(
                "leaf `x` has shape {size:?}; expected latents [n, {channels}, h, w] ({channels} \
                 x {} x {} for the configured size)",
                self.latent_shape[1], self.latent_shape[2]
            )));
        }
        Ok(size[0])
    }

    /// The embeddings keyword `name`, `[n, 77, D]`, or `None` when absent.
    fn embeddings(&self, kwargs: &mut Kwargs, name: &str, n: i64) -> PluginResult<Option<Tensor>> {
        if kwargs.get(name).is_none() {
            return Ok(None);
        }
        let tensor = kwargs.take_tensor(name)?.into_tch()?;
        let size = tensor.size();
        let width = self.pipeline.text_encoder().config().hidden_size;
        if size.len() != 3 || size[0] != n || size[2] != width {
            return Err(PluginError::new(format!(
                "keyword `{name}` has shape {size:?}; expected [{n}, tokens, {width}] (from \
                 preprocess)"
            )));
        }
        Ok(Some(
            tensor
                .to_device(self.pipeline.device())
                .to_kind(Kind::Float),
        ))
    }

    /// The per-sample prompts of `kwargs` (keyword `prompt`), which must number `n`.
    fn sample_prompts(kwargs: &Kwargs, n: i64) -> PluginResult<Vec<String>> {
        let prompts = kwargs.strings("prompt")?;
        if prompts.len() as i64 != n {
            return Err(PluginError::new(format!(
                "keyword `prompt` has {} prompts for {n} samples",
                prompts.len()
            )));
        }
        Ok(prompts)
    }

    /// The negative-prompt conditioning repeated for `n` samples.
    fn negative_embeddings(&self, n: i64) -> Result<Tensor, SdError> {
        let negative = self
            .pipeline
            .encode_prompts(std::slice::from_ref(&self.negative_prompt))?;
        Ok(negative.expand([n, -1, -1], false).contiguous())
    }
}

impl BaseModel for SdModel {
    fn output_type(&self) -> OutputType {
        OutputType::Epsilon
    }

    fn schedule(&self) -> ScheduleSpec {
        ScheduleSpec::DiscreteDiffusion {
            alpha_bar: RVec::from(self.pipeline.alpha_bar().to_vec()),
        }
    }

    fn sample_p0(&mut self, n: usize, _seed: u64) -> PluginResult<(Batch, Kwargs)> {
        let [c, h, w] = self.latent_shape;
        let x = Tensor::randn([n as i64, c, h, w], (Kind::Float, self.pipeline.device()));
        let len = self.prompts.len();
        let offset = Tensor::randint(len as i64, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
        let prompts: RVec<RString> = (0..n)
            .map(|i| RString::from(self.prompts[(offset as usize + i) % len].as_str()))
            .collect();
        let mut kwargs = Kwargs::new();
        kwargs.insert("prompt", KwargValue::Strings(prompts));
        Ok((Batch::from_tch(DATA_TYPE, [("x", &x)])?, kwargs))
    }

    fn preprocess(&mut self, x: Batch, mut kwargs: Kwargs) -> PluginResult<Kwargs> {
        let n = x
            .require("x")?
            .shape()
            .first()
            .copied()
            .ok_or_else(|| PluginError::new("leaf `x` has no batch dimension"))?;
        let prompts = Self::sample_prompts(&kwargs, n)?;
        let cond = self.pipeline.encode_prompts(&prompts)?;
        kwargs.insert(
            "text_embeddings",
            KwargValue::Tensor(ManagedTensor::from_tch(&cond)?),
        );
        if self.guided() {
            let uncond = self.negative_embeddings(n)?;
            kwargs.insert(
                "negative_embeddings",
                KwargValue::Tensor(ManagedTensor::from_tch(&uncond)?),
            );
        } else {
            kwargs.remove("negative_embeddings");
        }
        Ok(kwargs)
    }

    fn forward(
        &mut self,
        mut x: Batch,
        t: ManagedTensor,
        mut kwargs: Kwargs,
    ) -> PluginResult<Batch> {
        let device = self.pipeline.device();
        let xs = x.take_tch("x")?.to_device(device).to_kind(Kind::Float);
        let n = self.check_latents(&xs)?;
        let k = t.into_tch()?.to_device(device).to_kind(Kind::Float);
        let numel = k.numel() as i64;
        if numel != n && numel != 1 {
            return Err(PluginError::new(format!(
                "{numel} times for {n} samples; expected one per sample"
            )));
        }
        let k = k.reshape([-1]).expand([n], false).contiguous();
        // Embeddings from preprocess; encoded here when it was not called.
        let cond = match self.embeddings(&mut kwargs, "text_embeddings", n)? {
            Some(cond) => cond,
            None => self
                .pipeline
                .encode_prompts(&Self::sample_prompts(&kwargs, n)?)?,
        };
        let eps = if self.guided() {
            let uncond = match self.embeddings(&mut kwargs, "negative_embeddings", n)? {
                Some(uncond) => uncond,
                None => self.negative_embeddings(n)?,
            };
            self.unet_rows += 2 * n as usize;
            self.pipeline
                .predict_guided(&xs, &k, &cond, &uncond, self.cfg_scale)
        } else {
            self.unet_rows += n as usize;
            self.pipeline.predict(&xs, &k, &cond)
        };
        self.unet_calls += 1;
        self.pipeline
            .precision()
            .check_finite(self.id, "the UNet output", &eps)?;
        Batch::from_tch(DATA_TYPE, [("x", &eps)])
    }

    fn postprocess(&mut self, mut x: Batch, _kwargs: Kwargs) -> PluginResult<Option<Batch>> {
        let xs = x
            .take_tch("x")?
            .to_device(self.pipeline.device())
            .to_kind(Kind::Float);
        self.check_latents(&xs)?;
        let images = self.pipeline.decode(&xs, self.decode_chunk);
        self.pipeline
            .vae_precision()
            .check_finite(self.id, "the VAE decoding", &images)?;
        Ok(Some(Batch::from_tch(DATA_TYPE, [("x", &images)])?))
    }
}
