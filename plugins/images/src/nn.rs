//! The basic layers of the published architectures, holding frozen tensors loaded by name.
//!
//! Parameter names follow PyTorch (`weight`, `bias`), so a layer at `WeightPath` `p` reads
//! `p.weight` and `p.bias` exactly as `torch.nn` saved them.

use tch::Tensor;

use crate::weights::WeightPath;

/// `torch.nn.Linear`.
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// `in_features -> out_features`, with or without bias.
    pub fn new(p: &WeightPath, in_features: i64, out_features: i64, bias: bool) -> Self {
        Self {
            weight: p.get("weight", &[out_features, in_features]),
            bias: bias.then(|| p.get("bias", &[out_features])),
        }
    }

    /// `x W^T + b` over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// `torch.nn.Conv2d` (square kernel, equal stride and padding on both axes).
#[derive(Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    /// A `kernel x kernel` convolution `in_channels -> out_channels` with bias.
    pub fn new(
        p: &WeightPath,
        in_channels: i64,
        out_channels: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> Self {
        Self {
            weight: p.get("weight", &[out_channels, in_channels, kernel, kernel]),
            bias: Some(p.get("bias", &[out_channels])),
            stride,
            padding,
        }
    }

    /// Applies the convolution to `[n, c, h, w]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

/// `torch.nn.GroupNorm` with affine parameters.
#[derive(Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    /// `groups` groups over `channels` channels.
    pub fn new(p: &WeightPath, groups: i64, channels: i64, eps: f64) -> Self {
        Self {
            weight: p.get("weight", &[channels]),
            bias: p.get("bias", &[channels]),
            groups,
            eps,
        }
    }

    /// Normalises `[n, c, ...]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(
            self.groups,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            false,
        )
    }
}

/// `torch.nn.LayerNorm` over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    size: i64,
    eps: f64,
}

impl LayerNorm {
    /// Normalisation over a last dimension of `size`.
    pub fn new(p: &WeightPath, size: i64, eps: f64) -> Self {
        Self {
            weight: p.get("weight", &[size]),
            bias: p.get("bias", &[size]),
            size,
            eps,
        }
    }

    /// Normalises the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.size],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            false,
        )
    }
}
