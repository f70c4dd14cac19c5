//! The Stable Diffusion UNet and VAE against diffusers: tiny random models with the block types
//! of `stabilityai/stable-diffusion-2-base` and `stable-diffusion-v1-5`, and the fixtures
//! `scripts/make_diffusers_fixtures.py` wrote with diffusers 0.42.1 / torch 2.13.0.

mod common;

use std::path::Path;

use common::{
    copy_dir, fixture, get, max_abs, max_abs_diff, phantom_weights, published, read_tensors,
    rounding_tolerance, unet_2d_condition_depth, unet_terms, vae_decoder_depth, vae_encoder_depth,
    vae_terms, with_legacy_attention_names, write_tensors, TempDir,
};
use flowgym_images::hub::{find_component, read_config, Search};
use flowgym_images::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use flowgym_images::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use flowgym_images::weights::Weights;
use tch::{Device, Kind, Tensor};

/// Loads a component folder with strict weight accounting.
fn load<C, M>(dir: &Path, build: impl FnOnce(&Weights, &C) -> M) -> M
where
    C: serde::de::DeserializeOwned,
{
    let mut search = Search::new();
    let files = find_component(dir, "unet", &mut search)
        .unwrap_or_else(|| panic!("no component in {}: {search:?}", dir.display()));
    let config: C = read_config(&files.config).unwrap();
    let weights = Weights::from_files(&files.weights, Kind::Float, Device::Cpu).unwrap();
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

/// `(max abs error, tolerance)` of the two forward passes of a `*_unet_forward.safetensors`
/// fixture; the tolerance is what rounding explains (see [`rounding_tolerance`]) for this UNet's
/// longest chain of sums on those latents at the magnitude of the reference output.
fn unet_errors(model: &UNet2DConditionModel, io: &str) -> [(f64, f64); 2] {
    let io = read_tensors(&fixture(io));
    let c = model.config();
    ["", "_odd"].map(|suffix| {
        let x = get(&io, &format!("x{suffix}"));
        let out = tch::no_grad(|| {
            model.forward(
                x,
                get(&io, &format!("timesteps{suffix}")),
                get(&io, &format!("encoder_hidden_states{suffix}")),
            )
        });
        let reference = get(&io, &format!("out{suffix}"));
        let pixels = x.size()[2] * x.size()[3];
        let terms = unet_terms(&c.block_out_channels, c.norm_num_groups.unwrap(), pixels);
        let tolerance = rounding_tolerance(unet_2d_condition_depth(c), terms, max_abs(reference));
        (max_abs_diff(&out, reference), tolerance)
    })
}

/// Asserts each `(error, tolerance)` of `errors`, printing them under `name`.
fn assert_within(name: &str, errors: &[(f64, f64)]) {
    for (error, tolerance) in errors {
        eprintln!("{name}: max abs error {error:.3e} (tolerance {tolerance:.3e})");
        assert!(error < tolerance, "{name}: {error} >= {tolerance}");
    }
}

#[test]
fn sd2_style_unet_matches_diffusers() {
    // Linear projections, per-level head counts [1, 2, 2, 2], cross_attention_dim 24; 16 x 16
    // latents in a batch of 2, and one 12 x 20 latent.
    let model = unet(&fixture("sd2-unet-tiny"));
    assert_within(
        "sd2 unet",
        &unet_errors(&model, "io/sd2_unet_forward.safetensors"),
    );
}

#[test]
fn sd15_style_unet_matches_diffusers() {
    // 1x1-convolution projections, 2 heads everywhere, cross_attention_dim 16; the same latents.
    let model = unet(&fixture("sd15-unet-tiny"));
    assert_within(
        "sd15 unet",
        &unet_errors(&model, "io/sd15_unet_forward.safetensors"),
    );
}

/// `(max abs error, tolerance)` of decode, encode mean and encode log-variance on
/// `vae.safetensors`, the tolerances from each path's longest chain of sums (see
/// [`rounding_tolerance`]) on the fixture's 32 x 32 images.
fn vae_errors(model: &AutoencoderKL) -> [(f64, f64); 3] {
    let io = read_tensors(&fixture("io/vae.safetensors"));
    let c = model.config();
    let terms = vae_terms(&c.block_out_channels, c.norm_num_groups, 32 * 32);
    let within = |ours: &Tensor, name: &str, depth: usize| {
        let reference = get(&io, name);
        let tolerance = rounding_tolerance(depth, terms, max_abs(reference));
        (max_abs_diff(ours, reference), tolerance)
    };
    tch::no_grad(|| {
        let decoded = model.decode(get(&io, "z"));
        let dist = model.encode(get(&io, "image"));
        [
            within(&decoded, "decoded", vae_decoder_depth(c)),
            within(&dist.mean, "mean", vae_encoder_depth(c)),
            within(&dist.logvar, "logvar", vae_encoder_depth(c)),
        ]
    })
}

#[test]
fn vae_matches_diffusers() {
    let model = vae(&fixture("vae-tiny"));
    assert_eq!(model.scaling_factor(), 0.18215);
    let errors = vae_errors(&model);
    assert_within("vae decode, encode mean, encode logvar", &errors);

    let io = read_tensors(&fixture("io/vae.safetensors"));
    let z = get(&io, "z");
    let scaled = tch::no_grad(|| model.decode_latents(&(z * 0.18215)));
    let decode_tolerance = errors[0].1;
    assert!(max_abs_diff(&scaled, get(&io, "decoded")) < decode_tolerance);
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
    assert_within("legacy-named vae", &vae_errors(&vae(tmp.path())));
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
