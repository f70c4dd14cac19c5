//! The Stable Diffusion UNet and VAE against diffusers: tiny random models with the block types
//! of `stabilityai/stable-diffusion-2-base` and `stable-diffusion-v1-5`, and the fixtures
//! `scripts/make_diffusers_fixtures.py` wrote with diffusers 0.42.1 / torch 2.13.0.

mod common;

use std::path::Path;

use common::{
    copy_dir, fixture, get, max_abs_diff, phantom_weights, published, read_tensors,
    with_legacy_attention_names, write_tensors, TempDir,
};
use flowgym_images::hub::{find_component, read_config, Search};
use flowgym_images::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use flowgym_images::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use flowgym_images::weights::Weights;
use tch::{Device, Kind};

/// Loads a component folder with strict weight accounting.
fn load<C, M>(dir: &Path, build: impl FnOnce(&Weights, &C) -> M) -> M
where
    C: serde::de::DeserializeOwned,
{
    let mut search = Search::new();
    let files = find_component(dir, "unet", &mut search)
        .unwrap_or_else(|| panic!("no component in {}: {search:?}", dir.display()));
    let config: C = read_config(&files.config).unwrap();
    let weights = Weights::from_safetensors(&files.weights, Kind::Float, Device::Cpu).unwrap();
    let model = build(&weights, &config);
    weights.finish().unwrap_or_else(|e| panic!("{e}"));
    model
}

fn unet(dir: &Path) -> UNet2DConditionModel {
    load(dir, |w, c: &UNet2DConditionConfig| {
        UNet2DConditionModel::new(&w.root(), c).unwrap()
    })
}

fn vae(dir: &Path) -> AutoencoderKL {
    load(dir, |w, c: &AutoencoderKLConfig| {
        AutoencoderKL::new(&w.root(), c).unwrap()
    })
}

/// Max abs errors of the two forward passes of a `*_unet_forward.safetensors` fixture.
fn unet_errors(model: &UNet2DConditionModel, io: &str) -> (f64, f64) {
    let io = read_tensors(&fixture(io));
    let errors = ["", "_odd"].map(|suffix| {
        let out = tch::no_grad(|| {
            model.forward(
                get(&io, &format!("x{suffix}")),
                get(&io, &format!("timesteps{suffix}")),
                get(&io, &format!("encoder_hidden_states{suffix}")),
            )
        });
        max_abs_diff(&out, get(&io, &format!("out{suffix}")))
    });
    (errors[0], errors[1])
}

#[test]
fn sd2_style_unet_matches_diffusers() {
    // Linear projections, per-level head counts [1, 2, 2, 2], cross_attention_dim 24.
    // Measured: 8.2e-7 (16 x 16 latents, batch 2), 0 (12 x 20 latent, batch 1).
    let (error, error_odd) = unet_errors(
        &unet(&fixture("sd2-unet-tiny")),
        "io/sd2_unet_forward.safetensors",
    );
    eprintln!("sd2 unet: max abs error {error:.3e}, odd size {error_odd:.3e}");
    assert!(error < 1e-4 && error_odd < 1e-4, "{error} {error_odd}");
}

#[test]
fn sd15_style_unet_matches_diffusers() {
    // 1x1-convolution projections, 2 heads everywhere, cross_attention_dim 16.
    // Measured: 1.1e-6 (16 x 16 latents, batch 2), 0 (12 x 20 latent, batch 1).
    let (error, error_odd) = unet_errors(
        &unet(&fixture("sd15-unet-tiny")),
        "io/sd15_unet_forward.safetensors",
    );
    eprintln!("sd15 unet: max abs error {error:.3e}, odd size {error_odd:.3e}");
    assert!(error < 1e-4 && error_odd < 1e-4, "{error} {error_odd}");
}

/// Max abs errors of decode, encode mean and encode log-variance on `vae.safetensors`.
fn vae_errors(model: &AutoencoderKL) -> [f64; 3] {
    let io = read_tensors(&fixture("io/vae.safetensors"));
    tch::no_grad(|| {
        let decoded = model.decode(get(&io, "z"));
        let dist = model.encode(get(&io, "image"));
        [
            max_abs_diff(&decoded, get(&io, "decoded")),
            max_abs_diff(&dist.mean, get(&io, "mean")),
            max_abs_diff(&dist.logvar, get(&io, "logvar")),
        ]
    })
}

#[test]
fn vae_matches_diffusers() {
    // Measured: decode 3.8e-6 (|decoded| up to 2.4), encode mean and log-variance 0.
    let model = vae(&fixture("vae-tiny"));
    assert_eq!(model.scaling_factor(), 0.18215);
    let [decode, mean, logvar] = vae_errors(&model);
    eprintln!("vae: decode {decode:.3e}, mean {mean:.3e}, logvar {logvar:.3e}");
    assert!(
        decode < 1e-4 && mean < 1e-4 && logvar < 1e-4,
        "{decode} {mean} {logvar}"
    );

    let io = read_tensors(&fixture("io/vae.safetensors"));
    let z = get(&io, "z");
    let scaled = tch::no_grad(|| model.decode_latents(&(z * 0.18215)));
    assert!(max_abs_diff(&scaled, get(&io, "decoded")) < 1e-4);
}

#[test]
fn vae_loads_deprecated_attention_names() {
    // The published SD 1.x VAE files name the mid-block attention `query`, `key`, `value`,
    // `proj_attn`; diffusers renames them on load.
    let tmp = TempDir::new("vae-legacy");
    copy_dir(&fixture("vae-tiny"), tmp.path());
    let file = tmp.path().join("diffusion_pytorch_model.safetensors");
    let renamed = with_legacy_attention_names(read_tensors(&file));
    assert!(renamed.contains_key("decoder.mid_block.attentions.0.proj_attn.weight"));
    write_tensors(&renamed, &file);
    let [decode, mean, logvar] = vae_errors(&vae(tmp.path()));
    assert!(
        decode < 1e-4 && mean < 1e-4 && logvar < 1e-4,
        "{decode} {mean} {logvar}"
    );
}

#[test]
fn pipeline_layout_is_found_under_unet() {
    let tmp = TempDir::new("sd-pipeline");
    copy_dir(&fixture("sd2-unet-tiny"), &tmp.path().join("unet"));
    let mut search = Search::new();
    let files = find_component(tmp.path(), "unet", &mut search).unwrap();
    assert_eq!(files.dir, tmp.path().join("unet"));
}

#[test]
fn published_unet_configs_build_exactly_the_published_parameters() {
    for (name, heads, linear) in [
        (
            "stabilityai/stable-diffusion-2-base/unet",
            vec![5, 10, 20, 20],
            true,
        ),
        ("stable-diffusion-v1-5/unet", vec![8, 8, 8, 8], false),
    ] {
        let (config, parameters) = published(name);
        let config: UNet2DConditionConfig = serde_json::from_value(config).unwrap();
        assert_eq!(
            config
                .attention_head_dim
                .per_level("attention_head_dim", 4)
                .unwrap(),
            heads
        );
        assert_eq!(config.use_linear_projection, linear);
        let weights = phantom_weights(&parameters);
        UNet2DConditionModel::new(&weights.root(), &config).unwrap();
        weights.finish().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parameters.len(), 686, "{name}");
    }
}

#[test]
fn published_vae_config_builds_exactly_the_published_parameters() {
    let (config, parameters) = published("stable-diffusion-v1-5/vae");
    let config: AutoencoderKLConfig = serde_json::from_value(config).unwrap();
    assert_eq!(
        config.scaling_factor, 0.18215,
        "the default when the config omits it"
    );
    let weights = phantom_weights(&parameters);
    AutoencoderKL::new(&weights.root(), &config).unwrap();
    weights.finish().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parameters.len(), 248);
}

#[test]
fn unsupported_unet_features_are_named() {
    let base = serde_json::to_value(
        serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(fixture("sd2-unet-tiny/config.json")).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    for (key, value, expected) in [
        (
            "addition_embed_type",
            serde_json::json!("text_time"),
            "`addition_embed_type`",
        ),
        (
            "down_block_types",
            serde_json::json!([
                "SimpleCrossAttnDownBlock2D",
                "DownBlock2D",
                "DownBlock2D",
                "DownBlock2D"
            ]),
            "SimpleCrossAttnDownBlock2D",
        ),
        (
            "attention_head_dim",
            serde_json::json!([1, 2]),
            "`attention_head_dim` has 2 entries for 4 levels",
        ),
        (
            "norm_num_groups",
            serde_json::json!(3),
            "cannot be split into 3 groups",
        ),
    ] {
        let mut config = base.clone();
        config[key] = value;
        let config: UNet2DConditionConfig = serde_json::from_value(config).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(expected), "{key}: {err}");
    }
}
