//! The basic layers of the published architectures, holding frozen tensors loaded by name.
//!
//! Parameter names follow PyTorch (`weight`, `bias`), so a layer at `WeightPath` `p` reads
//! `p.weight` and `p.bias` exactly as `torch.nn` saved them.

use tch::{Device, Kind, Tensor};

use crate::weights::WeightPath;

/// Rows from which a float32 CPU [`Linear`] runs through oneDNN (as a 1 x 1 convolution over a
/// channels-last view of its input, which copies nothing) instead of the BLAS `addmm`
/// `torch.nn.functional.linear` calls: on processors where libtorch's BLAS (MKL) does not use
/// every vector instruction, oneDNN is faster on many rows; on few, the BLAS is.
const ONEDNN_LINEAR_MIN_ROWS: i64 = 1024;

/// A float32 CPU [`Conv2d`] with at least this many weights runs as one matrix
/// product over the unfolded input (`im2col`, then `addmm`) when its output has at most
/// [`GEMM_CONV_MAX_ROWS`] pixels over the batch: the direct convolution reads (and re-lays)
/// all weights for few outputs there, while the product streams them once.
const GEMM_CONV_MIN_WEIGHTS: i64 = 8 << 20;

/// See [`GEMM_CONV_MIN_WEIGHTS`].
const GEMM_CONV_MAX_ROWS: i64 = 128;

/// A channels-last (bfloat16 CPU) [`Conv2d`] with at least this many weights runs as one
/// matrix product over its unfolded NHWC input ([`gemm_conv2d_channels_last`]) when each
/// image's output has at most [`GEMM_CONV_CL_MAX_PIXELS`] pixels and the batch's at most
/// [`GEMM_CONV_CL_MAX_ROWS`]: on 4 x 4 and 8 x 8 images oneDNN's direct bfloat16 kernels
/// ran at a fraction of the product's speed (0.2-0.9x of it on Stable Diffusion's 640- to
/// 2560-channel convolutions), on 16 x 16 ones mostly faster.
const GEMM_CONV_CL_MIN_WEIGHTS: i64 = 2 << 20;

/// See [`GEMM_CONV_CL_MIN_WEIGHTS`].
const GEMM_CONV_CL_MAX_PIXELS: i64 = 64;

/// See [`GEMM_CONV_CL_MIN_WEIGHTS`].
const GEMM_CONV_CL_MAX_ROWS: i64 = 1024;

/// Whether `x` is a float32 tensor on the CPU (where the fast paths above were measured).
pub(crate) fn cpu_float32(x: &Tensor) -> bool {
    x.device() == Device::Cpu && x.kind() == Kind::Float
}

/// Whether images of `kind` on `device` are kept channels-last (NHWC in memory, still indexed
/// `[n, c, h, w]`): bfloat16 on the CPU, where oneDNN's convolutions (AMX and AVX512-BF16
/// kernels) take NHWC as it is but re-lay NCHW inputs, outputs and weights at every call.
/// Weights are laid out so once at load ([`crate::weights::Weights`]); a [`Conv2d`] lays out an
/// NCHW input, and every later layer keeps the layout. Float32 is left in NCHW, where oneDNN's
/// NCHW kernels were as fast, and float16, whose CPU kernels were slower channels-last.
pub fn channels_last(kind: Kind, device: Device) -> bool {
    device == Device::Cpu && kind == Kind::BFloat16
}

/// Whether the 4-d `x` is laid out channels-last.
pub(crate) fn is_channels_last(x: &Tensor) -> bool {
    x.dim() == 4 && x.permute([0, 2, 3, 1]).is_contiguous()
}

/// `x` `[n, c, h, w]` laid out channels-last: `x` itself when it already is, else a copy
/// (tch has no memory-format argument, so the copy is a contiguous NHWC permutation viewed back
/// as `[n, c, h, w]`, exactly what `contiguous(memory_format=torch.channels_last)` makes).
pub(crate) fn to_channels_last(x: &Tensor) -> Tensor {
    if is_channels_last(x) {
        x.shallow_clone()
    } else {
        x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    }
}

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
        let size = x.size();
        let features = size.last().copied().unwrap_or(0);
        let rows = if features > 0 {
            x.numel() as i64 / features
        } else {
            0
        };
        if rows >= ONEDNN_LINEAR_MIN_ROWS && cpu_float32(x) && x.is_contiguous() {
            onednn_linear(x, &self.weight, self.bias.as_ref())
        } else {
            x.linear(&self.weight, self.bias.as_ref())
        }
    }
}

/// `torch.nn.functional.linear` of a contiguous `[..., in]` through oneDNN: the rows are the
/// pixels of a channels-last `[1, in, rows, 1]` image (the same memory), the weight a 1 x 1
/// kernel, and the channels-last output is the `[rows, out]` result in place.
pub fn onednn_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let mut size = x.size();
    let features = size[size.len() - 1];
    let (out_features, rows) = (weight.size()[0], x.numel() as i64 / features);
    let image = x.view([1, rows, 1, features]).permute([0, 3, 1, 2]);
    let kernel = weight.view([out_features, features, 1, 1]);
    let out = image.mkldnn_convolution(&kernel, bias, [0, 0], [1, 1], [1, 1], 1);
    let last = size.len() - 1;
    size[last] = out_features;
    out.permute([0, 2, 3, 1]).reshape(size.as_slice())
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
        let size = x.size();
        let kernel = self.weight.size()[2];
        let edge = |d: i64| (d + 2 * self.padding - kernel) / self.stride + 1;
        let pixels = edge(size[2]) * edge(size[3]);
        let weights = self.weight.numel() as i64;
        let (b, s, p) = (self.bias.as_ref(), self.stride, self.padding);
        if channels_last(x.kind(), x.device()) {
            let x = to_channels_last(x);
            if weights >= GEMM_CONV_CL_MIN_WEIGHTS
                && pixels <= GEMM_CONV_CL_MAX_PIXELS
                && size[0] * pixels <= GEMM_CONV_CL_MAX_ROWS
            {
                return gemm_conv2d_channels_last(&x, &self.weight, b, s, p);
            }
            return x.conv2d(&self.weight, b, [s, s], [p, p], [1, 1], 1);
        }
        if weights >= GEMM_CONV_MIN_WEIGHTS
            && cpu_float32(x)
            && size[0] * pixels <= GEMM_CONV_MAX_ROWS
        {
            return gemm_conv2d(x, &self.weight, b, s, p);
        }
        x.conv2d(&self.weight, b, [s, s], [p, p], [1, 1], 1)
    }
}

/// `torch.nn.functional.conv2d` of `[n, c, h, w]` (square kernel, equal strides and paddings)
/// as one matrix product: the unfolded input `[c k k, n h' w']` times the weight
/// `[out, c k k]`, plus the bias; a contiguous `[n, out, h', w']`.
pub fn gemm_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: i64,
    padding: i64,
) -> Tensor {
    let size = x.size();
    let (n, h, w) = (size[0], size[2], size[3]);
    let wsize = weight.size();
    let (out_channels, kernel) = (wsize[0], wsize[2]);
    let edge = |d: i64| (d + 2 * padding - kernel) / stride + 1;
    let (oh, ow) = (edge(h), edge(w));
    let columns = x
        .im2col(
            [kernel, kernel],
            [1, 1],
            [padding, padding],
            [stride, stride],
        )
        .permute([1, 0, 2])
        .reshape([-1, n * oh * ow]);
    let weight = weight.reshape([out_channels, -1]);
    let out = match bias {
        Some(bias) => bias.unsqueeze(1).addmm(&weight, &columns),
        None => weight.mm(&columns),
    };
    out.view([out_channels, n, oh, ow])
        .permute([1, 0, 2, 3])
        .contiguous()
}

/// [`gemm_conv2d`] for channels-last `[n, c, h, w]` and a channels-last weight: the padded
/// NHWC input unfolded into rows of `(kh, kw, c)` patches, times the weight read as
/// `[out, kh kw c]` (its own memory, no copy), plus the bias. The `[n h' w', out]` product is
/// the channels-last output as it is.
pub fn gemm_conv2d_channels_last(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: i64,
    padding: i64,
) -> Tensor {
    let size = x.size();
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    let wsize = weight.size();
    let (out_channels, kernel) = (wsize[0], wsize[2]);
    let edge = |d: i64| (d + 2 * padding - kernel) / stride + 1;
    let (oh, ow) = (edge(h), edge(w));
    let nhwc = x.permute([0, 2, 3, 1]);
    let nhwc = if padding > 0 {
        nhwc.constant_pad_nd([0, 0, padding, padding, padding, padding])
    } else {
        nhwc
    };
    let rows = nhwc
        .unfold(1, kernel, stride)
        .unfold(2, kernel, stride)
        .permute([0, 1, 2, 4, 5, 3])
        .reshape([n * oh * ow, kernel * kernel * c]);
    let weight = weight
        .permute([0, 2, 3, 1])
        .reshape([out_channels, kernel * kernel * c]);
    let out = match bias {
        Some(bias) => bias.addmm(&rows, &weight.tr()),
        None => rows.mm(&weight.tr()),
    };
    out.view([n, oh, ow, out_channels]).permute([0, 3, 1, 2])
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

#[cfg(test)]
mod tests {
    use super::*;

    fn randn(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    /// Largest difference over largest magnitude.
    fn relative_error(ours: &Tensor, reference: &Tensor) -> f64 {
        let scale = reference.abs().max().double_value(&[]);
        (ours - reference).abs().max().double_value(&[]) / scale
    }

    /// Both matrix-product convolutions are libtorch's convolution up to float32 rounding, for
    /// 3 x 3 kernels with and without padding, strides 1 and 2 (on even and odd sizes), 1 x 1
    /// kernels, with and without bias: the NCHW one keeps the contiguous `[n, out, h', w']`
    /// layout, the channels-last one (on channels-last inputs and weights) that layout.
    #[test]
    fn gemm_conv2d_is_conv2d() {
        tch::manual_seed(0);
        let _guard = tch::no_grad_guard();
        for (n, c, o, h, w, kernel, stride, padding, bias) in [
            (2, 24, 40, 4, 5, 3, 1, 1, true),
            (3, 16, 8, 6, 6, 3, 1, 0, true),
            (1, 32, 48, 3, 3, 1, 1, 0, true),
            (2, 8, 12, 5, 4, 3, 1, 1, false),
            (2, 16, 24, 8, 8, 3, 2, 1, true),
            (1, 16, 24, 7, 6, 3, 2, 1, true),
        ] {
            let x = randn(&[n, c, h, w]);
            let weight = randn(&[o, c, kernel, kernel]);
            let b = bias.then(|| randn(&[o]));
            let (strides, paddings) = ([stride, stride], [padding, padding]);
            let reference = x.conv2d(&weight, b.as_ref(), strides, paddings, [1, 1], 1);
            let nchw = gemm_conv2d(&x, &weight, b.as_ref(), stride, padding);
            assert!(nchw.is_contiguous());
            let (x, weight) = (to_channels_last(&x), to_channels_last(&weight));
            let nhwc = gemm_conv2d_channels_last(&x, &weight, b.as_ref(), stride, padding);
            assert!(is_channels_last(&nhwc));
            for (layout, ours) in [("NCHW", nchw), ("channels-last", nhwc)] {
                assert_eq!(ours.size(), reference.size());
                let error = relative_error(&ours, &reference);
                assert!(
                    error < 2e-6,
                    "{layout} {:?}: relative error {error}",
                    (n, c, o, kernel, stride)
                );
            }
        }
    }

    /// The oneDNN linear is `torch.nn.functional.linear` up to float32 rounding on 2-d and 3-d
    /// inputs, with and without bias, and returns the input's leading shape.
    #[test]
    fn onednn_linear_is_linear() {
        tch::manual_seed(1);
        let _guard = tch::no_grad_guard();
        for (shape, out, bias) in [
            (vec![50, 24], 40, true),
            (vec![2, 33, 16], 8, true),
            (vec![3, 7, 32], 48, false),
        ] {
            let x = randn(&shape);
            let features = shape[shape.len() - 1];
            let weight = randn(&[out, features]);
            let b = bias.then(|| randn(&[out]));
            let reference = x.linear(&weight, b.as_ref());
            let ours = onednn_linear(&x, &weight, b.as_ref());
            assert_eq!(ours.size(), reference.size());
            let error = relative_error(&ours, &reference);
            assert!(error < 2e-6, "{shape:?}: relative error {error}");
        }
    }

    /// In bfloat16 on the CPU a convolution's weight is laid out channels-last when it is
    /// loaded, an NCHW input is laid out so, and the output keeps the layout for the next
    /// layer; the values are float32's within bfloat16 rounding (of the inputs, the weights
    /// and the output, each `2^-9` relative: 8 of those relative to the output's scale is
    /// several times what they add up to, a misread layout is off by the whole scale). In
    /// float32 everything stays NCHW.
    #[test]
    fn bfloat16_convolutions_run_channels_last() {
        tch::manual_seed(2);
        let _guard = tch::no_grad_guard();
        let (weight, bias) = (randn(&[8, 4, 3, 3]), randn(&[8]));
        let x = randn(&[2, 4, 6, 5]);
        let reference = x.conv2d(&weight, Some(&bias), [1, 1], [1, 1], [1, 1], 1);
        for kind in [Kind::BFloat16, Kind::Float] {
            let tensors = std::collections::BTreeMap::from([
                ("conv.weight".to_string(), weight.shallow_clone()),
                ("conv.bias".to_string(), bias.shallow_clone()),
            ]);
            let weights = crate::weights::Weights::from_tensors("test", tensors, kind, Device::Cpu);
            let conv = Conv2d::new(&weights.root().pp("conv"), 4, 8, 3, 1, 1);
            let out = conv.forward(&x.to_kind(kind));
            let bfloat16 = kind == Kind::BFloat16;
            assert_eq!(is_channels_last(&conv.weight), bfloat16, "{kind:?} weight");
            assert_eq!(is_channels_last(&out), bfloat16, "{kind:?} output");
            assert_eq!(out.is_contiguous(), !bfloat16, "{kind:?} output");
            assert_eq!(out.kind(), kind);
            let error = relative_error(&out.to_kind(Kind::Float), &reference);
            let tolerance = if bfloat16 { 8.0 / 512.0 } else { 2e-6 };
            assert!(error < tolerance, "{kind:?}: relative error {error}");
        }
    }
}
