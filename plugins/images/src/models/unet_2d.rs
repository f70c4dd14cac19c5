//! diffusers' `UNet2DModel`: the unconditional UNet of the DDPM checkpoints
//! (`google/ddpm-cifar10-32` and relatives) and of the score-SDE ones (skip blocks, Fourier
//! time embedding). The blocks it builds per level are in
//! [`unet_2d_levels`](crate::models::unet_2d_levels); what it accepts is checked by
//! [`UNet2DConfig::validate`].

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::models::embeddings::{
    GaussianFourierProjection, LearnedTimesteps, TimestepEmbedding, Timesteps,
};
use crate::models::resnet::{Activation, ConfigError, ResnetBlock2DConfig, TimeEmbeddingNorm};
use crate::models::unet_2d_blocks::{
    down_levels, up_levels, DownsampleKind, UNetMidBlock2D, UpsampleKind,
};
use crate::models::unet_2d_levels::{
    BlockSettings, DownBlock, DownBlockType, UpBlock, UpBlockType,
};
use crate::nn::{Conv2d, GroupNorm};
use crate::weights::WeightPath;

/// `sample_size` of a config: one side, or `[height, width]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// A square sample.
    Square(i64),
    /// `[height, width]`.
    Rect([i64; 2]),
}

/// The published `config.json` of a `UNet2DModel`, with diffusers' defaults for absent keys.
/// Other keys (`_class_name`, `_diffusers_version`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct UNet2DConfig {
    /// Height and width of the samples it was trained on.
    pub sample_size: Option<SampleSize>,
    /// Channels of the input.
    pub in_channels: i64,
    /// Channels of the output.
    pub out_channels: i64,
    /// Map the input from `[0, 1]` to `[-1, 1]` first.
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub center_input_sample: bool,
    /// `positional` (sinusoidal), `fourier` (Gaussian Fourier features of `log(t)`; the
    /// output is divided by `t`) or `learned` (a table of `num_train_timesteps` rows).
    pub time_embedding_type: String,
    /// Width of the time embedding; `None` is `4 * block_out_channels[0]`.
    pub time_embedding_dim: Option<i64>,
    /// `downscale_freq_shift` of the sinusoidal embedding.
    pub freq_shift: f64,
    /// Order `cos, sin` instead of `sin, cos`.
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub flip_sin_to_cos: bool,
    /// One down block type per level (see [`DownBlockType`]).
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2D`, or `None` for no mid block (diffusers builds a `UNetMidBlock2D` for
    /// any name, and so does this).
    pub mid_block_type: Option<String>,
    /// One up block type per level, deepest first (see [`UpBlockType`]).
    pub up_block_types: Vec<String>,
    /// Channels per level.
    pub block_out_channels: Vec<i64>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: usize,
    /// Output scale of the mid block.
    pub mid_block_scale_factor: f64,
    /// Padding of the down-sampling convolutions (0 pads right and bottom by one).
    pub downsample_padding: i64,
    /// How `AttnDownBlock2D` down-samples: `conv` (`None` too) or `resnet`.
    pub downsample_type: Option<String>,
    /// How `AttnUpBlock2D` up-samples: `conv` (`None` too) or `resnet`.
    pub upsample_type: Option<String>,
    /// Dropout (inference: unused).
    pub dropout: f64,
    /// Activation of the resnets.
    pub act_fn: String,
    /// Features per attention head; `None` is one head over all channels.
    pub attention_head_dim: Option<i64>,
    /// Groups of the group norms (the skip blocks choose their own); `None` is
    /// `min(channels / 4, 32)` of the first level (of the last for the mid block).
    pub norm_num_groups: Option<i64>,
    /// Groups of the mid-block attention's norm; `None` follows `resnet_time_scale_shift`.
    pub attn_norm_num_groups: Option<i64>,
    /// Epsilon of the group norms.
    pub norm_eps: f64,
    /// `default` or `scale_shift`.
    pub resnet_time_scale_shift: String,
    /// Whether the mid block has attention.
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub add_attention: bool,
    /// Class conditioning (refused: the model is unconditional).
    pub class_embed_type: Option<String>,
    /// Class conditioning (refused: the model is unconditional).
    pub num_class_embeds: Option<i64>,
    /// Rows of the `learned` time embedding.
    pub num_train_timesteps: Option<i64>,
}

impl Default for UNet2DConfig {
    fn default() -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".to_string(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: strings(&[
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2D".to_string()),
            up_block_types: strings(&[
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: Some("conv".to_string()),
            upsample_type: Some("conv".to_string()),
            dropout: 0.0,
            act_fn: "silu".to_string(),
            attention_head_dim: Some(8),
            norm_num_groups: Some(32),
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".to_string(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
        }
    }
}

impl UNet2DConfig {
    /// Groups of the norms outside the skip blocks, and of `conv_norm_out`.
    pub(crate) fn groups(&self) -> i64 {
        self.norm_num_groups
            .unwrap_or_else(|| (self.block_out_channels[0] / 4).min(32))
    }

    /// Groups of the mid block's resnets: `norm_num_groups`, else diffusers' fallback over the
    /// deepest level's channels.
    pub(crate) fn mid_groups(&self) -> i64 {
        let last = self.block_out_channels[self.block_out_channels.len() - 1];
        self.norm_num_groups.unwrap_or((last / 4).min(32))
    }

    /// Groups of the mid block attention's norm (`None`: it has none).
    pub(crate) fn mid_attention_groups(&self) -> Option<i64> {
        let default = self.resnet_time_scale_shift == "default";
        self.attn_norm_num_groups
            .or(default.then_some(self.mid_groups()))
    }

    /// The parsed `down_block_types` and `up_block_types`.
    pub(crate) fn block_types(
        &self,
    ) -> Result<(Vec<DownBlockType>, Vec<UpBlockType>), ConfigError> {
        let down = self
            .down_block_types
            .iter()
            .map(|name| DownBlockType::from_name(name))
            .collect::<Result<_, _>>()?;
        let up = self
            .up_block_types
            .iter()
            .map(|name| UpBlockType::from_name(name))
            .collect::<Result<_, _>>()?;
        Ok((down, up))
    }

    /// How `AttnDownBlock2D` down-samples: `None` for a `downsample_type` that builds no
    /// down-sampler in diffusers.
    pub(crate) fn attn_downsample(&self) -> Option<DownsampleKind> {
        match self.downsample_type.as_deref() {
            None | Some("conv") => Some(DownsampleKind::Conv {
                padding: self.downsample_padding,
            }),
            Some("resnet") => Some(DownsampleKind::Resnet),
            Some(_) => None,
        }
    }

    /// How `AttnUpBlock2D` up-samples: `None` for an `upsample_type` that builds no
    /// up-sampler in diffusers.
    pub(crate) fn attn_upsample(&self) -> Option<UpsampleKind> {
        match self.upsample_type.as_deref() {
            None | Some("conv") => Some(UpsampleKind::Conv),
            Some("resnet") => Some(UpsampleKind::Resnet),
            Some(_) => None,
        }
    }

    /// The width of the time embedding.
    fn time_embed_dim(&self) -> i64 {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels[0] * 4)
    }
}

/// The projection of the timesteps before the embedding MLP (`time_proj`).
#[derive(Debug)]
enum TimeProjection {
    Positional(Timesteps),
    Fourier(GaussianFourierProjection),
    Learned(LearnedTimesteps),
}

impl TimeProjection {
    /// The projection of `time_embedding_type` and the width of its output.
    fn new(p: &WeightPath, c: &UNet2DConfig) -> (Self, i64) {
        let width = c.block_out_channels[0];
        match c.time_embedding_type.as_str() {
            "fourier" => (
                Self::Fourier(GaussianFourierProjection::new(p, width)),
                2 * width,
            ),
            "learned" => {
                let rows = c.num_train_timesteps.unwrap_or(0);
                (Self::Learned(LearnedTimesteps::new(p, rows, width)), width)
            }
            _ => (
                Self::Positional(Timesteps::new(width, c.flip_sin_to_cos, c.freq_shift)),
                width,
            ),
        }
    }

    fn forward(&self, timesteps: &Tensor) -> Tensor {
        match self {
            Self::Positional(proj) => proj.forward(timesteps),
            Self::Fourier(proj) => proj.forward(timesteps),
            Self::Learned(proj) => proj.forward(timesteps),
        }
    }
}

/// diffusers' `UNet2DModel`: `(x [n, c, h, w], timesteps [n]) -> [n, out_channels, h, w]`.
#[derive(Debug)]
pub struct UNet2DModel {
    conv_in: Conv2d,
    time_proj: TimeProjection,
    time_embedding: TimestepEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<UNetMidBlock2D>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    config: UNet2DConfig,
}

impl UNet2DModel {
    /// Builds the architecture of `config`, taking its weights by their published names under
    /// `p` (check them with [`Weights::finish`](crate::weights::Weights::finish)).
    pub fn new(p: &WeightPath, config: &UNet2DConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let c = config;
        let channels = &c.block_out_channels;
        let time_embed_dim = c.time_embed_dim();
        let resnet = ResnetBlock2DConfig {
            out_channels: None,
            temb_channels: Some(time_embed_dim),
            groups: c.groups(),
            groups_out: None,
            eps: c.norm_eps,
            act: Activation::from_name("act_fn", &c.act_fn)?,
            time_embedding_norm: TimeEmbeddingNorm::from_name(&c.resnet_time_scale_shift)?,
            skip_time_act: false,
            output_scale_factor: 1.0,
        };
        let settings = BlockSettings {
            layers_per_block: c.layers_per_block,
            resnet,
            attention_head_dim: c.attention_head_dim,
            downsample_padding: c.downsample_padding,
            attn_downsample: c.attn_downsample(),
            attn_upsample: c.attn_upsample(),
        };
        let (down_types, up_types) = c.block_types()?;
        let (time_proj, time_input_dim) = TimeProjection::new(&p.pp("time_proj"), c);
        Ok(Self {
            conv_in: Conv2d::new(&p.pp("conv_in"), c.in_channels, channels[0], 3, 1, 1),
            time_proj,
            // diffusers builds this MLP with its default SiLU whatever `act_fn` says.
            time_embedding: TimestepEmbedding::new(
                &p.pp("time_embedding"),
                time_input_dim,
                time_embed_dim,
                Activation::Silu,
                None,
            ),
            down_blocks: down_levels(channels)
                .into_iter()
                .zip(down_types)
                .map(|(level, kind)| DownBlock::new(&p.pp("down_blocks"), level, kind, &settings))
                .collect(),
            mid_block: c
                .mid_block_type
                .as_ref()
                .map(|_| mid_block(&p.pp("mid_block"), c, resnet)),
            up_blocks: up_levels(channels)
                .into_iter()
                .zip(up_types)
                .map(|(level, kind)| UpBlock::new(&p.pp("up_blocks"), level, kind, &settings))
                .collect(),
            conv_norm_out: GroupNorm::new(
                &p.pp("conv_norm_out"),
                c.groups(),
                channels[0],
                c.norm_eps,
            ),
            conv_out: Conv2d::new(&p.pp("conv_out"), channels[0], c.out_channels, 3, 1, 1),
            config: config.clone(),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &UNet2DConfig {
        &self.config
    }

    /// The prediction for samples `x` `[n, in_channels, h, w]` at `timesteps` (`[n]`, or one
    /// value for all), `[n, out_channels, h, w]`. `h` and `w` must be multiples of
    /// `2^(levels - 1)`. Positional embeddings take fractional steps; `fourier` ones take
    /// noise levels (positive: their logarithm is embedded, and the output is divided by
    /// them); `learned` ones round to the nearest row of their table.
    pub fn forward(&self, x: &Tensor, timesteps: &Tensor) -> Tensor {
        let batch = x.size()[0];
        let x = if self.config.center_input_sample {
            x * 2.0 - 1.0
        } else {
            x.shallow_clone()
        };
        let timesteps = timesteps
            .to_device(x.device())
            .reshape([-1])
            .expand([batch], false);
        let emb = self
            .time_embedding
            .forward(&self.time_proj.forward(&timesteps).to_kind(x.kind()));
        let emb = Some(&emb);

        let mut skip_sample = x.shallow_clone();
        let mut x = self.conv_in.forward(&x);
        let mut skips = vec![x.shallow_clone()];
        for block in &self.down_blocks {
            let (out, res) = block.forward(&x, emb, &mut skip_sample);
            x = out;
            skips.extend(res);
        }
        if let Some(mid) = &self.mid_block {
            x = mid.forward(&x, emb);
        }
        let mut skip_sample = None;
        for block in &self.up_blocks {
            let res = skips.split_off(skips.len() - block.num_skips());
            x = block.forward(&x, &res, emb, &mut skip_sample);
        }
        // diffusers' UNet2DModel ends with a SiLU whatever `act_fn` says.
        let out = self
            .conv_out
            .forward(&self.conv_norm_out.forward(&x).silu());
        let out = match skip_sample {
            Some(skip_sample) => out + skip_sample,
            None => out,
        };
        let out = if self.config.time_embedding_type == "fourier" {
            out / timesteps.to_kind(x.kind()).reshape([-1, 1, 1, 1])
        } else {
            out
        };
        // NCHW again whatever the layout inside (a no-op unless it was channels-last).
        out.contiguous()
    }
}

/// The mid block (`mid_block` is `p`): one attention between two resnets at the deepest level,
/// its output scaled by `mid_block_scale_factor`.
fn mid_block(p: &WeightPath, c: &UNet2DConfig, resnet: ResnetBlock2DConfig) -> UNetMidBlock2D {
    let last = c.block_out_channels[c.block_out_channels.len() - 1];
    let attention = c.add_attention.then(|| {
        (
            c.attention_head_dim.unwrap_or(last),
            c.mid_attention_groups(),
        )
    });
    let resnet = ResnetBlock2DConfig {
        groups: c.mid_groups(),
        output_scale_factor: c.mid_block_scale_factor,
        ..resnet
    };
    UNetMidBlock2D::new(p, last, 1, resnet, attention)
}
