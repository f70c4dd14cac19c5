//! Loading published weights by name, with strict accounting.
//!
//! A [`Weights`] holds every tensor of one or more weight files (`*.safetensors`, or PyTorch
//! `.bin` state dicts read without executing them). Modules take their
//! parameters through a [`WeightPath`] (a name prefix, as in `down_blocks.0.resnets.1`), which
//! records each name it is asked for. A missing name or a shape mismatch does not stop the
//! construction at once; [`Weights::finish`] then reports every missing, mismatched and unused
//! tensor together, so a user sees the whole difference between the files and the architecture.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tch::{Device, Kind, Tensor};

/// Why weights could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A file could not be read.
    #[error("cannot read weights from {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The files do not match the architecture.
    #[error("{0}")]
    Mismatch(MismatchReport),
}

/// Every difference between the weight files and the architecture.
#[derive(Debug, Default)]
pub struct MismatchReport {
    /// Where the weights came from.
    pub source: String,
    /// Names the architecture needs that no file has.
    pub missing: Vec<String>,
    /// Names present with another shape: (name, in file, expected).
    pub shape_mismatches: Vec<(String, Vec<i64>, Vec<i64>)>,
    /// Names in the files that the architecture does not use.
    pub unused: Vec<String>,
}

impl fmt::Display for MismatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the weights in {} do not fit the architecture:",
            self.source
        )?;
        let list = |f: &mut fmt::Formatter<'_>, title: &str, names: &[String]| -> fmt::Result {
            if !names.is_empty() {
                writeln!(f, "  {title} ({}):", names.len())?;
                for name in names {
                    writeln!(f, "    {name}")?;
                }
            }
            Ok(())
        };
        list(f, "missing", &self.missing)?;
        if !self.shape_mismatches.is_empty() {
            writeln!(f, "  wrong shape ({}):", self.shape_mismatches.len())?;
            for (name, found, expected) in &self.shape_mismatches {
                writeln!(f, "    {name}: file has {found:?}, expected {expected:?}")?;
            }
        }
        list(f, "unused", &self.unused)
    }
}

#[derive(Debug)]
struct State {
    source: String,
    tensors: BTreeMap<String, Tensor>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    shape_mismatches: Vec<(String, Vec<i64>, Vec<i64>)>,
    kind: Kind,
    device: Device,
    /// Create missing tensors with PyTorch's default initialisation (for training from scratch).
    initialise: bool,
}

/// The tensors of a set of weight files, handed out by name.
#[derive(Debug, Clone)]
pub struct Weights {
    state: Rc<RefCell<State>>,
}

impl Weights {
    /// Reads every tensor of `files`: safetensors, or PyTorch zip checkpoints (`.bin`, `.pth`,
    /// `.pt`) through the restricted reader [`crate::pth`], which executes nothing. Floating
    /// tensors are converted to `kind` as each file is read (so `fp16` files load as float32 when
    /// `kind` is float32, and as stored when it is float16) and moved to `device`.
    pub fn from_files(files: &[PathBuf], kind: Kind, device: Device) -> Result<Self, WeightsError> {
        let mut tensors = BTreeMap::new();
        for path in files {
            let read = read_file(path).map_err(|message| WeightsError::Read {
                path: path.clone(),
                message,
            })?;
            for (name, tensor) in read {
                // Converted file by file, so a float32 file loaded in half precision is never
                // held twice whole; a file stored in `kind` is kept as stored.
                let tensor = if tensor.is_floating_point() && tensor.kind() != kind {
                    tensor.to_kind(kind)
                } else {
                    tensor
                };
                tensors.insert(name, tensor);
            }
        }
        let source = files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Self::from_tensors(source, tensors, kind, device))
    }

    /// Weights from tensors already in memory (`source` names them in errors).
    pub fn from_tensors(
        source: impl Into<String>,
        tensors: BTreeMap<String, Tensor>,
        kind: Kind,
        device: Device,
    ) -> Self {
        // Convolution kernels (the only 4-d weights) laid out once for the layout their
        // inputs will have; one tensor at a time, so the peak grows by the largest of them.
        let tensors = if crate::nn::channels_last(kind, device) {
            tensors
                .into_iter()
                .map(|(name, t)| {
                    let t = if t.dim() == 4 && t.is_floating_point() {
                        crate::nn::to_channels_last(&t.to_kind(kind))
                    } else {
                        t
                    };
                    (name, t)
                })
                .collect()
        } else {
            tensors
        };
        Self {
            state: Rc::new(RefCell::new(State {
                source: source.into(),
                tensors,
                used: BTreeSet::new(),
                missing: Vec::new(),
                shape_mismatches: Vec::new(),
                kind,
                device,
                initialise: false,
            })),
        }
    }

    /// Fresh parameters for training from scratch: every tensor a module asks for is created
    /// with PyTorch's default initialisation (convolution and linear weights uniform in
    /// `+-1/sqrt(fan_in)`, biases zero, norm scales one), as a leaf that requires gradients,
    /// drawn from libtorch's global generator (seed it first for reproducible weights).
    pub fn initialising(kind: Kind, device: Device) -> Self {
        let weights = Self::from_tensors("fresh initialisation", BTreeMap::new(), kind, device);
        weights.state.borrow_mut().initialise = true;
        weights
    }

    /// Every tensor held, by name (after [`Weights::initialising`]: the parameters to train).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.state
            .borrow()
            .tensors
            .iter()
            .map(|(name, t)| (name.clone(), t.shallow_clone()))
            .collect()
    }

    /// The root of the names (no prefix).
    pub fn root(&self) -> WeightPath {
        WeightPath {
            weights: self.clone(),
            prefix: String::new(),
        }
    }

    /// Declares names that the architecture deliberately ignores (buffers such as
    /// `position_ids` that some exports carry), so that they are not reported as unused.
    pub fn ignore(&self, names: impl Fn(&str) -> bool) {
        let mut state = self.state.borrow_mut();
        let ignored: Vec<String> = state.tensors.keys().filter(|n| names(n)).cloned().collect();
        state.used.extend(ignored);
    }

    /// Succeeds when every tensor was found with its shape and every file tensor was used.
    pub fn finish(&self) -> Result<(), WeightsError> {
        let state = self.state.borrow();
        let unused: Vec<String> = state
            .tensors
            .keys()
            .filter(|name| !state.used.contains(*name))
            .cloned()
            .collect();
        if state.missing.is_empty() && state.shape_mismatches.is_empty() && unused.is_empty() {
            return Ok(());
        }
        Err(WeightsError::Mismatch(MismatchReport {
            source: state.source.clone(),
            missing: state.missing.clone(),
            shape_mismatches: state.shape_mismatches.clone(),
            unused,
        }))
    }
}

/// A name prefix into [`Weights`], in the manner of candle's `VarBuilder`.
#[derive(Debug, Clone)]
pub struct WeightPath {
    weights: Weights,
    prefix: String,
}

impl WeightPath {
    /// The path one level down: `self.prefix + "." + name`.
    pub fn pp(&self, name: impl fmt::Display) -> WeightPath {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        WeightPath {
            weights: self.weights.clone(),
            prefix,
        }
    }

    /// The full name of `name` under this path.
    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Whether the files hold `name` under this path.
    pub fn contains(&self, name: &str) -> bool {
        self.weights
            .state
            .borrow()
            .tensors
            .contains_key(&self.name(name))
    }

    /// The tensor `name` under this path, which must have `shape`. A missing or misshapen
    /// tensor is recorded for [`Weights::finish`] and replaced by zeros so that construction
    /// can go on and report every problem at once.
    pub fn get(&self, name: &str, shape: &[i64]) -> Tensor {
        let full = self.name(name);
        let mut state = self.weights.state.borrow_mut();
        let (kind, device) = (state.kind, state.device);
        let found = state
            .tensors
            .get(&full)
            .map(|t| (t.size(), t.shallow_clone()));
        match found {
            Some((size, tensor)) if size == shape => {
                state.used.insert(full);
                let tensor = if tensor.is_floating_point() {
                    tensor.to_kind(kind)
                } else {
                    tensor
                };
                tensor.to_device(device)
            }
            Some((size, _)) => {
                state.used.insert(full.clone());
                state.shape_mismatches.push((full, size, shape.to_vec()));
                Tensor::zeros(shape, (kind, device))
            }
            None if state.initialise => {
                let tensor = initial_value(name, shape, kind, device).set_requires_grad(true);
                state.used.insert(full.clone());
                state.tensors.insert(full, tensor.shallow_clone());
                tensor
            }
            None => {
                state.missing.push(full);
                Tensor::zeros(shape, (kind, device))
            }
        }
    }

    /// The floating-point kind weights are converted to.
    pub fn kind(&self) -> Kind {
        self.weights.state.borrow().kind
    }

    /// The device weights are moved to.
    pub fn device(&self) -> Device {
        self.weights.state.borrow().device
    }
}

/// PyTorch's default initial value of parameter `name` with `shape`: weights of two or more
/// dimensions uniform in `+-1/sqrt(fan_in)` (`kaiming_uniform_(a=sqrt(5))`), other weights
/// (norm scales) one, biases zero.
fn initial_value(name: &str, shape: &[i64], kind: Kind, device: Device) -> Tensor {
    if shape.len() >= 2 {
        let fan_in: i64 = shape[1..].iter().product();
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        Tensor::empty(shape, (kind, device)).uniform_(-bound, bound)
    } else if name == "weight" {
        Tensor::ones(shape, (kind, device))
    } else {
        Tensor::zeros(shape, (kind, device))
    }
}

/// The tensors of one weight file, by its extension: `.safetensors`, else a PyTorch zip
/// checkpoint.
fn read_file(path: &Path) -> Result<Vec<(String, Tensor)>, String> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        crate::safetensors_file::read(path)
    } else {
        crate::pth::read_state_dict(path)
    }
}

/// The weight files of a transformers model folder: its `*.safetensors` files, preferring full
/// precision over `fp16` variants; else `pytorch_model.bin` or `pytorch_model.fp16.bin` (read
/// by the restricted reader). Empty when there are none.
pub fn model_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    let full: Vec<PathBuf> = files
        .iter()
        .filter(|p| !p.to_string_lossy().contains(".fp16."))
        .cloned()
        .collect();
    if !full.is_empty() {
        return full;
    }
    if !files.is_empty() {
        return files;
    }
    ["pytorch_model.bin", "pytorch_model.fp16.bin"]
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(names: &[(&str, &[i64])]) -> Weights {
        let tensors = names
            .iter()
            .map(|(n, s)| (n.to_string(), Tensor::ones(*s, (Kind::Float, Device::Cpu))))
            .collect();
        Weights::from_tensors("test.safetensors", tensors, Kind::Float, Device::Cpu)
    }

    #[test]
    fn every_difference_is_reported_at_once() {
        let w = weights(&[("a.weight", &[2, 3]), ("a.bias", &[3]), ("extra", &[1])]);
        let a = w.root().pp("a");
        assert_eq!(a.get("weight", &[2, 3]).size(), vec![2, 3]);
        let bias = a.get("bias", &[2]);
        assert_eq!(bias.size(), vec![2]);
        let _ = w.root().pp("b").get("weight", &[4]);
        let report = w.finish().unwrap_err().to_string();
        assert_eq!(
            report,
            "the weights in test.safetensors do not fit the architecture:\n  missing (1):\n    b.weight\n  wrong shape (1):\n    a.bias: file has [3], expected [2]\n  unused (1):\n    extra\n"
        );
    }

    #[test]
    fn complete_use_finishes_cleanly() {
        let w = weights(&[("x", &[1]), ("position_ids", &[1, 77])]);
        let _ = w.root().get("x", &[1]);
        w.ignore(|name| name.ends_with("position_ids"));
        assert!(w.finish().is_ok());
    }
}
