//! The data protocol: a batch is a data-type id plus an ordered list of named tensor leaves.
//!
//! Floating leaves take part in arithmetic, noise and gradients; integer and bool leaves
//! (indices, masks, counts) pass through unchanged. The host does all arithmetic on the leaves.
//! A data type only supplies what cannot be derived from them: for [`DataLayout::Plain`] data
//! (every leaf has the batch on dimension 0) the host derives length, slicing, concatenation and
//! per-sample sums itself; a [`DataLayout::Custom`] data type (graphs with a varying number of
//! atoms per sample, say) implements [`DataTypeOps`] in its plugin.

use std::fmt;

use abi_stable::sabi_trait;
use abi_stable::std_types::{RBox, ROption, RResult, RSlice, RString, RVec, Tuple2};
use abi_stable::StableAbi;

use crate::error::{guard, PluginError, PluginResult};
use crate::tensor::{DType, ManagedTensor};

/// One named tensor of a batch.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct Leaf {
    /// Leaf name, unique within the batch (`"x"`, `"positions"`, ...).
    pub name: RString,
    /// The values.
    pub tensor: ManagedTensor,
}

/// A batch of data: its data type and its leaves, in a fixed order.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct Batch {
    /// Name of the data type (`"1d"`, `"images"`).
    pub data_type: RString,
    /// The leaves, in the order the data type defines.
    pub leaves: RVec<Leaf>,
}

impl Batch {
    /// A batch from `(name, tensor)` pairs.
    pub fn new(
        data_type: impl Into<String>,
        leaves: impl IntoIterator<Item = (String, ManagedTensor)>,
    ) -> Self {
        Self {
            data_type: RString::from(data_type.into()),
            leaves: leaves
                .into_iter()
                .map(|(name, tensor)| Leaf {
                    name: RString::from(name),
                    tensor,
                })
                .collect(),
        }
    }

    /// A batch with a single leaf.
    pub fn single(data_type: &str, name: &str, tensor: ManagedTensor) -> Self {
        Self::new(data_type, [(name.to_string(), tensor)])
    }

    /// The leaf called `name`.
    pub fn leaf(&self, name: &str) -> Option<&ManagedTensor> {
        self.leaves
            .iter()
            .find(|leaf| leaf.name.as_str() == name)
            .map(|leaf| &leaf.tensor)
    }

    /// The leaf called `name`, or an error that lists the leaves there are.
    pub fn require(&self, name: &str) -> PluginResult<&ManagedTensor> {
        self.leaf(name).ok_or_else(|| {
            PluginError::new(format!(
                "batch of `{}` has no leaf `{name}` (leaves: {})",
                self.data_type,
                self.leaf_names().join(", ")
            ))
        })
    }

    /// Takes the leaf called `name` out of the batch.
    pub fn take(&mut self, name: &str) -> PluginResult<ManagedTensor> {
        match self
            .leaves
            .iter()
            .position(|leaf| leaf.name.as_str() == name)
        {
            Some(index) => Ok(self.leaves.remove(index).tensor),
            None => Err(self.require(name).unwrap_err()),
        }
    }

    /// Names of the leaves, in order.
    pub fn leaf_names(&self) -> Vec<&str> {
        self.leaves.iter().map(|leaf| leaf.name.as_str()).collect()
    }
}

/// A reference to a data type by name and version (`images` 1.0.0).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct DataTypeRef {
    /// Name, the part of an entry id before the `/`.
    pub name: RString,
    /// Semantic version of the data type's contract.
    pub version: RString,
}

impl DataTypeRef {
    /// A reference to `name` at `version`.
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
        }
    }
}

impl fmt::Display for DataTypeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.version)
    }
}

/// One dimension of a declared leaf shape.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// The batch dimension.
    Batch,
    /// Exactly this extent.
    Fixed(u64),
    /// Any extent.
    Any,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Batch => f.write_str("n"),
            Dim::Fixed(extent) => write!(f, "{extent}"),
            Dim::Any => f.write_str("*"),
        }
    }
}

/// The declared form of one leaf: what a model produces or what a reward accepts.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct LeafSpec {
    /// Leaf name.
    pub name: RString,
    /// Element type.
    pub dtype: DType,
    /// Shape, dimension by dimension.
    pub shape: RVec<Dim>,
    /// Inclusive value range the contract promises (`[0, 1]` for images), if any.
    pub range: ROption<Tuple2<f64, f64>>,
}

impl LeafSpec {
    /// A leaf of this name, dtype and shape, with no value range.
    pub fn new(name: &str, dtype: DType, shape: impl IntoIterator<Item = Dim>) -> Self {
        Self {
            name: name.into(),
            dtype,
            shape: shape.into_iter().collect(),
            range: ROption::RNone,
        }
    }

    /// The same leaf, with values promised to lie in `[low, high]`.
    pub fn with_range(mut self, low: f64, high: f64) -> Self {
        self.range = ROption::RSome(Tuple2(low, high));
        self
    }

    /// Why a leaf produced as `produced` cannot be accepted as `self`, if it cannot.
    pub fn accepts(&self, produced: &LeafSpec) -> Result<(), String> {
        if self.dtype != produced.dtype {
            return Err(format!(
                "leaf `{}` is {} but {} is expected",
                self.name, produced.dtype, self.dtype
            ));
        }
        if self.shape.len() != produced.shape.len() {
            return Err(format!(
                "leaf `{}` has shape {} but {} is expected",
                self.name,
                format_shape(&produced.shape),
                format_shape(&self.shape)
            ));
        }
        for (want, have) in self.shape.iter().zip(produced.shape.iter()) {
            let fits = match (want, have) {
                (Dim::Any, _) => true,
                (Dim::Batch, Dim::Batch) => true,
                (Dim::Fixed(a), Dim::Fixed(b)) => a == b,
                _ => false,
            };
            if !fits {
                return Err(format!(
                    "leaf `{}` has shape {} but {} is expected",
                    self.name,
                    format_shape(&produced.shape),
                    format_shape(&self.shape)
                ));
            }
        }
        if let ROption::RSome(want) = &self.range {
            let fits = match &produced.range {
                ROption::RSome(have) => have.0 >= want.0 && have.1 <= want.1,
                ROption::RNone => false,
            };
            if !fits {
                return Err(format!(
                    "leaf `{}` must lie in [{}, {}], which the producer does not promise",
                    self.name, want.0, want.1
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for LeafSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} {}",
            self.name,
            self.dtype,
            format_shape(&self.shape)
        )?;
        if let ROption::RSome(range) = &self.range {
            write!(f, " in [{}, {}]", range.0, range.1)?;
        }
        Ok(())
    }
}

/// `[n, 3, *, *]`.
pub fn format_shape(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(Dim::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// How the host handles batches of a data type.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLayout {
    /// Every leaf has the batch on dimension 0: the host derives every operation.
    Plain,
    /// The data type's plugin implements [`DataTypeOps`].
    Custom,
}

/// The description of a data type, readable without constructing anything.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct DataTypeMeta {
    /// Name and version.
    pub id: DataTypeRef,
    /// One line for `flowgym-host list`.
    pub description: RString,
    /// Who implements the batch operations.
    pub layout: DataLayout,
    /// For a custom layout whose samples are sets of elements (points, atoms): which leaves
    /// run over the elements of all samples and which leaf says whose each element is. The
    /// host builds its set value network from it; without it a custom layout cannot be
    /// trained with the built-in value networks.
    pub set: ROption<SetLeaves>,
}

/// The leaves of a set-valued custom layout that the host's set value network reads.
///
/// Every leaf in `elements` has the elements of all samples on dimension 0 (`[m, ...]`, `m`
/// the total number of elements); `sample_index` names an int64 leaf `[m]` holding the sample
/// (`0..n`) each element belongs to, in non-decreasing order.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct SetLeaves {
    /// Per-element leaves (`"positions"`).
    pub elements: RVec<RString>,
    /// The int64 leaf `[m]` that maps each element to its sample.
    pub sample_index: RString,
}

impl SetLeaves {
    /// Per-element leaves `elements`, with the sample of each element in `sample_index`.
    pub fn new<'a>(elements: impl IntoIterator<Item = &'a str>, sample_index: &str) -> Self {
        Self {
            elements: elements.into_iter().map(RString::from).collect(),
            sample_index: sample_index.into(),
        }
    }
}

/// A plain data type's declaration, as [`standard`] holds them for the data types many plugins
/// share: every plugin that uses one registers it with
/// `register_data_type! { standard: flowgym_plugin_api::standard::IMAGES }`, so that all
/// declarations of it are identical (the host refuses two files that declare one name
/// differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declaration {
    /// Name.
    pub name: &'static str,
    /// Version.
    pub version: &'static str,
    /// One line for `flowgym-host list`.
    pub description: &'static str,
}

/// The standard data types: declared here once, registered by every plugin that uses them.
pub mod standard {
    use super::Declaration;

    /// `1d` 1.0.0: points on the real line.
    pub const ONE_D: Declaration = Declaration {
        name: "1d",
        version: "1.0.0",
        description: "Points on the real line: one leaf `x`, [n, 1] float32",
    };

    /// `images` 1.0.0: RGB or grey images (a model's latents before its postprocess).
    pub const IMAGES: Declaration = Declaration {
        name: "images",
        version: "1.0.0",
        description: "Images: leaf `x`, [n, C, H, W] float32 in [0, 1] after postprocess (latents before); C is 3 (RGB) or 1 (grey)",
    };
}

/// Whether a per-sample aggregate sums or averages.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Sum over the elements of each sample.
    Sum,
    /// Mean over the elements of each sample.
    Mean,
}

/// The batch operations a custom data type implements (plain data needs none of these).
pub trait DataType: Send + Sync {
    /// Number of samples in `batch`.
    fn len(&self, batch: &Batch) -> PluginResult<usize>;
    /// Samples `start..end` of `batch`.
    fn slice(&self, batch: &Batch, start: usize, end: usize) -> PluginResult<Batch>;
    /// The batches, one after the other.
    fn collate(&self, parts: &[Batch]) -> PluginResult<Batch>;
    /// Per-sample sum or mean of `values`, a batch with the leaves of `batch` and their shapes
    /// (the host's elementwise results, such as `|u|^2 / 2` for the control's running cost),
    /// over every floating leaf's entries that belong to each sample: returns a float tensor
    /// of shape `[len(batch)]` (checked by the host).
    fn aggregate(
        &self,
        batch: &Batch,
        values: &Batch,
        how: Aggregate,
    ) -> PluginResult<ManagedTensor>;
}

/// FFI-safe form of [`DataType`]; built by the registration macro, called by the host.
#[sabi_trait]
pub trait DataTypeOps: Send + Sync {
    /// See [`DataType::len`].
    fn len(&self, batch: &Batch) -> RResult<u64, PluginError>;
    /// See [`DataType::slice`].
    fn slice(&self, batch: &Batch, start: u64, end: u64) -> RResult<Batch, PluginError>;
    /// See [`DataType::collate`].
    fn collate(&self, parts: RSlice<'_, Batch>) -> RResult<Batch, PluginError>;
    /// See [`DataType::aggregate`].
    #[sabi(last_prefix_field)]
    fn aggregate(
        &self,
        batch: &Batch,
        values: &Batch,
        how: Aggregate,
    ) -> RResult<ManagedTensor, PluginError>;
}

/// A boxed [`DataTypeOps`] trait object.
pub type DataTypeOpsBox = DataTypeOps_TO<'static, RBox<()>>;

pub(crate) struct DataTypeAdapter {
    pub(crate) name: String,
    pub(crate) inner: Box<dyn DataType>,
}

impl DataTypeOps for DataTypeAdapter {
    fn len(&self, batch: &Batch) -> RResult<u64, PluginError> {
        guard(&format!("{} len", self.name), || {
            self.inner.len(batch).map(|n| n as u64)
        })
    }

    fn slice(&self, batch: &Batch, start: u64, end: u64) -> RResult<Batch, PluginError> {
        guard(&format!("{} slice", self.name), || {
            self.inner.slice(batch, start as usize, end as usize)
        })
    }

    fn collate(&self, parts: RSlice<'_, Batch>) -> RResult<Batch, PluginError> {
        guard(&format!("{} collate", self.name), || {
            self.inner.collate(parts.as_slice())
        })
    }

    fn aggregate(
        &self,
        batch: &Batch,
        values: &Batch,
        how: Aggregate,
    ) -> RResult<ManagedTensor, PluginError> {
        guard(&format!("{} aggregate", self.name), || {
            self.inner.aggregate(batch, values, how)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_leaf(channels: u64) -> LeafSpec {
        LeafSpec::new(
            "x",
            DType::F32,
            [
                Dim::Batch,
                Dim::Fixed(channels),
                Dim::Fixed(32),
                Dim::Fixed(32),
            ],
        )
        .with_range(0.0, 1.0)
    }

    #[test]
    fn accepts_matching_and_wildcard_shapes() {
        let wanted = LeafSpec::new(
            "x",
            DType::F32,
            [Dim::Batch, Dim::Fixed(3), Dim::Any, Dim::Any],
        )
        .with_range(0.0, 1.0);
        assert_eq!(wanted.accepts(&image_leaf(3)), Ok(()));
        assert_eq!(
            wanted.accepts(&image_leaf(4)).unwrap_err(),
            "leaf `x` has shape [n, 4, 32, 32] but [n, 3, *, *] is expected"
        );
    }

    #[test]
    fn refuses_unpromised_range_and_other_dtype() {
        let wanted = image_leaf(3);
        let unbounded = LeafSpec::new("x", DType::F32, wanted.shape.iter().copied());
        assert_eq!(
            wanted.accepts(&unbounded).unwrap_err(),
            "leaf `x` must lie in [0, 1], which the producer does not promise"
        );
        let ints =
            LeafSpec::new("x", DType::I64, wanted.shape.iter().copied()).with_range(0.0, 1.0);
        assert_eq!(
            wanted.accepts(&ints).unwrap_err(),
            "leaf `x` is i64 but f32 is expected"
        );
    }

    #[test]
    fn batch_finds_and_takes_leaves() {
        let mut batch = Batch::new(
            "graphs",
            [
                (
                    "positions".to_string(),
                    ManagedTensor::from_slice(&[1.0f32, 2.0]),
                ),
                ("atoms".to_string(), ManagedTensor::from_slice(&[2i64])),
            ],
        );
        assert_eq!(batch.leaf_names(), vec!["positions", "atoms"]);
        assert_eq!(
            batch.require("charges").unwrap_err().message(),
            "batch of `graphs` has no leaf `charges` (leaves: positions, atoms)"
        );
        let atoms = batch.take("atoms").unwrap();
        assert_eq!(atoms.as_slice::<i64>().unwrap(), &[2]);
        assert_eq!(batch.leaf_names(), vec!["positions"]);
    }
}
