//! `images/cifar`: the DDPM of Ho et al. (2020) on CIFAR-10, as published in
//! `google/ddpm-cifar10-32` (a diffusers `UNet2DModel` predicting the noise, with a linear
//! 1000-step `DDPMScheduler` that clips the predicted clean sample): [`crate::ddpm`] with that
//! repository as its default and 3 x 32 x 32 samples.
//!
//! The weights come from the folder the `weights` argument names, or else from the host's
//! weight directories and the Hugging Face cache (see [`crate::hub`]), or else they are fetched
//! from the hub on first use (see [`crate::sources`]).

use std::path::PathBuf;

use flowgym_plugin_api::tch_interop::device_of;
use flowgym_plugin_api::{
    arguments, register_base_model, ConstructContext, DType, Dim, LeafSpec, PluginResult,
};
use tch::Device;

use crate::ddpm::{DdpmFiles, DdpmModel, LoadOptions, Source, DDPM_INCLUDE};
use crate::fetch::HubSettings;
use crate::hub::{LoadError, NotFound};

arguments! {
    /// Arguments of `images/cifar`.
    pub struct CifarArgs {
        /// A diffusers folder holding the model (config.json, diffusion_pytorch_model.safetensors or .bin, and scheduler_config.json, or unet/ and scheduler/ subfolders); empty: look in the host's weight directories and the Hugging Face cache, else fetch from the hub.
        weights: String = String::new();
        /// The Hugging Face repositories accepted when `weights` is empty, comma-separated, in order: the first in the weight directories or the cache is used, else the first the hub serves is fetched (about 143 MB).
        repo_id: String = CIFAR_REPOS.to_string();
        /// Clip the predicted clean sample as diffusers' DDPMScheduler does: `config` follows the scheduler config (`true` for google/ddpm-cifar10-32), `true` and `false` override it.
        clip_sample: String = "config".to_string() => one_of("config", "true", "false");
        /// The precision the UNet computes in (weights converted once at load; samples still cross as float32): `auto` is float32 on the CPU and float16 on CUDA; `bfloat16` keeps float32's range (on CPUs with bfloat16 instructions it is also faster).
        dtype: String = "auto".to_string() => one_of("auto", "float32", "float16", "bfloat16");
    }
}

/// The repositories `images/cifar` accepts by default.
pub const CIFAR_REPOS: &str = "google/ddpm-cifar10-32";

/// The sample shape the entry serves.
pub const CIFAR_SHAPE: [i64; 3] = [3, 32, 32];

impl CifarArgs {
    /// Where the files may be.
    pub fn source(&self) -> Source<'_> {
        Source {
            entry: "images/cifar",
            weights: &self.weights,
            repo_id: &self.repo_id,
            include: DDPM_INCLUDE,
            size: "143 MB",
        }
    }

    /// The load options: 3 x 32 x 32 samples, clipping as the argument says.
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            expect: Some(CIFAR_SHAPE),
            ..LoadOptions::default()
        }
        .with_clip_argument(&self.clip_sample)
    }
}

/// Finds the files for `args` (see [`DdpmFiles::locate`]).
pub fn locate(
    args: &CifarArgs,
    weight_dirs: &[PathBuf],
    hub: &HubSettings,
) -> Result<DdpmFiles, NotFound> {
    DdpmFiles::locate(&args.source(), weight_dirs, hub)
}

/// Loads `files` as `images/cifar` with the options of `args`.
pub fn load(files: &DdpmFiles, args: &CifarArgs, device: Device) -> Result<DdpmModel, LoadError> {
    DdpmModel::load(files, &args.options(), device)
}

fn construct(args: CifarArgs, ctx: &ConstructContext) -> PluginResult<DdpmModel> {
    let options =
        args.options()
            .with_dtype_argument("images/cifar", &args.dtype, device_of(ctx.device)?)?;
    DdpmModel::construct(&args.source(), options, ctx)
}

register_base_model! {
    id: "images/cifar",
    version: "1.1.0",
    data_type: ("images", "1.0.0"),
    description: "DDPM on CIFAR-10 (google/ddpm-cifar10-32): 32x32 RGB images, epsilon prediction, 1000 linear steps",
    arguments: CifarArgs,
    leaves: vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Fixed(3), Dim::Fixed(32), Dim::Fixed(32)])
        .with_range(0.0, 1.0)],
    construct: construct,
}
