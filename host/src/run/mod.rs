//! A training run: its configuration, its directory and what goes in it.

pub mod checkpoint;
pub mod config;
pub mod dir;
pub mod metrics;
pub mod samples;
pub mod train;

pub use config::RunConfig;
pub use dir::RunDir;
