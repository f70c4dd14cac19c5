//! The messages between the host and an isolated reward's worker: one JSON document per line
//! on the worker's standard input (requests) and on a copy of its standard output (answers).
//! Tensors travel through the shared region; a message says where each one lies.

use serde::{Deserialize, Serialize};
use tch::Kind;

/// How the worker is set up: the first line the host sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Init {
    /// The plugin file.
    pub plugin: String,
    /// Its sha256 when the host chose it; the worker refuses a file that differs.
    pub sha256: String,
    /// The reward's entry id.
    pub entry: String,
    /// Its arguments, as the JSON document plugins read.
    pub args_json: String,
    /// Directories the plugin may read weights from.
    pub weight_dirs: Vec<String>,
    /// The file both processes map.
    pub region: String,
    /// The worker's private directory: the only place it may write.
    pub private_dir: String,
    /// Its memory limit in bytes (0: none).
    pub memory_bytes: u64,
    /// libtorch threads (0: libtorch's default).
    pub threads: usize,
}

/// Where one tensor lies in the region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSlot {
    /// The element type, as libtorch names it.
    pub kind: String,
    /// Its shape (contiguous).
    pub shape: Vec<i64>,
    /// Byte offset in the region.
    pub offset: usize,
}

/// A named leaf of a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeafSlot {
    /// Leaf name.
    pub name: String,
    /// Where its data lies.
    pub tensor: TensorSlot,
}

/// A keyword argument: tensors in the region, everything else in the message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KwargSlot {
    /// Per-sample tensor.
    Tensor(TensorSlot),
    /// Per-sample strings.
    Strings(Vec<String>),
    /// One string.
    Text(String),
    /// One number.
    Float(f64),
    /// One integer.
    Int(i64),
    /// One flag.
    Bool(bool),
}

/// A batch to score.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoreRequest {
    /// The region's length now (the worker maps it again when it grew).
    pub region_len: usize,
    /// The data type's name.
    pub data_type: String,
    /// The sample's leaves.
    pub sample: Vec<LeafSlot>,
    /// The latent's leaves.
    pub latent: Vec<LeafSlot>,
    /// Keyword arguments.
    pub kwargs: Vec<(String, KwargSlot)>,
    /// Where the worker writes its answer's tensors, and how many bytes it may use.
    pub output_offset: usize,
    /// Bytes available from `output_offset`.
    pub output_len: usize,
}

/// A tensor the worker returns; `offset` is None when it did not fit the space given (its
/// shape then says why).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSlot {
    /// Element type.
    pub kind: String,
    /// Shape.
    pub shape: Vec<i64>,
    /// Byte offset in the region, if written.
    pub offset: Option<usize>,
}

/// The worker's answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    /// The reward is constructed; the sandbox's shortcomings, if any, are listed.
    Ready {
        /// Parts of the sandbox this system could not enforce.
        warnings: Vec<String>,
    },
    /// Rewards (and validity) of a batch.
    Scored {
        /// The rewards.
        reward: OutputSlot,
        /// Validity, when the plugin gave it.
        valid: Option<OutputSlot>,
        /// The worker's CPU time so far, in seconds (for the isolation benchmark).
        cpu_seconds: f64,
    },
    /// The plugin (or the worker) reported an error; the worker is still usable.
    Failed(String),
}

/// The byte alignment of every tensor in the region.
pub const ALIGN: usize = 64;

/// `offset` rounded up to [`ALIGN`].
pub fn align(offset: usize) -> usize {
    offset.div_ceil(ALIGN) * ALIGN
}

/// The element types that cross the boundary, by name.
const KINDS: [(Kind, &str); 10] = [
    (Kind::Float, "f32"),
    (Kind::Double, "f64"),
    (Kind::Half, "f16"),
    (Kind::BFloat16, "bf16"),
    (Kind::Int64, "i64"),
    (Kind::Int, "i32"),
    (Kind::Int16, "i16"),
    (Kind::Int8, "i8"),
    (Kind::Uint8, "u8"),
    (Kind::Bool, "bool"),
];

/// The name of `kind`, if it can cross.
pub fn kind_name(kind: Kind) -> Option<&'static str> {
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, n)| *n)
}

/// The kind called `name`.
pub fn kind_of(name: &str) -> Option<Kind> {
    KINDS.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
}

/// Bytes of a contiguous tensor of `kind` and `shape`.
pub fn byte_len(kind: Kind, shape: &[i64]) -> usize {
    let numel: i64 = shape.iter().product();
    numel.max(0) as usize * kind.elt_size_in_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_offsets_align() {
        for (kind, name) in KINDS {
            assert_eq!(kind_name(kind), Some(name));
            assert_eq!(kind_of(name), Some(kind));
        }
        assert_eq!((align(0), align(1), align(64), align(65)), (0, 64, 64, 128));
        assert_eq!(byte_len(Kind::Float, &[3, 2]), 24);
    }
}
