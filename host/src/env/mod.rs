//! The libtorch environment: noise schedules, the memoryless SDE's coefficients, and the
//! Euler-Maruyama sampler that records trajectories.
//!
//! Conventions (DESIGN.md): `x_t = alpha(t) x_1 + beta(t) x_0`, `t = 0` noise and `t = 1` data;
//! all samples of a step share `t`, so coefficients are computed once per step as scalars.

pub mod drift;
pub mod sampler;
pub mod schedule;

pub use drift::{DriftCoefficients, NoiseSchedule, StepCoefficients};
pub use sampler::{sample, time_grid, Control, Interrupted, SamplerOptions, Trajectory};
pub use schedule::{Coefficients, Schedule};
