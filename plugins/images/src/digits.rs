//! `images/digits`: the project's own DDPM on scikit-learn's 8 x 8 handwritten digits, a small
//! diffusers `UNet2DModel` compiled into the plugin, so it needs no download.
//!
//! The weights are the folder `plugins/images/weights/digits/` of the source repository
//! (`config.json`, `diffusion_pytorch_model.safetensors`, `scheduler_config.json`), written by
//! `flowgym-host train-base` (the command is in that folder's README). The `weights` argument
//! names another folder of the same shape instead (a retrained model).

use std::path::Path;

use flowgym_plugin_api::tch_interop::device_of;
use flowgym_plugin_api::{
    arguments, register_base_model, ConstructContext, DType, Dim, LeafSpec, PluginError,
    PluginResult,
};

use crate::ddpm::{DdpmModel, LoadOptions, Source, DDPM_INCLUDE};
use crate::weights::{Weights, WeightsError};

/// The built-in UNet config.
pub const CONFIG: &str = include_str!("../weights/digits/config.json");
/// The built-in scheduler config.
pub const SCHEDULER: &str = include_str!("../weights/digits/scheduler_config.json");
/// The built-in weights (safetensors).
pub const WEIGHTS: &[u8] = include_bytes!("../weights/digits/diffusion_pytorch_model.safetensors");

/// The sample shape.
pub const DIGITS_SHAPE: [i64; 3] = [1, 8, 8];

arguments! {
    /// Arguments of `images/digits`.
    pub struct DigitsArgs {
        /// A diffusers folder of a 1 x 8 x 8 DDPM to use instead of the built-in weights (empty: the built-in model).
        weights: String = String::new();
        /// Clip the predicted clean sample as diffusers' DDPMScheduler does: `config` follows the scheduler config (`true`), `true` and `false` override it.
        clip_sample: String = "config".to_string() => one_of("config", "true", "false");
        /// The precision the UNet computes in (weights converted once at load; samples still cross as float32): `auto` is float32 on the CPU and float16 on CUDA; `bfloat16` keeps float32's range (on CPUs with bfloat16 instructions it is also faster).
        dtype: String = "auto".to_string() => one_of("auto", "float32", "float16", "bfloat16");
    }
}

/// The built-in model, on the device of `ctx`.
pub fn built_in(options: &LoadOptions, device: tch::Device) -> Result<DdpmModel, String> {
    let config = serde_json::from_str(CONFIG).map_err(|e| format!("built-in config: {e}"))?;
    let scheduler =
        serde_json::from_str(SCHEDULER).map_err(|e| format!("built-in scheduler config: {e}"))?;
    let path = Path::new("<built-in images/digits>/config.json");
    DdpmModel::from_parts(&config, &scheduler, path, options, device, || {
        let tensors =
            crate::safetensors_file::read_bytes(WEIGHTS).map_err(|message| WeightsError::Read {
                path: path.with_file_name("diffusion_pytorch_model.safetensors"),
                message,
            })?;
        Ok(Weights::from_tensors(
            "the built-in images/digits weights",
            tensors.into_iter().collect(),
            options.precision.kind(),
            device,
        ))
    })
    .map_err(|e| e.to_string())
}

fn construct(args: DigitsArgs, ctx: &ConstructContext) -> PluginResult<DdpmModel> {
    let device = device_of(ctx.device)?;
    let options = LoadOptions {
        expect: Some(DIGITS_SHAPE),
        ..LoadOptions::default()
    }
    .with_clip_argument(&args.clip_sample)
    .with_dtype_argument("images/digits", &args.dtype, device)?;
    if args.weights.is_empty() {
        return built_in(&options, device)
            .map(|model| model.with_entry("images/digits"))
            .map_err(PluginError::new);
    }
    let source = Source {
        entry: "images/digits",
        weights: &args.weights,
        repo_id: "",
        include: DDPM_INCLUDE,
        size: "",
    };
    DdpmModel::construct(&source, options, ctx)
}

register_base_model! {
    id: "images/digits",
    version: "1.0.0",
    data_type: ("images", "1.0.0"),
    description: "DDPM on scikit-learn's 8x8 handwritten digits, trained by the project (built in, no download): 1x8x8 grey images, 1000 linear steps",
    arguments: DigitsArgs,
    leaves: vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Fixed(1), Dim::Fixed(8), Dim::Fixed(8)])
        .with_range(0.0, 1.0)],
    construct: construct,
}
