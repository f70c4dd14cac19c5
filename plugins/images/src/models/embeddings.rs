//! Timestep embeddings (`diffusers.models.embeddings`): the sinusoidal projection and the MLP
//! that follows it.

use tch::{Kind, Tensor};

use crate::models::resnet::Activation;
use crate::nn::Linear;
use crate::weights::WeightPath;

/// Sinusoidal embeddings of (possibly fractional) timesteps `[n]`, `[n, dim]`; diffusers'
/// `get_timestep_embedding`, evaluated in float32 in the same order.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: i64,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
    scale: f64,
    max_period: f64,
) -> Tensor {
    let half = dim / 2;
    let exponent = Tensor::arange(half, (Kind::Float, timesteps.device())) * (-max_period.ln());
    let exponent = exponent / (half as f64 - downscale_freq_shift);
    let emb = timesteps.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    let emb = emb * scale;
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[emb.cos(), emb.sin()], -1)
    } else {
        Tensor::cat(&[emb.sin(), emb.cos()], -1)
    };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1, 0, 0])
    } else {
        emb
    }
}

/// diffusers' `Timesteps`: the parameter-free sinusoidal projection.
#[derive(Debug, Clone, Copy)]
pub struct Timesteps {
    num_channels: i64,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
    scale: f64,
}

impl Timesteps {
    /// `num_channels` features; `flip_sin_to_cos` and `downscale_freq_shift` as in the
    /// configs (`flip_sin_to_cos`, `freq_shift`).
    pub fn new(num_channels: i64, flip_sin_to_cos: bool, downscale_freq_shift: f64) -> Self {
        Self {
            num_channels,
            flip_sin_to_cos,
            downscale_freq_shift,
            scale: 1.0,
        }
    }

    /// `[n]` timesteps to `[n, num_channels]`.
    pub fn forward(&self, timesteps: &Tensor) -> Tensor {
        timestep_embedding(
            timesteps,
            self.num_channels,
            self.flip_sin_to_cos,
            self.downscale_freq_shift,
            self.scale,
            10000.0,
        )
    }
}

/// diffusers' `TimestepEmbedding`: `linear_2(act(linear_1(x)))`, optionally followed by a
/// second activation.
#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    act: Activation,
    linear_2: Linear,
    post_act: Option<Activation>,
}

impl TimestepEmbedding {
    /// Loads `p.linear_1` (`in_channels -> time_embed_dim`) and `p.linear_2`
    /// (`time_embed_dim -> time_embed_dim`).
    pub fn new(
        p: &WeightPath,
        in_channels: i64,
        time_embed_dim: i64,
        act: Activation,
        post_act: Option<Activation>,
    ) -> Self {
        Self {
            linear_1: Linear::new(&p.pp("linear_1"), in_channels, time_embed_dim, true),
            act,
            linear_2: Linear::new(&p.pp("linear_2"), time_embed_dim, time_embed_dim, true),
            post_act,
        }
    }

    /// `[n, in_channels]` to `[n, time_embed_dim]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = self
            .linear_2
            .forward(&self.act.forward(&self.linear_1.forward(x)));
        match self.post_act {
            Some(act) => act.forward(&x),
            None => x,
        }
    }
}

/// diffusers' `GaussianFourierProjection` as `UNet2DModel` builds it (`time_embedding_type`
/// `fourier`: `log=True`, sines first): `[n]` noise levels `s` to
/// `[n, 2 * embedding_size]`, `[sin(2 pi w log s), cos(2 pi w log s)]` with the fixed random
/// frequencies `w` (`weight`).
#[derive(Debug)]
pub struct GaussianFourierProjection {
    weight: Tensor,
}

impl GaussianFourierProjection {
    /// Loads `p.weight` (`[embedding_size]`).
    pub fn new(p: &WeightPath, embedding_size: i64) -> Self {
        Self {
            weight: p.get("weight", &[embedding_size]),
        }
    }

    /// `[n]` positive noise levels to `[n, 2 * embedding_size]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = x.to_kind(self.weight.kind()).log();
        let x_proj = x.unsqueeze(1) * self.weight.unsqueeze(0) * 2.0 * std::f64::consts::PI;
        Tensor::cat(&[x_proj.sin(), x_proj.cos()], -1)
    }
}

/// The learned timestep table of `UNet2DModel` (`time_embedding_type` `learned`: an
/// `nn.Embedding` of `num_train_timesteps` rows).
#[derive(Debug)]
pub struct LearnedTimesteps {
    weight: Tensor,
}

impl LearnedTimesteps {
    /// Loads `p.weight` (`[num_embeddings, dim]`).
    pub fn new(p: &WeightPath, num_embeddings: i64, dim: i64) -> Self {
        Self {
            weight: p.get("weight", &[num_embeddings, dim]),
        }
    }

    /// `[n]` step indices (fractional values round to the nearest) to `[n, dim]`. An index
    /// outside the table panics, as diffusers raises an `IndexError`.
    pub fn forward(&self, timesteps: &Tensor) -> Tensor {
        let index = timesteps.to_kind(Kind::Double).round().to_kind(Kind::Int64);
        self.weight.index_select(0, &index)
    }
}
