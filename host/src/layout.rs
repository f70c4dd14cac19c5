//! Custom data layouts: batches whose length, slices, concatenation and per-sample sums only
//! their data type's plugin knows (sets of points, molecules with a varying number of atoms).
//! The host calls the plugin's functions and checks every answer, so that a layout that
//! contradicts itself is an error naming the data type and its plugin file, never a crash.

use std::fmt;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use flowgym_plugin_api::{Aggregate, Batch, DataTypeOpsBox, SetLeaves};
use tch::{Kind, Tensor};

/// A custom data type's batch operations, as the host calls them.
pub struct CustomLayout {
    /// The data type's name.
    pub data_type: String,
    /// The plugin file that declares it.
    pub plugin: PathBuf,
    /// The per-element leaves and the sample-index leaf, for set-valued data.
    pub set: Option<SetLeaves>,
    ops: DataTypeOpsBox,
}

impl fmt::Debug for CustomLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomLayout")
            .field("data_type", &self.data_type)
            .field("plugin", &self.plugin)
            .finish()
    }
}

/// Named libtorch leaves, in the data type's order.
pub type Leaves = Vec<(String, Tensor)>;

impl CustomLayout {
    /// The operations `ops` of data type `data_type`, declared in `plugin`.
    pub fn new(
        data_type: &str,
        plugin: PathBuf,
        set: Option<SetLeaves>,
        ops: DataTypeOpsBox,
    ) -> Self {
        Self {
            data_type: data_type.to_string(),
            plugin,
            set,
            ops,
        }
    }

    /// `data type `points` (from FILE) slice`: who answered what, for error messages.
    fn what(&self, call: &str) -> String {
        format!(
            "data type `{}` (from {}) {call}",
            self.data_type,
            self.plugin.display()
        )
    }

    fn export(&self, leaves: &Leaves) -> Result<Batch> {
        Batch::from_tch(&self.data_type, leaves.iter().map(|(n, t)| (n.as_str(), t)))
            .map_err(|e| anyhow!("{}: {e}", self.what("export")))
    }

    fn import(&self, batch: Batch, call: &str) -> Result<Leaves> {
        if batch.data_type.as_str() != self.data_type {
            bail!(
                "{} returned a batch of data type `{}`",
                self.what(call),
                batch.data_type
            );
        }
        batch
            .into_tch()
            .map_err(|e| anyhow!("{}: {e}", self.what(call)))
    }

    /// The number of samples in `leaves`.
    pub fn len(&self, leaves: &Leaves) -> Result<usize> {
        let batch = self.export(leaves)?;
        let n = self
            .ops
            .len(&batch)
            .into_result()
            .map_err(|e| anyhow!("{}: {e}", self.what("len")))?;
        Ok(n as usize)
    }

    /// Samples `start..end` of `leaves`, which hold `n` samples; the answer is checked to
    /// hold `end - start`.
    pub fn slice(&self, leaves: &Leaves, n: usize, start: usize, end: usize) -> Result<Leaves> {
        if start > end || end > n {
            bail!(
                "{}: samples {start}..{end} are out of range for a batch of {n}",
                self.what("slice")
            );
        }
        let batch = self.export(leaves)?;
        let out = self
            .ops
            .slice(&batch, start as u64, end as u64)
            .into_result()
            .map_err(|e| anyhow!("{}: {e}", self.what("slice")))?;
        let out = self.import(out, "slice")?;
        self.expect_len(&out, end - start, &format!("slice {start}..{end}"))?;
        Ok(out)
    }

    /// The batches one after the other; the answer is checked to hold `total` samples.
    pub fn collate(&self, parts: &[&Leaves], total: usize) -> Result<Leaves> {
        let batches = parts
            .iter()
            .map(|p| self.export(p))
            .collect::<Result<Vec<_>>>()?;
        let out = self
            .ops
            .collate(batches.as_slice().into())
            .into_result()
            .map_err(|e| anyhow!("{}: {e}", self.what("collate")))?;
        let out = self.import(out, "collate")?;
        self.expect_len(&out, total, &format!("collate of {} batches", parts.len()))?;
        Ok(out)
    }

    fn expect_len(&self, leaves: &Leaves, want: usize, call: &str) -> Result<()> {
        let got = self.len(leaves)?;
        if got != want {
            bail!(
                "{} returned {got} samples, {want} were expected: its functions disagree on the batch length",
                self.what(call)
            );
        }
        Ok(())
    }

    /// Per-sample sum of `values` (the leaves of `leaves`, transformed elementwise): a float32
    /// tensor `[n]` on the device of `leaves`, checked for its shape.
    pub fn sum(&self, leaves: &Leaves, values: &Leaves, n: usize) -> Result<Tensor> {
        let device = leaves.first().map_or(tch::Device::Cpu, |(_, t)| t.device());
        let batch = self.export(leaves)?;
        let values = self.export(values)?;
        let out = self
            .ops
            .aggregate(&batch, &values, Aggregate::Sum)
            .into_result()
            .map_err(|e| anyhow!("{}: {e}", self.what("aggregate")))?;
        let out = out
            .into_tch()
            .map_err(|e| anyhow!("{}: {e}", self.what("aggregate")))?;
        if out.size() != [n as i64] || !out.is_floating_point() {
            bail!(
                "{} returned a {:?} tensor of shape {:?} for {n} samples; expected floating point [{n}]",
                self.what("aggregate"),
                out.kind(),
                out.size()
            );
        }
        Ok(out.to_kind(Kind::Float).to_device(device))
    }

    /// Checks a batch the plugin produced (`what`: `model `m` sample_p0`) against the layout:
    /// its length, and for set data the sample index (int64 `[m]`, non-decreasing, in `0..n`)
    /// and the per-element leaves (floating, `m` elements on dimension 0). Returns the length.
    pub fn check(&self, leaves: &Leaves, what: &str) -> Result<usize> {
        let n = self.len(leaves).with_context(|| what.to_string())?;
        let Some(set) = &self.set else {
            return Ok(n);
        };
        let find = |name: &str| {
            leaves
                .iter()
                .find(|(l, _)| l == name)
                .map(|(_, t)| t)
                .ok_or_else(|| {
                    let names: Vec<&str> = leaves.iter().map(|(l, _)| l.as_str()).collect();
                    anyhow!(
                        "{what}: data type `{}` (from {}) declares leaf `{name}`, which the batch lacks (leaves: {})",
                        self.data_type,
                        self.plugin.display(),
                        names.join(", ")
                    )
                })
        };
        let index = find(set.sample_index.as_str())?;
        if index.kind() != Kind::Int64 || index.dim() != 1 {
            bail!(
                "{what}: sample-index leaf `{}` of data type `{}` is declared int64 [m] but is {:?} {:?}",
                set.sample_index,
                self.data_type,
                index.kind(),
                index.size()
            );
        }
        let m = index.size()[0];
        if m > 0 {
            let (low, high) = (index.min().int64_value(&[]), index.max().int64_value(&[]));
            let sorted = m == 1
                || index
                    .diff(1, 0, None::<Tensor>, None::<Tensor>)
                    .min()
                    .int64_value(&[])
                    >= 0;
            if low < 0 || high >= n as i64 || !sorted {
                bail!(
                    "{what}: sample-index leaf `{}` of data type `{}` must hold non-decreasing samples in 0..{n}; it holds {low}..={high}{}",
                    set.sample_index,
                    self.data_type,
                    if sorted { "" } else { ", out of order" }
                );
            }
        }
        for element in set.elements.iter() {
            let t = find(element.as_str())?;
            if !t.is_floating_point() || t.dim() == 0 || t.size()[0] != m {
                bail!(
                    "{what}: per-element leaf `{element}` of data type `{}` must be floating point with its {m} elements on dimension 0; it is {:?} {:?}",
                    self.data_type,
                    t.kind(),
                    t.size()
                );
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::sabi_trait::TD_Opaque;
    use abi_stable::std_types::{RResult, RSlice};
    use flowgym_plugin_api::data::{DataTypeOps, DataTypeOps_TO};
    use flowgym_plugin_api::{ManagedTensor, PluginError};
    use std::sync::Arc;

    use crate::state::State;

    /// How the test data type misbehaves.
    #[derive(Clone, Copy, PartialEq)]
    enum Fault {
        None,
        /// `slice` returns one sample too many.
        LongSlice,
        /// `aggregate` returns one value per element instead of per sample.
        PerElementSums,
    }

    /// Sets of scalars: `v` `[m]` float32, `sample` `[m]` int64, `counts` `[n]` int64.
    struct Sets(Fault);

    fn counts(batch: &Batch) -> Vec<i64> {
        batch.require("counts").unwrap().to_vec().unwrap()
    }

    fn sets(values: Vec<f32>, counts: Vec<i64>) -> Batch {
        let sample: Vec<i64> = counts
            .iter()
            .enumerate()
            .flat_map(|(i, &c)| std::iter::repeat_n(i as i64, c as usize))
            .collect();
        Batch::new(
            "sets",
            [
                ("v".to_string(), ManagedTensor::from_slice(&values)),
                ("sample".to_string(), ManagedTensor::from_slice(&sample)),
                ("counts".to_string(), ManagedTensor::from_slice(&counts)),
            ],
        )
    }

    impl DataTypeOps for Sets {
        fn len(&self, batch: &Batch) -> RResult<u64, PluginError> {
            RResult::ROk(counts(batch).len() as u64)
        }

        fn slice(&self, batch: &Batch, start: u64, end: u64) -> RResult<Batch, PluginError> {
            let c = counts(batch);
            let end = if self.0 == Fault::LongSlice {
                end + 1
            } else {
                end
            }
            .min(c.len() as u64);
            let values: Vec<f32> = batch.require("v").unwrap().to_vec().unwrap();
            let from: i64 = c[..start as usize].iter().sum();
            let to: i64 = c[..end as usize].iter().sum();
            RResult::ROk(sets(
                values[from as usize..to as usize].to_vec(),
                c[start as usize..end as usize].to_vec(),
            ))
        }

        fn collate(&self, parts: RSlice<'_, Batch>) -> RResult<Batch, PluginError> {
            let (mut values, mut c) = (Vec::new(), Vec::new());
            for part in parts.iter() {
                values.extend(part.require("v").unwrap().to_vec::<f32>().unwrap());
                c.extend(counts(part));
            }
            RResult::ROk(sets(values, c))
        }

        fn aggregate(
            &self,
            batch: &Batch,
            values: &Batch,
            _how: Aggregate,
        ) -> RResult<ManagedTensor, PluginError> {
            let v: Vec<f32> = values.require("v").unwrap().to_vec().unwrap();
            if self.0 == Fault::PerElementSums {
                return RResult::ROk(ManagedTensor::from_slice(&v));
            }
            let mut start = 0;
            let sums: Vec<f32> = counts(batch)
                .iter()
                .map(|&c| {
                    let s = v[start..start + c as usize].iter().sum();
                    start += c as usize;
                    s
                })
                .collect();
            RResult::ROk(ManagedTensor::from_slice(&sums))
        }
    }

    fn layout(fault: Fault) -> Arc<CustomLayout> {
        Arc::new(CustomLayout::new(
            "sets",
            PathBuf::from("/plugins/libsets.so"),
            Some(SetLeaves::new(["v"], "sample")),
            DataTypeOps_TO::from_value(Sets(fault), TD_Opaque),
        ))
    }

    fn state(layout: &Arc<CustomLayout>) -> State {
        State::import(
            sets(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![1, 3, 2]),
            Some(layout),
            "model `sets/m` sample_p0",
        )
        .unwrap()
    }

    fn values(s: &State) -> Vec<f32> {
        Vec::<f32>::try_from(&s.leaves[0].1).unwrap()
    }

    #[test]
    fn states_of_a_custom_layout_slice_join_reorder_and_sum_through_it() {
        let s = state(&layout(Fault::None));
        assert_eq!(s.len(), 3);
        let tail = s.slice(1, 3).unwrap();
        assert_eq!(
            (tail.len(), values(&tail)),
            (2, vec![2.0, 3.0, 4.0, 5.0, 6.0])
        );
        let joined = State::cat(&[s.slice(0, 1).unwrap(), tail]).unwrap();
        assert_eq!(joined.len(), 3);
        assert_eq!(values(&joined), values(&s));
        let reordered = s.index_select(&Tensor::from_slice(&[2i64, 0, 1])).unwrap();
        assert_eq!(values(&reordered), vec![5.0, 6.0, 1.0, 2.0, 3.0, 4.0]);
        let sums = s.per_sample_sum(|v| v * 2.0).unwrap();
        assert_eq!(Vec::<f32>::try_from(&sums).unwrap(), vec![2.0, 18.0, 22.0]);
        let doubled = s.map_floating(|v| v * 2.0);
        assert_eq!(doubled.len(), 3);
        assert!(doubled.layout().is_some());
    }

    #[test]
    fn a_layout_that_contradicts_itself_is_named_with_its_plugin() {
        let s = state(&layout(Fault::LongSlice));
        assert_eq!(
            s.slice(0, 1).unwrap_err().to_string(),
            "data type `sets` (from /plugins/libsets.so) slice 0..1 returned 2 samples, 1 were expected: its functions disagree on the batch length"
        );
        assert_eq!(
            s.slice(2, 5).unwrap_err().to_string(),
            "data type `sets` (from /plugins/libsets.so) slice: samples 2..5 are out of range for a batch of 3"
        );
        let s = state(&layout(Fault::PerElementSums));
        assert_eq!(
            s.per_sample_sum(|v| v.shallow_clone()).unwrap_err().to_string(),
            "data type `sets` (from /plugins/libsets.so) aggregate returned a Float tensor of shape [6] for 3 samples; expected floating point [3]"
        );
    }

    #[test]
    fn batches_that_contradict_the_declared_leaves_are_refused() {
        let layout = layout(Fault::None);
        let import = |batch: Batch| {
            State::import(batch, Some(&layout), "model `sets/m` sample_p0")
                .unwrap_err()
                .to_string()
        };
        let mut float_index = sets(vec![1.0, 2.0], vec![2]);
        float_index.take("sample").unwrap();
        float_index.leaves.insert(
            1,
            flowgym_plugin_api::Leaf {
                name: "sample".into(),
                tensor: ManagedTensor::from_slice(&[0.0f32, 0.0]),
            },
        );
        assert_eq!(
            import(float_index),
            "model `sets/m` sample_p0: sample-index leaf `sample` of data type `sets` is declared int64 [m] but is Float [2]"
        );
        let mut wrong_sample = sets(vec![1.0, 2.0], vec![2]);
        wrong_sample.take("sample").unwrap();
        wrong_sample.leaves.insert(
            1,
            flowgym_plugin_api::Leaf {
                name: "sample".into(),
                tensor: ManagedTensor::from_slice(&[0i64, 3]),
            },
        );
        assert_eq!(
            import(wrong_sample),
            "model `sets/m` sample_p0: sample-index leaf `sample` of data type `sets` must hold non-decreasing samples in 0..1; it holds 0..=3"
        );
        let mut short = sets(vec![1.0, 2.0], vec![2]);
        short.take("v").unwrap();
        short.leaves.insert(
            0,
            flowgym_plugin_api::Leaf {
                name: "v".into(),
                tensor: ManagedTensor::from_slice(&[1.0f32]),
            },
        );
        assert_eq!(
            import(short),
            "model `sets/m` sample_p0: per-element leaf `v` of data type `sets` must be floating point with its 2 elements on dimension 0; it is Float [1]"
        );
    }
}
