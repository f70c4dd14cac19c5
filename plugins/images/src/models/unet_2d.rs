//! diffusers' `UNet2DModel`: the unconditional UNet of the DDPM checkpoints
//! (`google/ddpm-cifar10-32` and relatives).

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::models::embeddings::{TimestepEmbedding, Timesteps};
use crate::models::resnet::{
    check_levels, Activation, ConfigError, ResnetBlock2DConfig, TimeEmbeddingNorm,
};
use crate::models::unet_2d_blocks::{
    down_levels, up_levels, AttnDownBlock2D, AttnUpBlock2D, DownBlock2D, UNetMidBlock2D, UpBlock2D,
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
    /// `positional` (only this one is supported).
    pub time_embedding_type: String,
    /// Width of the time embedding; `None` is `4 * block_out_channels[0]`.
    pub time_embedding_dim: Option<i64>,
    /// `downscale_freq_shift` of the sinusoidal embedding.
    pub freq_shift: f64,
    /// Order `cos, sin` instead of `sin, cos`.
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub flip_sin_to_cos: bool,
    /// `DownBlock2D` or `AttnDownBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2D`, or `None` for no mid block.
    pub mid_block_type: Option<String>,
    /// `UpBlock2D` or `AttnUpBlock2D` per level.
    pub up_block_types: Vec<String>,
    /// Channels per level.
    pub block_out_channels: Vec<i64>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: usize,
    /// Output scale of the mid block.
    pub mid_block_scale_factor: f64,
    /// Padding of the down-sampling convolutions (0 pads right and bottom by one).
    pub downsample_padding: i64,
    /// `conv` (only this one is supported).
    pub downsample_type: String,
    /// `conv` (only this one is supported).
    pub upsample_type: String,
    /// Dropout (inference: unused).
    pub dropout: f64,
    /// Activation of the resnets.
    pub act_fn: String,
    /// Features per attention head; `None` is one head over all channels.
    pub attention_head_dim: Option<i64>,
    /// Groups of the group norms; `None` is `min(block_out_channels[0] / 4, 32)`.
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
    /// Class conditioning (not supported).
    pub class_embed_type: Option<String>,
    /// Class conditioning (not supported).
    pub num_class_embeds: Option<i64>,
    /// For `learned` time embeddings (not supported).
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
            downsample_type: "conv".to_string(),
            upsample_type: "conv".to_string(),
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
    /// Checks that the configuration is consistent and within what this implementation
    /// supports, naming the first key that is not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_levels(
            &self.block_out_channels,
            &self.down_block_types,
            &self.up_block_types,
        )?;
        if self.time_embedding_type != "positional" {
            return Err(ConfigError::unsupported(
                "time_embedding_type",
                &self.time_embedding_type,
                "\"positional\"",
            ));
        }
        if self.class_embed_type.is_some() || self.num_class_embeds.is_some() {
            return Err(ConfigError::unsupported(
                "class_embed_type / num_class_embeds",
                (&self.class_embed_type, self.num_class_embeds),
                "null (no class conditioning)",
            ));
        }
        for (key, value) in [
            ("downsample_type", &self.downsample_type),
            ("upsample_type", &self.upsample_type),
        ] {
            if value != "conv" {
                return Err(ConfigError::unsupported(key, value, "\"conv\""));
            }
        }
        for kind in &self.down_block_types {
            if !matches!(kind.as_str(), "DownBlock2D" | "AttnDownBlock2D") {
                return Err(ConfigError::unsupported(
                    "down_block_types",
                    kind,
                    "\"DownBlock2D\", \"AttnDownBlock2D\"",
                ));
            }
        }
        for kind in &self.up_block_types {
            if !matches!(kind.as_str(), "UpBlock2D" | "AttnUpBlock2D") {
                return Err(ConfigError::unsupported(
                    "up_block_types",
                    kind,
                    "\"UpBlock2D\", \"AttnUpBlock2D\"",
                ));
            }
        }
        if let Some(mid) = &self.mid_block_type {
            if mid != "UNetMidBlock2D" {
                return Err(ConfigError::unsupported(
                    "mid_block_type",
                    mid,
                    "\"UNetMidBlock2D\", null",
                ));
            }
        }
        Activation::from_name("act_fn", &self.act_fn)?;
        TimeEmbeddingNorm::from_name(&self.resnet_time_scale_shift)?;
        let groups = self.groups();
        for &channels in &self.block_out_channels {
            if groups <= 0 || channels % groups != 0 {
                return Err(ConfigError::Invalid(format!(
                    "{channels} channels cannot be split into {groups} groups (`norm_num_groups`)"
                )));
            }
            let head_dim = self.attention_head_dim.unwrap_or(channels);
            if head_dim <= 0 || channels % head_dim != 0 {
                return Err(ConfigError::Invalid(format!(
                    "{channels} channels cannot be split into heads of {head_dim} \
                     (`attention_head_dim`)"
                )));
            }
        }
        Ok(())
    }

    fn groups(&self) -> i64 {
        self.norm_num_groups
            .unwrap_or_else(|| (self.block_out_channels[0] / 4).min(32))
    }
}

#[derive(Debug)]
enum DownBlock {
    Plain(DownBlock2D),
    Attn(AttnDownBlock2D),
}

#[derive(Debug)]
enum UpBlock {
    Plain(UpBlock2D),
    Attn(AttnUpBlock2D),
}

/// diffusers' `UNet2DModel`: `(x [n, c, h, w], timesteps [n]) -> [n, out_channels, h, w]`.
#[derive(Debug)]
pub struct UNet2DModel {
    conv_in: Conv2d,
    time_proj: Timesteps,
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
        let time_embed_dim = c.time_embedding_dim.unwrap_or(channels[0] * 4);
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
        Ok(Self {
            conv_in: Conv2d::new(&p.pp("conv_in"), c.in_channels, channels[0], 3, 1, 1),
            time_proj: Timesteps::new(channels[0], c.flip_sin_to_cos, c.freq_shift),
            // diffusers builds this MLP with its default SiLU whatever `act_fn` says.
            time_embedding: TimestepEmbedding::new(
                &p.pp("time_embedding"),
                channels[0],
                time_embed_dim,
                Activation::Silu,
                None,
            ),
            down_blocks: down_blocks(&p.pp("down_blocks"), c, resnet),
            mid_block: c
                .mid_block_type
                .as_ref()
                .map(|_| mid_block(&p.pp("mid_block"), c, resnet)),
            up_blocks: up_blocks(&p.pp("up_blocks"), c, resnet),
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
    /// value for all; fractional values allowed), `[n, out_channels, h, w]`. `h` and `w` must be
    /// multiples of `2^(levels - 1)`.
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

        let mut x = self.conv_in.forward(&x);
        let mut skips = vec![x.shallow_clone()];
        for block in &self.down_blocks {
            let (out, res) = match block {
                DownBlock::Plain(b) => b.forward(&x, emb),
                DownBlock::Attn(b) => b.forward(&x, emb),
            };
            x = out;
            skips.extend(res);
        }
        if let Some(mid) = &self.mid_block {
            x = mid.forward(&x, emb);
        }
        for block in &self.up_blocks {
            let n = match block {
                UpBlock::Plain(b) => b.num_skips(),
                UpBlock::Attn(b) => b.num_skips(),
            };
            let res = skips.split_off(skips.len() - n);
            x = match block {
                UpBlock::Plain(b) => b.forward(&x, &res, emb, None),
                UpBlock::Attn(b) => b.forward(&x, &res, emb, None),
            };
        }
        // diffusers' UNet2DModel ends with a SiLU whatever `act_fn` says.
        self.conv_out
            .forward(&self.conv_norm_out.forward(&x).silu())
    }
}

/// The down blocks (`down_blocks.{i}` under `p`): `DownBlock2D` or `AttnDownBlock2D` per level.
fn down_blocks(p: &WeightPath, c: &UNet2DConfig, resnet: ResnetBlock2DConfig) -> Vec<DownBlock> {
    let n = c.layers_per_block;
    down_levels(&c.block_out_channels)
        .into_iter()
        .zip(&c.down_block_types)
        .map(|(level, kind)| {
            let p = p.pp(level.index);
            let (from, to) = (level.in_channels, level.out_channels);
            let padding = level.downsample.then_some(c.downsample_padding);
            if kind == "AttnDownBlock2D" {
                let head_dim = c.attention_head_dim.unwrap_or(to);
                DownBlock::Attn(AttnDownBlock2D::new(
                    &p, from, to, n, resnet, head_dim, padding,
                ))
            } else {
                DownBlock::Plain(DownBlock2D::new(&p, from, to, n, resnet, padding))
            }
        })
        .collect()
}

/// The mid block (`mid_block` is `p`): one attention between two resnets at the deepest level,
/// its output scaled by `mid_block_scale_factor`.
fn mid_block(p: &WeightPath, c: &UNet2DConfig, resnet: ResnetBlock2DConfig) -> UNetMidBlock2D {
    let last = c.block_out_channels[c.block_out_channels.len() - 1];
    let attn_groups = c
        .attn_norm_num_groups
        .or((resnet.time_embedding_norm == TimeEmbeddingNorm::Default).then_some(c.groups()));
    let attention = c
        .add_attention
        .then(|| (c.attention_head_dim.unwrap_or(last), attn_groups));
    let resnet = ResnetBlock2DConfig {
        output_scale_factor: c.mid_block_scale_factor,
        ..resnet
    };
    UNetMidBlock2D::new(p, last, 1, resnet, attention)
}

/// The up blocks (`up_blocks.{i}` under `p`), deepest first: `UpBlock2D` or `AttnUpBlock2D`.
fn up_blocks(p: &WeightPath, c: &UNet2DConfig, resnet: ResnetBlock2DConfig) -> Vec<UpBlock> {
    let n = c.layers_per_block + 1;
    up_levels(&c.block_out_channels)
        .into_iter()
        .zip(&c.up_block_types)
        .map(|(level, kind)| {
            let p = p.pp(level.index);
            let (skip, prev, out) = (
                level.in_channels,
                level.prev_output_channel,
                level.out_channels,
            );
            if kind == "AttnUpBlock2D" {
                let head_dim = c.attention_head_dim.unwrap_or(out);
                UpBlock::Attn(AttnUpBlock2D::new(
                    &p,
                    skip,
                    prev,
                    out,
                    n,
                    resnet,
                    head_dim,
                    level.upsample,
                ))
            } else {
                UpBlock::Plain(UpBlock2D::new(
                    &p,
                    skip,
                    prev,
                    out,
                    n,
                    resnet,
                    level.upsample,
                ))
            }
        })
        .collect()
}
