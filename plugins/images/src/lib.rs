//! Image base models and the aesthetic reward, as one plugin file linking libtorch.
//!
//! Architectures live in [`models`], one module each, in the manner of the diffusers and
//! transformers sources: a config struct that mirrors the published `config.json` and weights
//! loaded by their published names through [`weights`] (safetensors, or PyTorch `.bin` / `.pth`
//! state dicts through the restricted checkpoint reader [`pth`]).
//!
//! Files are found by [`hub`] (a folder given by the user, the host's weight directories, the
//! Hugging Face caches) and, when missing, fetched from the hub by [`fetch`]; [`sources`] says
//! which repositories each entry accepts and which of their files it needs.

pub mod models;
pub mod nn;
pub mod precision;
pub mod pth;
pub mod safetensors_file;
pub mod weights;

flowgym_plugin_api::export_plugin!(libtorch);
pub mod aesthetic;
pub mod cifar;
pub mod ddpm;
pub mod digit;
pub mod digits;
pub mod fetch;
pub mod hub;
pub mod preprocess;
pub mod sd;
pub mod sources;
pub mod train;

flowgym_plugin_api::register_data_type! { standard: flowgym_plugin_api::standard::IMAGES }
