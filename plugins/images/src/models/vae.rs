//! diffusers' `AutoencoderKL` (the Stable Diffusion VAE): encoder, decoder and the 1x1
//! convolutions around the latent.
//!
//! Both halves are built, so that every tensor of the published file is accounted for; a
//! sampler only needs [`AutoencoderKL::decode`].

use serde::Deserialize;
use tch::Tensor;

use crate::models::resnet::{
    check_levels, Activation, ConfigError, ResnetBlock2DConfig, TimeEmbeddingNorm,
};
use crate::models::unet_2d::SampleSize;
use crate::models::unet_2d_blocks::{
    down_levels, up_levels, DownBlock2D, UNetMidBlock2D, UpDecoderBlock2D,
};
use crate::models::vae_tiling::VaeTiling;
use crate::nn::{Conv2d, GroupNorm};
use crate::weights::WeightPath;

/// The published `config.json` of an `AutoencoderKL`, with diffusers' defaults for absent keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    /// Channels of the images.
    pub in_channels: i64,
    /// Channels of the decoded images.
    pub out_channels: i64,
    /// `DownEncoderBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `UpDecoderBlock2D` per level.
    pub up_block_types: Vec<String>,
    /// Channels per level.
    pub block_out_channels: Vec<i64>,
    /// Resnets per encoder block (decoder blocks have one more).
    pub layers_per_block: usize,
    /// Activation of the resnets.
    pub act_fn: String,
    /// Channels of the latent.
    pub latent_channels: i64,
    /// Groups of the group norms.
    pub norm_num_groups: i64,
    /// Image size it was trained on.
    pub sample_size: Option<SampleSize>,
    /// Latents are `scaling_factor * (z - shift_factor)` of the autoencoder's `z`.
    pub scaling_factor: f64,
    /// See `scaling_factor`; `None` is 0.
    pub shift_factor: Option<f64>,
    /// Per-channel latent statistics (informative only).
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent statistics (informative only).
    pub latents_std: Option<Vec<f64>>,
    /// Keep the VAE in float32 when the pipeline runs in float16 (see
    /// [`crate::sd::SdPipeline::load`]).
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub force_upcast: bool,
    /// Whether `quant_conv` exists.
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have attention.
    #[serde(deserialize_with = "crate::models::nullable::bool")]
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".to_string()],
            up_block_types: vec!["UpDecoderBlock2D".to_string()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".to_string(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: Some(SampleSize::Square(32)),
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKLConfig {
    /// Checks that the configuration is consistent and within what this implementation
    /// supports, naming the first key that is not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_levels(
            &self.block_out_channels,
            &self.down_block_types,
            &self.up_block_types,
        )?;
        if let Some(kind) = self
            .down_block_types
            .iter()
            .find(|k| *k != "DownEncoderBlock2D")
        {
            return Err(ConfigError::unsupported(
                "down_block_types",
                kind,
                "\"DownEncoderBlock2D\"",
            ));
        }
        if let Some(kind) = self
            .up_block_types
            .iter()
            .find(|k| *k != "UpDecoderBlock2D")
        {
            return Err(ConfigError::unsupported(
                "up_block_types",
                kind,
                "\"UpDecoderBlock2D\"",
            ));
        }
        Activation::from_name("act_fn", &self.act_fn)?;
        let groups = self.norm_num_groups;
        if let Some(channels) = self
            .block_out_channels
            .iter()
            .find(|c| groups <= 0 || *c % groups != 0)
        {
            return Err(ConfigError::Invalid(format!(
                "{channels} channels cannot be split into {groups} groups (`norm_num_groups`)"
            )));
        }
        Ok(())
    }

    fn resnet(&self) -> Result<ResnetBlock2DConfig, ConfigError> {
        Ok(ResnetBlock2DConfig {
            out_channels: None,
            temb_channels: None,
            groups: self.norm_num_groups,
            groups_out: None,
            eps: 1e-6,
            act: Activation::from_name("act_fn", &self.act_fn)?,
            time_embedding_norm: TimeEmbeddingNorm::Default,
            skip_time_act: false,
            output_scale_factor: 1.0,
        })
    }

    fn mid_block(&self, p: &WeightPath) -> Result<UNetMidBlock2D, ConfigError> {
        let channels = self.block_out_channels[self.block_out_channels.len() - 1];
        let attention = self
            .mid_block_add_attention
            .then_some((channels, Some(self.norm_num_groups)));
        Ok(UNetMidBlock2D::new(
            p,
            channels,
            1,
            self.resnet()?,
            attention,
        ))
    }
}

/// diffusers' VAE `Encoder`: images to the parameters of the latent distribution
/// (`2 * latent_channels`: mean and log-variance).
#[derive(Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: GroupNorm,
    act: Activation,
    conv_out: Conv2d,
}

impl Encoder {
    /// Loads the encoder at `p` (`encoder.` in the published files).
    pub fn new(p: &WeightPath, c: &AutoencoderKLConfig) -> Result<Self, ConfigError> {
        c.validate()?;
        let channels = &c.block_out_channels;
        let levels = channels.len();
        let resnet = c.resnet()?;
        let down_blocks = down_levels(channels)
            .into_iter()
            .map(|level| {
                DownBlock2D::new(
                    &p.pp("down_blocks").pp(level.index),
                    level.in_channels,
                    level.out_channels,
                    c.layers_per_block,
                    resnet,
                    level.downsample.then_some(0),
                )
            })
            .collect();
        let last = channels[levels - 1];
        Ok(Self {
            conv_in: Conv2d::new(&p.pp("conv_in"), c.in_channels, channels[0], 3, 1, 1),
            down_blocks,
            mid_block: c.mid_block(&p.pp("mid_block"))?,
            conv_norm_out: GroupNorm::new(&p.pp("conv_norm_out"), c.norm_num_groups, last, 1e-6),
            act: Activation::Silu,
            conv_out: Conv2d::new(&p.pp("conv_out"), last, 2 * c.latent_channels, 3, 1, 1),
        })
    }

    /// `[n, in_channels, h, w]` to `[n, 2 latent_channels, h / f, w / f]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut x = self.conv_in.forward(x);
        for block in &self.down_blocks {
            x = block.forward(&x, None).0;
        }
        let x = self.mid_block.forward(&x, None);
        // NCHW again whatever the layout inside (a no-op unless it was channels-last).
        self.conv_out
            .forward(&self.act.forward(&self.conv_norm_out.forward(&x)))
            .contiguous()
    }
}

/// diffusers' VAE `Decoder`: latents to images.
#[derive(Debug)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    act: Activation,
    conv_out: Conv2d,
}

impl Decoder {
    /// Loads the decoder at `p` (`decoder.` in the published files).
    pub fn new(p: &WeightPath, c: &AutoencoderKLConfig) -> Result<Self, ConfigError> {
        c.validate()?;
        let channels = &c.block_out_channels;
        let levels = channels.len();
        let resnet = c.resnet()?;
        let up_blocks = up_levels(channels)
            .into_iter()
            .map(|level| {
                UpDecoderBlock2D::new(
                    &p.pp("up_blocks").pp(level.index),
                    level.prev_output_channel,
                    level.out_channels,
                    c.layers_per_block + 1,
                    resnet,
                    level.upsample,
                )
            })
            .collect();
        let last = channels[levels - 1];
        Ok(Self {
            conv_in: Conv2d::new(&p.pp("conv_in"), c.latent_channels, last, 3, 1, 1),
            mid_block: c.mid_block(&p.pp("mid_block"))?,
            up_blocks,
            conv_norm_out: GroupNorm::new(
                &p.pp("conv_norm_out"),
                c.norm_num_groups,
                channels[0],
                1e-6,
            ),
            act: Activation::Silu,
            conv_out: Conv2d::new(&p.pp("conv_out"), channels[0], c.out_channels, 3, 1, 1),
        })
    }

    /// `[n, latent_channels, h, w]` to `[n, out_channels, h f, w f]`.
    pub fn forward(&self, z: &Tensor) -> Tensor {
        let mut x = self.mid_block.forward(&self.conv_in.forward(z), None);
        for block in &self.up_blocks {
            x = block.forward(&x);
        }
        // NCHW again whatever the layout inside (a no-op unless it was channels-last).
        self.conv_out
            .forward(&self.act.forward(&self.conv_norm_out.forward(&x)))
            .contiguous()
    }
}

/// The latent distribution an encoder gives: a diagonal Gaussian.
#[derive(Debug)]
pub struct DiagonalGaussian {
    /// Mean `[n, latent_channels, h, w]`.
    pub mean: Tensor,
    /// Log-variance, clamped to `[-30, 20]` as diffusers does.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Splits encoder moments `[n, 2 c, h, w]` into mean and log-variance.
    pub fn from_moments(moments: &Tensor) -> Self {
        let chunks = moments.chunk(2, 1);
        Self {
            mean: chunks[0].shallow_clone(),
            logvar: chunks[1].clamp(-30.0, 20.0),
        }
    }

    /// A draw `mean + exp(logvar / 2) * noise`, from libtorch's global generator.
    pub fn sample(&self) -> Tensor {
        let std = (&self.logvar * 0.5).exp();
        &self.mean + std * self.mean.randn_like()
    }
}

/// diffusers' `AutoencoderKL`.
#[derive(Debug)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: AutoencoderKLConfig,
    tiling: Option<VaeTiling>,
}

impl AutoencoderKL {
    /// Builds the autoencoder of `config`, taking its weights by their published names under `p`
    /// (`encoder.*`, `quant_conv`, `post_quant_conv`, `decoder.*`).
    pub fn new(p: &WeightPath, config: &AutoencoderKLConfig) -> Result<Self, ConfigError> {
        let latent = config.latent_channels;
        Ok(Self {
            encoder: Encoder::new(&p.pp("encoder"), config)?,
            decoder: Decoder::new(&p.pp("decoder"), config)?,
            quant_conv: config
                .use_quant_conv
                .then(|| Conv2d::new(&p.pp("quant_conv"), 2 * latent, 2 * latent, 1, 1, 0)),
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| Conv2d::new(&p.pp("post_quant_conv"), latent, latent, 1, 1, 0)),
            config: config.clone(),
            tiling: None,
        })
    }

    /// Decodes latents larger than a tile in overlapping tiles ([`VaeTiling`], diffusers'
    /// `enable_tiling`), or always whole with `None` (the default).
    pub fn set_tiling(&mut self, tiling: Option<VaeTiling>) {
        self.tiling = tiling;
    }

    /// The tiling [`AutoencoderKL::decode`] uses, if any.
    pub fn tiling(&self) -> Option<VaeTiling> {
        self.tiling
    }

    /// diffusers' default tiles: the config's `sample_size` (its height when not square) in
    /// pixels; `None` without a `sample_size`.
    pub fn default_tile_size(&self) -> Option<i64> {
        self.config.sample_size.as_ref().map(|size| match *size {
            SampleSize::Square(edge) => edge,
            SampleSize::Rect([height, _]) => height,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// The factor from the autoencoder's latent to the diffusion model's
    /// (`config.scaling_factor`, 0.18215 for Stable Diffusion).
    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    /// The latent distribution of images `[n, 3, h, w]` in `[-1, 1]` (diffusers'
    /// `encode(x).latent_dist`, unscaled).
    pub fn encode(&self, x: &Tensor) -> DiagonalGaussian {
        let moments = self.encoder.forward(x);
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(&moments),
            None => moments,
        };
        DiagonalGaussian::from_moments(&moments)
    }

    /// Images `[n, 3, h f, w f]` (about `[-1, 1]`) of the autoencoder's latents `z`
    /// (diffusers' `decode(z).sample`; the latents a diffusion model samples must first be
    /// unscaled, see [`AutoencoderKL::decode_latents`]). With tiling set, latents larger than a
    /// tile are decoded in tiles, as diffusers' `_decode` does.
    pub fn decode(&self, z: &Tensor) -> Tensor {
        match self.tiling {
            Some(tiling) if tiling.applies_to(z) => {
                tiling.decode(z, |tile| self.decode_whole(tile))
            }
            _ => self.decode_whole(z),
        }
    }

    /// `post_quant_conv` then the decoder, on the whole of `z`.
    fn decode_whole(&self, z: &Tensor) -> Tensor {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z),
            None => z.shallow_clone(),
        };
        self.decoder.forward(&z)
    }

    /// Images of the diffusion model's latents: `decode(latents / scaling_factor +
    /// shift_factor)`, as the Stable Diffusion pipelines do.
    pub fn decode_latents(&self, latents: &Tensor) -> Tensor {
        let z = latents / self.config.scaling_factor;
        let z = match self.config.shift_factor {
            Some(shift) => z + shift,
            None => z,
        };
        self.decode(&z)
    }
}
