//! Config keys written as `null`.
//!
//! diffusers writes every argument of a model's constructor into its `config.json`, so an
//! argument left at `None` appears as `null`. The keys whose default is `None`
//! (`sample_size`, `num_attention_heads`, `class_embed_type`, `addition_embed_type`,
//! `time_embedding_dim`, `cross_attention_norm`, `shift_factor`, `latents_mean`,
//! `trained_betas`, ...) are `Option`s in the config structs. Boolean keys are written as `null`
//! too when a converter passes `None` on (diffusers >= 0.17 did so for `upcast_attention`, from
//! `from_single_file` and the checkpoint conversion scripts); the diffusers code only tests them
//! for truth, where `None` is false. The functions here read them the same way.

use serde::{Deserialize, Deserializer};

use crate::models::unet_2d_condition::OneOrMany;

/// A boolean key that may be `null`, read as Python tests `None`: false.
pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// A boolean key given once or per level that may be `null` (false for every level).
pub fn bools<'de, D: Deserializer<'de>>(d: D) -> Result<OneOrMany<bool>, D::Error> {
    Ok(Option::<OneOrMany<bool>>::deserialize(d)?.unwrap_or(OneOrMany::One(false)))
}
