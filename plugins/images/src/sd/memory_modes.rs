//! The memory modes of the Stable Diffusion entries: sliced attention in the UNet
//! (`attention_slicing`) and tiled VAE decoding (`vae_tiling`, `vae_tile_size`), checked
//! against the loaded models and set on them. (`decode_chunk` = 1, the default, is diffusers'
//! VAE slicing; [`super::SdPipeline::decode`] applies it.)

use crate::models::attention_slicing::{self, AttentionSlicing};
use crate::models::vae_tiling::VaeTiling;

use super::{SdArgs, SdError, SdPipeline};

/// Sets the memory modes of `args` on `pipeline`, refusing a slice size larger than the heads
/// of some UNet attention layer and a tile size the VAE's tiles cannot be fitted with.
pub fn apply(pipeline: &mut SdPipeline, args: &SdArgs) -> Result<(), SdError> {
    set_attention_slicing(pipeline, args.attention_slicing)?;
    set_vae_tiling(pipeline, args)
}

fn set_attention_slicing(
    pipeline: &mut SdPipeline,
    slicing: AttentionSlicing,
) -> Result<(), SdError> {
    pipeline
        .unet_mut()
        .set_attention_slicing(slicing)
        .map_err(|why| {
            SdError::Argument(format!(
                "argument `attention_slicing` {why} (accepted: {})",
                attention_slicing::ACCEPTED
            ))
        })
}

fn set_vae_tiling(pipeline: &mut SdPipeline, args: &SdArgs) -> Result<(), SdError> {
    if !args.vae_tiling {
        if args.vae_tile_size != 0 {
            return Err(SdError::Argument(format!(
                "argument `vae_tile_size` is {} but `vae_tiling` is false; set `vae_tiling` to \
                 true to decode in tiles",
                args.vae_tile_size
            )));
        }
        pipeline.vae_mut().set_tiling(None);
        return Ok(());
    }
    let factor = pipeline.vae_scale_factor();
    let tile = if args.vae_tile_size == 0 {
        pipeline.vae().default_tile_size().ok_or_else(|| {
            SdError::Argument(
                "argument `vae_tiling`: the VAE config has no `sample_size` to take the tile \
                 size from; set `vae_tile_size`"
                    .into(),
            )
        })?
    } else {
        args.vae_tile_size as i64
    };
    if !VaeTiling::fits(tile, factor) {
        let source = if args.vae_tile_size == 0 {
            "the VAE config's `sample_size`"
        } else {
            "argument `vae_tile_size`"
        };
        return Err(SdError::Argument(format!(
            "{source} is {tile}, which tiles of this VAE (up-sampling {factor} times) cannot be \
             fitted with: use a `vae_tile_size` that is a multiple of {}",
            4 * factor
        )));
    }
    pipeline
        .vae_mut()
        .set_tiling(Some(VaeTiling::new(tile, factor)));
    Ok(())
}
