//! The FIR resampling of the score-SDE UNets (`diffusers.models.upsampling.upsample_2d`,
//! `diffusers.models.downsampling.downsample_2d` and `upfirdn2d_native`): a `[1, 3, 3, 1]`
//! binomial filter applied per channel around a zero-stuffing up-sampling or a stride-2
//! down-sampling. No weights.

use tch::{Kind, Tensor};

/// The separable filter diffusers' FIR layers use.
const FIR_KERNEL: [f32; 4] = [1.0, 3.0, 3.0, 1.0];

/// The 2-D filter `outer(k, k) / sum`, times `gain`, as diffusers builds it (in float32).
fn kernel_2d(gain: f64, kind: Kind, device: tch::Device) -> Tensor {
    let k = Tensor::from_slice(&FIR_KERNEL);
    let k = k.outer(&k);
    let k = &k / k.sum(Kind::Float);
    (k * gain).to_kind(kind).to_device(device)
}

/// diffusers' `upfirdn2d_native`: zero-stuffs `x` `[n, c, h, w]` by `up`, pads both spatial
/// axes by `pad` (before, after), convolves every channel with the flipped `kernel` and keeps
/// every `down`-th sample, with the same operations in the same order.
fn upfirdn2d(x: &Tensor, kernel: &Tensor, up: i64, down: i64, pad: (i64, i64)) -> Tensor {
    let size = x.size();
    let (channel, in_h, in_w) = (size[1], size[2], size[3]);
    let (kernel_h, kernel_w) = (kernel.size()[0], kernel.size()[1]);
    let out = x.reshape([-1, in_h, in_w, 1]);
    let out = out.view([-1, in_h, 1, in_w, 1, 1]);
    let out = out.constant_pad_nd([0, 0, 0, up - 1, 0, 0, 0, up - 1]);
    let out = out.view([-1, in_h * up, in_w * up, 1]);
    let out = out.constant_pad_nd([0, 0, pad.0, pad.1, pad.0, pad.1]);
    let (h, w) = (in_h * up + pad.0 + pad.1, in_w * up + pad.0 + pad.1);
    let out = out.permute([0, 3, 1, 2]).reshape([-1, 1, h, w]);
    let weight = kernel.flip([0, 1]).view([1, 1, kernel_h, kernel_w]);
    let out = out.conv2d(&weight, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
    let out = out.reshape([-1, 1, h - kernel_h + 1, w - kernel_w + 1]);
    let out = out.permute([0, 2, 3, 1]);
    let out = out.slice(1, 0, None, down).slice(2, 0, None, down);
    let out_h = (h - kernel_h) / down + 1;
    let out_w = (w - kernel_w) / down + 1;
    out.view([-1, channel, out_h, out_w])
}

/// diffusers' `upsample_2d` with the `[1, 3, 3, 1]` filter: `[n, c, h, w]` to
/// `[n, c, 2h, 2w]` (also `FirUpsample2D` without its convolution).
pub fn upsample_2d(x: &Tensor) -> Tensor {
    let factor = 2;
    let kernel = kernel_2d((factor * factor) as f64, x.kind(), x.device());
    let pad = FIR_KERNEL.len() as i64 - factor;
    upfirdn2d(x, &kernel, factor, 1, ((pad + 1) / 2 + factor - 1, pad / 2))
}

/// diffusers' `downsample_2d` with the `[1, 3, 3, 1]` filter: `[n, c, h, w]` to
/// `[n, c, h / 2, w / 2]` (also `FirDownsample2D` without its convolution).
pub fn downsample_2d(x: &Tensor) -> Tensor {
    let factor = 2;
    let kernel = kernel_2d(1.0, x.kind(), x.device());
    let pad = FIR_KERNEL.len() as i64 - factor;
    upfirdn2d(x, &kernel, 1, factor, ((pad + 1) / 2, pad / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_image_stays_constant_away_from_the_border() {
        let x = Tensor::ones([1, 2, 8, 8], (Kind::Float, tch::Device::Cpu)) * 3.0;
        let up = upsample_2d(&x);
        assert_eq!(up.size(), [1, 2, 16, 16]);
        let inner = up.slice(2, 2, 14, 1).slice(3, 2, 14, 1);
        assert!((inner - 3.0).abs().max().double_value(&[]) < 1e-6);
        let down = downsample_2d(&x);
        assert_eq!(down.size(), [1, 2, 4, 4]);
        let inner = down.slice(2, 1, 3, 1).slice(3, 1, 3, 1);
        assert!((inner - 3.0).abs().max().double_value(&[]) < 1e-6);
    }
}
