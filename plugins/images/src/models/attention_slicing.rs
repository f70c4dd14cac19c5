//! Sliced attention: diffusers' `set_attention_slice` / `enable_attention_slicing`, which
//! computes attention over slices of the `batch * heads` dimension one after the other, so that
//! only one slice's attention scores exist at a time.
//!
//! The setting is a JSON value, as the Stable Diffusion entries' `attention_slicing` argument
//! takes it: `null` (off, the default), `"auto"` (each layer in slices of half its heads, as
//! diffusers' `"auto"`), `"max"` (one row of `batch * heads` at a time) or a whole number `n`
//! (slices of `n` rows; it may not exceed any layer's head count, as diffusers refuses).

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What values the setting accepts, for messages and `flowgym-host list`.
pub const ACCEPTED: &str =
    "null (off), \"auto\" (half the heads per slice), \"max\" (one at a time) or a number of \
     heads per slice from 1 to the fewest heads of any attention layer";

/// How attention layers slice their computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionSlicing {
    /// Not sliced (diffusers' default processor).
    #[default]
    Off,
    /// Each layer in slices of half its heads (at least one), diffusers' `"auto"`.
    Auto,
    /// One row of `batch * heads` at a time, diffusers' `"max"`.
    Max,
    /// Slices of this many rows of `batch * heads` (diffusers' integer `slice_size`).
    Size(i64),
}

impl AttentionSlicing {
    /// The slice size of a layer with `heads` heads, or `None` for unsliced attention.
    pub fn slice_size(self, heads: i64) -> Option<i64> {
        match self {
            Self::Off => None,
            Self::Auto => Some((heads / 2).max(1)),
            Self::Max => Some(1),
            Self::Size(size) => Some(size),
        }
    }

    /// Checks the setting against the head counts of the layers it applies to: a size must be
    /// at least 1 and at most the fewest heads, as diffusers' `set_attention_slice` requires.
    pub fn check(self, heads: impl IntoIterator<Item = i64>) -> Result<(), SlicingError> {
        let Self::Size(size) = self else {
            return Ok(());
        };
        if size < 1 {
            return Err(SlicingError::NotPositive(size));
        }
        match heads.into_iter().min() {
            Some(fewest) if size > fewest => Err(SlicingError::MoreThanHeads { size, fewest }),
            _ => Ok(()),
        }
    }
}

/// A slice size the layers cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlicingError {
    /// Zero or negative.
    #[error("is {0}; a slice holds at least 1 head")]
    NotPositive(i64),
    /// More heads than some layer has.
    #[error("is {size}, more than the {fewest} heads of the attention layers with fewest heads")]
    MoreThanHeads {
        /// The size asked for.
        size: i64,
        /// The fewest heads of a layer.
        fewest: i64,
    },
}

impl fmt::Display for AttentionSlicing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("null"),
            Self::Auto => f.write_str("\"auto\""),
            Self::Max => f.write_str("\"max\""),
            Self::Size(size) => write!(f, "{size}"),
        }
    }
}

impl Serialize for AttentionSlicing {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Off => s.serialize_none(),
            Self::Auto => s.serialize_str("auto"),
            Self::Max => s.serialize_str("max"),
            Self::Size(size) => s.serialize_i64(*size),
        }
    }
}

impl<'de> Deserialize<'de> for AttentionSlicing {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        match &value {
            serde_json::Value::Null => Ok(Self::Off),
            serde_json::Value::String(s) if s == "auto" => Ok(Self::Auto),
            serde_json::Value::String(s) if s == "max" => Ok(Self::Max),
            serde_json::Value::Number(n) if n.as_i64().is_some() => {
                Ok(Self::Size(n.as_i64().unwrap_or_default()))
            }
            _ => Err(D::Error::custom(format!(
                "{value} is not null, \"auto\", \"max\" or a whole number"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<AttentionSlicing, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_what_diffusers_accepts_and_writes_it_back() {
        for (json, slicing) in [
            ("null", AttentionSlicing::Off),
            ("\"auto\"", AttentionSlicing::Auto),
            ("\"max\"", AttentionSlicing::Max),
            ("3", AttentionSlicing::Size(3)),
        ] {
            assert_eq!(parse(json), Ok(slicing));
            assert_eq!(serde_json::to_string(&slicing).unwrap(), json);
            assert_eq!(slicing.to_string(), json);
        }
        for bad in ["\"half\"", "2.5", "true", "[2]"] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.contains("is not null, \"auto\", \"max\" or a whole number"),
                "{err}"
            );
        }
    }

    #[test]
    fn slice_sizes_per_layer_follow_diffusers() {
        // "auto": half the heads; "max": 1; a number: itself; heads = 1 under "auto" gives 1.
        assert_eq!(AttentionSlicing::Auto.slice_size(8), Some(4));
        assert_eq!(AttentionSlicing::Auto.slice_size(5), Some(2));
        assert_eq!(AttentionSlicing::Auto.slice_size(1), Some(1));
        assert_eq!(AttentionSlicing::Max.slice_size(20), Some(1));
        assert_eq!(AttentionSlicing::Size(3).slice_size(20), Some(3));
        assert_eq!(AttentionSlicing::Off.slice_size(8), None);
    }

    #[test]
    fn sizes_beyond_the_fewest_heads_or_below_one_are_refused() {
        let heads = [5, 10, 20, 20];
        assert_eq!(AttentionSlicing::Size(5).check(heads), Ok(()));
        assert_eq!(
            AttentionSlicing::Size(6).check(heads),
            Err(SlicingError::MoreThanHeads { size: 6, fewest: 5 })
        );
        assert_eq!(
            AttentionSlicing::Size(0).check(heads),
            Err(SlicingError::NotPositive(0))
        );
        assert_eq!(AttentionSlicing::Auto.check(heads), Ok(()));
        assert_eq!(AttentionSlicing::Max.check([1]), Ok(()));
    }
}
