//! MLP value network for flat data: `[x flattened, time embedding] -> hidden -> ... -> 1`,
//! with the first layer also reading `[x, alpha(t)] / beta(t)`.
//!
//! Near the end of sampling the optimal value changes across a reward's edge over the
//! posterior's width, which is `beta(t)` in `x_t`. A first layer that sees only `x` needs
//! weights of order `1 / beta` to draw such an edge; reading `[x, alpha(t)] / beta(t)` as well,
//! its units can be `(w . x - c alpha(t)) / beta(t)`: edges that sharpen as the noise goes,
//! drawn with weights of order one, and that stay on a reward's edge `w . x_1 = c`, which lies
//! at `w . x_t = c alpha(t)` late in sampling (a constant in place of `alpha` would pin each
//! edge to one place in `x_t`). The weights on that input start at zero, so the network starts
//! as the plain MLP.

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::embedding::sinusoidal;
use super::{parameter_count, zero_init, ValueNetwork};
use crate::sde::interpolant::Interpolant;
use crate::state::State;

const TIME_DIM: i64 = 64;
const HIDDEN: i64 = 128;
const HIDDEN_LAYERS: usize = 3;
/// The noise level the scaled input divides by is `sqrt(beta^2 + NOISE_FLOOR^2)`: at most 100
/// times the input, which DDPM's cleanest step (`beta = 0.01`) and OT's last step of a 100-step
/// grid (`beta ~ 0.01`) reach, and finite at `beta = 0`.
const NOISE_FLOOR: f64 = 0.01;

/// MLP with SiLU activations; the output layer starts at zero.
pub struct MlpValue {
    vs: nn::VarStore,
    hidden: Vec<nn::Linear>,
    /// `[x, alpha(t)] / beta(t)` into the first hidden layer (no bias; starts at zero).
    scaled: nn::Linear,
    out: nn::Linear,
    features: i64,
    /// The base model's schedule, for `beta(t)`.
    noise: Interpolant,
}

impl MlpValue {
    /// For samples with `features` floating elements each, from a base model with the
    /// schedule `noise`.
    pub fn new(device: Device, features: i64, noise: Interpolant) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut width = features + TIME_DIM;
        let mut hidden = Vec::with_capacity(HIDDEN_LAYERS);
        for i in 0..HIDDEN_LAYERS {
            let layer = &root / format!("layer{i}");
            hidden.push(nn::linear(layer, width, HIDDEN, Default::default()));
            width = HIDDEN;
        }
        let scaled = nn::linear(
            &root / "scaled",
            features + 1,
            HIDDEN,
            nn::LinearConfig {
                ws_init: nn::Init::Const(0.0),
                bs_init: None,
                bias: false,
            },
        );
        let out = nn::linear(&root / "out", width, 1, zero_init());
        Self {
            vs,
            hidden,
            scaled,
            out,
            features,
            noise,
        }
    }

    /// `(1, alpha(t)) / sqrt(beta(t)^2 + NOISE_FLOOR^2)`.
    fn inverse_noise(&self, t: f64) -> (f64, f64) {
        let at = self.noise.at(t);
        let inverse = 1.0 / at.beta.hypot(NOISE_FLOOR);
        (inverse, at.alpha * inverse)
    }

    /// [`Self::inverse_noise`] of each time in `t` (`[n]`), as two `[n, 1]` columns like `like`.
    fn inverse_noise_columns(&self, t: &Tensor, like: &Tensor) -> (Tensor, Tensor) {
        let times = Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1))
            .expect("a flattened tensor converts to a vector");
        let (inverse, alpha_inverse): (Vec<f64>, Vec<f64>) =
            times.iter().map(|&t| self.inverse_noise(t)).unzip();
        let column = |values: &[f64]| {
            Tensor::from_slice(values)
                .to_kind(like.kind())
                .to_device(like.device())
                .view([-1, 1])
        };
        (column(&inverse), column(&alpha_inverse))
    }

    /// The floating leaves side by side: `[n, features]`.
    fn inputs(x: &State) -> Tensor {
        let n = x.len() as i64;
        let parts: Vec<Tensor> = x.floating().map(|leaf| leaf.reshape([n, -1])).collect();
        Tensor::cat(&parts, 1)
    }
}

impl ValueNetwork for MlpValue {
    fn forward(&self, x: &State, t: &Tensor) -> Tensor {
        let n = x.len() as i64;
        let inputs = Self::inputs(x);
        let (inverse, alpha_inverse) = self.inverse_noise_columns(t, &inputs);
        let scaled = self
            .scaled
            .forward(&Tensor::cat(&[&inputs * inverse, alpha_inverse], 1));
        let mut h = Tensor::cat(&[inputs, sinusoidal(t, TIME_DIM)], 1);
        for (i, layer) in self.hidden.iter().enumerate() {
            let a = layer.forward(&h);
            h = if i == 0 { a + &scaled } else { a }.silu();
        }
        self.out.forward(&h).view([n])
    }

    /// Backpropagation written out: the time embedding enters the first layer as one bias row
    /// shared by all samples, and no autograd graph is built (about half the operations of
    /// differentiating `forward`, at every sampling step).
    fn gradient(&self, x: &State, t: f64) -> Vec<Tensor> {
        let _no_grad = tch::no_grad_guard();
        let first = &self.hidden[0];
        let (inverse, alpha_inverse) = self.inverse_noise(t);
        let weights_x = first.ws.narrow(1, 0, self.features)
            + self.scaled.ws.narrow(1, 0, self.features) * inverse;
        let weights_t = first.ws.narrow(1, self.features, TIME_DIM);
        let time = Tensor::from_slice(&[t as f32]).to_device(first.ws.device());
        let mut bias = sinusoidal(&time, TIME_DIM).matmul(&weights_t.tr())
            + self.scaled.ws.narrow(1, self.features, 1).view([1, -1]) * alpha_inverse;
        if let Some(b) = &first.bs {
            bias += b;
        }
        let mut pre = Vec::with_capacity(self.hidden.len());
        pre.push(bias.addmm(&Self::inputs(x), &weights_x.tr()));
        for layer in &self.hidden[1..] {
            let h = pre.last().expect("the first layer is in").silu();
            pre.push(layer.forward(&h));
        }
        let mut grad = self.out.ws.shallow_clone();
        for (i, a) in pre.iter().enumerate().rev() {
            let back = a.silu_backward(&grad.expand_as(a));
            grad = back.matmul(if i == 0 {
                &weights_x
            } else {
                &self.hidden[i].ws
            });
        }
        let mut offset = 0;
        x.floating()
            .map(|leaf| {
                let width = leaf.numel() as i64 / (x.len() as i64).max(1);
                let part = grad.narrow(1, offset, width).reshape(leaf.size());
                offset += width;
                part
            })
            .collect()
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn describe(&self) -> String {
        format!(
            "MLP ({} features, the same over the noise level, {TIME_DIM}-d time embedding, {HIDDEN_LAYERS} x {HIDDEN} SiLU, {} parameters)",
            self.features,
            parameter_count(&self.vs)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::autograd_gradient;

    #[test]
    fn direct_gradient_matches_autograd_for_every_leaf() {
        tch::manual_seed(3);
        let mut value = MlpValue::new(
            Device::Cpu,
            5,
            Interpolant::Discrete {
                alpha_bar: vec![0.999, 0.9, 0.5, 0.1],
            },
        );
        // The output layer starts at zero (a zero gradient proves nothing): give it weights.
        tch::no_grad(|| {
            value
                .out
                .ws
                .copy_(&Tensor::randn([1, HIDDEN], (Kind::Float, Device::Cpu)));
            let scaled = value.scaled.ws.size();
            value
                .scaled
                .ws
                .copy_(&(Tensor::randn(scaled, (Kind::Float, Device::Cpu)) * 0.1));
        });
        let x = State::new(
            "test",
            vec![
                (
                    "a".into(),
                    Tensor::randn([7, 2], (Kind::Float, Device::Cpu)),
                ),
                (
                    "b".into(),
                    Tensor::randn([7, 3, 1], (Kind::Float, Device::Cpu)),
                ),
            ],
        );
        let t = 0.37;
        let times = Tensor::full([7], t, (Kind::Float, Device::Cpu));
        let expected = autograd_gradient(&value, &x, &times);
        let direct = value.gradient(&x, t);
        assert_eq!(direct.len(), 2);
        for (d, e) in direct.iter().zip(&expected) {
            assert_eq!(d.size(), e.size());
            let scale = e.abs().max().double_value(&[]);
            assert!(scale > 1e-3, "the gradient should not vanish");
            let error = (d - e).abs().max().double_value(&[]);
            assert!(
                error <= 1e-5 * scale,
                "direct vs autograd: {error} (scale {scale})"
            );
        }
    }
}
