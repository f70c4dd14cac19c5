//! `ResnetDownsampleBlock2D` and `ResnetUpsampleBlock2D` of
//! `diffusers.models.unets.unet_2d_blocks`: [`DownBlock2D`](super::unet_2d_blocks::DownBlock2D)
//! and [`UpBlock2D`](super::unet_2d_blocks::UpBlock2D) whose resampling is a residual block
//! that average-pools or interpolates inside (`downsamplers.0`, `upsamplers.0`).

use tch::Tensor;

use crate::models::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use crate::models::unet_2d_blocks::{
    down_resnets, skip, up_resnets, DownsampleKind, Downsampler, UpsampleKind, Upsampler,
};
use crate::weights::WeightPath;

/// `ResnetDownsampleBlock2D`: resnets, then an optional down-sampling resnet.
#[derive(Debug)]
pub struct ResnetDownsampleBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsampler>,
}

impl ResnetDownsampleBlock2D {
    /// `num_layers` resnets `in_channels -> out_channels`, and a down-sampling resnet when
    /// `add_downsample`.
    pub fn new(
        p: &WeightPath,
        in_channels: i64,
        out_channels: i64,
        num_layers: usize,
        resnet: ResnetBlock2DConfig,
        add_downsample: bool,
    ) -> Self {
        Self {
            resnets: down_resnets(p, in_channels, out_channels, num_layers, resnet),
            downsampler: add_downsample
                .then(|| Downsampler::new(p, out_channels, resnet, DownsampleKind::Resnet)),
        }
    }

    /// The output and the skip connections (one per resnet, plus the down-sampled output).
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> (Tensor, Vec<Tensor>) {
        let mut x = x.shallow_clone();
        let mut skips = Vec::new();
        for resnet in &self.resnets {
            x = resnet.forward(&x, temb);
            skips.push(x.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(&x, temb);
            skips.push(x.shallow_clone());
        }
        (x, skips)
    }
}

/// `ResnetUpsampleBlock2D`: resnets over the features concatenated with the skip connections,
/// then an optional up-sampling resnet.
#[derive(Debug)]
pub struct ResnetUpsampleBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsampler>,
}

impl ResnetUpsampleBlock2D {
    /// `num_layers` resnets (channels as in
    /// [`UpBlock2D::new`](super::unet_2d_blocks::UpBlock2D::new)), and an up-sampling resnet
    /// when `add_upsample`.
    pub fn new(
        p: &WeightPath,
        in_channels: i64,
        prev_output_channel: i64,
        out_channels: i64,
        num_layers: usize,
        resnet: ResnetBlock2DConfig,
        add_upsample: bool,
    ) -> Self {
        let resnets = up_resnets(
            p,
            in_channels,
            prev_output_channel,
            out_channels,
            num_layers,
            resnet,
        );
        Self {
            resnets,
            upsampler: add_upsample
                .then(|| Upsampler::new(p, out_channels, resnet, UpsampleKind::Resnet)),
        }
    }

    /// How many skip connections the block consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `res` holds this block's skip connections in the order the down path produced them.
    pub fn forward(&self, x: &Tensor, res: &[Tensor], temb: Option<&Tensor>) -> Tensor {
        let mut x = x.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&Tensor::cat(&[&x, skip(res, i)], 1), temb);
        }
        match &self.upsampler {
            Some(up) => up.forward(&x, temb, None),
            None => x,
        }
    }
}
