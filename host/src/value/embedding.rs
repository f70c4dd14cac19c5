//! Sinusoidal time embedding.

use tch::{Kind, Tensor};

/// Lowest and highest frequency, in cycles per unit of `t`.
const FREQUENCIES: (f64, f64) = (0.1, 20.0);

/// `[sin(2 pi f_i t), cos(2 pi f_i t)]` with `f_i` geometric from 0.1 to 20 cycles per unit of
/// `t` in `[0, 1]`: `[n] -> [n, dim]`. The highest frequency turns about one radian between
/// the steps of a 100-step grid, so the network sees neighbouring times as neighbours (DDPM's
/// embedding of `1000 t` turns ten radians there, and values fit at one step would not carry
/// over to the next).
pub fn sinusoidal(t: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let (low, high) = FREQUENCIES;
    let ratio = (high / low).ln() / (half - 1).max(1) as f64;
    let frequencies = (Tensor::arange(half, (Kind::Float, t.device())) * ratio).exp()
        * (2.0 * std::f64::consts::PI * low);
    let args = t.to_kind(Kind::Float).view([-1, 1]) * frequencies.view([1, -1]);
    Tensor::cat(&[args.sin(), args.cos()], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_is_bounded_and_separates_times() {
        let t = Tensor::from_slice(&[0.0f32, 0.5, 1.0]);
        let e = sinusoidal(&t, 64);
        assert_eq!(e.size(), vec![3, 64]);
        assert!(e.abs().max().double_value(&[]) <= 1.0);
        // At t = 0 the sines vanish and the cosines are one.
        assert_eq!(
            e.get(0)
                .narrow(0, 0, 32)
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
        assert_eq!(
            e.get(0)
                .narrow(0, 32, 32)
                .sum(Kind::Float)
                .double_value(&[]),
            32.0
        );
        let d = (e.get(1) - e.get(2)).norm().double_value(&[]);
        assert!(d > 1.0);
    }
}
