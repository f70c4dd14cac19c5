//! Training the project's own image models: a diffusers `UNet2DModel` as a DDPM on an image
//! dataset ([`base`]), and a small digit classifier ([`classifier`]), both written as folders
//! that this crate and the Python reference libraries load.
//!
//! Parameters are created through the same [`crate::weights::WeightPath`] the loaders use
//! ([`crate::weights::Weights::initialising`]), so a trained model has exactly the tensor names
//! and shapes of the published architecture.

pub mod adam;
pub mod base;
pub mod classifier;
pub mod data;

use std::path::{Path, PathBuf};

use tch::Tensor;

/// A training run that cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The dataset cannot be used.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// The model configuration cannot be trained on this data.
    #[error("{0}")]
    Config(String),
    /// Writing or reading the output folder failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, message: impl ToString) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// Writes `tensors` (made contiguous, on the CPU) as a safetensors file, atomically: to a
/// temporary name first, then renamed over `path`.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), TrainError> {
    let list: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(name, t)| {
            (
                name.as_str(),
                t.detach().to_device(tch::Device::Cpu).contiguous(),
            )
        })
        .collect();
    let tmp = path.with_extension("safetensors.tmp");
    Tensor::write_safetensors(&list, &tmp).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Writes `value` as pretty JSON with a final newline, atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::io(path, e))? + "\n";
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// The seed of libtorch's generator for step `step` of a run seeded `seed`: each step draws
/// from its own seed, so a resumed run draws exactly what an uninterrupted one would.
pub fn step_seed(seed: u64, step: u64) -> i64 {
    let mixed = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(step.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    (mixed >> 1) as i64
}
