//! Adam (Kingma and Ba), as `torch.optim.Adam` computes it, with its moments held as named
//! tensors so that a checkpoint can save and restore them exactly; and global gradient-norm
//! clipping.

use tch::Tensor;

/// Adam's settings and moments for a list of parameters.
#[derive(Debug)]
pub struct Adam {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Steps taken.
    pub steps: i64,
    /// First moments, one per parameter.
    pub m: Vec<Tensor>,
    /// Second moments, one per parameter.
    pub v: Vec<Tensor>,
}

impl Adam {
    /// Zero moments for `params`, `torch.optim.Adam`'s default betas and epsilon.
    pub fn new(params: &[Tensor], lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            steps: 0,
            m: params.iter().map(Tensor::zeros_like).collect(),
            v: params.iter().map(Tensor::zeros_like).collect(),
        }
    }

    /// One update of `params` from their gradients, which are then zeroed. A parameter
    /// without a gradient is left as it is.
    pub fn step(&mut self, params: &mut [Tensor]) {
        self.steps += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let correction1 = 1.0 - b1.powi(self.steps as i32);
        let correction2 = 1.0 - b2.powi(self.steps as i32);
        tch::no_grad(|| {
            for ((p, m), v) in params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = m.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                let _ = v.g_mul_scalar_(b2).g_add_(&(g.square() * (1.0 - b2)));
                let denom = (&*v / correction2).sqrt() + self.eps;
                let update = (&*m / correction1) / denom * self.lr;
                let _ = p.g_sub_(&update);
                p.zero_grad();
            }
        });
    }
}

/// Scales the gradients of `params` so that their joint norm is at most `max_norm`; returns
/// the norm before scaling.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let squares: Vec<Tensor> = grads.iter().map(|g| g.square().sum(g.kind())).collect();
        let norm = Tensor::stack(&squares, 0)
            .sum(tch::Kind::Double)
            .sqrt()
            .double_value(&[]);
        if norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for mut g in grads {
                let _ = g.g_mul_scalar_(scale);
            }
        }
        norm
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// Two steps on `sum(p^2)` from p = [1, -2], lr 0.1: Adam's first step moves every
    /// coordinate by lr (m / sqrt(v) = sign(g)); the second by lr again to 4e-4 (same-sign
    /// gradients; 0.09959 by hand for the first coordinate).
    #[test]
    fn steps_follow_adam() {
        let mut p = vec![Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true)];
        let mut adam = Adam::new(&p, 0.1);
        for _ in 0..2 {
            p[0].square().sum(Kind::Float).backward();
            adam.step(&mut p);
        }
        let got = Vec::<f32>::try_from(p[0].detach()).unwrap();
        assert!((got[0] - 0.80041).abs() < 2e-5, "{got:?}");
        assert!((got[1] + 1.8).abs() < 1e-3, "{got:?}");
    }
}
