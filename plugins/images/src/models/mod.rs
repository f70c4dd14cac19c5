//! One module per published architecture.
pub mod aesthetic;
pub mod attention;
pub mod clip;
pub mod clip_tokenizer;
pub mod digit_classifier;
pub mod embeddings;
pub mod fir;
pub mod nullable;
pub mod resnet;
pub mod scheduler;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;
pub mod unet_2d_levels;
pub mod unet_2d_resnet_blocks;
pub mod unet_2d_skip_blocks;
mod unet_2d_validate;
pub mod vae;
