//! The diffusion coefficient `s(t)` of the sampler (docs/mathematics.md, section 3).

use serde::{Deserialize, Serialize};

/// The diffusion coefficient `s(t)` of the sampler.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "level")]
pub enum Diffusion {
    /// `s = sigma_m = sqrt(2 eta)`: the memoryless schedule Value Matching is proven for.
    Memoryless,
    /// A constant `s`.
    Constant(f64),
}
