//! # flowgym-host
//!
//! Loads base-model and reward plugins, checks that they fit together, and adapts the model to
//! the reward with Value Matching on libtorch.
//!
//! - [`plugins`]: discovery, loading and checks of plugin files, entry lookup.
//! - [`compat`]: whether a model and a reward can run together, from metadata alone.
//! - [`cli`]: the `flowgym-host` command line.

pub mod cli;
pub mod compat;
pub mod plugins;
