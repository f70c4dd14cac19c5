//! Image base models and the aesthetic reward, as one plugin file linking libtorch.
//!
//! Architectures live in [`models`], one module each, in the manner of the diffusers and
//! transformers sources: a config struct that mirrors the published `config.json` and weights
//! loaded by their published names through [`weights`].

pub mod models;
pub mod nn;
pub mod weights;

flowgym_plugin_api::export_plugin!(libtorch);
