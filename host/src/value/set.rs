//! Value network for set-valued data (points, atoms): DeepSets. Every element of every
//! sample goes through the same network `phi([element, time embedding])`; the results are
//! summed and averaged per sample (through the sample index the data type declares, in
//! libtorch, so the value stays differentiable in every element); `rho([sum, mean, time
//! embedding])` gives the value. The output layer starts at zero.

use anyhow::{bail, Result};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::embedding::sinusoidal;
use super::{parameter_count, zero_init, ValueNetwork};
use crate::state::State;

const TIME_DIM: i64 = 32;
const HIDDEN: i64 = 128;

/// DeepSets over the elements of set-valued samples.
pub struct SetValue {
    vs: nn::VarStore,
    phi: Vec<nn::Linear>,
    rho: Vec<nn::Linear>,
    out: nn::Linear,
    /// The per-element leaves read, in order.
    elements: Vec<String>,
    /// The leaf mapping elements to samples.
    sample_index: String,
    features: i64,
}

impl SetValue {
    /// For samples like `example`, whose layout declares its per-element leaves.
    pub fn new(device: Device, example: &State) -> Result<Self> {
        let Some(layout) = example.layout() else {
            bail!("the set value network needs a data type with a custom layout");
        };
        let Some(set) = &layout.set else {
            bail!(
                "data type `{}` (from {}) lays out its batches itself but declares no per-element leaves, so no built-in value network can read it; declare them in its plugin with `register_data_type! {{ .., elements: [\"x\"], sample_index: \"sample\" }}`",
                layout.data_type,
                layout.plugin.display()
            );
        };
        let elements: Vec<String> = set.elements.iter().map(|e| e.to_string()).collect();
        for (name, t) in &example.leaves {
            if t.is_floating_point() && !elements.contains(name) {
                bail!(
                    "data type `{}`: floating leaf `{name}` is not one of the per-element leaves ({}); the set value network reads only those",
                    layout.data_type,
                    elements.join(", ")
                );
            }
        }
        let features: i64 = example
            .leaves
            .iter()
            .filter(|(n, _)| elements.contains(n))
            .map(|(_, t)| t.size().iter().skip(1).product::<i64>())
            .sum();
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let phi = vec![
            nn::linear(
                &root / "phi0",
                features + TIME_DIM,
                HIDDEN,
                Default::default(),
            ),
            nn::linear(&root / "phi1", HIDDEN, HIDDEN, Default::default()),
        ];
        let rho = vec![
            nn::linear(
                &root / "rho0",
                2 * HIDDEN + TIME_DIM,
                HIDDEN,
                Default::default(),
            ),
            nn::linear(&root / "rho1", HIDDEN, HIDDEN, Default::default()),
        ];
        let out = nn::linear(&root / "out", HIDDEN, 1, zero_init());
        Ok(Self {
            vs,
            phi,
            rho,
            out,
            elements,
            sample_index: set.sample_index.to_string(),
            features,
        })
    }

    fn leaf<'a>(x: &'a State, name: &str) -> &'a Tensor {
        x.leaves
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .expect("the layout checked the declared leaves")
    }
}

impl ValueNetwork for SetValue {
    fn forward(&self, x: &State, t: &Tensor) -> Tensor {
        let n = x.len() as i64;
        let index = Self::leaf(x, &self.sample_index);
        let m = index.size()[0];
        let parts: Vec<Tensor> = self
            .elements
            .iter()
            .map(|e| Self::leaf(x, e).reshape([m, -1]).to_kind(Kind::Float))
            .collect();
        let time = sinusoidal(t, TIME_DIM);
        let mut h = Tensor::cat(&[Tensor::cat(&parts, 1), time.index_select(0, index)], 1);
        for layer in &self.phi {
            h = layer.forward(&h).silu();
        }
        let device = h.device();
        let sum = Tensor::zeros([n, HIDDEN], (Kind::Float, device)).index_add(0, index, &h);
        let count = Tensor::zeros([n], (Kind::Float, device))
            .index_add(0, index, &Tensor::ones([m], (Kind::Float, device)))
            .clamp_min(1.0)
            .view([n, 1]);
        let mean = &sum / count;
        let mut g = Tensor::cat(&[sum, mean, time], 1);
        for layer in &self.rho {
            g = layer.forward(&g).silu();
        }
        self.out.forward(&g).view([n])
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn describe(&self) -> String {
        format!(
            "DeepSets ({} features per element of {}, sum and mean pooling, {HIDDEN} wide, {} parameters)",
            self.features,
            self.elements.join(", "),
            parameter_count(&self.vs)
        )
    }
}
