//! Adam with gradient-norm clipping, with its state exposed as named tensors so that a resumed
//! run continues exactly where it stopped.

use anyhow::{bail, Context, Result};
use tch::{nn, Kind, Tensor};

/// Adam (Kingma and Ba) over the trainable variables of a `VarStore`, in name order.
pub struct Adam {
    /// Learning rate.
    pub lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step: i64,
    names: Vec<String>,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl Adam {
    /// Adam with the usual betas (0.9, 0.999) and eps 1e-8.
    pub fn new(vs: &nn::VarStore, lr: f64) -> Self {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let m = named.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = named.iter().map(|(_, p)| p.zeros_like()).collect();
        let (names, params) = named.into_iter().unzip();
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            names,
            params,
            m,
            v,
        }
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Makes every parameter's gradient defined (zero where no loss reached it yet), so that
    /// ranks without points in a step still take part in adding up the gradients.
    pub fn define_gradients(&mut self) {
        let zero = self
            .params
            .iter()
            .map(|p| p.sum(Kind::Float) * 0.0)
            .reduce(|a, b| a + b);
        if let Some(zero) = zero {
            zero.backward();
        }
    }

    /// The parameters' gradients, sharing their memory (changing them changes the step).
    pub fn gradients(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect()
    }

    /// The global gradient norm (before clipping).
    pub fn grad_norm(&self) -> Tensor {
        let squares: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .map(|g| g.square().sum(Kind::Float))
            .collect();
        Tensor::stack(&squares, 0).sum(Kind::Float).sqrt()
    }

    /// One update, after scaling the gradients so their global norm is at most `max_norm`.
    /// Returns the norm before clipping; a NaN or infinite norm leaves the parameters and the
    /// optimiser's state untouched.
    pub fn step(&mut self, max_norm: f64) -> f64 {
        let _guard = tch::no_grad_guard();
        let norm = self.grad_norm().double_value(&[]);
        if !norm.is_finite() {
            return norm;
        }
        let clip = if norm > max_norm {
            max_norm / (norm + 1e-6)
        } else {
            1.0
        };
        self.step += 1;
        let correction1 = 1.0 - self.beta1.powi(self.step as i32);
        let correction2 = 1.0 - self.beta2.powi(self.step as i32);
        for ((p, m), v) in self.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let g = g * clip;
            let _ = m
                .g_mul_scalar_(self.beta1)
                .g_add_(&(&g * (1.0 - self.beta1)));
            let _ = v
                .g_mul_scalar_(self.beta2)
                .g_add_(&(g.square() * (1.0 - self.beta2)));
            let update = (&*m / correction1) / ((&*v / correction2).sqrt() + self.eps) * self.lr;
            let _ = p.g_sub_(&update);
        }
        norm
    }

    /// The optimiser's state: `adam.step`, `adam.m.<name>`, `adam.v.<name>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("adam.step".to_string(), Tensor::from_slice(&[self.step]))];
        for (i, name) in self.names.iter().enumerate() {
            out.push((format!("adam.m.{name}"), self.m[i].shallow_clone()));
            out.push((format!("adam.v.{name}"), self.v[i].shallow_clone()));
        }
        out
    }

    /// Restores [`Adam::state`].
    pub fn load_state(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let find = |name: &str| -> Result<&Tensor> {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .with_context(|| format!("checkpoint lacks `{name}`"))
        };
        self.step = find("adam.step")?.int64_value(&[0]);
        let _guard = tch::no_grad_guard();
        for (i, name) in self.names.iter().enumerate() {
            for (slot, prefix) in [(&mut self.m[i], "adam.m"), (&mut self.v[i], "adam.v")] {
                let saved = find(&format!("{prefix}.{name}"))?;
                if saved.size() != slot.size() {
                    bail!(
                        "checkpoint's `{prefix}.{name}` has shape {:?}, expected {:?}",
                        saved.size(),
                        slot.size()
                    );
                }
                slot.copy_(saved);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn adam_minimises_a_quadratic_and_clips() {
        let vs = nn::VarStore::new(Device::Cpu);
        let x = vs.root().var("x", &[2], nn::Init::Const(3.0));
        let mut adam = Adam::new(&vs, 0.1);
        let mut first_norm = 0.0;
        for i in 0..300 {
            adam.zero_grad();
            (x.square().sum(Kind::Float) * 10.0).backward();
            let norm = adam.step(1.0);
            if i == 0 {
                first_norm = norm;
            }
        }
        // d/dx 10 |x|^2 = 20 x = 60 per coordinate at the start: norm 60 sqrt(2).
        assert!((first_norm - 60.0 * 2f64.sqrt()).abs() < 1e-3);
        assert!(x.abs().max().double_value(&[]) < 0.05);
    }

    #[test]
    fn state_round_trips() {
        let vs = nn::VarStore::new(Device::Cpu);
        let x = vs.root().var("x", &[3], nn::Init::Const(1.0));
        let mut adam = Adam::new(&vs, 0.01);
        adam.zero_grad();
        x.sum(Kind::Float).backward();
        adam.step(10.0);
        let saved: Vec<(String, Tensor)> = adam
            .state()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let mut fresh = Adam::new(&vs, 0.01);
        fresh.load_state(&saved).unwrap();
        assert_eq!(fresh.step, 1);
        assert!(fresh.m[0].allclose(&adam.m[0], 0.0, 0.0, false));
        assert!(fresh.v[0].allclose(&adam.v[0], 0.0, 0.0, false));
    }
}
