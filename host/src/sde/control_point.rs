//! Where in a step the sampler takes the control's value gradient.

use serde::{Deserialize, Serialize};

use crate::state::State;

/// Where in the step `[t_k, t_k + dt]` the control `u_k = -s lambda grad v` is evaluated.
/// Any point that depends on `x_k` alone keeps the martingale target exact for the
/// discretised chain, so this choice moves only the discretisation error of the control
/// (docs/mathematics.md, section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ControlPoint {
    /// `grad v(x_k + dt mu_k / 2, t_k + dt / 2)`, half a step of the base drift `mu_k` ahead:
    /// the midpoint rule for the control's integral over the step.
    #[default]
    Midpoint,
    /// `grad v(x_k, t_k)`: the Euler-Maruyama rule, first order.
    Start,
}

impl ControlPoint {
    /// The state and time at which to take the gradient, for a step from `x` at `t` of
    /// length `dt` whose base drift is `drift`.
    pub fn locate(self, x: &State, drift: &State, t: f64, dt: f64) -> (State, f64) {
        match self {
            ControlPoint::Midpoint => {
                let half = 0.5 * dt;
                (x.zip_floating(drift, |x, d| x + d * half), t + half)
            }
            ControlPoint::Start => (x.shallow_clone(), t),
        }
    }
}
