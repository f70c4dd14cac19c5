//! The down and up blocks of a `UNet2DModel` by type (`down_block_types`, `up_block_types`):
//! the names diffusers' `get_down_block` and `get_up_block` build for it, and one enum each
//! that builds and runs whichever was named.

use tch::Tensor;

use crate::models::resnet::{ConfigError, ResnetBlock2DConfig};
use crate::models::unet_2d_blocks::{
    AttnDownBlock2D, AttnUpBlock2D, DownBlock2D, DownLevel, DownsampleKind, UpBlock2D, UpLevel,
    UpsampleKind,
};
use crate::models::unet_2d_resnet_blocks::{ResnetDownsampleBlock2D, ResnetUpsampleBlock2D};
use crate::models::unet_2d_skip_blocks::{SkipDownBlock2D, SkipUpBlock2D};
use crate::weights::WeightPath;

/// A down block type of `UNet2DModel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBlockType {
    /// `DownBlock2D`.
    Down,
    /// `ResnetDownsampleBlock2D`.
    ResnetDownsample,
    /// `AttnDownBlock2D`.
    AttnDown,
    /// `SkipDownBlock2D`.
    SkipDown,
    /// `AttnSkipDownBlock2D`.
    AttnSkipDown,
}

const DOWN_TYPES: [(&str, DownBlockType); 5] = [
    ("DownBlock2D", DownBlockType::Down),
    ("ResnetDownsampleBlock2D", DownBlockType::ResnetDownsample),
    ("AttnDownBlock2D", DownBlockType::AttnDown),
    ("SkipDownBlock2D", DownBlockType::SkipDown),
    ("AttnSkipDownBlock2D", DownBlockType::AttnSkipDown),
];

/// An up block type of `UNet2DModel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpBlockType {
    /// `UpBlock2D`.
    Up,
    /// `ResnetUpsampleBlock2D`.
    ResnetUpsample,
    /// `AttnUpBlock2D`.
    AttnUp,
    /// `SkipUpBlock2D`.
    SkipUp,
    /// `AttnSkipUpBlock2D`.
    AttnSkipUp,
}

const UP_TYPES: [(&str, UpBlockType); 5] = [
    ("UpBlock2D", UpBlockType::Up),
    ("ResnetUpsampleBlock2D", UpBlockType::ResnetUpsample),
    ("AttnUpBlock2D", UpBlockType::AttnUp),
    ("SkipUpBlock2D", UpBlockType::SkipUp),
    ("AttnSkipUpBlock2D", UpBlockType::AttnSkipUp),
];

/// Looks `name` up in `table`, dropping a `UNetRes` prefix as diffusers does; an unknown name
/// is refused naming `key` and listing the accepted names.
fn parse<T: Copy>(key: &str, name: &str, table: &[(&str, T)]) -> Result<T, ConfigError> {
    let stripped = name.strip_prefix("UNetRes").unwrap_or(name);
    table
        .iter()
        .find(|(known, _)| *known == stripped)
        .map(|(_, kind)| *kind)
        .ok_or_else(|| {
            let names: Vec<String> = table.iter().map(|(n, _)| format!("{n:?}")).collect();
            ConfigError::unsupported(
                key,
                name,
                format!(
                    "{} (each may carry diffusers' `UNetRes` prefix; the class-conditional, \
                     cross-attention, VAE and k-diffusion blocks are not built here)",
                    names.join(", ")
                ),
            )
        })
}

impl DownBlockType {
    /// The type diffusers calls `name` in `down_block_types`.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        parse("down_block_types", name, &DOWN_TYPES)
    }

    /// Whether it carries the skip image (`SkipDownBlock2D`, `AttnSkipDownBlock2D`).
    pub fn is_skip(self) -> bool {
        matches!(self, Self::SkipDown | Self::AttnSkipDown)
    }

    /// Whether it has attention.
    pub fn has_attention(self) -> bool {
        matches!(self, Self::AttnDown | Self::AttnSkipDown)
    }
}

impl UpBlockType {
    /// The type diffusers calls `name` in `up_block_types`.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        parse("up_block_types", name, &UP_TYPES)
    }

    /// Whether it carries the skip image (`SkipUpBlock2D`, `AttnSkipUpBlock2D`).
    pub fn is_skip(self) -> bool {
        matches!(self, Self::SkipUp | Self::AttnSkipUp)
    }

    /// Whether it has attention.
    pub fn has_attention(self) -> bool {
        matches!(self, Self::AttnUp | Self::AttnSkipUp)
    }
}

/// What every block of a `UNet2DModel` shares.
#[derive(Debug, Clone, Copy)]
pub struct BlockSettings {
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: usize,
    /// The resnets' settings.
    pub resnet: ResnetBlock2DConfig,
    /// Features per attention head; `None` is one head over the block's channels.
    pub attention_head_dim: Option<i64>,
    /// `downsample_padding` of the convolutions that down-sample.
    pub downsample_padding: i64,
    /// How `AttnDownBlock2D` down-samples (`downsample_type`; `None`: it does not).
    pub attn_downsample: Option<DownsampleKind>,
    /// How `AttnUpBlock2D` up-samples (`upsample_type`; `None`: it does not).
    pub attn_upsample: Option<UpsampleKind>,
}

/// A down block of any [`DownBlockType`].
#[derive(Debug)]
pub enum DownBlock {
    /// `DownBlock2D`.
    Plain(DownBlock2D),
    /// `AttnDownBlock2D`.
    Attn(AttnDownBlock2D),
    /// `ResnetDownsampleBlock2D`.
    Resnet(ResnetDownsampleBlock2D),
    /// `SkipDownBlock2D` or `AttnSkipDownBlock2D`.
    Skip(Box<SkipDownBlock2D>),
}

impl DownBlock {
    /// Block `level.index` of type `kind`, under `p`.
    pub fn new(p: &WeightPath, level: DownLevel, kind: DownBlockType, s: &BlockSettings) -> Self {
        let p = p.pp(level.index);
        let (from, to, n) = (level.in_channels, level.out_channels, s.layers_per_block);
        let head_dim = s.attention_head_dim.unwrap_or(to);
        let down = level.downsample;
        match kind {
            DownBlockType::Down => {
                let padding = down.then_some(s.downsample_padding);
                Self::Plain(DownBlock2D::new(&p, from, to, n, s.resnet, padding))
            }
            DownBlockType::ResnetDownsample => Self::Resnet(ResnetDownsampleBlock2D::new(
                &p, from, to, n, s.resnet, down,
            )),
            DownBlockType::AttnDown => {
                let kind = s.attn_downsample.filter(|_| down);
                Self::Attn(AttnDownBlock2D::new(
                    &p, from, to, n, s.resnet, head_dim, kind,
                ))
            }
            DownBlockType::SkipDown | DownBlockType::AttnSkipDown => {
                let head_dim = kind.has_attention().then_some(head_dim);
                Self::Skip(Box::new(SkipDownBlock2D::new(
                    &p, from, to, n, s.resnet, head_dim, down,
                )))
            }
        }
    }

    /// The output and the skip connections; skip blocks also update the skip image.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        skip_sample: &mut Tensor,
    ) -> (Tensor, Vec<Tensor>) {
        match self {
            Self::Plain(b) => b.forward(x, temb),
            Self::Attn(b) => b.forward(x, temb),
            Self::Resnet(b) => b.forward(x, temb),
            Self::Skip(b) => {
                let (x, skips, sample) = b.forward(x, temb, skip_sample);
                *skip_sample = sample;
                (x, skips)
            }
        }
    }
}

/// An up block of any [`UpBlockType`].
#[derive(Debug)]
pub enum UpBlock {
    /// `UpBlock2D`.
    Plain(UpBlock2D),
    /// `AttnUpBlock2D`.
    Attn(AttnUpBlock2D),
    /// `ResnetUpsampleBlock2D`.
    Resnet(ResnetUpsampleBlock2D),
    /// `SkipUpBlock2D` or `AttnSkipUpBlock2D`.
    Skip(Box<SkipUpBlock2D>),
}

impl UpBlock {
    /// Block `level.index` of type `kind`, under `p`.
    pub fn new(p: &WeightPath, level: UpLevel, kind: UpBlockType, s: &BlockSettings) -> Self {
        let p = p.pp(level.index);
        let (skip, prev, out) = (
            level.in_channels,
            level.prev_output_channel,
            level.out_channels,
        );
        let (n, resnet, up) = (s.layers_per_block + 1, s.resnet, level.upsample);
        let head_dim = s.attention_head_dim.unwrap_or(out);
        match kind {
            UpBlockType::Up => Self::Plain(UpBlock2D::new(&p, skip, prev, out, n, resnet, up)),
            UpBlockType::ResnetUpsample => Self::Resnet(ResnetUpsampleBlock2D::new(
                &p, skip, prev, out, n, resnet, up,
            )),
            UpBlockType::AttnUp => {
                let kind = s.attn_upsample.filter(|_| up);
                Self::Attn(AttnUpBlock2D::new(
                    &p, skip, prev, out, n, resnet, head_dim, kind,
                ))
            }
            UpBlockType::SkipUp | UpBlockType::AttnSkipUp => {
                let head_dim = kind.has_attention().then_some(head_dim);
                Self::Skip(Box::new(SkipUpBlock2D::new(
                    &p, skip, prev, out, n, resnet, head_dim, up,
                )))
            }
        }
    }

    /// How many skip connections the block consumes.
    pub fn num_skips(&self) -> usize {
        match self {
            Self::Plain(b) => b.num_skips(),
            Self::Attn(b) => b.num_skips(),
            Self::Resnet(b) => b.num_skips(),
            Self::Skip(b) => b.num_skips(),
        }
    }

    /// The output for the features `x` and this block's skip connections `res`; skip blocks
    /// also update the skip image (`None` until the first of them).
    pub fn forward(
        &self,
        x: &Tensor,
        res: &[Tensor],
        temb: Option<&Tensor>,
        skip_sample: &mut Option<Tensor>,
    ) -> Tensor {
        match self {
            Self::Plain(b) => b.forward(x, res, temb, None),
            Self::Attn(b) => b.forward(x, res, temb, None),
            Self::Resnet(b) => b.forward(x, res, temb),
            Self::Skip(b) => {
                let (x, sample) = b.forward(x, res, temb, skip_sample.as_ref());
                *skip_sample = sample;
                x
            }
        }
    }
}
