//! The settings a run configuration leaves to the data: the keys set to 0 (`steps`,
//! `replay`, `eval_samples`) are filled in once the model's first batch shows what the data
//! are, and written so into the run's `config.toml`, which then holds what the run used. Models
//! of small images also get shorter runs for the keys neither a file nor a flag sets.

use std::path::Path;

use anyhow::Result;
use flowgym_plugin_api::{Dim, EntryKind};

use super::RunConfig;
use crate::state::State;
use crate::value::{self, ValueArch};

/// Sampling steps for data other than images. The control's edges must follow a reward's
/// edges late in sampling, where a coarser grid lets samples through that the optimum would
/// not, and a step of flat data costs little beside the value network's fit
/// (docs/value-matching-quality.md, "Sampling steps").
pub const FLAT_DATA_STEPS: usize = 200;

/// Sampling steps for images and latents, where each step is a call of an image network.
pub const IMAGE_STEPS: usize = 100;

/// The run settings for models of small images (both sides of 16 pixels or less, such as
/// `images/digits`) where neither the config file nor a flag sets them: such models sample in
/// milliseconds a step, and these make a run of a few minutes on two CPU cores.
pub const SMALL_IMAGE_DEFAULTS: [(&str, i64); 3] =
    [("iterations", 40), ("batch_size", 64), ("steps", 50)];

/// Whether the base model `id` declares the images it produces as both sides at most 16
/// pixels.
pub fn small_images(registry: &crate::plugins::Registry, id: &str) -> bool {
    let Ok(entry) = registry.resolve(id, EntryKind::BaseModel) else {
        return false;
    };
    let small = |d: &Dim| matches!(d, Dim::Fixed(side) if *side <= 16);
    entry.meta.leaves.iter().any(|leaf| {
        let dims = leaf.shape.as_slice();
        dims.len() == 4 && small(&dims[2]) && small(&dims[3])
    })
}

/// `config` with [`SMALL_IMAGE_DEFAULTS`] for the keys neither `file` nor `flags` set, when the
/// model makes small images.
pub fn with_model_defaults(
    registry: &crate::plugins::Registry,
    config: RunConfig,
    file: Option<&Path>,
    flags: &toml::Table,
) -> Result<RunConfig> {
    if !small_images(registry, &config.model) {
        return Ok(config);
    }
    let in_file: toml::Table = match file {
        Some(path) => toml::from_str(&std::fs::read_to_string(path)?)?,
        None => toml::Table::new(),
    };
    let defaults: toml::Table = SMALL_IMAGE_DEFAULTS
        .iter()
        .filter(|(key, _)| !in_file.contains_key(*key) && !flags.contains_key(*key))
        .map(|(key, value)| (key.to_string(), toml::Value::Integer(*value)))
        .collect();
    if !defaults.is_empty() {
        let list: Vec<String> = defaults.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        eprintln!(
            "{} makes small images: {} (set them to change)",
            config.model,
            list.join(", ")
        );
    }
    config.with_overrides(defaults)
}

/// Sampling steps for data shaped like `example` (a batch of the model's initial state).
fn steps(example: &State) -> usize {
    if value::image_shaped(example) {
        IMAGE_STEPS
    } else {
        FLAT_DATA_STEPS
    }
}

/// Samples drawn before and after training for the figures: 16 images (256 of small images,
/// which are cheap and shown 64 to a grid), or 10,000 points of other data.
fn eval_samples(example: &State, small_images: bool) -> usize {
    match (value::image_shaped(example), small_images) {
        (true, true) => 256,
        (true, false) => 16,
        (false, _) => 10_000,
    }
}

/// Batches fitted each iteration: 1 for the CNN, whose image batches are large, 4 otherwise.
fn replay(arch: ValueArch) -> usize {
    match arch {
        ValueArch::Cnn => 1,
        _ => 4,
    }
}

/// `config` with the keys it leaves to the data (0) filled in for data shaped like `example`;
/// `small_images` says whether the model declares images of 16 pixels a side or less.
pub fn fill(mut config: RunConfig, example: &State, small_images: bool) -> Result<RunConfig> {
    if config.steps == 0 {
        config.steps = steps(example);
    }
    if config.replay == 0 {
        config.replay = replay(value::resolve(config.value_net, example)?);
    }
    if config.eval_samples == 0 {
        config.eval_samples = eval_samples(example, small_images);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::*;

    fn batch(shape: &[i64]) -> State {
        State::new(
            "t",
            vec![(
                "x".into(),
                Tensor::zeros(shape, (Kind::Float, tch::Device::Cpu)),
            )],
        )
    }

    #[test]
    fn flat_data_and_images_get_their_own_defaults() {
        let filled = |example: &State, small| {
            let config = fill(RunConfig::default(), example, small).unwrap();
            (config.steps, config.replay, config.eval_samples)
        };
        assert_eq!(filled(&batch(&[2, 8]), false), (200, 4, 10_000));
        assert_eq!(filled(&batch(&[2, 1, 8, 8]), true), (100, 1, 256));
        assert_eq!(filled(&batch(&[2, 3, 32, 32]), false), (100, 1, 16));
        // Stable Diffusion's state is a latent of 4 channels: images all the same, whose
        // evaluation draws 16 of them, not the 10,000 points of flat data.
        assert_eq!(filled(&batch(&[2, 4, 64, 64]), false), (100, 1, 16));
    }

    #[test]
    fn keys_the_configuration_sets_are_kept() {
        let config = RunConfig {
            steps: 7,
            replay: 2,
            eval_samples: 5,
            ..RunConfig::default()
        };
        let filled = fill(config.clone(), &batch(&[2, 3, 32, 32]), false).unwrap();
        assert_eq!(filled, config);
    }
}
