//! `images/ddpm`: any unconditional diffusers `UNet2DModel` with its discrete noise schedule
//! (the DDPM checkpoints of Ho et al. and every folder `DDPMPipeline` or `DDIMPipeline` loads:
//! any channel count, sample size, block types, time embedding and attention settings
//! diffusers' `UNet2DModel` runs unconditionally; see [`UNet2DConfig::validate`]).
//!
//! The weights come from the folder the `weights` argument names (flat, with `config.json`,
//! `diffusion_pytorch_model.safetensors` and `scheduler_config.json`, or a pipeline layout with
//! `unet/` and `scheduler/`), or else from the repositories of `repo_id` in the host's weight
//! directories and the Hugging Face cache, or else they are fetched from the hub.
//!
//! Samples evolve in `[-1, 1]` pixel space (`x` `[n, C, H, W]`); `postprocess` maps them to
//! `[0, 1]`. The model receives the discrete step `k` (0 the cleanest), as the host's
//! `DiscreteDiffusion` scheduler defines it, and always answers with the noise: a UNet trained
//! to predict the clean sample (`prediction_type` `sample`) or `v` (`v_prediction`) is
//! converted. With `clip_sample` (diffusers' default for DDPM and DDIM configs), the clean
//! sample implied by the prediction is clipped to `[-clip_sample_range, clip_sample_range]`
//! and the noise recomputed from it, as diffusers' schedulers do at every step.

use std::path::{Path, PathBuf};

use abi_stable::std_types::RVec;
use flowgym_plugin_api::tch_interop::device_of;
use flowgym_plugin_api::{
    arguments, register_base_model, BaseModel, Batch, ConstructContext, DType, Dim, Kwargs,
    LeafSpec, ManagedTensor, OutputType, PluginError, PluginResult, ScheduleSpec,
};
use tch::{Device, Kind, Tensor};

use crate::fetch::HubSettings;
use crate::hub::{
    find_component, find_file, read_config, ComponentFiles, LoadError, NotFound, Search,
};
use crate::models::resnet::ConfigError;
use crate::models::scheduler::{SchedulerConfig, SchedulerError};
use crate::models::unet_2d::{SampleSize, UNet2DConfig, UNet2DModel};
use crate::precision::{Precision, PrecisionError};
use crate::sources::{download_hint, find_or_fetch, in_folder, parse_repos, select_ddpm, Lookup};
use crate::weights::{Weights, WeightsError};

/// The data type of the samples.
const DATA_TYPE: &str = "images";

/// The scheduler classes whose configs define a discrete variance-preserving schedule from
/// betas (`alphas_cumprod`), the one the host samples.
pub const SCHEDULERS: &[&str] = &[
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "UniPCMultistepScheduler",
];

arguments! {
    /// Arguments of `images/ddpm`.
    pub struct DdpmArgs {
        /// A diffusers folder holding the model (config.json, diffusion_pytorch_model.safetensors or .bin, and scheduler_config.json, or unet/ and scheduler/ subfolders); empty: look for `repo_id` in the host's weight directories and the Hugging Face cache, else fetch it from the hub.
        weights: String = String::new();
        /// Hugging Face repositories of unconditional DDPM pipelines (google/ddpm-celebahq-256, google/ddpm-church-256, ...), comma-separated, in order; used when `weights` is empty.
        repo_id: String = String::new();
        /// Clip the predicted clean sample as diffusers' schedulers do: `config` follows the scheduler config's `clip_sample`, `true` and `false` override it.
        clip_sample: String = "config".to_string() => one_of("config", "true", "false");
        /// The precision the UNet computes in (weights converted once at load; samples still cross as float32): `auto` is float32 on the CPU and float16 on CUDA; `bfloat16` keeps float32's range (on CPUs with bfloat16 instructions it is also faster).
        dtype: String = "auto".to_string() => one_of("auto", "float32", "float16", "bfloat16");
    }
}

/// Where an entry's files may be.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// The entry, for messages (`` `images/cifar` ``).
    pub entry: &'a str,
    /// A folder the user named, or empty.
    pub weights: &'a str,
    /// Comma-separated repositories.
    pub repo_id: &'a str,
    /// Their files the entry reads, as `hf download --include` patterns.
    pub include: &'a [&'a str],
    /// Their size, for the hint.
    pub size: &'a str,
}

/// The files of a DDPM checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdpmFiles {
    /// The UNet's config and weights.
    pub unet: ComponentFiles,
    /// `scheduler_config.json`.
    pub scheduler: PathBuf,
}

/// The files of a DDPM repository the entries read.
pub const DDPM_INCLUDE: &[&str] = &[
    "config.json",
    "diffusion_pytorch_model.safetensors",
    "scheduler_config.json",
];

impl DdpmFiles {
    /// Finds the files of `source`: in its folder when one is named, else in `weight_dirs` and
    /// the hub's caches for each of its repositories, else fetched from the hub (unless `hub`
    /// is offline). The error lists every place looked at, every failed fetch and how to get
    /// the files.
    pub fn locate(
        source: &Source<'_>,
        weight_dirs: &[PathBuf],
        hub: &HubSettings,
    ) -> Result<Self, NotFound> {
        let repos = parse_repos(source.repo_id);
        let what = if repos.is_empty() {
            format!("`{}`", source.entry)
        } else {
            format!("`{}` ({})", source.entry, repos.join(", "))
        };
        let manual = "Or pass the argument {\"weights\": \"/path/to/folder\"} naming a \
                      diffusers folder with config.json, diffusion_pytorch_model.safetensors \
                      (or .bin) and scheduler_config.json (or unet/ and scheduler/ subfolders).";
        let hint = if repos.is_empty() {
            format!(
                "Name a folder with the argument `weights`, or Hugging Face repositories with \
                 `repo_id`. {manual}"
            )
        } else {
            download_hint(&repos, source.include, source.size, manual)
        };
        if !source.weights.is_empty() {
            return in_folder(what, Path::new(source.weights), hint, &Self::in_root);
        }
        let lookup = Lookup {
            what,
            repos,
            weight_dirs,
            settings: hub,
            hint,
        };
        find_or_fetch(&lookup, &select_ddpm, &Self::in_root)
    }

    /// The checkpoint in `root` (flat, or `unet/` and `scheduler/`), if complete; what is
    /// missing goes to `search`.
    pub fn in_root(root: &Path, search: &mut Search) -> Option<Self> {
        let unet = find_component(root, "unet", search);
        let scheduler = find_file(root, "scheduler", "scheduler_config.json", search);
        Some(Self {
            unet: unet?,
            scheduler: scheduler?,
        })
    }
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise.
    Epsilon,
    /// The clean sample.
    Sample,
    /// `v = alpha eps - beta x0`.
    V,
}

/// Choices made when loading, beyond the files.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The sample shape `[C, H, W]` a preset serves; other configs are refused.
    pub expect: Option<[i64; 3]>,
    /// `Some` overrides the scheduler config's `clip_sample`.
    pub clip_sample: Option<bool>,
    /// The precision the UNet computes in (float32 by default).
    pub precision: Precision,
}

impl LoadOptions {
    /// The options of an entry's `clip_sample` argument (`config`, `true` or `false`).
    pub fn with_clip_argument(mut self, value: &str) -> Self {
        self.clip_sample = match value {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        self
    }

    /// The options of an entry's `dtype` argument on `device`: checks that libtorch runs the
    /// precision there, naming `entry` when it does not.
    pub fn with_dtype_argument(
        mut self,
        entry: &str,
        value: &str,
        device: Device,
    ) -> Result<Self, PrecisionError> {
        let precision = Precision::resolve(value, device)?;
        precision.check_device(entry, device)?;
        self.precision = precision;
        Ok(self)
    }
}

/// The DDPM base model: a [`UNet2DModel`] and its noise schedule.
#[derive(Debug)]
pub struct DdpmModel {
    unet: UNet2DModel,
    alpha_bar: Vec<f64>,
    alpha_bar_tensor: Tensor,
    prediction: Prediction,
    clip: Option<f64>,
    shape: [i64; 3],
    device: Device,
    precision: Precision,
    entry: String,
}

impl DdpmModel {
    /// Constructs `images/ddpm`: finds the files and loads them onto the host's device.
    pub fn new(args: DdpmArgs, ctx: &ConstructContext) -> PluginResult<Self> {
        let source = Source {
            entry: "images/ddpm",
            weights: &args.weights,
            repo_id: &args.repo_id,
            include: DDPM_INCLUDE,
            size: "the size of the repository's UNet weights",
        };
        let options = LoadOptions::default()
            .with_clip_argument(&args.clip_sample)
            .with_dtype_argument(source.entry, &args.dtype, device_of(ctx.device)?)?;
        Self::construct(&source, options, ctx)
    }

    /// Finds the files of `source` for an entry and loads them with `options`.
    pub fn construct(
        source: &Source<'_>,
        options: LoadOptions,
        ctx: &ConstructContext,
    ) -> PluginResult<Self> {
        let device = device_of(ctx.device)?;
        let weight_dirs: Vec<PathBuf> = ctx.weight_dirs.iter().map(|d| d.as_str().into()).collect();
        let files = DdpmFiles::locate(source, &weight_dirs, &HubSettings::from_env())
            .map_err(|e| PluginError::new(e.to_string()))?;
        let mut model =
            Self::load(&files, &options, device).map_err(|e| PluginError::new(e.to_string()))?;
        model.entry = source.entry.to_string();
        Ok(model)
    }

    /// Loads the model from `files` onto `device`; every tensor of the weights must be used
    /// and every parameter found, with its shape.
    pub fn load(
        files: &DdpmFiles,
        options: &LoadOptions,
        device: Device,
    ) -> Result<Self, LoadError> {
        let scheduler = SchedulerConfig::from_file(&files.scheduler)?;
        let config: UNet2DConfig = read_config(&files.unet.config)?;
        Self::from_parts(
            &config,
            &scheduler,
            &files.unet.config,
            options,
            device,
            || Weights::from_files(&files.unet.weights, options.precision.kind(), device),
        )
    }

    /// Builds the model from its configs (`config_path` names the UNet's in messages) and the
    /// weights `weights` reads (in `options.precision`), once the configs are known to be
    /// usable.
    pub fn from_parts(
        config: &UNet2DConfig,
        scheduler: &SchedulerConfig,
        config_path: &Path,
        options: &LoadOptions,
        device: Device,
        weights: impl FnOnce() -> Result<Weights, WeightsError>,
    ) -> Result<Self, LoadError> {
        let (prediction, clip) = check_scheduler(scheduler, options.clip_sample)?;
        let alpha_bar = scheduler.alphas_cumprod()?;
        let architecture = |source| LoadError::Architecture {
            path: config_path.to_path_buf(),
            source,
        };
        let shape = sample_shape(config, options.expect).map_err(architecture)?;
        config.validate().map_err(architecture)?;
        check_learned_steps(config, alpha_bar.len()).map_err(architecture)?;
        let weights = weights()?;
        let unet = UNet2DModel::new(&weights.root(), config).map_err(architecture)?;
        weights.finish()?;
        Ok(Self {
            unet,
            alpha_bar_tensor: Tensor::from_slice(&alpha_bar).to_device(device),
            alpha_bar,
            prediction,
            clip,
            shape,
            device,
            precision: options.precision,
            entry: "images/ddpm".to_string(),
        })
    }

    /// The precision the UNet computes in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The entry named in messages (`images/ddpm` unless constructed for a preset).
    pub fn with_entry(mut self, entry: &str) -> Self {
        self.entry = entry.to_string();
        self
    }

    /// The UNet.
    pub fn unet(&self) -> &UNet2DModel {
        &self.unet
    }

    /// `alpha_bar[k]`, `k = 0..=K`, index 0 the cleanest (diffusers' `alphas_cumprod`).
    pub fn alpha_bar(&self) -> &[f64] {
        &self.alpha_bar
    }

    /// The sample shape `[C, H, W]`.
    pub fn shape(&self) -> [i64; 3] {
        self.shape
    }

    /// The bound the predicted clean sample is clipped to, if it is.
    pub fn clip(&self) -> Option<f64> {
        self.clip
    }

    /// The noise prediction (float32) for `x` `[n, C, H, W]` at steps `k` (`[n]` or one
    /// value): the UNet's output converted to noise, consistent with the clipped clean sample
    /// when clipping is on. The UNet computes in the model's precision (`x` cast to it; the
    /// timestep embedding in float32, then cast, as diffusers' `UNet2DModel` does); its output
    /// is cast back to float32 for the conversion, and in half precision a non-finite output is
    /// an error that names the precision.
    pub fn predict(&self, x: &Tensor, k: &Tensor) -> PluginResult<Tensor> {
        let size = x.size();
        if size.len() != 4 || size[1..] != self.shape {
            return Err(PluginError::new(format!(
                "leaf `x` has shape {size:?}; expected [n, {}, {}, {}]",
                self.shape[0], self.shape[1], self.shape[2]
            )));
        }
        let numel = k.numel() as i64;
        if numel != size[0] && numel != 1 {
            return Err(PluginError::new(format!(
                "{numel} times for {} samples; expected one per sample",
                size[0]
            )));
        }
        let x = x.to_device(self.device).to_kind(Kind::Float);
        let k = k.to_device(self.device).to_kind(Kind::Float);
        let out = tch::no_grad(|| self.unet.forward(&x.to_kind(self.precision.kind()), &k));
        self.precision
            .check_finite(&self.entry, "the UNet output", &out)?;
        let out = out.to_kind(Kind::Float);
        Ok(tch::no_grad(|| {
            if self.prediction == Prediction::Epsilon && self.clip.is_none() {
                return out;
            }
            let last = self.alpha_bar.len() as f64 - 1.0;
            let index = k
                .round()
                .clamp(0.0, last)
                .to_kind(Kind::Int64)
                .reshape([-1])
                .expand([size[0]], false);
            let ab = self.alpha_bar_tensor.index_select(0, &index);
            let alpha = ab.sqrt().to_kind(Kind::Float).view([-1, 1, 1, 1]);
            let beta = (ab.neg() + 1.0)
                .sqrt()
                .to_kind(Kind::Float)
                .view([-1, 1, 1, 1]);
            let x0 = match self.prediction {
                Prediction::Epsilon => (&x - &beta * &out) / &alpha,
                Prediction::Sample => out,
                Prediction::V => &alpha * &x - &beta * &out,
            };
            let x0 = match self.clip {
                Some(bound) => x0.clamp(-bound, bound),
                None => x0,
            };
            (&x - alpha * x0) / beta
        }))
    }
}

/// The prediction type and clipping bound of a scheduler config, or the key that cannot be
/// used.
fn check_scheduler(
    scheduler: &SchedulerConfig,
    clip_override: Option<bool>,
) -> Result<(Prediction, Option<f64>), SchedulerError> {
    if let Some(class) = &scheduler.class_name {
        if !SCHEDULERS.contains(&class.as_str()) {
            return Err(SchedulerError::Unsupported {
                key: "_class_name",
                value: format!("{class:?}"),
                supported: "a discrete variance-preserving scheduler: DDPMScheduler, \
                            DDIMScheduler, PNDMScheduler, DPMSolverMultistepScheduler, \
                            EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, \
                            UniPCMultistepScheduler",
            });
        }
    }
    let prediction = match scheduler.prediction_type.as_str() {
        "epsilon" => Prediction::Epsilon,
        "sample" => Prediction::Sample,
        "v_prediction" => Prediction::V,
        other => {
            return Err(SchedulerError::Unsupported {
                key: "prediction_type",
                value: format!("{other:?}"),
                supported: "\"epsilon\", \"sample\", \"v_prediction\"",
            })
        }
    };
    if scheduler.thresholding {
        return Err(SchedulerError::Unsupported {
            key: "thresholding",
            value: "true".to_string(),
            supported: "false",
        });
    }
    let bound = scheduler.clip_sample_range;
    if !(bound.is_finite() && bound > 0.0) {
        return Err(SchedulerError::Invalid(format!(
            "`clip_sample_range` is {bound}; it must be positive"
        )));
    }
    let clip = clip_override.unwrap_or(scheduler.clip_sample);
    Ok((prediction, clip.then_some(bound)))
}

/// A `learned` time embedding must have a row for every step of the schedule (`steps`
/// values of `alphas_cumprod`), since the model is asked for any of them.
pub(crate) fn check_learned_steps(config: &UNet2DConfig, steps: usize) -> Result<(), ConfigError> {
    match config.num_train_timesteps {
        Some(rows) if config.time_embedding_type == "learned" && rows < steps as i64 => {
            Err(ConfigError::unsupported(
                "num_train_timesteps",
                rows,
                format!(
                    "at least {steps} (the steps of the scheduler config): the `learned` time \
                     embedding has one row per step"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// The sample shape `[C, H, W]` of `config` (refused naming the key otherwise): its channels and `sample_size`, which must be
/// given, divisible by the UNet's down-sampling, and (for a preset) the one it serves.
pub fn sample_shape(
    config: &UNet2DConfig,
    expect: Option<[i64; 3]>,
) -> Result<[i64; 3], ConfigError> {
    let (h, w) = match &config.sample_size {
        Some(SampleSize::Square(side)) => (*side, *side),
        Some(SampleSize::Rect([h, w])) => (*h, *w),
        None => {
            return Err(ConfigError::unsupported(
                "sample_size",
                "null",
                "the height and width of the samples (an integer or [h, w])",
            ))
        }
    };
    if config.in_channels != config.out_channels {
        return Err(ConfigError::unsupported(
            "out_channels",
            config.out_channels,
            format!(
                "{} (`in_channels`: an unconditional DDPM predicts noise of its input's shape)",
                config.in_channels
            ),
        ));
    }
    let shape = [config.in_channels, h, w];
    if let Some(expected) = expect {
        if shape != expected {
            return Err(ConfigError::unsupported(
                "in_channels, out_channels, sample_size",
                (config.in_channels, config.out_channels, &config.sample_size),
                format!(
                    "{0}, {0}, {1} (this entry serves {0} x {1} x {2} images; `images/ddpm` \
                     takes any)",
                    expected[0], expected[1], expected[2]
                ),
            ));
        }
    }
    let factor = 1i64 << config.block_out_channels.len().saturating_sub(1).min(30);
    if h <= 0 || w <= 0 || h % factor != 0 || w % factor != 0 {
        return Err(ConfigError::unsupported(
            "sample_size",
            &config.sample_size,
            format!(
                "sides divisible by {factor} (the {} levels of `block_out_channels` halve \
                 the size {} times)",
                config.block_out_channels.len(),
                config.block_out_channels.len().saturating_sub(1)
            ),
        ));
    }
    Ok(shape)
}

impl BaseModel for DdpmModel {
    fn output_type(&self) -> OutputType {
        OutputType::Epsilon
    }

    fn schedule(&self) -> ScheduleSpec {
        ScheduleSpec::DiscreteDiffusion {
            alpha_bar: RVec::from(self.alpha_bar.clone()),
        }
    }

    fn sample_p0(&mut self, n: usize, _seed: u64) -> PluginResult<(Batch, Kwargs)> {
        let [c, h, w] = self.shape;
        let x = Tensor::randn([n as i64, c, h, w], (Kind::Float, self.device));
        Ok((Batch::from_tch(DATA_TYPE, [("x", &x)])?, Kwargs::new()))
    }

    fn forward(&mut self, mut x: Batch, t: ManagedTensor, _kwargs: Kwargs) -> PluginResult<Batch> {
        let xs = x.take_tch("x")?;
        let eps = self.predict(&xs, &t.into_tch()?)?;
        Batch::from_tch(DATA_TYPE, [("x", &eps)])
    }

    fn postprocess(&mut self, mut x: Batch, _kwargs: Kwargs) -> PluginResult<Option<Batch>> {
        let xs = x.take_tch("x")?;
        let images = tch::no_grad(|| ((xs.to_kind(Kind::Float) + 1.0) / 2.0).clamp(0.0, 1.0));
        Ok(Some(Batch::from_tch(DATA_TYPE, [("x", &images)])?))
    }
}

register_base_model! {
    id: "images/ddpm",
    version: "1.0.0",
    data_type: ("images", "1.0.0"),
    description: "Any unconditional diffusers UNet2DModel (DDPM/DDIM pipelines) from a folder or the Hugging Face cache: any channels and size",
    arguments: DdpmArgs,
    leaves: vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Any, Dim::Any, Dim::Any])
        .with_range(0.0, 1.0)],
    construct: DdpmModel::new,
}
