//! CLIP text and vision transformers against transformers 5.24 on tiny random configurations
//! (fixtures from `scripts/make_clip_fixtures.py`). The max abs errors allowed are what float32
//! rounding explains for each model (`common::rounding_tolerance`); the errors are printed with
//! `--nocapture`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use flowgym_images::models::clip::{
    Activation, ClipError, ClipTextConfig, ClipTextModel, ClipVisionConfig,
    ClipVisionModelWithProjection,
};
use flowgym_images::weights::Weights;
mod common;

use common::{
    clip_text_depth, clip_text_terms, clip_vision_depth, clip_vision_terms, max_abs, max_abs_diff,
    rounding_tolerance,
};
use tch::{Device, Kind, Tensor};

/// `(max abs error, tolerance)` of `ours` against the text-encoder output `reference`.
fn text_error(config: &ClipTextConfig, ours: &Tensor, reference: &Tensor) -> (f64, f64) {
    let tolerance = rounding_tolerance(
        clip_text_depth(config),
        clip_text_terms(config),
        max_abs(reference),
    );
    (max_abs_diff(ours, reference), tolerance)
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn read(name: &str) -> BTreeMap<String, Tensor> {
    common::read_tensors(&fixtures().join(name))
}

fn check_text(name: &str, activation: Activation, layers: i64) {
    let cases = read("text_cases.safetensors");
    let model = ClipTextModel::load(&fixtures().join(name), Device::Cpu).unwrap();
    assert_eq!(model.config().hidden_act, activation);
    assert_eq!(model.config().num_hidden_layers, layers);
    let ids = &cases[&format!("{name}.input_ids")];
    let last = model.forward(ids).unwrap();
    let penultimate = model.forward_clip_skip(ids, 1).unwrap();
    let pooled = model.pooled_output(&last, ids);
    let config = model.config();
    let errors = [
        text_error(config, &last, &cases[&format!("{name}.last_hidden_state")]),
        text_error(config, &penultimate, &cases[&format!("{name}.penultimate")]),
        text_error(config, &pooled, &cases[&format!("{name}.pooler_output")]),
    ];
    println!("{name}: (max abs error, tolerance) of last, penultimate, pooled: {errors:?}");
    assert!(errors.iter().all(|(e, t)| e < t), "{name}: {errors:?}");

    // The last hidden state is the final layer norm of the last layer's output: the same
    // operations on the same values, so the same bits.
    let states = model.hidden_states(ids).unwrap();
    assert_eq!(states.len() as i64, layers + 1);
    let normed = model.final_layer_norm(&states[states.len() - 1]);
    assert!(normed.equal(&last));
}

#[test]
fn text_encoder_quick_gelu_matches_transformers() {
    check_text("text_quick_gelu", Activation::QuickGelu, 3);
}

#[test]
fn text_encoder_gelu_matches_transformers() {
    check_text("text_gelu", Activation::Gelu, 2);
}

#[test]
fn text_encoder_reads_the_unprefixed_transformers_5_layout() {
    let dir = fixtures().join("text_quick_gelu");
    let config = ClipTextConfig::from_file(&dir.join("config.json")).unwrap();
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(name, _)| !name.ends_with("position_ids"))
        .map(|(name, t)| (name.trim_start_matches("text_model.").to_string(), t))
        .collect();
    let weights = Weights::from_tensors("unprefixed", tensors, Kind::Float, Device::Cpu);
    let model = ClipTextModel::new(&weights.root(), &config);
    weights.finish().unwrap();
    let cases = read("text_cases.safetensors");
    let last = model.forward(&cases["text_quick_gelu.input_ids"]).unwrap();
    let reference = &cases["text_quick_gelu.last_hidden_state"];
    let (error, tolerance) = text_error(&config, &last, reference);
    assert!(error < tolerance, "{error} >= {tolerance}");
}

#[test]
fn text_encoder_refuses_bad_ids() {
    let model = ClipTextModel::load(&fixtures().join("text_gelu"), Device::Cpu).unwrap();
    let too_large = Tensor::from_slice(&[0i64, 5, 1000]).view([1, 3]);
    let err = model.forward(&too_large).unwrap_err();
    assert!(matches!(err, ClipError::Input(_)));
    assert!(
        err.to_string().contains("outside the vocabulary of 1000"),
        "{err}"
    );
    let too_long = Tensor::zeros([1, 78], (Kind::Int64, Device::Cpu));
    assert!(model
        .forward(&too_long)
        .unwrap_err()
        .to_string()
        .contains("78 tokens"));
    let err = model.forward_clip_skip(&Tensor::zeros([1, 4], (Kind::Int64, Device::Cpu)), 2);
    assert!(err.unwrap_err().to_string().contains("clip_skip 2"));
}

#[test]
fn vision_model_matches_transformers() {
    let cases = read("vision_cases.safetensors");
    let model =
        ClipVisionModelWithProjection::load(&fixtures().join("vision"), Device::Cpu).unwrap();
    let embeds = model.forward(&cases["pixel_values"]).unwrap();
    let reference = &cases["image_embeds"];
    let error = max_abs_diff(&embeds, reference);
    let config = model.config();
    let tolerance = rounding_tolerance(
        clip_vision_depth(config),
        clip_vision_terms(config),
        max_abs(reference),
    );
    println!("vision: max abs error image_embeds {error:.2e} (tolerance {tolerance:.2e})");
    assert!(error < tolerance, "{error}");
    let wrong = Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    let err = model.forward(&wrong).unwrap_err();
    assert!(err.to_string().contains("[batch, 3, 32, 32]"), "{err}");
}

#[test]
fn a_clip_config_gives_the_vision_tower_and_the_top_level_projection() {
    let path = fixtures().join("aesthetic/clip/config.json");
    let vision = ClipVisionConfig::from_file(&path).unwrap();
    assert_eq!(
        (vision.hidden_size, vision.image_size, vision.patch_size),
        (32, 32, 8)
    );
    assert_eq!(vision.projection_dim, 24);
    let text = ClipTextConfig::from_file(&path).unwrap();
    assert_eq!((text.vocab_size, text.num_hidden_layers), (1000, 1));
}

#[test]
fn legacy_config_dicts_override_the_sub_configs() {
    let dir = std::env::temp_dir().join(format!("flowgym-clip-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        r#"{"model_type": "clip", "projection_dim": 768, "logit_scale_init_value": 2.6592,
            "text_config": {"hidden_size": 512, "hidden_act": "quick_gelu", "unknown_key": [1]},
            "text_config_dict": {"hidden_size": 768, "num_attention_heads": 12},
            "vision_config_dict": {"hidden_size": 1024, "patch_size": 14, "num_attention_heads": 16,
                                   "num_hidden_layers": 24, "intermediate_size": 4096}}"#,
    )
    .unwrap();
    let text = ClipTextConfig::from_file(&path).unwrap();
    assert_eq!((text.hidden_size, text.num_attention_heads), (768, 12));
    let vision = ClipVisionConfig::from_file(&path).unwrap();
    assert_eq!(
        (vision.hidden_size, vision.patch_size, vision.projection_dim),
        (1024, 14, 768)
    );
    assert_eq!(vision.num_positions(), 257);
    std::fs::write(&path, r#"{"hidden_act": "relu6"}"#).unwrap();
    let err = ClipTextConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("relu6") && err.contains("quick_gelu"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_folder_without_weights_says_what_it_expects() {
    let err = ClipVisionModelWithProjection::load(&fixtures().join("tokenizer_sd15"), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}
