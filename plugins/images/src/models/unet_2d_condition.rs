//! diffusers' `UNet2DConditionModel`: the text-conditioned UNet of Stable Diffusion 1.x and 2.x.
//!
//! The configs of those checkpoints call the number of attention heads `attention_head_dim`
//! (a naming slip diffusers keeps for compatibility): SD 1.5 has 8 heads everywhere, SD 2 has
//! `[5, 10, 20, 20]`, so 64 features per head in both.

use serde::Deserialize;
use tch::Tensor;

use crate::models::attention::Attention;
use crate::models::attention_slicing::{AttentionSlicing, SlicingError};
use crate::models::embeddings::{TimestepEmbedding, Timesteps};
use crate::models::resnet::{
    check_levels, Activation, ConfigError, ResnetBlock2DConfig, TimeEmbeddingNorm,
};
use crate::models::unet_2d::SampleSize;
use crate::models::unet_2d_blocks::{
    down_levels, up_levels, CrossAttnConfig, CrossAttnDownBlock2D, CrossAttnUpBlock2D, DownBlock2D,
    UNetMidBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D,
};
use crate::nn::{Conv2d, GroupNorm};
use crate::weights::WeightPath;

/// A config value given either once for all levels or per level.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// The same for every level.
    One(T),
    /// One per level.
    Many(Vec<T>),
}

impl<T: Clone + std::fmt::Debug> OneOrMany<T> {
    /// The value of each of `levels` levels; `key` names the config entry in errors.
    pub fn per_level(&self, key: &str, levels: usize) -> Result<Vec<T>, ConfigError> {
        match self {
            Self::One(value) => Ok(vec![value.clone(); levels]),
            Self::Many(values) if values.len() == levels => Ok(values.clone()),
            Self::Many(values) => Err(ConfigError::Invalid(format!(
                "`{key}` has {} entries for {levels} levels: {values:?}",
                values.len()
            ))),
        }
    }
}

/// The published `config.json` of a `UNet2DConditionModel`, with diffusers' defaults for absent
/// keys. Other keys (`_class_name`, ...) are ignored; keys of features this implementation does
/// not have (class or additional embeddings, GLIGEN, ...) are read so that
/// [`UNet2DConditionConfig::validate`] can refuse a config that sets them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    /// Height and width of the latents it was trained on.
    pub sample_size: Option<SampleSize>,
    /// Channels of the input latents.
    pub in_channels: i64,
    /// Channels of the output.
    pub out_channels: i64,
    /// Map the input from `[0, 1]` to `[-1, 1]` first.
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub center_input_sample: bool,
    /// Order `cos, sin` in the timestep embedding.
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the timestep embedding.
    pub freq_shift: f64,
    /// `CrossAttnDownBlock2D` or `DownBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn`, `UNetMidBlock2D` or `None`.
    pub mid_block_type: Option<String>,
    /// `UpBlock2D` or `CrossAttnUpBlock2D` per level.
    pub up_block_types: Vec<String>,
    /// Cross-attention only (no self-attention) per level.
    #[serde(deserialize_with = "crate::models::nullable::bools")]
    pub only_cross_attention: OneOrMany<bool>,
    /// Channels per level.
    pub block_out_channels: Vec<i64>,
    /// Resnets per down block (up blocks have one more), once or per level.
    pub layers_per_block: OneOrMany<usize>,
    /// Padding of the down-sampling convolutions.
    pub downsample_padding: i64,
    /// Output scale of the mid block.
    pub mid_block_scale_factor: f64,
    /// Dropout (inference: unused).
    pub dropout: f64,
    /// Activation of the resnets and the time embedding.
    pub act_fn: String,
    /// Groups of the group norms (`None`: no output norm; not supported).
    pub norm_num_groups: Option<i64>,
    /// Epsilon of the group norms.
    pub norm_eps: f64,
    /// Features of the encoder hidden states, once or per level.
    pub cross_attention_dim: OneOrMany<i64>,
    /// Transformer blocks per attention, once or per level.
    pub transformer_layers_per_block: OneOrMany<usize>,
    /// Per-level transformer depths of the up path (not supported).
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Projection of the encoder hidden states (not supported).
    pub encoder_hid_dim: Option<i64>,
    /// Projection of the encoder hidden states (not supported).
    pub encoder_hid_dim_type: Option<String>,
    /// Number of attention heads per level (sic; see the module documentation).
    pub attention_head_dim: OneOrMany<i64>,
    /// Must be `None`, as diffusers requires.
    pub num_attention_heads: Option<serde_json::Value>,
    /// Two cross-attentions (not supported).
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub dual_cross_attention: bool,
    /// Linear projections in and out of the transformers (SD 2).
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub use_linear_projection: bool,
    /// Class conditioning (not supported).
    pub class_embed_type: Option<String>,
    /// Additional conditioning (not supported).
    pub addition_embed_type: Option<String>,
    /// Additional conditioning (not supported).
    pub addition_time_embed_dim: Option<i64>,
    /// Class conditioning (not supported).
    pub num_class_embeds: Option<i64>,
    /// Compute attention scores in float32 under half precision. Read but without effect, as
    /// in diffusers: its default `AttnProcessor2_0` (like [`Attention`](crate::models::attention::Attention)
    /// here) calls the fused `scaled_dot_product_attention`, which ignores it, and whose kernels
    /// accumulate half-precision scores and softmax in float32.
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub upcast_attention: bool,
    /// `default` or `scale_shift`.
    pub resnet_time_scale_shift: String,
    /// Skip the activation before the time projections of `ResnetDownsampleBlock2D`-style
    /// blocks (not used by the supported blocks).
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub resnet_skip_time_act: bool,
    /// Output scale of `ResnetDownsampleBlock2D`-style blocks (not used by the supported blocks).
    pub resnet_out_scale_factor: f64,
    /// `positional` (only this one is supported).
    pub time_embedding_type: String,
    /// Width of the time embedding; `None` is `4 * block_out_channels[0]`.
    pub time_embedding_dim: Option<i64>,
    /// Activation applied to the time embedding before the blocks.
    pub time_embedding_act_fn: Option<String>,
    /// Activation after the time embedding's MLP.
    pub timestep_post_act: Option<String>,
    /// Conditioning of the time embedding (not supported).
    pub time_cond_proj_dim: Option<i64>,
    /// Kernel of the input convolution.
    pub conv_in_kernel: i64,
    /// Kernel of the output convolution.
    pub conv_out_kernel: i64,
    /// Class conditioning (not supported).
    pub projection_class_embeddings_input_dim: Option<i64>,
    /// `default` (GLIGEN's `gated` is not supported).
    pub attention_type: String,
    /// Class conditioning (not supported).
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub class_embeddings_concat: bool,
    /// Cross-attention only in the mid block (only used by mid-block types not supported here).
    pub mid_block_only_cross_attention: Option<bool>,
    /// Normalisation of the encoder hidden states (not supported).
    pub cross_attention_norm: Option<String>,
}

impl Default for UNet2DConditionConfig {
    fn default() -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: strings(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".to_string()),
            up_block_types: strings(&[
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]),
            only_cross_attention: OneOrMany::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: OneOrMany::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            dropout: 0.0,
            act_fn: "silu".to_string(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: OneOrMany::One(1280),
            transformer_layers_per_block: OneOrMany::One(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: OneOrMany::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".to_string(),
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            time_embedding_type: "positional".to_string(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            projection_class_embeddings_input_dim: None,
            attention_type: "default".to_string(),
            class_embeddings_concat: false,
            mid_block_only_cross_attention: None,
            cross_attention_norm: None,
        }
    }
}

/// The per-level settings resolved from a config.
struct Levels {
    only_cross_attention: Vec<bool>,
    layers_per_block: Vec<usize>,
    cross_attention_dim: Vec<i64>,
    transformer_layers: Vec<usize>,
    heads: Vec<i64>,
}

impl UNet2DConditionConfig {
    /// Checks that the configuration is consistent and within what this implementation
    /// supports, naming the first key that is not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.levels().map(|_| ())
    }

    /// Validates the config and resolves its per-level settings.
    fn levels(&self) -> Result<Levels, ConfigError> {
        check_levels(
            &self.block_out_channels,
            &self.down_block_types,
            &self.up_block_types,
        )?;
        self.refuse_unsupported_features()?;
        self.check_block_types()?;
        self.check_layers()?;
        let levels = self.resolve_levels()?;
        self.check_groups_and_heads(&levels.heads)?;
        Ok(levels)
    }

    /// Refuses the keys of features this implementation does not have.
    fn refuse_unsupported_features(&self) -> Result<(), ConfigError> {
        let unset: [(&str, bool); 13] = [
            ("num_attention_heads", self.num_attention_heads.is_some()),
            ("encoder_hid_dim", self.encoder_hid_dim.is_some()),
            ("encoder_hid_dim_type", self.encoder_hid_dim_type.is_some()),
            ("class_embed_type", self.class_embed_type.is_some()),
            ("num_class_embeds", self.num_class_embeds.is_some()),
            ("addition_embed_type", self.addition_embed_type.is_some()),
            (
                "addition_time_embed_dim",
                self.addition_time_embed_dim.is_some(),
            ),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
            (
                "projection_class_embeddings_input_dim",
                self.projection_class_embeddings_input_dim.is_some(),
            ),
            ("class_embeddings_concat", self.class_embeddings_concat),
            ("dual_cross_attention", self.dual_cross_attention),
            ("cross_attention_norm", self.cross_attention_norm.is_some()),
            (
                "reverse_transformer_layers_per_block",
                self.reverse_transformer_layers_per_block.is_some(),
            ),
        ];
        if let Some((key, _)) = unset.iter().find(|(_, set)| *set) {
            return Err(ConfigError::unsupported(key, "set", "null / false"));
        }
        if self.norm_num_groups.is_none() {
            return Err(ConfigError::unsupported(
                "norm_num_groups",
                "null",
                "an integer",
            ));
        }
        if self.time_embedding_type != "positional" {
            return Err(ConfigError::unsupported(
                "time_embedding_type",
                &self.time_embedding_type,
                "\"positional\"",
            ));
        }
        if self.attention_type != "default" {
            return Err(ConfigError::unsupported(
                "attention_type",
                &self.attention_type,
                "\"default\"",
            ));
        }
        Ok(())
    }

    /// Refuses down, mid and up block types other than Stable Diffusion's.
    fn check_block_types(&self) -> Result<(), ConfigError> {
        for kind in &self.down_block_types {
            if !matches!(kind.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D") {
                return Err(ConfigError::unsupported(
                    "down_block_types",
                    kind,
                    "\"CrossAttnDownBlock2D\", \"DownBlock2D\"",
                ));
            }
        }
        for kind in &self.up_block_types {
            if !matches!(kind.as_str(), "CrossAttnUpBlock2D" | "UpBlock2D") {
                return Err(ConfigError::unsupported(
                    "up_block_types",
                    kind,
                    "\"CrossAttnUpBlock2D\", \"UpBlock2D\"",
                ));
            }
        }
        if let Some(mid) = &self.mid_block_type {
            if !matches!(mid.as_str(), "UNetMidBlock2DCrossAttn" | "UNetMidBlock2D") {
                return Err(ConfigError::unsupported(
                    "mid_block_type",
                    mid,
                    "\"UNetMidBlock2DCrossAttn\", \"UNetMidBlock2D\", null",
                ));
            }
        }
        Ok(())
    }

    /// Checks the convolution kernels, the activations and the time-embedding norm.
    fn check_layers(&self) -> Result<(), ConfigError> {
        for kernel in [self.conv_in_kernel, self.conv_out_kernel] {
            if kernel <= 0 || kernel % 2 == 0 {
                return Err(ConfigError::Invalid(format!(
                    "convolution kernel {kernel} (`conv_in_kernel` / `conv_out_kernel`) must be \
                     odd"
                )));
            }
        }
        Activation::from_name("act_fn", &self.act_fn)?;
        for (key, name) in [
            ("time_embedding_act_fn", &self.time_embedding_act_fn),
            ("timestep_post_act", &self.timestep_post_act),
        ] {
            if let Some(name) = name {
                Activation::from_name(key, name)?;
            }
        }
        TimeEmbeddingNorm::from_name(&self.resnet_time_scale_shift)?;
        Ok(())
    }

    /// The settings given once or per level, one per level.
    fn resolve_levels(&self) -> Result<Levels, ConfigError> {
        let levels = self.block_out_channels.len();
        Ok(Levels {
            only_cross_attention: self
                .only_cross_attention
                .per_level("only_cross_attention", levels)?,
            layers_per_block: self
                .layers_per_block
                .per_level("layers_per_block", levels)?,
            cross_attention_dim: self
                .cross_attention_dim
                .per_level("cross_attention_dim", levels)?,
            transformer_layers: self
                .transformer_layers_per_block
                .per_level("transformer_layers_per_block", levels)?,
            heads: self
                .attention_head_dim
                .per_level("attention_head_dim", levels)?,
        })
    }

    /// Checks that each level's channels split into its norm groups and attention heads.
    fn check_groups_and_heads(&self, heads: &[i64]) -> Result<(), ConfigError> {
        let groups = self.groups();
        for (&channels, &heads) in self.block_out_channels.iter().zip(heads) {
            if groups <= 0 || channels % groups != 0 {
                return Err(ConfigError::Invalid(format!(
                    "{channels} channels cannot be split into {groups} groups (`norm_num_groups`)"
                )));
            }
            if heads <= 0 || channels % heads != 0 {
                return Err(ConfigError::Invalid(format!(
                    "{channels} channels cannot be split into {heads} heads \
                     (`attention_head_dim`)"
                )));
            }
        }
        Ok(())
    }

    fn groups(&self) -> i64 {
        self.norm_num_groups.unwrap_or(32)
    }
}

#[derive(Debug)]
enum DownBlock {
    Plain(DownBlock2D),
    CrossAttn(CrossAttnDownBlock2D),
}

#[derive(Debug)]
enum MidBlock {
    Plain(UNetMidBlock2D),
    CrossAttn(UNetMidBlock2DCrossAttn),
}

#[derive(Debug)]
enum UpBlock {
    Plain(UpBlock2D),
    CrossAttn(CrossAttnUpBlock2D),
}

impl UpBlock {
    fn num_skips(&self) -> usize {
        match self {
            Self::Plain(b) => b.num_skips(),
            Self::CrossAttn(b) => b.num_skips(),
        }
    }
}

/// diffusers' `UNet2DConditionModel`:
/// `(x [n, c, h, w], timesteps [n], encoder_hidden_states [n, seq, d]) -> [n, out, h, w]`.
#[derive(Debug)]
pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    time_embed_act: Option<Activation>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_act: Activation,
    conv_out: Conv2d,
    config: UNet2DConditionConfig,
}

impl UNet2DConditionModel {
    /// Builds the architecture of `cfg`, taking its weights by their published names under `p`
    /// (check them with [`Weights::finish`](crate::weights::Weights::finish)).
    pub fn new(p: &WeightPath, cfg: &UNet2DConditionConfig) -> Result<Self, ConfigError> {
        let levels = cfg.levels()?;
        let c = cfg;
        let channels = &c.block_out_channels;
        let act = Activation::from_name("act_fn", &c.act_fn)?;
        let optional_act = |key: &str, name: &Option<String>| {
            name.as_deref()
                .map(|name| Activation::from_name(key, name))
                .transpose()
        };
        let time_embed_dim = c.time_embedding_dim.unwrap_or(channels[0] * 4);
        let blocks = Blocks {
            config: c,
            levels,
            resnet: ResnetBlock2DConfig {
                out_channels: None,
                temb_channels: Some(time_embed_dim),
                groups: c.groups(),
                groups_out: None,
                eps: c.norm_eps,
                act,
                time_embedding_norm: TimeEmbeddingNorm::from_name(&c.resnet_time_scale_shift)?,
                // diffusers passes `resnet_skip_time_act` only to block types not supported here.
                skip_time_act: false,
                output_scale_factor: 1.0,
            },
        };
        Ok(Self {
            conv_in: Conv2d::new(
                &p.pp("conv_in"),
                c.in_channels,
                channels[0],
                c.conv_in_kernel,
                1,
                (c.conv_in_kernel - 1) / 2,
            ),
            time_proj: Timesteps::new(channels[0], c.flip_sin_to_cos, c.freq_shift),
            time_embedding: TimestepEmbedding::new(
                &p.pp("time_embedding"),
                channels[0],
                time_embed_dim,
                act,
                optional_act("timestep_post_act", &c.timestep_post_act)?,
            ),
            time_embed_act: optional_act("time_embedding_act_fn", &c.time_embedding_act_fn)?,
            down_blocks: blocks.down_blocks(&p.pp("down_blocks")),
            mid_block: blocks.mid_block(&p.pp("mid_block")),
            up_blocks: blocks.up_blocks(&p.pp("up_blocks")),
            conv_norm_out: GroupNorm::new(
                &p.pp("conv_norm_out"),
                c.groups(),
                channels[0],
                c.norm_eps,
            ),
            conv_act: act,
            conv_out: Conv2d::new(
                &p.pp("conv_out"),
                channels[0],
                c.out_channels,
                c.conv_out_kernel,
                1,
                (c.conv_out_kernel - 1) / 2,
            ),
            config: cfg.clone(),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// Every attention layer, down blocks first, then the mid block, then the up blocks (the
    /// order diffusers' `set_attention_slice` walks them).
    pub fn attention_layers_mut(&mut self) -> Vec<&mut Attention> {
        let mut layers = Vec::new();
        for block in &mut self.down_blocks {
            if let DownBlock::CrossAttn(b) = block {
                layers.extend(b.attention_layers_mut());
            }
        }
        if let Some(MidBlock::CrossAttn(b)) = &mut self.mid_block {
            layers.extend(b.attention_layers_mut());
        }
        for block in &mut self.up_blocks {
            if let UpBlock::CrossAttn(b) = block {
                layers.extend(b.attention_layers_mut());
            }
        }
        layers
    }

    /// Slices every attention layer's computation as `slicing` says (diffusers'
    /// `set_attention_slice`), after checking it against every layer's heads; the outputs are
    /// those of unsliced attention up to rounding.
    pub fn set_attention_slicing(&mut self, slicing: AttentionSlicing) -> Result<(), SlicingError> {
        let mut layers = self.attention_layers_mut();
        slicing.check(layers.iter().map(|layer| layer.heads()))?;
        for layer in &mut layers {
            let size = slicing.slice_size(layer.heads());
            layer.set_slice_size(size);
        }
        Ok(())
    }

    /// The prediction for latents `x` `[n, in_channels, h, w]` at `timestep` (`[n]` or one
    /// value for all) conditioned on `encoder_hidden_states` `[n, seq, cross_attention_dim]`.
    /// Any `h` and `w` work; sizes that are not multiples of the total down-sampling are
    /// up-sampled back to the sizes of the skip connections, as in diffusers.
    pub fn forward(&self, x: &Tensor, timestep: &Tensor, encoder_hidden_states: &Tensor) -> Tensor {
        let size = x.size();
        let batch = size[0];
        let factor = 1i64 << (self.up_blocks.len().saturating_sub(1));
        let forward_upsample_size = size[2..].iter().any(|d| d % factor != 0);
        let x = if self.config.center_input_sample {
            x * 2.0 - 1.0
        } else {
            x.shallow_clone()
        };
        let timesteps = timestep
            .to_device(x.device())
            .reshape([-1])
            .expand([batch], false);
        let emb = self
            .time_embedding
            .forward(&self.time_proj.forward(&timesteps).to_kind(x.kind()));
        let emb = match self.time_embed_act {
            Some(act) => act.forward(&emb),
            None => emb,
        };
        let (emb, context) = (Some(&emb), Some(encoder_hidden_states));

        let mut x = self.conv_in.forward(&x);
        let mut skips = vec![x.shallow_clone()];
        for block in &self.down_blocks {
            let (out, res) = match block {
                DownBlock::Plain(b) => b.forward(&x, emb),
                DownBlock::CrossAttn(b) => b.forward(&x, emb, context),
            };
            x = out;
            skips.extend(res);
        }
        x = match &self.mid_block {
            Some(MidBlock::CrossAttn(b)) => b.forward(&x, emb, context),
            Some(MidBlock::Plain(b)) => b.forward(&x, emb),
            None => x,
        };
        let last = self.up_blocks.len().saturating_sub(1);
        for (i, block) in self.up_blocks.iter().enumerate() {
            let res = skips.split_off(skips.len() - block.num_skips());
            let upsample_size = match skips.last() {
                Some(next) if forward_upsample_size && i < last => {
                    let s = next.size();
                    Some([s[2], s[3]])
                }
                _ => None,
            };
            x = match block {
                UpBlock::Plain(b) => b.forward(&x, &res, emb, upsample_size),
                UpBlock::CrossAttn(b) => b.forward(&x, &res, emb, context, upsample_size),
            };
        }
        let x = self.conv_act.forward(&self.conv_norm_out.forward(&x));
        // NCHW again whatever the layout inside (a no-op unless it was channels-last).
        self.conv_out.forward(&x).contiguous()
    }
}

/// What building the down, mid and up blocks needs: the config, its per-level settings and the
/// resnets' settings.
struct Blocks<'a> {
    config: &'a UNet2DConditionConfig,
    levels: Levels,
    resnet: ResnetBlock2DConfig,
}

impl Blocks<'_> {
    /// The cross-attention settings of `level`.
    fn cross(&self, level: usize, only_cross_attention: bool) -> CrossAttnConfig {
        CrossAttnConfig {
            num_attention_heads: self.levels.heads[level],
            transformer_layers: self.levels.transformer_layers[level],
            cross_attention_dim: self.levels.cross_attention_dim[level],
            use_linear_projection: self.config.use_linear_projection,
            only_cross_attention,
        }
    }

    /// `down_blocks.{i}` under `p`: `CrossAttnDownBlock2D` or `DownBlock2D` per level.
    fn down_blocks(&self, p: &WeightPath) -> Vec<DownBlock> {
        let c = self.config;
        down_levels(&c.block_out_channels)
            .into_iter()
            .zip(&c.down_block_types)
            .map(|(level, kind)| {
                let i = level.index;
                let p = p.pp(i);
                let (from, to) = (level.in_channels, level.out_channels);
                let n = self.levels.layers_per_block[i];
                let padding = level.downsample.then_some(c.downsample_padding);
                if kind == "CrossAttnDownBlock2D" {
                    let cross = self.cross(i, self.levels.only_cross_attention[i]);
                    DownBlock::CrossAttn(CrossAttnDownBlock2D::new(
                        &p,
                        from,
                        to,
                        n,
                        self.resnet,
                        cross,
                        padding,
                    ))
                } else {
                    DownBlock::Plain(DownBlock2D::new(&p, from, to, n, self.resnet, padding))
                }
            })
            .collect()
    }

    /// The mid block at `p` (`mid_block`) at the deepest level, if the config has one.
    fn mid_block(&self, p: &WeightPath) -> Option<MidBlock> {
        let c = self.config;
        let levels = c.block_out_channels.len();
        let last = c.block_out_channels[levels - 1];
        let resnet = ResnetBlock2DConfig {
            output_scale_factor: c.mid_block_scale_factor,
            ..self.resnet
        };
        match c.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {
                let cross = self.cross(levels - 1, false);
                Some(MidBlock::CrossAttn(UNetMidBlock2DCrossAttn::new(
                    p, last, 1, resnet, cross,
                )))
            }
            // get_mid_block builds this one with a single resnet and no attention.
            Some(_) => Some(MidBlock::Plain(UNetMidBlock2D::new(
                p, last, 0, resnet, None,
            ))),
            None => None,
        }
    }

    /// `up_blocks.{i}` under `p`, deepest level first: `CrossAttnUpBlock2D` or `UpBlock2D`.
    fn up_blocks(&self, p: &WeightPath) -> Vec<UpBlock> {
        let c = self.config;
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
                let n = self.levels.layers_per_block[level.level] + 1;
                if kind == "CrossAttnUpBlock2D" {
                    let only_cross = self.levels.only_cross_attention[level.level];
                    UpBlock::CrossAttn(CrossAttnUpBlock2D::new(
                        &p,
                        skip,
                        prev,
                        out,
                        n,
                        self.resnet,
                        self.cross(level.level, only_cross),
                        level.upsample,
                    ))
                } else {
                    UpBlock::Plain(UpBlock2D::new(
                        &p,
                        skip,
                        prev,
                        out,
                        n,
                        self.resnet,
                        level.upsample,
                    ))
                }
            })
            .collect()
    }
}
