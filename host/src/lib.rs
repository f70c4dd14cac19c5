//! # flowgym-host
//!
//! Loads base-model and reward plugins, checks that they fit together, and adapts the model to
//! the reward with Value Matching on libtorch. The mathematics it implements is derived in the
//! repository's `docs/mathematics.md`.
//!
//! - [`plugins`]: discovery, loading and checks of plugin files, entry lookup.
//! - [`compat`]: whether a model and a reward can run together, from metadata alone.
//! - [`compose`]: constructing a checked model and reward on a device.
//! - [`isolate`] (Unix): rewards in a sandboxed child process.
//! - [`model`], [`reward`], [`state`], [`kwargs`]: plugin entries and batches as libtorch
//!   tensors, every plugin output checked.
//! - [`sde`]: the interpolant, the diffusion coefficient, the drift and the sampler.
//! - [`value`]: the built-in value networks; [`value_matching`]: the trainer.
//! - [`run`]: a training run and its directory; [`optimum`]: the tilted optimum estimated
//!   from base samples; [`quality`]: exact problems and the reference they are judged by.
//! - [`device`], [`gpu`]: choosing the device; the libtorch build, driver and GPUs, and why
//!   CUDA is unavailable when it is.
//! - `cli` (feature `cli`): the `flowgym-host` command line, with its benchmarks.
//!
//! Without its default features (`cli`, `figures`) the crate compiles no command-line,
//! progress-bar or plotting dependency: a program that only loads plugins and samples uses
//! [`plugins::Registry`], [`compose`] and [`sde::sample`].

pub(crate) mod atomic_file;
#[cfg(feature = "cli")]
pub(crate) mod bench;
#[cfg(feature = "cli")]
pub mod cli;
pub mod compat;
pub mod compose;
pub mod device;
pub mod distributed;
pub mod gpu;
pub mod interrupt;
#[cfg(unix)]
pub mod isolate;
pub mod kwargs;
pub mod layout;
pub(crate) mod memory;
pub mod model;
pub mod optimum;
pub mod plugins;
pub mod quality;
#[cfg(feature = "figures")]
pub(crate) mod report;
pub mod reward;
pub mod run;
pub mod sde;
pub(crate) mod seed;
pub mod state;
pub mod value;
pub mod value_matching;
