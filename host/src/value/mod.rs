//! Built-in value networks `V(x, t)`: an MLP with a sinusoidal time embedding for flat data and
//! a small CNN with time conditioning for image tensors `[n, C, H, W]`, DeepSets for set-valued
//! data of a custom layout, chosen from the data's shape and layout or by flag. The last layer starts at zero, so iteration 0 samples exactly the base
//! model.

pub mod cnn;
pub mod embedding;
pub mod mlp;
pub mod set;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::sde::interpolant::Interpolant;
use crate::state::State;

/// Which architecture to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ValueArch {
    /// CNN for one `[n, C, H, W]` floating leaf, MLP otherwise.
    Auto,
    /// MLP on all floating leaves, flattened.
    Mlp,
    /// CNN on a single `[n, C, H, W]` floating leaf.
    Cnn,
    /// DeepSets over the elements of set-valued data (a custom layout that declares its
    /// per-element leaves and sample index); what `auto` picks for any custom layout.
    Set,
}

/// A value network: `forward(x, t)` gives `[n]` values.
pub trait ValueNetwork {
    /// Values at states `x` and times `t` (`[n]`).
    fn forward(&self, x: &State, t: &Tensor) -> Tensor;
    /// The trainable variables.
    fn var_store(&self) -> &nn::VarStore;
    /// The trainable variables, mutably (for loading checkpoints).
    fn var_store_mut(&mut self) -> &mut nn::VarStore;
    /// One line: architecture and size.
    fn describe(&self) -> String;
    /// `grad_x V(x, t)` for every floating leaf (in order), all samples at the one time `t`:
    /// what the sampler's control needs at every step. The default differentiates `forward`
    /// with autograd; a network can compute it directly, with fewer operations.
    fn gradient(&self, x: &State, t: f64) -> Vec<Tensor> {
        let times = Tensor::full([x.len() as i64], t, (Kind::Float, x.device()));
        autograd_gradient(self, x, &times)
    }
}

/// A linear layer that starts at zero: the output layer of every built-in value network, so
/// that iteration 0 samples exactly the base model.
pub fn zero_init() -> nn::LinearConfig {
    nn::LinearConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    }
}

/// Number of trainable parameters.
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

/// Whether `example` is a batch of images or image latents: one floating leaf shaped
/// `[n, C, H, W]` (any number of channels), which the CNN value network reads.
pub fn image_shaped(example: &State) -> bool {
    let mut floating = example.floating();
    matches!((floating.next(), floating.next()), (Some(x), None) if x.dim() == 4)
}

/// The architecture `arch` resolves to for data shaped like `example`.
pub fn resolve(arch: ValueArch, example: &State) -> Result<ValueArch> {
    if let Some(layout) = example.layout() {
        return match arch {
            ValueArch::Auto | ValueArch::Set => Ok(ValueArch::Set),
            other => bail!(
                "data type `{}` lays out its batches itself (from {}); only the set value network reads such data, not {other:?}",
                layout.data_type,
                layout.plugin.display()
            ),
        };
    }
    if arch == ValueArch::Set {
        bail!("the set value network needs a data type with a custom layout that declares its per-element leaves; `{}` is plain data", example.data_type);
    }
    let image_like = image_shaped(example);
    match arch {
        ValueArch::Auto => Ok(if image_like {
            ValueArch::Cnn
        } else {
            ValueArch::Mlp
        }),
        ValueArch::Cnn if !image_like => {
            let floating: Vec<&Tensor> = example.floating().collect();
            let shapes: Vec<Vec<i64>> = floating.iter().map(|t| t.size()).collect();
            bail!("the CNN value network needs one floating leaf shaped [n, C, H, W]; these samples have floating leaves of shapes {shapes:?}")
        }
        other => Ok(other),
    }
}

/// Builds the value network for data shaped like `example` on `device`.
/// `noise` is the base model's schedule, whose noise level scales part of the MLP's input.
pub fn build(
    arch: ValueArch,
    example: &State,
    device: Device,
    noise: &Interpolant,
) -> Result<Box<dyn ValueNetwork>> {
    Ok(match resolve(arch, example)? {
        ValueArch::Cnn => {
            let x = example.floating().next().expect("resolve checked the leaf");
            Box::new(cnn::CnnValue::new(device, x.size()[1]))
        }
        ValueArch::Set => Box::new(set::SetValue::new(device, example)?),
        _ => {
            let features: i64 = example
                .floating()
                .map(|t| t.size().iter().skip(1).product::<i64>())
                .sum();
            Box::new(mlp::MlpValue::new(device, features, noise.clone()))
        }
    })
}

/// `grad_x V(x, t)` for every floating leaf by autograd through `forward`, with gradients
/// enabled whatever the caller's mode (the result has the floating leaves only, in order).
pub fn autograd_gradient<V: ValueNetwork + ?Sized>(
    value: &V,
    x: &State,
    t: &Tensor,
) -> Vec<Tensor> {
    tch::with_grad(|| {
        let inputs = x.map_floating(|leaf| leaf.detach().set_requires_grad(true));
        let v = value.forward(&inputs, t);
        let leaves: Vec<&Tensor> = inputs.floating().collect();
        Tensor::run_backward(&[v.sum(v.kind())], &leaves, false, false)
    })
}

/// The prefix of the value network's weights in checkpoints: `value.<variable name>`.
pub const PREFIX: &str = "value.";

/// The prefix of the averaged weights that steer sampling when the run averages them
/// (`value_average`): `value_average.<variable name>`.
pub const AVERAGE_PREFIX: &str = "value_average.";

/// Copies the `<prefix><name>` tensors of a checkpoint into the network's variables, checking
/// names and shapes; `prefix` is [`PREFIX`] or [`AVERAGE_PREFIX`].
pub fn load(
    value: &mut dyn ValueNetwork,
    tensors: &[(String, Tensor)],
    prefix: &str,
) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let mut variables = value.var_store_mut().variables();
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    let mut missing = Vec::new();
    for name in names.clone() {
        let key = format!("{prefix}{name}");
        match tensors.iter().find(|(n, _)| *n == key) {
            Some((_, saved)) => {
                let target = variables.get(name).expect("listed above");
                if saved.size() != target.size() {
                    bail!(
                        "checkpoint's `{key}` has shape {:?} but the value network's has {:?}; was it written for another model or architecture?",
                        saved.size(),
                        target.size()
                    );
                }
            }
            None => missing.push(key),
        }
    }
    if !missing.is_empty() {
        bail!(
            "the checkpoint does not fit this value network: missing {}",
            missing.join(", ")
        );
    }
    for (name, target) in variables.iter_mut() {
        let key = format!("{prefix}{name}");
        let (_, saved) = tensors
            .iter()
            .find(|(n, _)| *n == key)
            .expect("checked above");
        target.copy_(&saved.to_device(target.device()));
    }
    Ok(())
}

/// The network's weights named as [`load`] reads them back: `<prefix><variable name>`.
pub fn named_weights(value: &dyn ValueNetwork, prefix: &str) -> Vec<(String, Tensor)> {
    value
        .var_store()
        .variables()
        .into_iter()
        .map(|(name, t)| (format!("{prefix}{name}"), t))
        .collect()
}

/// Whether a checkpoint holds averaged weights (`value_average.*`).
pub fn has_average(tensors: &[(String, Tensor)]) -> bool {
    tensors
        .iter()
        .any(|(name, _)| name.starts_with(AVERAGE_PREFIX))
}

/// Moves `averaged`'s weights towards `value`'s: `averaged = decay averaged + (1 - decay) value`
/// (the two networks of one architecture; decay 0 copies).
pub fn average_into(averaged: &mut dyn ValueNetwork, value: &dyn ValueNetwork, decay: f64) {
    let _guard = tch::no_grad_guard();
    let source = value.var_store().variables();
    for (name, mut target) in averaged.var_store_mut().variables() {
        let current = &source[&name];
        let moved = &target * decay + current * (1.0 - decay);
        target.copy_(&moved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(value: &dyn ValueNetwork) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = value.var_store().variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    #[test]
    fn the_average_moves_by_one_minus_the_decay_and_loads_by_its_prefix() {
        tch::manual_seed(5);
        let mut latest = mlp::MlpValue::new(Device::Cpu, 3, Interpolant::OptimalTransport);
        let mut averaged = mlp::MlpValue::new(Device::Cpu, 3, Interpolant::OptimalTransport);
        tch::no_grad(|| {
            for (_, mut t) in latest.var_store_mut().variables() {
                t.copy_(&t.randn_like());
            }
        });
        average_into(&mut averaged, &latest, 0.0);
        for ((name, a), (_, l)) in weights(&averaged).iter().zip(weights(&latest)) {
            assert!(a.equal(&l), "decay 0 copies, but {name} differs");
        }
        let before = weights(&averaged)
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect::<Vec<_>>();
        tch::no_grad(|| {
            for (_, mut t) in latest.var_store_mut().variables() {
                let moved = &t + 1.0;
                t.copy_(&moved);
            }
        });
        average_into(&mut averaged, &latest, 0.75);
        for ((name, a), (_, b)) in weights(&averaged).iter().zip(&before) {
            // 0.75 b + 0.25 (b + 1) = b + 0.25.
            let error = (a - (b + 0.25)).abs().max().double_value(&[]);
            assert!(error < 1e-6, "{name}: off by {error}");
        }
        let saved = named_weights(&averaged, AVERAGE_PREFIX);
        assert!(has_average(&saved) && !has_average(&named_weights(&latest, PREFIX)));
        let mut fresh = mlp::MlpValue::new(Device::Cpu, 3, Interpolant::OptimalTransport);
        let err = load(&mut fresh, &saved, PREFIX).unwrap_err().to_string();
        assert!(
            err.contains("missing value.") && !err.contains("value_average."),
            "{err}"
        );
        load(&mut fresh, &saved, AVERAGE_PREFIX).unwrap();
        for ((name, f), (_, a)) in weights(&fresh).iter().zip(weights(&averaged)) {
            assert!(f.equal(&a), "{name} was not loaded");
        }
    }
}
