//! Base models and rewards whose tilted optimum `p*(x) ∝ p_base(x) exp(lambda r(x))` is known
//! exactly or to high precision: the problems of the host's quality suite (`bench quality`).
//!
//! Built the way a third party would build a plugin: it depends on `flowgym-plugin-api`
//! alone, links no libtorch, and computes in plain `f64` Rust on the CPU.
//!
//! Data type `vec` (1.0.0): points in `R^d`, one leaf `x` of shape `[n, d]`, float32; `d` comes
//! from the model's arguments.
//!
//! - `vec/gmm` ([`gmm`]): the exact flow from `N(0, I)` to a Gaussian mixture with a full
//!   covariance per component; predicts velocity, epsilon, score or endpoint on the `ot` or
//!   `ddpm` schedule.
//! - `vec/halfspace`, `vec/box`, `vec/bump`, `vec/linear` ([`rewards`]).
//!
//! Data type `points` (1.0.0, [`points`]): sets of points, a different number per sample,
//! with a custom layout its plugin implements; `points/gmm` moves every point by the exact
//! flow of `vec/gmm`, and `points/halfspace`, `points/bump`, `points/linear` average the `vec`
//! reward of the same name over a sample's points.
//!
//! Build it with `cargo build --release -p exact-problems` and put
//! `target/release/libexact_problems.so` (`.dylib`, `.dll`) in a plugin directory.

pub mod gmm;
pub mod linalg;
pub mod points;
pub mod rewards;

use flowgym_plugin_api::{
    register_data_type, Batch, DType, ManagedTensor, PluginError, PluginResult,
};

/// The data type of every entry here.
pub const DATA_TYPE: &str = "vec";

register_data_type! {
    name: "vec",
    version: "1.0.0",
    description: "Points in R^d: one leaf `x`, [n, d] float32 (d set by the model's arguments)",
}

/// The points of a batch's leaf `x`, as `f64`.
pub(crate) struct Points {
    /// Row-major `[n, d]`.
    pub values: Vec<f64>,
    /// Number of points.
    pub n: usize,
    /// Dimension.
    pub dim: usize,
    /// The leaf's element type (float32 or float64), kept for the output.
    pub dtype: DType,
}

impl Points {
    /// `values` (`[n, d]`) as a tensor of the input's element type.
    pub fn same_dtype(&self, values: Vec<f64>) -> PluginResult<ManagedTensor> {
        let shape = [self.n, self.dim];
        Ok(match self.dtype {
            DType::F64 => ManagedTensor::from_vec(values, &shape)?,
            _ => ManagedTensor::from_vec(values.into_iter().map(|v| v as f32).collect(), &shape)?,
        })
    }
}

/// Reads leaf `x`, checked to be a float32 or float64 `[n, d]` tensor.
pub(crate) fn read_points(batch: &Batch) -> PluginResult<Points> {
    let x = batch.require("x")?;
    let shape = x.shape();
    if shape.len() != 2 || shape[1] < 1 {
        return Err(PluginError::new(format!(
            "leaf `x` must have shape [n, d], got {shape:?}"
        )));
    }
    let (n, dim) = (shape[0] as usize, shape[1] as usize);
    let (values, dtype) = match x.dtype() {
        Some(DType::F64) => (x.to_vec::<f64>()?, DType::F64),
        Some(DType::F32) => (
            x.to_vec::<f32>()?.into_iter().map(f64::from).collect(),
            DType::F32,
        ),
        other => {
            return Err(PluginError::new(format!(
                "leaf `x` must be float32 or float64, got {}",
                other.map_or("an unknown type", |d| d.name())
            )))
        }
    };
    Ok(Points {
        values,
        n,
        dim,
        dtype,
    })
}

flowgym_plugin_api::export_plugin!();

#[cfg(test)]
mod tests {
    use flowgym_plugin_api::{ConstructContext, Constructor, EntryKind, EntryRegistration};

    fn constructor(id: &str) -> Constructor {
        flowgym_plugin_api::inventory::iter::<EntryRegistration>
            .into_iter()
            .find(|r| (r.meta)().id.as_str() == id)
            .map(|r| r.constructor)
            .unwrap_or_else(|| panic!("no entry {id}"))
    }

    #[test]
    fn the_plugin_registers_its_entries_on_their_data_types() {
        let mut ids: Vec<(String, EntryKind)> =
            flowgym_plugin_api::inventory::iter::<EntryRegistration>
                .into_iter()
                .map(|r| {
                    let meta = (r.meta)();
                    let (data_type, _) = meta.id.split_once('/').unwrap();
                    assert_eq!(meta.data_type.name.as_str(), data_type);
                    (meta.id.to_string(), meta.kind)
                })
                .collect();
        ids.sort_by(|a, b| a.0.cmp(&b.0));
        let want = [
            ("points/bump", EntryKind::Reward),
            ("points/gmm", EntryKind::BaseModel),
            ("points/halfspace", EntryKind::Reward),
            ("points/linear", EntryKind::Reward),
            ("vec/box", EntryKind::Reward),
            ("vec/bump", EntryKind::Reward),
            ("vec/gmm", EntryKind::BaseModel),
            ("vec/halfspace", EntryKind::Reward),
            ("vec/linear", EntryKind::Reward),
        ];
        let want: Vec<(String, EntryKind)> =
            want.iter().map(|(i, k)| (i.to_string(), *k)).collect();
        assert_eq!(ids, want);
    }

    #[test]
    fn entries_construct_from_json_as_the_host_calls_them() {
        let ctx = ConstructContext::cpu();
        let Constructor::BaseModel(model) = constructor("vec/gmm") else {
            panic!("vec/gmm is a model")
        };
        let json = r#"{"weights": [1], "means": [[1, 2, 3]], "stds": [0.5], "output": "epsilon", "schedule": "ddpm"}"#;
        let built = model(json, &ctx).unwrap();
        assert_eq!(built.output_type(), flowgym_plugin_api::OutputType::Epsilon);
        assert_eq!(
            model(r#"{"stds": [1, -1]}"#, &ctx).err().unwrap().message(),
            "argument `stds` must hold positive numbers, got -1"
        );
        let Constructor::Reward(reward) = constructor("vec/bump") else {
            panic!("vec/bump is a reward")
        };
        assert!(reward(r#"{"center": [0, 0], "width": 0.5}"#, &ctx).is_ok());
        assert_eq!(
            reward(r#"{"centre": [0]}"#, &ctx).err().unwrap().message(),
            "unknown argument `centre`; accepted: center, width"
        );
    }
}
