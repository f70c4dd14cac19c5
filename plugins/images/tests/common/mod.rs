//! Helpers shared by the golden tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

/// `tests/fixtures/diffusers/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusers")
        .join(rel)
}

/// Every tensor of a safetensors file, by name.
pub fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// The tensor `name` of `tensors`.
pub fn get<'a>(tensors: &'a BTreeMap<String, Tensor>, name: &str) -> &'a Tensor {
    tensors
        .get(name)
        .unwrap_or_else(|| panic!("fixture has no tensor `{name}`"))
}

/// `max |a - b|`, in float64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max();
    d.double_value(&[])
}

/// `max |a|`, in float64.
pub fn max_abs(a: &Tensor) -> f64 {
    a.to_kind(Kind::Double).abs().max().double_value(&[])
}

/// A fresh, empty scratch folder for one test, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("flowgym-images-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch folder");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the files of `from` (not recursively) into `to`, creating it.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Writes `tensors` as a safetensors file.
pub fn write_tensors(tensors: &BTreeMap<String, Tensor>, path: &Path) {
    let list: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&list, path).unwrap();
}

/// `{"parameters": {name: shape}, "config": {...}}` of one published model in
/// `published.json`.
pub fn published(name: &str) -> (serde_json::Value, BTreeMap<String, Vec<i64>>) {
    let text = std::fs::read_to_string(fixture("published.json")).unwrap();
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = &all[name];
    let parameters = entry["parameters"]
        .as_object()
        .unwrap_or_else(|| panic!("published.json has no `{name}`"))
        .iter()
        .map(|(k, v)| {
            let shape = v
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            (k.clone(), shape)
        })
        .collect();
    (entry["config"].clone(), parameters)
}

/// Weights with every published name at its shape, backed by one expanded zero (no memory).
pub fn phantom_weights(
    parameters: &BTreeMap<String, Vec<i64>>,
) -> flowgym_images::weights::Weights {
    let zero = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    let tensors = parameters
        .iter()
        .map(|(name, shape)| {
            let view = zero
                .reshape(vec![1; shape.len()])
                .expand(shape.as_slice(), false);
            (name.clone(), view)
        })
        .collect();
    flowgym_images::weights::Weights::from_tensors(
        "published.json",
        tensors,
        Kind::Float,
        Device::Cpu,
    )
}

/// The tensors renamed to the attention names of checkpoints saved before diffusers renamed
/// them (`query`, `key`, `value`, `proj_attn`), which diffusers still accepts on load.
pub fn with_legacy_attention_names(tensors: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(name, tensor)| {
            let name = name
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (name, tensor)
        })
        .collect()
}
