//! Benchmarks that print figures (`flowgym-host bench ...`): no thresholds, ratios measured in
//! one process.
//!
//! - [`value_matching`]: seconds per Value Matching iteration through the plugins, controlled
//!   sampling steps per second, and the host's overhead: the same iteration issued directly
//!   against libtorch (the toy's closed-form flow and reward inlined, no plugin boundary, no
//!   checks) gives the floor, and `1 - floor / host` is the share of wall time the host adds
//!   outside libtorch's own work.
//! - [`run_problem`]: the quality of Value Matching with the default configuration on a
//!   problem whose optimum is known.
//! - `isolation`: the time a sandboxed worker adds to a reward call, against the reward's own
//!   time and a Value Matching iteration.
//! - [`sampling`]: seconds per denoising step of a base model (any plugin), and images per
//!   second at 100 steps.
//! - [`memory`]: the peak resident memory of constructing a model and a reward.

#[cfg(unix)]
mod isolation;
mod memory;
mod quality;
pub mod reference;
mod sampling;
mod vm;

#[cfg(unix)]
pub use isolation::isolation;
pub use memory::{memory, MemoryFigures};
pub use quality::{run_problem, QualityFigures};
pub use sampling::sampling;
pub use vm::value_matching;

/// CPU time this process has used so far, all threads, in seconds (None where the platform
/// offers no per-process clock here). Unlike wall time it leaves out waits for a busy CPU.
pub(crate) fn cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    return Some(crate::isolate::process_cpu_seconds());
    #[cfg(not(unix))]
    return None;
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
