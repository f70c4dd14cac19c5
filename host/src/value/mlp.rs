//! MLP value network for flat data: `[x flattened, time embedding] -> hidden -> ... -> 1`.

use tch::nn::{self, Module};
use tch::{Device, Tensor};

use super::embedding::sinusoidal;
use super::{parameter_count, zero_init, ValueNetwork};
use crate::state::State;

const TIME_DIM: i64 = 64;
const HIDDEN: i64 = 128;
const HIDDEN_LAYERS: usize = 3;

/// MLP with SiLU activations; the output layer starts at zero.
pub struct MlpValue {
    vs: nn::VarStore,
    net: nn::Sequential,
    features: i64,
}

impl MlpValue {
    /// For samples with `features` floating elements each.
    pub fn new(device: Device, features: i64) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut net = nn::seq();
        let mut width = features + TIME_DIM;
        for i in 0..HIDDEN_LAYERS {
            net = net
                .add(nn::linear(
                    &root / format!("layer{i}"),
                    width,
                    HIDDEN,
                    Default::default(),
                ))
                .add_fn(|x| x.silu());
            width = HIDDEN;
        }
        net = net.add(nn::linear(&root / "out", width, 1, zero_init()));
        Self { vs, net, features }
    }
}

impl ValueNetwork for MlpValue {
    fn forward(&self, x: &State, t: &Tensor) -> Tensor {
        let n = x.len() as i64;
        let mut parts: Vec<Tensor> = x.floating().map(|leaf| leaf.reshape([n, -1])).collect();
        parts.push(sinusoidal(t, TIME_DIM));
        self.net.forward(&Tensor::cat(&parts, 1)).view([n])
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn describe(&self) -> String {
        format!(
            "MLP ({} features + {TIME_DIM}-d time embedding, {HIDDEN_LAYERS} x {HIDDEN} SiLU, {} parameters)",
            self.features,
            parameter_count(&self.vs)
        )
    }
}
