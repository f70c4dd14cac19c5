//! The arguments of `images/sd2` and `images/sd1.5`, and the checks that need no files.

use std::path::Path;

use flowgym_plugin_api::arguments;

use crate::models::attention_slicing::{self, AttentionSlicing};

use super::{SdError, SD15_REPO, SD2_REPO};

/// The default prompts: varied subjects (animals, landscapes, objects, scenes).
pub const DEFAULT_PROMPTS: [&str; 8] = [
    "a photo of a cat sitting on a windowsill",
    "a golden retriever running on a beach at sunset",
    "a snowy mountain range above a calm lake, landscape photography",
    "a red vintage bicycle leaning against a brick wall",
    "a bowl of fresh fruit on a wooden table, still life",
    "a lighthouse on a rocky coast during a storm",
    "a hummingbird hovering next to a purple flower, macro photo",
    "a cozy cabin in a pine forest with smoke rising from the chimney",
];

fn default_prompts() -> Vec<String> {
    DEFAULT_PROMPTS.iter().map(|p| p.to_string()).collect()
}

/// Declares the argument struct of one entry; only the default `repo_id` differs.
macro_rules! sd_arguments {
    ($(#[$meta:meta])* $name:ident, $repo:expr) => {
        arguments! {
            $(#[$meta])*
            pub struct $name {
                /// A diffusers folder holding the pipeline (unet/, vae/, text_encoder/, tokenizer/, scheduler/); empty: look in the host's weight directories and the Hugging Face cache, else fetch from the hub.
                weights: String = String::new();
                /// The Hugging Face repositories accepted when `weights` is empty, comma-separated, in order (the original, then mirrors): the first in the weight directories or the cache is used, else the first the hub serves is fetched (only the files read: float32 safetensors, configs, tokenizer).
                repo_id: String = $repo.to_string();
                /// The prompts; sample i of a batch gets prompts[(o + i) % len], o drawn at random per batch.
                prompts: Vec<String> = default_prompts();
                /// A text file with one prompt per line (blank lines skipped); overrides `prompts`.
                prompts_file: String = String::new();
                /// The negative prompt of classifier-free guidance (empty: the unconditional prompt "").
                negative_prompt: String = String::new();
                /// Classifier-free guidance scale: eps_u + cfg_scale (eps_c - eps_u); 0 turns guidance off (one UNet pass on the prompts).
                cfg_scale: f64 = 7.5 => range(0.0, 100.0);
                /// Image height in pixels, a multiple of 8 (latents are height / 8).
                height: usize = 512 => range(8, 8192);
                /// Image width in pixels, a multiple of 8 (latents are width / 8).
                width: usize = 512 => range(8, 8192);
                /// Images decoded by the VAE at a time in postprocess (bounds its memory); 1, the default, is diffusers' `enable_vae_slicing` (one image at a time).
                decode_chunk: usize = 1 => range(1, 65536);
                /// Sliced attention in the UNet (diffusers' `enable_attention_slicing`): attention computed over slices of the batch x heads dimension one after the other, same result up to rounding. It saves memory only where attention falls back to the unfused kernel (which holds the scores); the fused one, used on the CPU, holds none. null: off; "auto": half of each layer's heads per slice; "max": one at a time; a number: that many heads per slice (at most the fewest heads of a layer: 5 for SD 2, 8 for SD 1.5).
                attention_slicing: AttentionSlicing = AttentionSlicing::Off => satisfies(check_slicing, attention_slicing::ACCEPTED);
                /// Tiled VAE decoding (diffusers' `enable_vae_tiling`): latents larger than a tile are decoded in overlapping tiles blended at the seams, bounding the VAE's memory for large images; the images differ slightly from whole decoding near the seams.
                vae_tiling: bool = false;
                /// The tile edge in pixels for `vae_tiling` (diffusers' `tile_sample_min_size`; tiles overlap by a quarter): 0 takes the VAE config's `sample_size` (512 for SD 1.5 and 2, so 512-px images are still decoded whole), else a multiple of 32.
                vae_tile_size: usize = 0 => satisfies(check_tile_size, "0 (the VAE config's sample_size) or a multiple of 32 pixels");
                /// The precision UNet, text encoder and VAE compute in (weights converted once at load; latents still cross as float32): `auto` is float32 on the CPU and float16 on CUDA. In float16 the VAE stays in float32 when its config sets `force_upcast` (as published), as diffusers' SDXL pipelines do; `bfloat16` keeps float32's range.
                dtype: String = "auto".to_string() => one_of("auto", "float32", "float16", "bfloat16");
            }
        }

        impl From<$name> for SdArgs {
            fn from(a: $name) -> Self {
                SdArgs {
                    weights: a.weights,
                    repo_id: a.repo_id,
                    prompts: a.prompts,
                    prompts_file: a.prompts_file,
                    negative_prompt: a.negative_prompt,
                    cfg_scale: a.cfg_scale,
                    height: a.height,
                    width: a.width,
                    decode_chunk: a.decode_chunk,
                    dtype: a.dtype,
                    attention_slicing: a.attention_slicing,
                    vae_tiling: a.vae_tiling,
                    vae_tile_size: a.vae_tile_size,
                }
            }
        }
    };
}

sd_arguments! {
    /// Arguments of `images/sd2`.
    Sd2Args, SD2_REPO
}

sd_arguments! {
    /// Arguments of `images/sd1.5`.
    Sd15Args, SD15_REPO
}

/// The arguments of either entry (see [`Sd2Args`] for their meaning).
#[derive(Debug, Clone, PartialEq)]
pub struct SdArgs {
    /// Pipeline folder, or empty.
    pub weights: String,
    /// Repository looked for when `weights` is empty.
    pub repo_id: String,
    /// Prompts.
    pub prompts: Vec<String>,
    /// File of prompts, one per line, or empty.
    pub prompts_file: String,
    /// Negative prompt.
    pub negative_prompt: String,
    /// Guidance scale (0: off).
    pub cfg_scale: f64,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Images decoded at a time.
    pub decode_chunk: usize,
    /// `auto`, `float32`, `float16` or `bfloat16`.
    pub dtype: String,
    /// Sliced attention in the UNet.
    pub attention_slicing: AttentionSlicing,
    /// Tiled VAE decoding.
    pub vae_tiling: bool,
    /// Tile edge in pixels (0: the VAE config's `sample_size`).
    pub vae_tile_size: usize,
}

/// `attention_slicing`: a number must be at least 1 (the heads are checked at load).
fn check_slicing(slicing: &AttentionSlicing) -> Result<(), String> {
    slicing.check(std::iter::empty()).map_err(|e| e.to_string())
}

/// `vae_tile_size`: 0 or a multiple of 32 (four times the VAE's factor of 8, so that the tiles
/// fit together; see [`crate::models::vae_tiling::VaeTiling::fits`]).
fn check_tile_size(size: &usize) -> Result<(), String> {
    if size.is_multiple_of(32) {
        Ok(())
    } else {
        Err(format!("is {size}, not a multiple of 32"))
    }
}

/// The prompts of `args`: the lines of `prompts_file` when set (blank lines skipped, each line
/// trimmed), else `prompts`.
pub fn resolve_prompts(args: &SdArgs) -> Result<Vec<String>, SdError> {
    if args.prompts_file.is_empty() {
        if args.prompts.is_empty() {
            return Err(SdError::Argument(
                "argument `prompts` is empty; give at least one prompt (or `prompts_file`)".into(),
            ));
        }
        return Ok(args.prompts.clone());
    }
    let path = Path::new(&args.prompts_file);
    let text = std::fs::read_to_string(path).map_err(|e| {
        SdError::Argument(format!(
            "argument `prompts_file`: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect();
    if prompts.is_empty() {
        return Err(SdError::Argument(format!(
            "argument `prompts_file`: {} holds no prompt (one prompt per line)",
            path.display()
        )));
    }
    Ok(prompts)
}

/// Checks `height` and `width`: multiples of `factor`.
pub(super) fn check_size(args: &SdArgs, factor: usize) -> Result<(), SdError> {
    for (name, value) in [("height", args.height), ("width", args.width)] {
        if value == 0 || value % factor != 0 {
            return Err(SdError::Argument(format!(
                "argument `{name}` is {value}; it must be a multiple of {factor} (the VAE's \
                 down-sampling factor)"
            )));
        }
    }
    Ok(())
}
