//! The down, mid and up blocks of the diffusers UNets and VAEs
//! (`diffusers.models.unets.unet_2d_blocks`), by their published names.
//!
//! Down blocks return their output and the skip connections they leave for the up path; up
//! blocks take those skips back, last first, as diffusers does.

use tch::Tensor;

use crate::models::attention::{
    Attention, AttentionConfig, Transformer2DConfig, Transformer2DModel,
};
use crate::models::resnet::{
    Downsample2D, Resample, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D,
};
use crate::weights::WeightPath;

/// The cross-attention settings of one level of a conditional UNet.
#[derive(Debug, Clone, Copy)]
pub struct CrossAttnConfig {
    /// Number of heads (what the SD configs call `attention_head_dim`).
    pub num_attention_heads: i64,
    /// Transformer blocks per `Transformer2DModel`.
    pub transformer_layers: usize,
    /// Features of the encoder hidden states.
    pub cross_attention_dim: i64,
    /// Linear projections (SD 2) instead of 1x1 convolutions (SD 1).
    pub use_linear_projection: bool,
    /// Attend only to the context in the first attention too.
    pub only_cross_attention: bool,
}

impl CrossAttnConfig {
    fn transformer(&self, channels: i64, groups: i64) -> Transformer2DConfig {
        Transformer2DConfig {
            num_attention_heads: self.num_attention_heads,
            attention_head_dim: channels / self.num_attention_heads,
            in_channels: channels,
            num_layers: self.transformer_layers,
            norm_num_groups: groups,
            cross_attention_dim: Some(self.cross_attention_dim),
            use_linear_projection: self.use_linear_projection,
            only_cross_attention: self.only_cross_attention,
        }
    }
}

pub(crate) fn with_out(resnet: ResnetBlock2DConfig, out_channels: i64) -> ResnetBlock2DConfig {
    ResnetBlock2DConfig {
        out_channels: Some(out_channels),
        ..resnet
    }
}

pub(crate) fn down_resnets(
    p: &WeightPath,
    in_channels: i64,
    out_channels: i64,
    num_layers: usize,
    resnet: ResnetBlock2DConfig,
) -> Vec<ResnetBlock2D> {
    (0..num_layers)
        .map(|i| {
            let from = if i == 0 { in_channels } else { out_channels };
            ResnetBlock2D::new(&p.pp("resnets").pp(i), from, with_out(resnet, out_channels))
        })
        .collect()
}

/// The resnets of an up block: resnet `i` reads the running features (`prev_output_channel`
/// wide for the first, `out_channels` after) concatenated with one skip connection
/// (`in_channels` wide for the last, `out_channels` before).
pub(crate) fn up_resnets(
    p: &WeightPath,
    in_channels: i64,
    prev_output_channel: i64,
    out_channels: i64,
    num_layers: usize,
    resnet: ResnetBlock2DConfig,
) -> Vec<ResnetBlock2D> {
    (0..num_layers)
        .map(|i| {
            let skip = if i + 1 == num_layers {
                in_channels
            } else {
                out_channels
            };
            let from = if i == 0 {
                prev_output_channel
            } else {
                out_channels
            };
            ResnetBlock2D::new(
                &p.pp("resnets").pp(i),
                from + skip,
                with_out(resnet, out_channels),
            )
        })
        .collect()
}

fn downsampler(p: &WeightPath, channels: i64, padding: Option<i64>) -> Option<Downsample2D> {
    padding
        .map(|padding| Downsample2D::new(&p.pp("downsamplers").pp(0), channels, channels, padding))
}

fn upsampler(p: &WeightPath, channels: i64, add: bool) -> Option<Upsample2D> {
    add.then(|| Upsample2D::new(&p.pp("upsamplers").pp(0), channels, channels))
}

/// How a block that down-samples does it (`downsample_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownsampleKind {
    /// `conv`: a stride-2 convolution with this padding.
    Conv {
        /// `downsample_padding`.
        padding: i64,
    },
    /// `resnet`: a residual block that average-pools inside.
    Resnet,
}

/// How a block that up-samples does it (`upsample_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsampleKind {
    /// `conv`: nearest-neighbour interpolation, then a convolution.
    Conv,
    /// `resnet`: a residual block that interpolates inside.
    Resnet,
}

/// The down-sampler of a block (`downsamplers.0`).
#[derive(Debug)]
pub(crate) enum Downsampler {
    Conv(Downsample2D),
    Resnet(Box<ResnetBlock2D>),
}

impl Downsampler {
    /// `kind` at `p.downsamplers.0`, `channels` wide.
    pub(crate) fn new(
        p: &WeightPath,
        channels: i64,
        resnet: ResnetBlock2DConfig,
        kind: DownsampleKind,
    ) -> Self {
        let p = p.pp("downsamplers").pp(0);
        match kind {
            DownsampleKind::Conv { padding } => {
                Self::Conv(Downsample2D::new(&p, channels, channels, padding))
            }
            DownsampleKind::Resnet => Self::Resnet(Box::new(ResnetBlock2D::resampling(
                &p,
                channels,
                with_out(resnet, channels),
                Resample::Down,
                false,
            ))),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        match self {
            Self::Conv(down) => down.forward(x),
            Self::Resnet(down) => down.forward(x, temb),
        }
    }
}

/// The up-sampler of a block (`upsamplers.0`).
#[derive(Debug)]
pub(crate) enum Upsampler {
    Conv(Upsample2D),
    Resnet(Box<ResnetBlock2D>),
}

impl Upsampler {
    /// `kind` at `p.upsamplers.0`, `channels` wide.
    pub(crate) fn new(
        p: &WeightPath,
        channels: i64,
        resnet: ResnetBlock2DConfig,
        kind: UpsampleKind,
    ) -> Self {
        let p = p.pp("upsamplers").pp(0);
        match kind {
            UpsampleKind::Conv => Self::Conv(Upsample2D::new(&p, channels, channels)),
            UpsampleKind::Resnet => Self::Resnet(Box::new(ResnetBlock2D::resampling(
                &p,
                channels,
                with_out(resnet, channels),
                Resample::Up,
                false,
            ))),
        }
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        size: Option<[i64; 2]>,
    ) -> Tensor {
        match self {
            Self::Conv(up) => up.forward(x, size),
            Self::Resnet(up) => up.forward(x, temb),
        }
    }
}

/// The channels of down block `index` of a UNet or VAE encoder, as diffusers' constructors
/// compute them: each level maps the previous level's channels (the first level: its own) to its
/// own, and every level but the last halves the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownLevel {
    /// The block's index, `down_blocks.{index}`.
    pub index: usize,
    /// Channels in.
    pub in_channels: i64,
    /// Channels out (`block_out_channels[index]`).
    pub out_channels: i64,
    /// Whether the block ends with a down-sampler (all but the last).
    pub downsample: bool,
}

/// The down levels of `block_out_channels`, first to last.
pub fn down_levels(block_out_channels: &[i64]) -> Vec<DownLevel> {
    let levels = block_out_channels.len();
    (0..levels)
        .map(|index| DownLevel {
            index,
            in_channels: block_out_channels[index.saturating_sub(1)],
            out_channels: block_out_channels[index],
            downsample: index + 1 < levels,
        })
        .collect()
}

/// The channels of up block `index` of a UNet or VAE decoder, as diffusers' constructors compute
/// them: the up path runs deepest level first, so block `index` is level `levels - 1 - index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpLevel {
    /// The block's index, `up_blocks.{index}`.
    pub index: usize,
    /// The level it mirrors, `levels - 1 - index` (for per-level settings).
    pub level: usize,
    /// Width of the skip connection its last resnet reads: the next shallower level's channels
    /// (the shallowest block: its own).
    pub in_channels: i64,
    /// Channels of the features it receives: the previous up block's output (the first: its
    /// own).
    pub prev_output_channel: i64,
    /// Channels out (`block_out_channels[level]`).
    pub out_channels: i64,
    /// Whether the block ends with an up-sampler (all but the last).
    pub upsample: bool,
}

/// The up levels of `block_out_channels`, deepest first.
pub fn up_levels(block_out_channels: &[i64]) -> Vec<UpLevel> {
    let levels = block_out_channels.len();
    let reversed: Vec<i64> = block_out_channels.iter().rev().copied().collect();
    (0..levels)
        .map(|index| UpLevel {
            index,
            level: levels - 1 - index,
            in_channels: reversed[(index + 1).min(levels - 1)],
            prev_output_channel: reversed[index.saturating_sub(1)],
            out_channels: reversed[index],
            upsample: index + 1 < levels,
        })
        .collect()
}

/// The skip connection resnet `i` of an up block consumes: the skips are taken last first.
pub(crate) fn skip(res: &[Tensor], i: usize) -> &Tensor {
    &res[res.len() - 1 - i]
}

/// `DownBlock2D` (and the VAE's `DownEncoderBlock2D`, the same without a time embedding):
/// resnets, then an optional stride-2 convolution.
#[derive(Debug)]
pub struct DownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock2D {
    /// `num_layers` resnets `in_channels -> out_channels`; `downsample_padding` is `Some` when
    /// the block down-samples.
    pub fn new(
        p: &WeightPath,
        in_channels: i64,
        out_channels: i64,
        num_layers: usize,
        resnet: ResnetBlock2DConfig,
        downsample_padding: Option<i64>,
    ) -> Self {
        Self {
            resnets: down_resnets(p, in_channels, out_channels, num_layers, resnet),
            downsampler: downsampler(p, out_channels, downsample_padding),
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
            x = down.forward(&x);
            skips.push(x.shallow_clone());
        }
        (x, skips)
    }
}

/// `AttnDownBlock2D`: each resnet followed by a spatial self-attention.
#[derive(Debug)]
pub struct AttnDownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
    downsampler: Option<Downsampler>,
}

impl AttnDownBlock2D {
    /// Like [`DownBlock2D::new`], with attention heads of `attention_head_dim` features;
    /// `downsample` is `Some` when the block down-samples.
    pub fn new(
        p: &WeightPath,
        in_channels: i64,
        out_channels: i64,
        num_layers: usize,
        resnet: ResnetBlock2DConfig,
        attention_head_dim: i64,
        downsample: Option<DownsampleKind>,
    ) -> Self {
        let attention = AttentionConfig::spatial(
            out_channels,
            attention_head_dim,
            Some(resnet.groups),
            resnet.eps,
            resnet.output_scale_factor,
        );
        Self {
            resnets: down_resnets(p, in_channels, out_channels, num_layers, resnet),
            attentions: (0..num_layers)
                .map(|i| Attention::spatial(&p.pp("attentions").pp(i), attention))
                .collect(),
            downsampler: downsample.map(|kind| Downsampler::new(p, out_channels, resnet, kind)),
        }
    }

    /// See [`DownBlock2D::forward`].
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> (Tensor, Vec<Tensor>) {
        let mut x = x.shallow_clone();
        let mut skips = Vec::new();
        for (resnet, attention) in self.resnets.iter().zip(&self.attentions) {
            x = attention.forward(&resnet.forward(&x, temb), None);
            skips.push(x.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(&x, temb);
            skips.push(x.shallow_clone());
        }
        (x, skips)
    }
}

/// `CrossAttnDownBlock2D`: each resnet followed by a `Transformer2DModel` attending to the
/// encoder hidden states.
#[derive(Debug)]
pub struct CrossAttnDownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl CrossAttnDownBlock2D {
    /// Like [`DownBlock2D::new`], with the cross-attention settings of this level.
    pub fn new(
        p: &WeightPath,
        in_channels: i64,
        out_channels: i64,
        num_layers: usize,
        resnet: ResnetBlock2DConfig,
        cross: CrossAttnConfig,
        downsample_padding: Option<i64>,
    ) -> Self {
        let transformer = cross.transformer(out_channels, resnet.groups);
        Self {
            resnets: down_resnets(p, in_channels, out_channels, num_layers, resnet),
            attentions: (0..num_layers)
                .map(|i| Transformer2DModel::new(&p.pp("attentions").pp(i), transformer))
                .collect(),
            downsampler: downsampler(p, out_channels, downsample_padding),
        }
    }

    /// The attention layers of its transformers, in order.
    pub fn attention_layers_mut(&mut self) -> Vec<&mut Attention> {
        self.attentions
            .iter_mut()
            .flat_map(Transformer2DModel::attention_layers_mut)
            .collect()
    }

    /// See [`DownBlock2D::forward`]; `context` is `[n, seq, cross_attention_dim]`.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        context: Option<&Tensor>,
    ) -> (Tensor, Vec<Tensor>) {
        let mut x = x.shallow_clone();
        let mut skips = Vec::new();
        for (resnet, attention) in self.resnets.iter().zip(&self.attentions) {
            x = attention.forward(&resnet.forward(&x, temb), context);
            skips.push(x.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(&x);
            skips.push(x.shallow_clone());
        }
        (x, skips)
    }
}

/// `UNetMidBlock2D`: a resnet, then (attention, resnet) pairs; the attention is optional.
#[derive(Debug)]
pub struct UNetMidBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Option<Attention>>,
}

impl UNetMidBlock2D {
    /// `num_layers` (attention, resnet) pairs after the first resnet, all `channels` wide.
    /// `attention` is `(attention_head_dim, attn_groups)`, or `None` without attention
    /// (`add_attention = false`); `attn_groups` `None` means no group norm before it.
    pub fn new(
        p: &WeightPath,
        channels: i64,
        num_layers: usize,
        resnet: ResnetBlock2DConfig,
        attention: Option<(i64, Option<i64>)>,
    ) -> Self {
        let resnet = with_out(resnet, channels);
        let resnets = (0..=num_layers)
            .map(|i| ResnetBlock2D::new(&p.pp("resnets").pp(i), channels, resnet))
            .collect();
        let attentions = (0..num_layers)
            .map(|i| {
                attention.map(|(head_dim, groups)| {
                    Attention::spatial(
                        &p.pp("attentions").pp(i),
                        AttentionConfig::spatial(
                            channels,
                            head_dim,
                            groups,
                            resnet.eps,
                            resnet.output_scale_factor,
                        ),
                    )
                })
            })
            .collect();
        Self {
            resnets,
            attentions,
        }
    }

    /// Keeps the shape of `x`.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let mut x = self.resnets[0].forward(x, temb);
        for (attention, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            if let Some(attention) = attention {
                x = attention.forward(&x, None);
            }
            x = resnet.forward(&x, temb);
        }
        x
    }
}

/// `UNetMidBlock2DCrossAttn`: a resnet, then (transformer, resnet) pairs.
#[derive(Debug)]
pub struct UNetMidBlock2DCrossAttn {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl UNetMidBlock2DCrossAttn {
    /// `num_layers` (transformer, resnet) pairs after the first resnet, all `channels` wide.
    pub fn new(
        p: &WeightPath,
        channels: i64,
        num_layers: usize,
        resnet: ResnetBlock2DConfig,
        cross: CrossAttnConfig,
    ) -> Self {
        let resnet = with_out(resnet, channels);
        let transformer = cross.transformer(channels, resnet.groups);
        Self {
            resnets: (0..=num_layers)
                .map(|i| ResnetBlock2D::new(&p.pp("resnets").pp(i), channels, resnet))
                .collect(),
            attentions: (0..num_layers)
                .map(|i| Transformer2DModel::new(&p.pp("attentions").pp(i), transformer))
                .collect(),
        }
    }

    /// The attention layers of its transformers, in order.
    pub fn attention_layers_mut(&mut self) -> Vec<&mut Attention> {
        self.attentions
            .iter_mut()
            .flat_map(Transformer2DModel::attention_layers_mut)
            .collect()
    }

    /// Keeps the shape of `x`.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>, context: Option<&Tensor>) -> Tensor {
        let mut x = self.resnets[0].forward(x, temb);
        for (attention, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(&attention.forward(&x, context), temb);
        }
        x
    }
}

/// `UpBlock2D`: resnets over the features concatenated with the skip connections, then an
/// optional up-sampling.
#[derive(Debug)]
pub struct UpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock2D {
    /// `num_layers` resnets; see diffusers' `UpBlock2D` for the channel arithmetic.
    pub fn new(
        p: &WeightPath,
        in_channels: i64,
        prev_output_channel: i64,
        out_channels: i64,
        num_layers: usize,
        resnet: ResnetBlock2DConfig,
        add_upsample: bool,
    ) -> Self {
        Self {
            resnets: up_resnets(
                p,
                in_channels,
                prev_output_channel,
                out_channels,
                num_layers,
                resnet,
            ),
            upsampler: upsampler(p, out_channels, add_upsample),
        }
    }

    /// How many skip connections the block consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `res` holds this block's skip connections in the order the down path produced them.
    pub fn forward(
        &self,
        x: &Tensor,
        res: &[Tensor],
        temb: Option<&Tensor>,
        upsample_size: Option<[i64; 2]>,
    ) -> Tensor {
        let mut x = x.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&Tensor::cat(&[&x, skip(res, i)], 1), temb);
        }
        match &self.upsampler {
            Some(up) => up.forward(&x, upsample_size),
            None => x,
        }
    }
}

/// `AttnUpBlock2D`: [`UpBlock2D`] with a spatial self-attention after each resnet.
#[derive(Debug)]
pub struct AttnUpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
    upsampler: Option<Upsampler>,
}

impl AttnUpBlock2D {
    /// Like [`UpBlock2D::new`], with attention heads of `attention_head_dim` features;
    /// `upsample` is `Some` when the block up-samples.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &WeightPath,
        in_channels: i64,
        prev_output_channel: i64,
        out_channels: i64,
        num_layers: usize,
        resnet: ResnetBlock2DConfig,
        attention_head_dim: i64,
        upsample: Option<UpsampleKind>,
    ) -> Self {
        let attention = AttentionConfig::spatial(
            out_channels,
            attention_head_dim,
            Some(resnet.groups),
            resnet.eps,
            resnet.output_scale_factor,
        );
        Self {
            resnets: up_resnets(
                p,
                in_channels,
                prev_output_channel,
                out_channels,
                num_layers,
                resnet,
            ),
            attentions: (0..num_layers)
                .map(|i| Attention::spatial(&p.pp("attentions").pp(i), attention))
                .collect(),
            upsampler: upsample.map(|kind| Upsampler::new(p, out_channels, resnet, kind)),
        }
    }

    /// How many skip connections the block consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// See [`UpBlock2D::forward`].
    pub fn forward(
        &self,
        x: &Tensor,
        res: &[Tensor],
        temb: Option<&Tensor>,
        upsample_size: Option<[i64; 2]>,
    ) -> Tensor {
        let mut x = x.shallow_clone();
        for (i, (resnet, attention)) in self.resnets.iter().zip(&self.attentions).enumerate() {
            let h = resnet.forward(&Tensor::cat(&[&x, skip(res, i)], 1), temb);
            x = attention.forward(&h, None);
        }
        match &self.upsampler {
            Some(up) => up.forward(&x, temb, upsample_size),
            None => x,
        }
    }
}

/// `CrossAttnUpBlock2D`: [`UpBlock2D`] with a `Transformer2DModel` after each resnet.
#[derive(Debug)]
pub struct CrossAttnUpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl CrossAttnUpBlock2D {
    /// Like [`UpBlock2D::new`], with the cross-attention settings of this level.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &WeightPath,
        in_channels: i64,
        prev_output_channel: i64,
        out_channels: i64,
        num_layers: usize,
        resnet: ResnetBlock2DConfig,
        cross: CrossAttnConfig,
        add_upsample: bool,
    ) -> Self {
        let transformer = cross.transformer(out_channels, resnet.groups);
        Self {
            resnets: up_resnets(
                p,
                in_channels,
                prev_output_channel,
                out_channels,
                num_layers,
                resnet,
            ),
            attentions: (0..num_layers)
                .map(|i| Transformer2DModel::new(&p.pp("attentions").pp(i), transformer))
                .collect(),
            upsampler: upsampler(p, out_channels, add_upsample),
        }
    }

    /// How many skip connections the block consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// The attention layers of its transformers, in order.
    pub fn attention_layers_mut(&mut self) -> Vec<&mut Attention> {
        self.attentions
            .iter_mut()
            .flat_map(Transformer2DModel::attention_layers_mut)
            .collect()
    }

    /// See [`UpBlock2D::forward`]; `context` is `[n, seq, cross_attention_dim]`.
    pub fn forward(
        &self,
        x: &Tensor,
        res: &[Tensor],
        temb: Option<&Tensor>,
        context: Option<&Tensor>,
        upsample_size: Option<[i64; 2]>,
    ) -> Tensor {
        let mut x = x.shallow_clone();
        for (i, (resnet, attention)) in self.resnets.iter().zip(&self.attentions).enumerate() {
            let h = resnet.forward(&Tensor::cat(&[&x, skip(res, i)], 1), temb);
            x = attention.forward(&h, context);
        }
        match &self.upsampler {
            Some(up) => up.forward(&x, upsample_size),
            None => x,
        }
    }
}

/// `UpDecoderBlock2D` (VAE decoder): resnets without skip connections or time embedding, then
/// an optional up-sampling.
#[derive(Debug)]
pub struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    /// `num_layers` resnets `in_channels -> out_channels`.
    pub fn new(
        p: &WeightPath,
        in_channels: i64,
        out_channels: i64,
        num_layers: usize,
        resnet: ResnetBlock2DConfig,
        add_upsample: bool,
    ) -> Self {
        Self {
            resnets: down_resnets(p, in_channels, out_channels, num_layers, resnet),
            upsampler: upsampler(p, out_channels, add_upsample),
        }
    }

    /// `[n, in, h, w]` to `[n, out, 2h, 2w]` (or `[n, out, h, w]` without up-sampling).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut x = x.shallow_clone();
        for resnet in &self.resnets {
            x = resnet.forward(&x, None);
        }
        match &self.upsampler {
            Some(up) => up.forward(&x, None),
            None => x,
        }
    }
}
