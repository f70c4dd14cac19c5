//! `images/cifar`: the DDPM of Ho et al. (2020) on CIFAR-10, as published in
//! `google/ddpm-cifar10-32` (a diffusers `UNet2DModel` predicting the noise, with a linear
//! 1000-step `DDPMScheduler`).
//!
//! The weights come from the folder the `weights` argument names (the flat layout of that
//! repository, `config.json`, `diffusion_pytorch_model.safetensors` and
//! `scheduler_config.json`, or a pipeline layout with `unet/` and `scheduler/`), or else from
//! the host's weight directories and the Hugging Face cache (see [`crate::hub`]), or else they
//! are fetched from the hub on first use (see [`crate::sources`]).
//!
//! Samples evolve in `[-1, 1]` pixel space (`x` `[n, 3, 32, 32]`); `postprocess` maps them to
//! `[0, 1]`. The model receives the discrete step `k` (0 the cleanest), as the host's
//! `DiscreteDiffusion` scheduler defines it.

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
use crate::sources::{download_hint, find_or_fetch, in_folder, parse_repos, select_ddpm, Lookup};
use crate::weights::Weights;

/// The data type of the samples.
const DATA_TYPE: &str = "images";
/// Channels of the samples.
const CHANNELS: i64 = 3;
/// Height and width of the samples.
const SIDE: i64 = 32;

arguments! {
    /// Arguments of `images/cifar`.
    pub struct CifarArgs {
        /// A diffusers folder holding the model (config.json, diffusion_pytorch_model.safetensors or .bin, and scheduler_config.json, or unet/ and scheduler/ subfolders); empty: look in the host's weight directories and the Hugging Face cache, else fetch from the hub.
        weights: String = String::new();
        /// The Hugging Face repositories accepted when `weights` is empty, comma-separated, in order: the first in the weight directories or the cache is used, else the first the hub serves is fetched (about 143 MB).
        repo_id: String = CIFAR_REPOS.to_string();
    }
}

/// The files of a DDPM checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CifarFiles {
    /// The UNet's config and weights.
    pub unet: ComponentFiles,
    /// `scheduler_config.json`.
    pub scheduler: PathBuf,
}

/// The repositories `images/cifar` accepts by default.
pub const CIFAR_REPOS: &str = "google/ddpm-cifar10-32";

/// The files of [`CIFAR_REPOS`] the entry reads, as `hf download --include` patterns.
const CIFAR_INCLUDE: &[&str] = &[
    "config.json",
    "diffusion_pytorch_model.safetensors",
    "scheduler_config.json",
];

impl CifarFiles {
    /// Finds the files for `args`: in `args.weights` when it is set, else in `weight_dirs`
    /// and the hub's caches for each repository of `args.repo_id`, else fetched from the hub
    /// (unless `hub` is offline). The error lists every place looked at, every failed fetch and
    /// how to get the files.
    pub fn locate(
        args: &CifarArgs,
        weight_dirs: &[PathBuf],
        hub: &HubSettings,
    ) -> Result<Self, NotFound> {
        let repos = parse_repos(&args.repo_id);
        let what = format!("`images/cifar` ({})", repos.join(", "));
        let hint = download_hint(
            &repos,
            CIFAR_INCLUDE,
            "143 MB",
            "Or pass the argument {\"weights\": \"/path/to/folder\"} naming a diffusers folder \
             with config.json, diffusion_pytorch_model.safetensors (or .bin) and \
             scheduler_config.json (or unet/ and scheduler/ subfolders).",
        );
        if !args.weights.is_empty() {
            return in_folder(what, Path::new(&args.weights), hint, &Self::in_root);
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

/// The DDPM base model: a [`UNet2DModel`] predicting the noise, and its noise schedule.
#[derive(Debug)]
pub struct CifarModel {
    unet: UNet2DModel,
    alpha_bar: Vec<f64>,
    device: Device,
}

impl CifarModel {
    /// Constructs the entry: finds the files and loads them onto the host's device.
    pub fn new(args: CifarArgs, ctx: &ConstructContext) -> PluginResult<Self> {
        let device = device_of(ctx.device)?;
        let weight_dirs: Vec<PathBuf> = ctx.weight_dirs.iter().map(|d| d.as_str().into()).collect();
        let files = CifarFiles::locate(&args, &weight_dirs, &HubSettings::from_env())
            .map_err(|e| PluginError::new(e.to_string()))?;
        Self::load(&files, device).map_err(|e| PluginError::new(e.to_string()))
    }

    /// Loads the model from `files` onto `device`; every tensor of the weights must be used
    /// and every parameter found, with its shape.
    pub fn load(files: &CifarFiles, device: Device) -> Result<Self, LoadError> {
        let scheduler = SchedulerConfig::from_file(&files.scheduler)?;
        if scheduler.prediction_type != "epsilon" {
            return Err(SchedulerError::Unsupported {
                key: "prediction_type",
                value: format!("{:?}", scheduler.prediction_type),
                supported: "\"epsilon\"",
            }
            .into());
        }
        let alpha_bar = scheduler.alphas_cumprod()?;
        let config: UNet2DConfig = read_config(&files.unet.config)?;
        let architecture = |source| LoadError::Architecture {
            path: files.unet.config.clone(),
            source,
        };
        let shape = (config.in_channels, config.out_channels, &config.sample_size);
        if !matches!(
            shape,
            (CHANNELS, CHANNELS, None | Some(SampleSize::Square(SIDE)))
        ) {
            return Err(architecture(ConfigError::unsupported(
                "in_channels, out_channels, sample_size",
                shape,
                "3, 3, 32 (`images/cifar` serves 3 x 32 x 32 images)",
            )));
        }
        let weights = Weights::from_files(&files.unet.weights, Kind::Float, device)?;
        let unet = UNet2DModel::new(&weights.root(), &config).map_err(architecture)?;
        weights.finish()?;
        Ok(Self {
            unet,
            alpha_bar,
            device,
        })
    }

    /// The UNet.
    pub fn unet(&self) -> &UNet2DModel {
        &self.unet
    }

    /// `alpha_bar[k]`, `k = 0..=K`, index 0 the cleanest (diffusers' `alphas_cumprod`).
    pub fn alpha_bar(&self) -> &[f64] {
        &self.alpha_bar
    }

    /// The noise prediction for `x` `[n, 3, 32, 32]` at steps `k` (`[n]` or one value).
    pub fn predict(&self, x: &Tensor, k: &Tensor) -> PluginResult<Tensor> {
        let size = x.size();
        let expected = [CHANNELS, SIDE, SIDE];
        if size.len() != 4 || size[1..] != expected {
            return Err(PluginError::new(format!(
                "leaf `x` has shape {size:?}; expected [n, {}, {}, {}]",
                expected[0], expected[1], expected[2]
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
        Ok(tch::no_grad(|| self.unet.forward(&x, &k)))
    }
}

impl BaseModel for CifarModel {
    fn output_type(&self) -> OutputType {
        OutputType::Epsilon
    }

    fn schedule(&self) -> ScheduleSpec {
        ScheduleSpec::DiscreteDiffusion {
            alpha_bar: RVec::from(self.alpha_bar.clone()),
        }
    }

    fn sample_p0(&mut self, n: usize, _seed: u64, kwargs: Kwargs) -> PluginResult<(Batch, Kwargs)> {
        let shape = [n as i64, CHANNELS, SIDE, SIDE];
        let x = Tensor::randn(shape, (Kind::Float, self.device));
        Ok((Batch::from_tch(DATA_TYPE, [("x", &x)])?, kwargs))
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
    id: "images/cifar",
    version: "1.0.0",
    data_type: ("images", "1.0.0"),
    description: "DDPM on CIFAR-10 (google/ddpm-cifar10-32): 32x32 RGB images, epsilon prediction, 1000 linear steps",
    arguments: CifarArgs,
    leaves: vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Fixed(3), Dim::Fixed(32), Dim::Fixed(32)])
        .with_range(0.0, 1.0)],
    construct: CifarModel::new,
}
