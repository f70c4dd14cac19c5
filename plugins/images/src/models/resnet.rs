//! Residual blocks and resampling layers of the diffusers UNets and VAEs (`diffusers.models.resnet`,
//! `downsampling`, `upsampling`), plus the activation functions and configuration errors the
//! other architecture modules share.

use tch::Tensor;

use crate::models::fir;
use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::weights::WeightPath;

/// A published configuration that these architectures cannot build.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A value this implementation does not support (the key, its value, what is supported).
    #[error("`{key}` = {value} is not supported here (supported: {supported})")]
    Unsupported {
        /// The configuration key.
        key: String,
        /// Its value, as written in the configuration.
        value: String,
        /// What is supported instead.
        supported: String,
    },
    /// A configuration that is inconsistent in itself.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Checks that a UNet or VAE config has levels, and one down and one up block type per level.
pub fn check_levels(
    block_out_channels: &[i64],
    down_block_types: &[String],
    up_block_types: &[String],
) -> Result<(), ConfigError> {
    let levels = block_out_channels.len();
    if levels == 0 {
        return Err(ConfigError::Invalid("`block_out_channels` is empty".into()));
    }
    if down_block_types.len() != levels || up_block_types.len() != levels {
        return Err(ConfigError::Invalid(format!(
            "{levels} `block_out_channels` but {} `down_block_types` and {} `up_block_types`",
            down_block_types.len(),
            up_block_types.len()
        )));
    }
    Ok(())
}

impl ConfigError {
    /// An [`ConfigError::Unsupported`] for `key`.
    pub fn unsupported(
        key: &str,
        value: impl std::fmt::Debug,
        supported: impl Into<String>,
    ) -> Self {
        Self::Unsupported {
            key: key.to_string(),
            value: format!("{value:?}"),
            supported: supported.into(),
        }
    }
}

/// Activation functions by their diffusers names (`get_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu` (also called `swish`).
    Silu,
    /// `gelu` (exact, erf-based).
    Gelu,
    /// `relu`.
    Relu,
    /// `mish`.
    Mish,
}

impl Activation {
    /// The activation diffusers calls `name`; `key` names the configuration entry in errors.
    pub fn from_name(key: &str, name: &str) -> Result<Self, ConfigError> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            "gelu" => Ok(Self::Gelu),
            "relu" => Ok(Self::Relu),
            "mish" => Ok(Self::Mish),
            other => Err(ConfigError::unsupported(
                key,
                other,
                "\"silu\", \"swish\", \"gelu\", \"relu\", \"mish\"",
            )),
        }
    }

    /// Applies the activation.
    pub fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Self::Silu => x.silu(),
            Self::Gelu => x.gelu("none"),
            Self::Relu => x.relu(),
            Self::Mish => x.mish(),
        }
    }
}

/// How a residual block injects the time embedding (`resnet_time_scale_shift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeEmbeddingNorm {
    /// `default`: added to the features before the second normalisation.
    Default,
    /// `scale_shift`: `norm2(h) * (1 + scale) + shift`.
    ScaleShift,
}

impl TimeEmbeddingNorm {
    /// Parses `resnet_time_scale_shift`.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        match name {
            "default" => Ok(Self::Default),
            "scale_shift" => Ok(Self::ScaleShift),
            other => Err(ConfigError::unsupported(
                "resnet_time_scale_shift",
                other,
                "\"default\", \"scale_shift\"",
            )),
        }
    }
}

/// Settings of a [`ResnetBlock2D`] (the keyword arguments of diffusers' `ResnetBlock2D`).
#[derive(Debug, Clone, Copy)]
pub struct ResnetBlock2DConfig {
    /// Output channels; `None` keeps the input channels.
    pub out_channels: Option<i64>,
    /// Channels of the time embedding; `None` for blocks without one (VAE).
    pub temb_channels: Option<i64>,
    /// Groups of the first normalisation.
    pub groups: i64,
    /// Groups of the second normalisation; `None` uses `groups`.
    pub groups_out: Option<i64>,
    /// Epsilon of both normalisations.
    pub eps: f64,
    /// The non-linearity.
    pub act: Activation,
    /// How the time embedding enters.
    pub time_embedding_norm: TimeEmbeddingNorm,
    /// Skip the non-linearity before the time projection.
    pub skip_time_act: bool,
    /// The output is divided by this.
    pub output_scale_factor: f64,
}

impl Default for ResnetBlock2DConfig {
    fn default() -> Self {
        Self {
            out_channels: None,
            temb_channels: Some(512),
            groups: 32,
            groups_out: None,
            eps: 1e-6,
            act: Activation::Silu,
            time_embedding_norm: TimeEmbeddingNorm::Default,
            skip_time_act: false,
            output_scale_factor: 1.0,
        }
    }
}

/// The resampling inside a residual block (`up`, `down` and `kernel` of diffusers'
/// `ResnetBlock2D`), applied to both the features and the shortcut after the first activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// None.
    None,
    /// `up=True`: nearest-neighbour interpolation to twice the size.
    Up,
    /// `down=True`: 2 x 2 average pooling.
    Down,
    /// `up=True, kernel="fir"`: [`fir::upsample_2d`].
    FirUp,
    /// `down=True, kernel="fir"`: [`fir::downsample_2d`].
    FirDown,
}

impl Resample {
    fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Self::None => x.shallow_clone(),
            Self::Up => upsample_nearest_2x(x),
            Self::Down => x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None),
            Self::FirUp => fir::upsample_2d(x),
            Self::FirDown => fir::downsample_2d(x),
        }
    }
}

/// `F.interpolate(x, scale_factor=2.0, mode="nearest")` on `[n, c, h, w]`.
fn upsample_nearest_2x(x: &Tensor) -> Tensor {
    let size = x.size();
    let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
    x.upsample_nearest2d([2 * h, 2 * w], Some(2.0), Some(2.0))
}

/// diffusers' `ResnetBlock2D` (pre-normalisation, optionally resampling inside).
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    resample: Resample,
    config: ResnetBlock2DConfig,
}

impl ResnetBlock2D {
    /// Loads the block at `p` (`norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`,
    /// `conv_shortcut` when the channel count changes).
    pub fn new(p: &WeightPath, in_channels: i64, config: ResnetBlock2DConfig) -> Self {
        let out_channels = config.out_channels.unwrap_or(in_channels);
        Self::resampling(
            p,
            in_channels,
            config,
            Resample::None,
            in_channels != out_channels,
        )
    }

    /// Like [`ResnetBlock2D::new`], resampling by `resample`, with a `conv_shortcut` when
    /// `use_in_shortcut` (diffusers' `use_in_shortcut`, which the FIR blocks force on).
    pub fn resampling(
        p: &WeightPath,
        in_channels: i64,
        config: ResnetBlock2DConfig,
        resample: Resample,
        use_in_shortcut: bool,
    ) -> Self {
        let out_channels = config.out_channels.unwrap_or(in_channels);
        let groups_out = config.groups_out.unwrap_or(config.groups);
        let time_emb_proj = config.temb_channels.map(|temb| {
            let width = match config.time_embedding_norm {
                TimeEmbeddingNorm::Default => out_channels,
                TimeEmbeddingNorm::ScaleShift => 2 * out_channels,
            };
            Linear::new(&p.pp("time_emb_proj"), temb, width, true)
        });
        Self {
            norm1: GroupNorm::new(&p.pp("norm1"), config.groups, in_channels, config.eps),
            conv1: Conv2d::new(&p.pp("conv1"), in_channels, out_channels, 3, 1, 1),
            time_emb_proj,
            norm2: GroupNorm::new(&p.pp("norm2"), groups_out, out_channels, config.eps),
            conv2: Conv2d::new(&p.pp("conv2"), out_channels, out_channels, 3, 1, 1),
            conv_shortcut: use_in_shortcut
                .then(|| Conv2d::new(&p.pp("conv_shortcut"), in_channels, out_channels, 1, 1, 0)),
            resample,
            config,
        }
    }

    /// `[n, c, h, w]` (and the time embedding `[n, temb]`, when the block has one) to
    /// `[n, out, h, w]`.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let act = self.config.act;
        let h = act.forward(&self.norm1.forward(x));
        let (x, h) = match self.resample {
            Resample::None => (x.shallow_clone(), h),
            resample => (resample.forward(x), resample.forward(&h)),
        };
        let x = &x;
        let h = self.conv1.forward(&h);
        let temb = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let temb = if self.config.skip_time_act {
                    temb.shallow_clone()
                } else {
                    act.forward(temb)
                };
                Some(proj.forward(&temb).unsqueeze(-1).unsqueeze(-1))
            }
            _ => None,
        };
        let h = match (self.config.time_embedding_norm, temb) {
            (TimeEmbeddingNorm::Default, Some(temb)) => self.norm2.forward(&(h + temb)),
            (TimeEmbeddingNorm::ScaleShift, Some(temb)) => {
                let chunks = temb.chunk(2, 1);
                self.norm2.forward(&h) * (chunks[0].shallow_clone() + 1.0) + &chunks[1]
            }
            (_, None) => self.norm2.forward(&h),
        };
        let h = self.conv2.forward(&act.forward(&h));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x.shallow_clone(),
        };
        let out = shortcut + h;
        if self.config.output_scale_factor == 1.0 {
            out
        } else {
            out / self.config.output_scale_factor
        }
    }
}

/// diffusers' `Downsample2D` with a convolution (`downsamplers.0.conv`): a stride-2 3x3
/// convolution; with `padding = 0` the input is first padded by one on the right and bottom.
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    padding: i64,
}

impl Downsample2D {
    /// Loads `p.conv` (`channels -> out_channels`).
    pub fn new(p: &WeightPath, channels: i64, out_channels: i64, padding: i64) -> Self {
        Self {
            conv: Conv2d::new(&p.pp("conv"), channels, out_channels, 3, 2, padding),
            padding,
        }
    }

    /// Halves the spatial size.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.padding == 0 {
            self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(x)
        }
    }
}

/// diffusers' `Upsample2D` with a convolution (`upsamplers.0.conv`): nearest-neighbour
/// interpolation, then a 3x3 convolution.
#[derive(Debug)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// Loads `p.conv` (`channels -> out_channels`).
    pub fn new(p: &WeightPath, channels: i64, out_channels: i64) -> Self {
        Self {
            conv: Conv2d::new(&p.pp("conv"), channels, out_channels, 3, 1, 1),
        }
    }

    /// Doubles the spatial size, or interpolates to `size` (`[h, w]`) when given, as the
    /// conditional UNet does for inputs whose size is not a multiple of its total down-sampling.
    pub fn forward(&self, x: &Tensor, size: Option<[i64; 2]>) -> Tensor {
        let up = match size {
            Some(size) => x.upsample_nearest2d(size, None, None),
            None => {
                let size = x.size();
                let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
                x.upsample_nearest2d([2 * h, 2 * w], Some(2.0), Some(2.0))
            }
        };
        self.conv.forward(&up)
    }
}
