//! The skip blocks of the score-SDE UNets (`SkipDownBlock2D`, `AttnSkipDownBlock2D`,
//! `SkipUpBlock2D`, `AttnSkipUpBlock2D` of `diffusers.models.unets.unet_2d_blocks`).
//!
//! Besides the features and their skip connections they carry a 3-channel image, the
//! `skip_sample` of `UNet2DModel`: on the way down the input image is FIR-down-sampled
//! alongside the features and added to them through a 1x1 convolution; on the way up each block
//! FIR-up-samples the image it receives and adds a 3x3 convolution of its features, and the
//! UNet adds the result to its output. Their group norms take `min(channels / 4, 32)` groups
//! whatever `norm_num_groups` says, their attention 32 groups, and every resnet and attention
//! divides its output by `sqrt(2)`, as in diffusers.

use tch::Tensor;

use crate::models::attention::{Attention, AttentionConfig};
use crate::models::fir;
use crate::models::resnet::{Resample, ResnetBlock2D, ResnetBlock2DConfig};
use crate::models::unet_2d_blocks::skip;
use crate::nn::{Conv2d, GroupNorm};
use crate::weights::WeightPath;

/// Channels of the image the skip path carries.
const SKIP_CHANNELS: i64 = 3;

/// Groups of the skip attention's norm.
const ATTENTION_GROUPS: i64 = 32;

/// `min(channels / 4, 32)`: the group count the skip blocks give a norm over `channels`.
pub fn skip_groups(channels: i64) -> i64 {
    (channels / 4).min(32)
}

/// The groups of the first norm of an up skip block's resnet reading `resnet_in` features and
/// `res_skip` skip channels. `AttnSkipUpBlock2D` writes `min(resnet_in + res_skip // 4, 32)`
/// (the division binds to the skip channels only); `SkipUpBlock2D` divides the sum.
pub fn skip_up_groups(resnet_in: i64, res_skip: i64, attention: bool) -> i64 {
    if attention {
        (resnet_in + res_skip / 4).min(32)
    } else {
        skip_groups(resnet_in + res_skip)
    }
}

/// A skip block's resnet settings: `groups` in, `min(out / 4, 32)` out, output over `sqrt(2)`.
fn skip_resnet(resnet: ResnetBlock2DConfig, groups: i64, out: i64) -> ResnetBlock2DConfig {
    ResnetBlock2DConfig {
        out_channels: Some(out),
        groups,
        groups_out: Some(skip_groups(out)),
        output_scale_factor: std::f64::consts::SQRT_2,
        ..resnet
    }
}

/// The attention of a skip block over `channels`.
fn skip_attention(p: &WeightPath, channels: i64, head_dim: i64, eps: f64) -> Attention {
    let config = AttentionConfig::spatial(
        channels,
        head_dim,
        Some(ATTENTION_GROUPS),
        eps,
        std::f64::consts::SQRT_2,
    );
    Attention::spatial(p, config)
}

/// The down-sampling end of a down skip block: `resnet_down` (FIR) and `skip_conv`.
#[derive(Debug)]
struct SkipDown {
    resnet_down: ResnetBlock2D,
    skip_conv: Conv2d,
}

/// `SkipDownBlock2D`, and `AttnSkipDownBlock2D` when built with attention.
#[derive(Debug)]
pub struct SkipDownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
    down: Option<SkipDown>,
}

impl SkipDownBlock2D {
    /// `num_layers` resnets `in_channels -> out_channels`, each followed by an attention of
    /// heads of `attention_head_dim` features when that is `Some`; the FIR down-sampling when
    /// `add_downsample`. `resnet` gives the epsilon, activation and time conditioning.
    pub fn new(
        p: &WeightPath,
        in_channels: i64,
        out_channels: i64,
        num_layers: usize,
        resnet: ResnetBlock2DConfig,
        attention_head_dim: Option<i64>,
        add_downsample: bool,
    ) -> Self {
        let resnets = (0..num_layers)
            .map(|i| {
                let from = if i == 0 { in_channels } else { out_channels };
                let config = skip_resnet(resnet, skip_groups(from), out_channels);
                ResnetBlock2D::new(&p.pp("resnets").pp(i), from, config)
            })
            .collect();
        let attentions = attention_head_dim.map_or_else(Vec::new, |head_dim| {
            (0..num_layers)
                .map(|i| {
                    let p = p.pp("attentions").pp(i);
                    skip_attention(&p, out_channels, head_dim, resnet.eps)
                })
                .collect()
        });
        let down = add_downsample.then(|| {
            let groups = skip_groups(out_channels);
            let config = ResnetBlock2DConfig {
                groups_out: None,
                ..skip_resnet(resnet, groups, out_channels)
            };
            SkipDown {
                resnet_down: ResnetBlock2D::resampling(
                    &p.pp("resnet_down"),
                    out_channels,
                    config,
                    Resample::FirDown,
                    true,
                ),
                skip_conv: Conv2d::new(&p.pp("skip_conv"), SKIP_CHANNELS, out_channels, 1, 1, 0),
            }
        });
        Self {
            resnets,
            attentions,
            down,
        }
    }

    /// The output, the skip connections (one per resnet, plus the down-sampled output) and the
    /// skip image (`[n, 3, h, w]`, down-sampled when the block down-samples).
    pub fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        skip_sample: &Tensor,
    ) -> (Tensor, Vec<Tensor>, Tensor) {
        let mut x = x.shallow_clone();
        let mut skips = Vec::new();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&x, temb);
            if let Some(attention) = self.attentions.get(i) {
                x = attention.forward(&x, None);
            }
            skips.push(x.shallow_clone());
        }
        let Some(down) = &self.down else {
            return (x, skips, skip_sample.shallow_clone());
        };
        let x = down.resnet_down.forward(&x, temb);
        let skip_sample = fir::downsample_2d(skip_sample);
        let x = down.skip_conv.forward(&skip_sample) + x;
        skips.push(x.shallow_clone());
        (x, skips, skip_sample)
    }
}

/// The up-sampling end of an up skip block: `skip_norm`, `skip_conv`, `resnet_up` (FIR).
#[derive(Debug)]
struct SkipUp {
    skip_norm: GroupNorm,
    skip_conv: Conv2d,
    resnet_up: ResnetBlock2D,
}

/// `SkipUpBlock2D`, and `AttnSkipUpBlock2D` when built with attention.
#[derive(Debug)]
pub struct SkipUpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attention: Option<Attention>,
    up: Option<SkipUp>,
}

impl SkipUpBlock2D {
    /// `num_layers` resnets (channels as in
    /// [`UpBlock2D::new`](super::unet_2d_blocks::UpBlock2D::new)), one attention after them
    /// with heads of `attention_head_dim` features when that is `Some`, and the FIR
    /// up-sampling when `add_upsample`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &WeightPath,
        in_channels: i64,
        prev_output_channel: i64,
        out_channels: i64,
        num_layers: usize,
        resnet: ResnetBlock2DConfig,
        attention_head_dim: Option<i64>,
        add_upsample: bool,
    ) -> Self {
        let with_attention = attention_head_dim.is_some();
        let resnets = (0..num_layers)
            .map(|i| {
                let res_skip = if i + 1 == num_layers {
                    in_channels
                } else {
                    out_channels
                };
                let from = if i == 0 {
                    prev_output_channel
                } else {
                    out_channels
                };
                let groups = skip_up_groups(from, res_skip, with_attention);
                let config = skip_resnet(resnet, groups, out_channels);
                ResnetBlock2D::new(&p.pp("resnets").pp(i), from + res_skip, config)
            })
            .collect();
        let attention = attention_head_dim.map(|head_dim| {
            let p = p.pp("attentions").pp(0);
            skip_attention(&p, out_channels, head_dim, resnet.eps)
        });
        let up = add_upsample.then(|| skip_up(p, out_channels, resnet));
        Self {
            resnets,
            attention,
            up,
        }
    }

    /// How many skip connections the block consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// The output and the skip image: the one received (`None` where diffusers has none yet)
    /// FIR-up-sampled, plus this block's contribution when it up-samples.
    pub fn forward(
        &self,
        x: &Tensor,
        res: &[Tensor],
        temb: Option<&Tensor>,
        skip_sample: Option<&Tensor>,
    ) -> (Tensor, Option<Tensor>) {
        let mut x = x.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&Tensor::cat(&[&x, skip(res, i)], 1), temb);
        }
        if let Some(attention) = &self.attention {
            x = attention.forward(&x, None);
        }
        let skip_sample = skip_sample.map(fir::upsample_2d);
        let Some(up) = &self.up else {
            return (x, skip_sample);
        };
        let states = up.skip_conv.forward(&up.skip_norm.forward(&x).silu());
        let skip_sample = match skip_sample {
            Some(sample) => sample + states,
            None => states,
        };
        (up.resnet_up.forward(&x, temb), Some(skip_sample))
    }
}

/// `skip_norm`, `skip_conv` and the FIR `resnet_up` of an up skip block `channels` wide.
fn skip_up(p: &WeightPath, channels: i64, resnet: ResnetBlock2DConfig) -> SkipUp {
    let groups = skip_groups(channels);
    SkipUp {
        skip_norm: GroupNorm::new(&p.pp("skip_norm"), groups, channels, resnet.eps),
        skip_conv: Conv2d::new(&p.pp("skip_conv"), channels, SKIP_CHANNELS, 3, 1, 1),
        resnet_up: ResnetBlock2D::resampling(
            &p.pp("resnet_up"),
            channels,
            skip_resnet(resnet, groups, channels),
            Resample::FirUp,
            true,
        ),
    }
}
