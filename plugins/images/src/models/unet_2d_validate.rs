//! [`UNet2DConfig::validate`]: the configurations diffusers' `UNet2DModel` builds and runs, and
//! this crate with it; anything else is refused naming the key.

use crate::models::resnet::{check_levels, Activation, ConfigError, TimeEmbeddingNorm};
use crate::models::unet_2d::UNet2DConfig;
use crate::models::unet_2d_blocks::{down_levels, up_levels, DownsampleKind};
use crate::models::unet_2d_levels::{DownBlockType, UpBlockType};
use crate::models::unet_2d_skip_blocks::{skip_groups, skip_up_groups};

/// Channels of the image the skip blocks carry.
const SKIP_CHANNELS: i64 = 3;

/// Where the group count of a norm comes from, for messages.
const NORM_GROUPS: &str = "`norm_num_groups`";
const SKIP_GROUPS: &str =
    "the skip blocks' min(channels / 4, 32) groups, from `block_out_channels`";
const SKIP_UP_GROUPS: &str =
    "AttnSkipUpBlock2D's min(in + skip / 4, 32) groups, from `block_out_channels`";
const SKIP_ATTENTION_GROUPS: &str =
    "the skip blocks' attention norm of 32 groups, from `block_out_channels`";
const MID_ATTENTION_GROUPS: &str = "`attn_norm_num_groups`";

/// One group norm of the model: its channels, its groups, where the groups come from.
type Norm = (i64, i64, &'static str);

impl UNet2DConfig {
    /// Checks that the configuration is one diffusers' `UNet2DModel` builds and runs (and so
    /// does this crate), naming the first key that is not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_levels(
            &self.block_out_channels,
            &self.down_block_types,
            &self.up_block_types,
        )?;
        self.check_time_embedding()?;
        if self.class_embed_type.is_some() || self.num_class_embeds.is_some() {
            return Err(ConfigError::unsupported(
                "class_embed_type / num_class_embeds",
                (&self.class_embed_type, self.num_class_embeds),
                "null for both (this model is unconditional: class-conditional UNet2DModels \
                 are not supported)",
            ));
        }
        let (down, up) = self.block_types()?;
        self.check_layers()?;
        self.check_resampling_types(&down, &up)?;
        self.check_skip_path(&down, &up)?;
        Activation::from_name("act_fn", &self.act_fn)?;
        TimeEmbeddingNorm::from_name(&self.resnet_time_scale_shift)?;
        for (channels, groups, source) in self.group_norms(&down, &up) {
            if groups <= 0 || channels % groups != 0 {
                return Err(ConfigError::Invalid(format!(
                    "{channels} channels cannot be split into {groups} groups ({source})"
                )));
            }
        }
        self.check_heads(&down, &up)
    }

    fn check_time_embedding(&self) -> Result<(), ConfigError> {
        match self.time_embedding_type.as_str() {
            "positional" | "fourier" => Ok(()),
            "learned" => match self.num_train_timesteps {
                Some(rows) if rows > 0 => Ok(()),
                rows => Err(ConfigError::unsupported(
                    "num_train_timesteps",
                    rows,
                    "a positive number of steps: the rows of the `learned` time embedding",
                )),
            },
            other => Err(ConfigError::unsupported(
                "time_embedding_type",
                other,
                "\"positional\", \"fourier\", \"learned\"",
            )),
        }
    }

    /// Blocks without resnets (`layers_per_block` 0 down) cannot change the width, so every
    /// level must then have the same.
    fn check_layers(&self) -> Result<(), ConfigError> {
        let first = self.block_out_channels[0];
        if self.layers_per_block == 0 && self.block_out_channels.iter().any(|&c| c != first) {
            return Err(ConfigError::unsupported(
                "layers_per_block",
                0,
                "at least 1 (0 only when every level of `block_out_channels` has the same \
                 width: a block's first resnet changes the width)",
            ));
        }
        Ok(())
    }

    /// `downsample_type` and `upsample_type` matter to `AttnDownBlock2D` and `AttnUpBlock2D`
    /// that resample (diffusers builds none for other values, and the UNet then fails).
    fn check_resampling_types(
        &self,
        down: &[DownBlockType],
        up: &[UpBlockType],
    ) -> Result<(), ConfigError> {
        let last = down.len() - 1;
        let accepted = "\"conv\", \"resnet\" (null is \"conv\")";
        if down[..last].contains(&DownBlockType::AttnDown) && self.attn_downsample().is_none() {
            return Err(ConfigError::unsupported(
                "downsample_type",
                &self.downsample_type,
                accepted,
            ));
        }
        let conv_down = down[..last].iter().any(|&kind| {
            kind == DownBlockType::Down
                || (kind == DownBlockType::AttnDown
                    && matches!(self.attn_downsample(), Some(DownsampleKind::Conv { .. })))
        });
        if conv_down && !matches!(self.downsample_padding, 0 | 1) {
            return Err(ConfigError::unsupported(
                "downsample_padding",
                self.downsample_padding,
                "0 or 1 (other paddings do not halve the size, and the up path cannot meet \
                 the skip connections)",
            ));
        }
        if up[..last].contains(&UpBlockType::AttnUp) && self.attn_upsample().is_none() {
            return Err(ConfigError::unsupported(
                "upsample_type",
                &self.upsample_type,
                accepted,
            ));
        }
        Ok(())
    }

    /// The skip image: down skip blocks that down-sample must follow skip blocks only (the
    /// image shrinks in those alone) and read a 3-channel input; once an up skip block that
    /// up-samples has started the image, every later block must carry it on, and the output
    /// it is added to must have 3 channels.
    fn check_skip_path(
        &self,
        down: &[DownBlockType],
        up: &[UpBlockType],
    ) -> Result<(), ConfigError> {
        let last = down.len() - 1;
        for i in (0..last).filter(|&i| down[i].is_skip()) {
            if down[..i].iter().any(|kind| !kind.is_skip()) {
                return Err(ConfigError::unsupported(
                    "down_block_types",
                    &self.down_block_types,
                    "skip blocks (SkipDownBlock2D, AttnSkipDownBlock2D) that down-sample \
                     after skip blocks only: the image they add to the features is \
                     down-sampled by skip blocks alone",
                ));
            }
            if self.in_channels != SKIP_CHANNELS {
                return Err(ConfigError::unsupported(
                    "in_channels",
                    self.in_channels,
                    "3 (the skip blocks of `down_block_types` add the 3-channel input image \
                     to their features)",
                ));
            }
        }
        let Some(first) = up.iter().position(|kind| kind.is_skip()) else {
            return Ok(());
        };
        if first == last {
            return Ok(());
        }
        if up[first..].iter().any(|kind| !kind.is_skip()) {
            return Err(ConfigError::unsupported(
                "up_block_types",
                &self.up_block_types,
                "skip blocks only after the first skip block (SkipUpBlock2D, \
                 AttnSkipUpBlock2D): each up-samples the image the previous one left",
            ));
        }
        if self.out_channels != SKIP_CHANNELS {
            return Err(ConfigError::unsupported(
                "out_channels",
                self.out_channels,
                "3 (the skip blocks of `up_block_types` add a 3-channel image to the output)",
            ));
        }
        Ok(())
    }

    /// Every group norm the model builds.
    fn group_norms(&self, down: &[DownBlockType], up: &[UpBlockType]) -> Vec<Norm> {
        let mut norms = vec![(self.block_out_channels[0], self.groups(), NORM_GROUPS)];
        for (level, &kind) in down_levels(&self.block_out_channels).iter().zip(down) {
            let out = level.out_channels;
            for i in 0..self.layers_per_block {
                let from = if i == 0 { level.in_channels } else { out };
                norms.extend(self.resnet_norms(from, out, kind.is_skip(), false));
            }
            norms.extend(self.attention_norm(out, kind.has_attention(), kind.is_skip()));
        }
        if self.mid_block_type.is_some() {
            let last = self.block_out_channels[self.block_out_channels.len() - 1];
            norms.push((last, self.mid_groups(), NORM_GROUPS));
            if let Some(groups) = self.mid_attention_groups().filter(|_| self.add_attention) {
                norms.push((last, groups, MID_ATTENTION_GROUPS));
            }
        }
        for (level, &kind) in up_levels(&self.block_out_channels).iter().zip(up) {
            let (out, layers) = (level.out_channels, self.layers_per_block + 1);
            for i in 0..layers {
                let skip = if i + 1 == layers {
                    level.in_channels
                } else {
                    out
                };
                let from = if i == 0 {
                    level.prev_output_channel
                } else {
                    out
                };
                let first = match kind {
                    UpBlockType::AttnSkipUp => (
                        from + skip,
                        skip_up_groups(from, skip, true),
                        SKIP_UP_GROUPS,
                    ),
                    UpBlockType::SkipUp => {
                        (from + skip, skip_up_groups(from, skip, false), SKIP_GROUPS)
                    }
                    _ => (from + skip, self.groups(), NORM_GROUPS),
                };
                norms.push(first);
                norms.extend(self.resnet_norms(out, out, kind.is_skip(), true));
            }
            norms.extend(self.attention_norm(out, kind.has_attention(), kind.is_skip()));
        }
        norms
    }

    /// The norms of a resnet `from -> out` (only the second with `second_only`); the
    /// resampling resnets and the skip blocks' `skip_norm` are `out -> out` resnets' norms.
    fn resnet_norms(&self, from: i64, out: i64, skip: bool, second_only: bool) -> Vec<Norm> {
        let norm = |channels: i64| {
            if skip {
                (channels, skip_groups(channels), SKIP_GROUPS)
            } else {
                (channels, self.groups(), NORM_GROUPS)
            }
        };
        if second_only {
            vec![norm(out)]
        } else {
            vec![norm(from), norm(out)]
        }
    }

    fn attention_norm(&self, channels: i64, attention: bool, skip: bool) -> Option<Norm> {
        attention.then(|| {
            if skip {
                (channels, 32, SKIP_ATTENTION_GROUPS)
            } else {
                (channels, self.groups(), NORM_GROUPS)
            }
        })
    }

    /// Every attention must have at least one head (`channels / attention_head_dim`, rounded
    /// down as diffusers does: heads need not cover every channel).
    fn check_heads(&self, down: &[DownBlockType], up: &[UpBlockType]) -> Result<(), ConfigError> {
        let levels = self.block_out_channels.len();
        let mut attended: Vec<i64> = Vec::new();
        for (i, &channels) in self.block_out_channels.iter().enumerate() {
            if down[i].has_attention() || up[levels - 1 - i].has_attention() {
                attended.push(channels);
            }
        }
        if self.mid_block_type.is_some() && self.add_attention {
            attended.push(self.block_out_channels[levels - 1]);
        }
        for channels in attended {
            let head_dim = self.attention_head_dim.unwrap_or(channels);
            if head_dim <= 0 || head_dim > channels {
                return Err(ConfigError::Invalid(format!(
                    "{channels} channels cannot hold one head of {head_dim} \
                     (`attention_head_dim`)"
                )));
            }
        }
        Ok(())
    }
}
