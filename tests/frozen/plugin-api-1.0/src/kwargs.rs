//! Keyword arguments that travel with a batch (prompts, class labels, encoded conditioning).
//!
//! Per-sample values ([`KwargValue::Tensor`] with the batch on dimension 0, and
//! [`KwargValue::Strings`] with one string per sample) are sliced and concatenated by the host
//! together with the samples they belong to, so prompts always follow their samples. The other
//! values apply to the whole batch.

use abi_stable::std_types::{RString, RVec, Tuple2};
use abi_stable::StableAbi;

use crate::error::{PluginError, PluginResult};
use crate::tensor::ManagedTensor;

/// One keyword-argument value.
#[repr(u8)]
#[derive(StableAbi, Debug)]
pub enum KwargValue {
    /// Per-sample tensor, batch on dimension 0.
    Tensor(ManagedTensor),
    /// Per-sample strings, one for each sample.
    Strings(RVec<RString>),
    /// One string for the whole batch.
    Text(RString),
    /// One number for the whole batch.
    Float(f64),
    /// One integer for the whole batch.
    Int(i64),
    /// One flag for the whole batch.
    Bool(bool),
}

impl KwargValue {
    /// Whether the value has one entry per sample (and is sliced with the batch).
    pub fn is_per_sample(&self) -> bool {
        matches!(self, KwargValue::Tensor(_) | KwargValue::Strings(_))
    }

    fn kind(&self) -> &'static str {
        match self {
            KwargValue::Tensor(_) => "a tensor",
            KwargValue::Strings(_) => "a list of strings",
            KwargValue::Text(_) => "a string",
            KwargValue::Float(_) => "a number",
            KwargValue::Int(_) => "an integer",
            KwargValue::Bool(_) => "a flag",
        }
    }
}

/// An ordered map from names to [`KwargValue`]s.
#[repr(C)]
#[derive(StableAbi, Debug, Default)]
pub struct Kwargs {
    entries: RVec<Tuple2<RString, KwargValue>>,
}

impl Kwargs {
    /// No keyword arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`, replacing an earlier value of that name.
    pub fn insert(&mut self, name: &str, value: KwargValue) {
        match self.entries.iter_mut().find(|e| e.0.as_str() == name) {
            Some(entry) => entry.1 = value,
            None => self.entries.push(Tuple2(name.into(), value)),
        }
    }

    /// Builder form of [`Kwargs::insert`].
    pub fn with(mut self, name: &str, value: KwargValue) -> Self {
        self.insert(name, value);
        self
    }

    /// The value called `name`.
    pub fn get(&self, name: &str) -> Option<&KwargValue> {
        self.entries
            .iter()
            .find(|e| e.0.as_str() == name)
            .map(|e| &e.1)
    }

    /// Removes and returns the value called `name`.
    pub fn remove(&mut self, name: &str) -> Option<KwargValue> {
        let index = self.entries.iter().position(|e| e.0.as_str() == name)?;
        Some(self.entries.remove(index).1)
    }

    /// The per-sample strings called `name`.
    pub fn strings(&self, name: &str) -> PluginResult<Vec<String>> {
        match self.get(name) {
            Some(KwargValue::Strings(values)) => Ok(values.iter().map(|s| s.to_string()).collect()),
            Some(other) => Err(PluginError::new(format!(
                "keyword `{name}` should be a list of strings, got {}",
                other.kind()
            ))),
            None => Err(PluginError::new(format!("keyword `{name}` is missing"))),
        }
    }

    /// The per-sample tensor called `name`.
    pub fn tensor(&self, name: &str) -> PluginResult<&ManagedTensor> {
        match self.get(name) {
            Some(KwargValue::Tensor(t)) => Ok(t),
            Some(other) => Err(PluginError::new(format!(
                "keyword `{name}` should be a tensor, got {}",
                other.kind()
            ))),
            None => Err(PluginError::new(format!("keyword `{name}` is missing"))),
        }
    }

    /// Takes the per-sample tensor called `name` out of the map.
    pub fn take_tensor(&mut self, name: &str) -> PluginResult<ManagedTensor> {
        match self.remove(name) {
            Some(KwargValue::Tensor(t)) => Ok(t),
            Some(other) => Err(PluginError::new(format!(
                "keyword `{name}` should be a tensor, got {}",
                other.kind()
            ))),
            None => Err(PluginError::new(format!("keyword `{name}` is missing"))),
        }
    }

    /// The number called `name` (integers are widened).
    pub fn float(&self, name: &str) -> Option<f64> {
        match self.get(name)? {
            KwargValue::Float(v) => Some(*v),
            KwargValue::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// Names and values, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &KwargValue)> {
        self.entries.iter().map(|e| (e.0.as_str(), &e.1))
    }

    /// Consumes the map into its names and values.
    pub fn into_entries(self) -> impl Iterator<Item = (String, KwargValue)> {
        self.entries.into_iter().map(|e| (e.0.into_string(), e.1))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_and_typed_getters_explain_mismatches() {
        let mut kwargs = Kwargs::new()
            .with("prompt", KwargValue::Strings(vec!["a cat".into()].into()))
            .with("cfg_scale", KwargValue::Float(7.5));
        kwargs.insert("cfg_scale", KwargValue::Int(2));
        assert_eq!(kwargs.len(), 2);
        assert_eq!(kwargs.float("cfg_scale"), Some(2.0));
        assert_eq!(kwargs.strings("prompt").unwrap(), vec!["a cat".to_string()]);
        assert_eq!(
            kwargs.tensor("prompt").unwrap_err().message(),
            "keyword `prompt` should be a tensor, got a list of strings"
        );
        assert_eq!(
            kwargs.strings("negative").unwrap_err().message(),
            "keyword `negative` is missing"
        );
        assert!(kwargs.get("prompt").unwrap().is_per_sample());
        assert!(!kwargs.get("cfg_scale").unwrap().is_per_sample());
    }
}
