//! What the sampler's last step returns.

use serde::{Deserialize, Serialize};

/// The last step of the sampler returns an estimate of the endpoint `x_1` from the state at
/// `t_{K-1}` instead of an Euler-Maruyama step, whose noise nothing after it would remove
/// (docs/mathematics.md, section 6). This chooses whose estimate, when a control steers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum FinalStep {
    /// The steered process's estimate, `x̂_1(x) - (beta^2 / alpha) lambda grad v(x, t)`:
    /// Tweedie's formula under the tilted path law, the base estimate moved by the value's
    /// gradient. Without it, a sample that the last stretch of steering would have carried
    /// over a sharp reward's edge stays where the base model leaves it.
    #[default]
    Tilted,
    /// The base model's estimate `x̂_1(x) = E[x_1 | x_t = x]`, whatever the control.
    Base,
}
