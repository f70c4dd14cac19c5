//! # flowgym-host
//!
//! Loads base-model and reward plugins, checks that they fit together, and adapts the model to
//! the reward with Value Matching on libtorch.
//!
//! - [`plugins`]: discovery, loading and checks of plugin files, entry lookup.
//! - [`compat`]: whether a model and a reward can run together, from metadata alone.
//! - [`env`]: schedules, the memoryless SDE and the sampler.
//! - [`cli`]: the `flowgym-host` command line.

pub mod bench;
pub mod cli;
pub mod compat;
pub mod data;
pub mod device;
pub mod env;
pub mod interrupt;
pub mod kwargs;
pub mod memory;
pub mod method;
pub mod model;
pub mod plugins;
pub mod report;
pub mod reward;
pub mod run;
pub mod seed;
pub mod setup;
pub mod value;
