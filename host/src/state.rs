//! The state of a batch on the host side: named libtorch tensors, with the arithmetic the sampler does.
//!
//! Floating leaves take part in arithmetic, noise and gradients; integer and bool leaves pass
//! through unchanged. Plain data carries the batch on dimension 0 of every leaf; a data type
//! with a custom layout ([`CustomLayout`]) answers for its length, slices, concatenation and
//! per-sample sums through its plugin.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use flowgym_plugin_api::tch_interop::dtype_of;
use flowgym_plugin_api::Batch;
use tch::{Device, Kind, Tensor};

use crate::layout::CustomLayout;

/// A batch of samples as libtorch tensors.
#[derive(Debug)]
pub struct State {
    /// The data type's name.
    pub data_type: String,
    /// `(name, tensor)` in the data type's order.
    pub leaves: Vec<(String, Tensor)>,
    /// The custom layout and the number of samples it counted; `None` for plain data.
    custom: Option<(Arc<CustomLayout>, usize)>,
}

/// Whether a tensor takes part in arithmetic.
pub fn is_floating(t: &Tensor) -> bool {
    t.is_floating_point()
}

impl State {
    /// A state with these leaves.
    pub fn new(data_type: impl Into<String>, leaves: Vec<(String, Tensor)>) -> Self {
        Self {
            data_type: data_type.into(),
            leaves,
            custom: None,
        }
    }

    /// Imports a plugin batch without copying: plain data is checked to have the batch on
    /// dimension 0 of every leaf, custom data against its layout (`what` names the producer).
    pub fn import(batch: Batch, layout: Option<&Arc<CustomLayout>>, what: &str) -> Result<Self> {
        let Some(layout) = layout else {
            return Self::from_batch(batch).map_err(|e| anyhow::anyhow!("{what}: {e}"));
        };
        let data_type = batch.data_type.to_string();
        let leaves = batch
            .into_tch()
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        let n = layout.check(&leaves, what)?;
        if !leaves.iter().any(|(_, t)| is_floating(t)) {
            bail!("{what}: a batch of `{data_type}` has no floating-point leaf to evolve");
        }
        Ok(Self {
            data_type,
            leaves,
            custom: Some((layout.clone(), n)),
        })
    }

    /// These leaves with the layout and length of `self` (a model's output for `self`).
    fn like(&self, leaves: Vec<(String, Tensor)>) -> State {
        State {
            data_type: self.data_type.clone(),
            leaves,
            custom: self.custom.clone(),
        }
    }

    /// The custom layout, if the data type has one.
    pub fn layout(&self) -> Option<&Arc<CustomLayout>> {
        self.custom.as_ref().map(|(layout, _)| layout)
    }

    /// The same leaves, read as data of `layout` (which counts the samples).
    pub fn with_layout(self, layout: &Arc<CustomLayout>) -> Result<State> {
        let n = layout.len(&self.leaves)?;
        Ok(State {
            custom: Some((layout.clone(), n)),
            ..self
        })
    }

    /// Imports a plugin batch without copying, checking it is plain data with a floating leaf.
    pub fn from_batch(batch: Batch) -> Result<Self> {
        let data_type = batch.data_type.to_string();
        let leaves = batch.into_tch().map_err(|e| anyhow::anyhow!("{e}"))?;
        let state = Self::new(data_type, leaves);
        state.validate()?;
        Ok(state)
    }

    fn validate(&self) -> Result<()> {
        if self.leaves.is_empty() {
            bail!("a batch of `{}` has no leaves", self.data_type);
        }
        let n = self.len();
        for (name, t) in &self.leaves {
            if dtype_of(t.kind()).is_none() {
                bail!(
                    "leaf `{name}` has the unsupported element type {:?}",
                    t.kind()
                );
            }
            if t.dim() == 0 || t.size()[0] as usize != n {
                bail!(
                    "leaf `{name}` has shape {:?}, but every leaf must have the batch ({n}) on dimension 0",
                    t.size()
                );
            }
        }
        if !self.leaves.iter().any(|(_, t)| is_floating(t)) {
            bail!(
                "a batch of `{}` has no floating-point leaf to evolve",
                self.data_type
            );
        }
        Ok(())
    }

    /// Exports the leaves without copying.
    pub fn to_batch(&self) -> Result<Batch> {
        Batch::from_tch(
            &self.data_type,
            self.leaves.iter().map(|(n, t)| (n.as_str(), t)),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        if let Some((_, n)) = &self.custom {
            return *n;
        }
        self.leaves
            .first()
            .map_or(0, |(_, t)| t.size().first().copied().unwrap_or(1) as usize)
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The floating leaves.
    pub fn floating(&self) -> impl Iterator<Item = &Tensor> {
        self.leaves
            .iter()
            .map(|(_, t)| t)
            .filter(|t| is_floating(t))
    }

    /// The leaf called `name`.
    #[cfg(test)]
    pub fn leaf(&self, name: &str) -> Option<&Tensor> {
        self.leaves.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// `f` applied to every floating leaf; other leaves are shared unchanged.
    pub fn map_floating(&self, mut f: impl FnMut(&Tensor) -> Tensor) -> State {
        self.like(
            self.leaves
                .iter()
                .map(|(n, t)| {
                    let t = if is_floating(t) {
                        f(t)
                    } else {
                        t.shallow_clone()
                    };
                    (n.clone(), t)
                })
                .collect(),
        )
    }

    /// `f` applied to matching floating leaves of `self` and `other` (same leaf order).
    pub fn zip_floating(
        &self,
        other: &State,
        mut f: impl FnMut(&Tensor, &Tensor) -> Tensor,
    ) -> State {
        self.like(
            self.leaves
                .iter()
                .zip(&other.leaves)
                .map(|((n, a), (_, b))| {
                    let t = if is_floating(a) {
                        f(a, b)
                    } else {
                        a.shallow_clone()
                    };
                    (n.clone(), t)
                })
                .collect(),
        )
    }

    /// The floating leaves of `other` in place of this state's (checked by name and shape),
    /// keeping the non-floating leaves of `self`. Used to read model outputs.
    pub fn with_floating_from(&self, other: State, what: &str) -> Result<State> {
        let mut out = Vec::with_capacity(self.leaves.len());
        for (name, t) in &self.leaves {
            if !is_floating(t) {
                out.push((name.clone(), t.shallow_clone()));
                continue;
            }
            let produced = other
                .leaves
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .with_context(|| {
                    let names: Vec<&str> = other.leaves.iter().map(|(n, _)| n.as_str()).collect();
                    format!(
                        "{what} has no leaf `{name}` (it returned: {})",
                        names.join(", ")
                    )
                })?;
            if produced.size() != t.size() {
                bail!(
                    "{what} returned leaf `{name}` with shape {:?}, expected {:?}",
                    produced.size(),
                    t.size()
                );
            }
            if !is_floating(produced) {
                bail!(
                    "{what} returned leaf `{name}` as {:?}, expected floating point",
                    produced.kind()
                );
            }
            out.push((name.clone(), produced.shallow_clone()));
        }
        Ok(self.like(out))
    }

    /// Shares the tensors.
    pub fn shallow_clone(&self) -> State {
        self.like(
            self.leaves
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
        )
    }

    /// The device of the samples (that of the first leaf).
    pub fn device(&self) -> Device {
        self.leaves.first().map_or(Device::Cpu, |(_, t)| t.device())
    }

    /// Every leaf moved to `device`.
    pub fn to_device(&self, device: Device) -> State {
        self.like(
            self.leaves
                .iter()
                .map(|(n, t)| (n.clone(), t.to_device(device)))
                .collect(),
        )
    }

    /// The samples at `indices` (an int64 tensor), in that order. A custom layout slices out
    /// every sample and collates them, through its plugin.
    pub fn index_select(&self, indices: &Tensor) -> Result<State> {
        if let Some((layout, n)) = &self.custom {
            let order = Vec::<i64>::try_from(indices.to_device(Device::Cpu))?;
            let count = order.len();
            if let Some(&first) = order.first() {
                let contiguous = order
                    .iter()
                    .enumerate()
                    .all(|(i, &j)| j == first + i as i64);
                if contiguous && first >= 0 {
                    let first = first as usize;
                    return self.slice(first, first + count);
                }
            }
            if let Some(bad) = order.iter().find(|&&i| i < 0 || i as usize >= *n) {
                bail!("sample {bad} is out of range for a batch of {n}");
            }
            // Split once into single samples by halving (each sample's points are read
            // O(log n) times), then collate them in the order asked for.
            let mut singles = Vec::with_capacity(*n);
            split_into_singles(layout, &self.leaves, *n, &mut singles)?;
            let parts: Vec<&Vec<(String, Tensor)>> =
                order.iter().map(|&i| &singles[i as usize]).collect();
            let leaves = layout.collate(&parts, count)?;
            return Ok(self.custom_with(leaves, count));
        }
        Ok(self.like(
            self.leaves
                .iter()
                .map(|(n, t)| (n.clone(), t.index_select(0, indices)))
                .collect(),
        ))
    }

    fn custom_with(&self, leaves: Vec<(String, Tensor)>, n: usize) -> State {
        State {
            data_type: self.data_type.clone(),
            leaves,
            custom: self.custom.as_ref().map(|(layout, _)| (layout.clone(), n)),
        }
    }

    /// Samples `start..end`.
    pub fn slice(&self, start: usize, end: usize) -> Result<State> {
        if let Some((layout, n)) = &self.custom {
            let leaves = layout.slice(&self.leaves, *n, start, end)?;
            return Ok(self.custom_with(leaves, end - start));
        }
        if start > end || end > self.len() {
            bail!(
                "samples {start}..{end} are out of range for a batch of {}",
                self.len()
            );
        }
        Ok(self.like(
            self.leaves
                .iter()
                .map(|(n, t)| (n.clone(), t.narrow(0, start as i64, (end - start) as i64)))
                .collect(),
        ))
    }

    /// The batches one after the other (through the layout's collate for custom data).
    pub fn cat(parts: &[State]) -> Result<State> {
        let first = parts.first().context("nothing to concatenate")?;
        fn names(s: &State) -> Vec<&str> {
            s.leaves.iter().map(|(n, _)| n.as_str()).collect()
        }
        if let Some(other) = parts.iter().find(|p| names(p) != names(first)) {
            bail!(
                "batches of `{}` with different leaves cannot be joined ({} vs {})",
                first.data_type,
                names(first).join(", "),
                names(other).join(", ")
            );
        }
        // A part restored from a checkpoint may lack the layout another part carries.
        if let Some(layout) = parts.iter().find_map(State::layout) {
            let total = parts.iter().map(State::len).sum();
            let leaves: Vec<&Vec<(String, Tensor)>> = parts.iter().map(|p| &p.leaves).collect();
            let joined = layout.collate(&leaves, total)?;
            return Ok(State {
                data_type: first.data_type.clone(),
                leaves: joined,
                custom: Some((layout.clone(), total)),
            });
        }
        let leaves = first
            .leaves
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let tensors: Vec<&Tensor> = parts.iter().map(|p| &p.leaves[i].1).collect();
                (name.clone(), Tensor::cat(&tensors, 0))
            })
            .collect();
        Ok(State::new(first.data_type.clone(), leaves))
    }

    /// Per-sample sum of `f(leaf)` over the elements of every floating leaf: shape `[n]`
    /// (through the layout's aggregate for custom data).
    pub fn per_sample_sum(&self, mut f: impl FnMut(&Tensor) -> Tensor) -> Result<Tensor> {
        if let Some((layout, n)) = &self.custom {
            let values = self
                .leaves
                .iter()
                .map(|(name, t)| {
                    let v = if is_floating(t) {
                        f(t).to_kind(t.kind())
                    } else {
                        t.shallow_clone()
                    };
                    (name.clone(), v)
                })
                .collect();
            return layout.sum(&self.leaves, &values, *n);
        }
        let n = self.len() as i64;
        let mut total: Option<Tensor> = None;
        for t in self.floating() {
            let s = f(t).reshape([n, -1]).sum_dim_intlist(1, false, Kind::Float);
            total = Some(match total {
                Some(acc) => acc + s,
                None => s,
            });
        }
        total.context("a batch without floating leaves has no per-sample sums")
    }

    /// Whether every floating element is finite (one scalar bool tensor, no device sync).
    pub fn all_finite(&self) -> Tensor {
        let mut ok: Option<Tensor> = None;
        for t in self.floating() {
            let leaf_ok = t.isfinite().all();
            ok = Some(match ok {
                Some(acc) => acc.logical_and(&leaf_ok),
                None => leaf_ok,
            });
        }
        ok.expect("validated states have a floating leaf")
    }
}

/// The samples of `leaves` (`n` of them), one batch each, in order, by halving.
fn split_into_singles(
    layout: &CustomLayout,
    leaves: &Vec<(String, Tensor)>,
    n: usize,
    out: &mut Vec<Vec<(String, Tensor)>>,
) -> Result<()> {
    if n <= 1 {
        if n == 1 {
            out.push(
                leaves
                    .iter()
                    .map(|(l, t)| (l.clone(), t.shallow_clone()))
                    .collect(),
            );
        }
        return Ok(());
    }
    let mid = n / 2;
    split_into_singles(layout, &layout.slice(leaves, n, 0, mid)?, mid, out)?;
    split_into_singles(layout, &layout.slice(leaves, n, mid, n)?, n - mid, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State::new(
            "points",
            vec![
                (
                    "x".into(),
                    Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]),
                ),
                ("id".into(), Tensor::from_slice(&[7i64, 8])),
            ],
        )
    }

    #[test]
    fn arithmetic_touches_only_floating_leaves() {
        let s = state();
        let doubled = s.map_floating(|t| t * 2.0);
        assert_eq!(
            Vec::<f32>::try_from(doubled.leaf("x").unwrap().view([-1])).unwrap(),
            vec![2.0, 4.0, 6.0, 8.0]
        );
        assert_eq!(
            Vec::<i64>::try_from(doubled.leaf("id").unwrap()).unwrap(),
            vec![7, 8]
        );
        let sums = s.per_sample_sum(|t| t.square()).unwrap();
        assert_eq!(Vec::<f32>::try_from(&sums).unwrap(), vec![5.0, 25.0]);
    }

    #[test]
    fn slicing_and_concatenation_round_trip() {
        let s = state();
        let parts = [s.slice(0, 1).unwrap(), s.slice(1, 2).unwrap()];
        let joined = State::cat(&parts).unwrap();
        assert!(joined.leaf("x").unwrap().equal(s.leaf("x").unwrap()));
        assert!(joined.leaf("id").unwrap().equal(s.leaf("id").unwrap()));
    }

    #[test]
    fn chunks_with_other_leaves_are_not_joined() {
        let other = State::new(
            "points",
            vec![(
                "y".into(),
                Tensor::zeros([1, 2], (Kind::Float, Device::Cpu)),
            )],
        );
        let err = State::cat(&[state(), other]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "batches of `points` with different leaves cannot be joined (x, id vs y)"
        );
    }

    #[test]
    fn model_outputs_are_checked_leaf_by_leaf() {
        let s = state();
        let wrong = State::new(
            "points",
            vec![(
                "x".into(),
                Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)),
            )],
        );
        let err = s
            .with_floating_from(wrong, "model `m` forward")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "model `m` forward returned leaf `x` with shape [2, 3], expected [2, 2]"
        );
        let renamed = State::new(
            "points",
            vec![(
                "y".into(),
                Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
            )],
        );
        let err = s
            .with_floating_from(renamed, "model `m` forward")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "model `m` forward has no leaf `x` (it returned: y)"
        );
    }

    #[test]
    fn imported_batches_are_validated() {
        let ragged = Batch::from_tch(
            "points",
            [
                ("x", &Tensor::zeros([2, 1], (Kind::Float, Device::Cpu))),
                ("m", &Tensor::zeros([3], (Kind::Bool, Device::Cpu))),
            ],
        )
        .unwrap();
        assert_eq!(
            State::from_batch(ragged).unwrap_err().to_string(),
            "leaf `m` has shape [3], but every leaf must have the batch (2) on dimension 0"
        );
    }
}
