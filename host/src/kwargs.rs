//! Keyword arguments on the host side, sliced and concatenated with their samples.

use anyhow::{bail, Result};
use flowgym_plugin_api::{KwargValue, Kwargs, ManagedTensor};
use tch::{Device, Tensor};

/// One keyword-argument value, with tensors in libtorch.
#[derive(Debug)]
pub enum HostKwarg {
    /// Per-sample tensor (batch on dimension 0).
    Tensor(Tensor),
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

impl HostKwarg {
    fn shallow_clone(&self) -> HostKwarg {
        match self {
            HostKwarg::Tensor(t) => HostKwarg::Tensor(t.shallow_clone()),
            HostKwarg::Strings(s) => HostKwarg::Strings(s.clone()),
            HostKwarg::Text(s) => HostKwarg::Text(s.clone()),
            HostKwarg::Float(v) => HostKwarg::Float(*v),
            HostKwarg::Int(v) => HostKwarg::Int(*v),
            HostKwarg::Bool(v) => HostKwarg::Bool(*v),
        }
    }
}

/// Keyword arguments, in order.
#[derive(Debug, Default)]
pub struct HostKwargs {
    /// `(name, value)` pairs.
    pub entries: Vec<(String, HostKwarg)>,
}

impl HostKwargs {
    /// Imports a plugin's keyword arguments (tensors without copying), checking that
    /// per-sample values have one entry per sample.
    pub fn from_plugin(kwargs: Kwargs, n: usize, source: &str) -> Result<Self> {
        let mut entries = Vec::new();
        for (name, value) in kwargs.into_entries() {
            let value = match value {
                KwargValue::Tensor(t) => {
                    let t = t
                        .into_tch()
                        .map_err(|e| anyhow::anyhow!("{source}: keyword `{name}`: {e}"))?;
                    if t.dim() == 0 || t.size()[0] as usize != n {
                        bail!(
                            "{source} returned keyword `{name}` with shape {:?}; per-sample tensors need the batch ({n}) on dimension 0",
                            t.size()
                        );
                    }
                    HostKwarg::Tensor(t)
                }
                KwargValue::Strings(s) => {
                    if s.len() != n {
                        bail!(
                            "{source} returned keyword `{name}` with {} strings for {n} samples",
                            s.len()
                        );
                    }
                    HostKwarg::Strings(s.into_iter().map(|s| s.into_string()).collect())
                }
                KwargValue::Text(s) => HostKwarg::Text(s.into_string()),
                KwargValue::Float(v) => HostKwarg::Float(v),
                KwargValue::Int(v) => HostKwarg::Int(v),
                KwargValue::Bool(v) => HostKwarg::Bool(v),
            };
            entries.push((name, value));
        }
        Ok(Self { entries })
    }

    /// Exports to the plugin form (tensors without copying).
    pub fn to_plugin(&self) -> Result<Kwargs> {
        let mut out = Kwargs::new();
        for (name, value) in &self.entries {
            let value = match value {
                HostKwarg::Tensor(t) => KwargValue::Tensor(
                    ManagedTensor::from_tch(t)
                        .map_err(|e| anyhow::anyhow!("keyword `{name}`: {e}"))?,
                ),
                HostKwarg::Strings(s) => {
                    KwargValue::Strings(s.iter().map(|s| s.as_str().into()).collect())
                }
                HostKwarg::Text(s) => KwargValue::Text(s.as_str().into()),
                HostKwarg::Float(v) => KwargValue::Float(*v),
                HostKwarg::Int(v) => KwargValue::Int(*v),
                HostKwarg::Bool(v) => KwargValue::Bool(*v),
            };
            out.insert(name, value);
        }
        Ok(out)
    }

    /// The per-sample strings called `name`, if any.
    pub fn strings(&self, name: &str) -> Option<&[String]> {
        self.entries.iter().find_map(|(n, v)| match v {
            HostKwarg::Strings(s) if n == name => Some(s.as_slice()),
            _ => None,
        })
    }

    /// Samples `start..end` of per-sample values; whole-batch values are shared.
    pub fn slice(&self, start: usize, end: usize) -> HostKwargs {
        let entries = self
            .entries
            .iter()
            .map(|(n, v)| {
                let v = match v {
                    HostKwarg::Tensor(t) => {
                        HostKwarg::Tensor(t.narrow(0, start as i64, (end - start) as i64))
                    }
                    HostKwarg::Strings(s) => HostKwarg::Strings(s[start..end].to_vec()),
                    other => other.shallow_clone(),
                };
                (n.clone(), v)
            })
            .collect();
        HostKwargs { entries }
    }

    /// Per-sample values concatenated in order; whole-batch values taken from the first part.
    /// Every part must carry the same names with values of the same kinds.
    pub fn cat(parts: &[HostKwargs]) -> Result<HostKwargs> {
        let Some(first) = parts.first() else {
            return Ok(HostKwargs::default());
        };
        let shape = |k: &HostKwargs| -> Vec<(String, std::mem::Discriminant<HostKwarg>)> {
            k.entries
                .iter()
                .map(|(n, v)| (n.clone(), std::mem::discriminant(v)))
                .collect()
        };
        if let Some(other) = parts.iter().find(|p| shape(p) != shape(first)) {
            let names = |k: &HostKwargs| {
                k.entries
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            bail!(
                "the model returned different keyword arguments for different chunks of one batch ({} vs {})",
                names(first),
                names(other)
            );
        }
        let entries = first
            .entries
            .iter()
            .enumerate()
            .map(|(i, (n, v))| {
                let v = match v {
                    HostKwarg::Tensor(_) => {
                        let tensors: Vec<&Tensor> = parts
                            .iter()
                            .filter_map(|p| match &p.entries[i].1 {
                                HostKwarg::Tensor(t) => Some(t),
                                _ => None,
                            })
                            .collect();
                        HostKwarg::Tensor(Tensor::cat(&tensors, 0))
                    }
                    HostKwarg::Strings(_) => HostKwarg::Strings(
                        parts
                            .iter()
                            .flat_map(|p| match &p.entries[i].1 {
                                HostKwarg::Strings(s) => s.clone(),
                                _ => Vec::new(),
                            })
                            .collect(),
                    ),
                    other => other.shallow_clone(),
                };
                (n.clone(), v)
            })
            .collect();
        Ok(HostKwargs { entries })
    }

    /// Tensors moved to `device`.
    pub fn to_device(&self, device: Device) -> HostKwargs {
        let entries = self
            .entries
            .iter()
            .map(|(n, v)| {
                let v = match v {
                    HostKwarg::Tensor(t) => HostKwarg::Tensor(t.to_device(device)),
                    other => other.shallow_clone(),
                };
                (n.clone(), v)
            })
            .collect();
        HostKwargs { entries }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_follow_their_samples() {
        let kwargs = HostKwargs {
            entries: vec![
                (
                    "prompt".into(),
                    HostKwarg::Strings(vec!["a".into(), "b".into(), "c".into()]),
                ),
                (
                    "emb".into(),
                    HostKwarg::Tensor(Tensor::from_slice(&[1.0f32, 2.0, 3.0])),
                ),
                ("cfg".into(), HostKwarg::Float(7.5)),
            ],
        };
        let parts = [kwargs.slice(0, 1), kwargs.slice(1, 3)];
        assert_eq!(
            parts[1].strings("prompt").unwrap(),
            &["b".to_string(), "c".to_string()]
        );
        let joined = HostKwargs::cat(&parts).unwrap();
        assert_eq!(joined.strings("prompt").unwrap().len(), 3);
        match &joined.entries[1].1 {
            HostKwarg::Tensor(t) => {
                assert_eq!(Vec::<f32>::try_from(t).unwrap(), vec![1.0, 2.0, 3.0])
            }
            other => panic!("{other:?}"),
        }
        let round = HostKwargs::from_plugin(joined.to_plugin().unwrap(), 3, "test").unwrap();
        assert!(matches!(round.entries[2].1, HostKwarg::Float(v) if v == 7.5));
    }

    #[test]
    fn per_sample_values_must_match_the_batch() {
        let kwargs = Kwargs::new().with("prompt", KwargValue::Strings(vec!["a".into()].into()));
        assert_eq!(
            HostKwargs::from_plugin(kwargs, 2, "model `m` sample_p0")
                .unwrap_err()
                .to_string(),
            "model `m` sample_p0 returned keyword `prompt` with 1 strings for 2 samples"
        );
    }
}
