//! The memory modes of `images/sd2` and `images/sd1.5`: sliced attention (`attention_slicing`)
//! gives the unsliced prediction, tiled VAE decoding (`vae_tiling`) gives what diffusers'
//! `AutoencoderKL.tiled_decode` gives (`tests/fixtures/vae_tiling`, written by
//! `scripts/make_vae_tiling_fixtures.py` with diffusers 0.42.1 / torch 2.13.0), and values the
//! entries cannot use are refused naming the argument and what is accepted.

mod common;

use std::path::{Path, PathBuf};

use abi_stable::std_types::RString;
use common::{
    get, max_abs, max_abs_diff, read_tensors, rounding_tolerance, vae_decoder_depth, vae_terms,
};
use flowgym_images::hub::read_config;
use flowgym_images::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use flowgym_images::models::vae_tiling::VaeTiling;
use flowgym_images::weights::{model_files, Weights};
use flowgym_plugin_api::{
    BaseModel, Batch, Constructor, EntryRegistration, KwargValue, Kwargs, ManagedTensor,
};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

fn fixtures(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Constructs entry `id` with the tiny pipeline `name` at 48 x 64 px and `extra` arguments.
fn construct(id: &str, name: &str, extra: Value) -> Result<Box<dyn BaseModel>, String> {
    let registration = flowgym_plugin_api::inventory::iter::<EntryRegistration>
        .into_iter()
        .find(|r| (r.meta)().id.as_str() == id)
        .unwrap_or_else(|| panic!("{id} is registered"));
    let Constructor::BaseModel(construct) = registration.constructor else {
        panic!("{id} is not a base model");
    };
    let mut args = json!({
        "weights": fixtures("sd").join(name),
        "prompts": ["a red cube", "a blue sphere", "a green cone"],
        "height": 48,
        "width": 64,
    });
    for (key, value) in extra.as_object().unwrap() {
        args[key] = value.clone();
    }
    construct(
        &args.to_string(),
        &flowgym_plugin_api::ConstructContext::cpu(),
    )
    .map_err(|e| e.to_string())
}

/// The error of a construction that must fail.
fn refused(result: Result<Box<dyn BaseModel>, String>) -> String {
    match result {
        Ok(_) => panic!("constructed"),
        Err(e) => e,
    }
}

/// The guided noise prediction of `model` for `latents` at step 500, prompts from `sample_p0`.
fn predict(model: &mut dyn BaseModel, latents: &Tensor) -> Tensor {
    let prompts = ["a red cube", "a blue sphere", "a green cone"]
        .iter()
        .map(|p| RString::from(*p))
        .collect();
    let kwargs = Kwargs::new().with("prompt", KwargValue::Strings(prompts));
    let x = Batch::from_tch("images", [("x", latents)]).unwrap();
    let kwargs = model.preprocess(x, kwargs).unwrap();
    let t = ManagedTensor::from_tch(&Tensor::from_slice(&[500.0f32])).unwrap();
    let x = Batch::from_tch("images", [("x", latents)]).unwrap();
    model.forward(x, t, kwargs).unwrap().take_tch("x").unwrap()
}

/// The images `postprocess` decodes from `latents`.
fn decode(model: &mut dyn BaseModel, latents: &Tensor) -> Tensor {
    let x = Batch::from_tch("images", [("x", latents)]).unwrap();
    model
        .postprocess(x, Kwargs::new())
        .unwrap()
        .expect("images")
        .take_tch("x")
        .unwrap()
}

/// Every slicing setting gives the unsliced guided prediction on both tiny pipelines (SD 2:
/// heads [1, 2, 2, 2]; SD 1.5: 2 heads everywhere), batch 3 with guidance (6 rows of
/// `batch * heads` per head). Each slice goes through the fused kernel the whole goes through,
/// whose rows are independent, so they agree to a few dozen float32 roundings of the output's
/// magnitude, `64 u max |eps|` (on the CPU with libtorch 2.13, bit for bit).
#[test]
fn sliced_attention_gives_the_unsliced_prediction() {
    tch::manual_seed(11);
    let latents = Tensor::randn([3, 4, 6, 8], (Kind::Float, Device::Cpu));
    for (id, name, sizes) in [
        ("images/sd2", "sd2", vec![json!(1)]),
        ("images/sd1.5", "sd15", vec![json!(1), json!(2)]),
    ] {
        let mut whole = construct(id, name, json!({})).unwrap();
        let reference = predict(whole.as_mut(), &latents);
        let tolerance = 64.0 * common::F32_UNIT_ROUNDOFF * max_abs(&reference);
        let settings = [json!("auto"), json!("max"), Value::Null];
        for slicing in settings.iter().chain(&sizes) {
            let extra = json!({ "attention_slicing": slicing });
            let mut model = construct(id, name, extra).unwrap_or_else(|e| panic!("{e}"));
            let eps = predict(model.as_mut(), &latents);
            let error = max_abs_diff(&eps, &reference);
            eprintln!(
                "{name}: attention_slicing {slicing}: max abs difference {error:.3e} \
                 (tolerance {tolerance:.3e})"
            );
            assert!(
                error <= tolerance,
                "{name} {slicing}: {error} > {tolerance}"
            );
        }
    }
}

#[test]
fn slicing_values_the_entries_cannot_use_are_refused() {
    let refuse = |name: &str, value: Value| {
        let id = if name == "sd2" {
            "images/sd2"
        } else {
            "images/sd1.5"
        };
        refused(construct(id, name, json!({ "attention_slicing": value })))
    };
    // Larger than the fewest heads of a layer (1 in the tiny SD 2 UNet, 2 in SD 1.5's).
    let err = refuse("sd2", json!(2));
    assert!(
        err.contains("argument `attention_slicing` is 2, more than the 1 heads"),
        "{err}"
    );
    assert!(err.contains("\"auto\""), "{err}");
    let err = refuse("sd15", json!(3));
    assert!(err.contains("is 3, more than the 2 heads"), "{err}");
    // Zero and negative sizes, before any file is read.
    for bad in [json!(0), json!(-2)] {
        let err = refuse("sd15", bad.clone());
        assert!(err.contains("argument `attention_slicing` is"), "{err}");
        assert!(err.contains("a slice holds at least 1 head"), "{err}");
    }
    // Wrong types and words.
    for bad in [json!("half"), json!(2.5), json!(true), json!([2])] {
        let err = refuse("sd15", bad.clone());
        assert!(err.contains("argument `attention_slicing`"), "{bad}: {err}");
        assert!(
            err.contains("is not null, \"auto\", \"max\" or a whole number"),
            "{bad}: {err}"
        );
        assert!(
            err.contains("accepted: null (off), \"auto\""),
            "{bad}: {err}"
        );
    }
}

/// The tiny tiling VAE with its weights, tiled with `tiling`.
fn tiling_vae(tiling: Option<VaeTiling>) -> (AutoencoderKL, AutoencoderKLConfig) {
    let dir = fixtures("vae_tiling/vae");
    let config: AutoencoderKLConfig = read_config(&dir.join("config.json")).unwrap();
    let weights = Weights::from_files(&model_files(&dir), Kind::Float, Device::Cpu).unwrap();
    let mut vae = AutoencoderKL::new(&weights.root(), &config).unwrap();
    weights.finish().unwrap();
    vae.set_tiling(tiling);
    (vae, config)
}

/// What rounding explains for a decoding of `reference`'s size by the VAE of `config`.
fn decoder_tolerance(config: &AutoencoderKLConfig, reference: &Tensor) -> f64 {
    let size = reference.size();
    let terms = vae_terms(
        &config.block_out_channels,
        config.norm_num_groups,
        size[2] * size[3],
    );
    rounding_tolerance(vae_decoder_depth(config), terms, max_abs(reference))
}

/// Tiled decoding matches diffusers' `tiled_decode` (default tiles from `sample_size`, and
/// tiles a user sets), within what float32 rounding explains for the decoder (the tolerance of
/// the other VAE goldens), while differing from whole decoding by far more.
#[test]
fn tiled_decoding_matches_diffusers() {
    let io = read_tensors(&fixtures("vae_tiling/io.safetensors"));
    let (vae, config) = tiling_vae(None);
    assert_eq!(vae.default_tile_size(), Some(32));
    let whole = tch::no_grad(|| vae.decode(get(&io, "latents_a")));
    let tolerance = decoder_tolerance(&config, get(&io, "whole_a"));
    assert!(max_abs_diff(&whole, get(&io, "whole_a")) < tolerance);

    for (tile, latents, reference) in [(32, "latents_a", "tiled_a"), (64, "latents_b", "tiled_b")] {
        let tiling = VaeTiling::new(tile, 8);
        let (vae, config) = tiling_vae(Some(tiling));
        let decoded = tch::no_grad(|| vae.decode(get(&io, latents)));
        let error = max_abs_diff(&decoded, get(&io, reference));
        let tolerance = decoder_tolerance(&config, get(&io, reference));
        eprintln!("tile {tile}: max abs error {error:.3e} (tolerance {tolerance:.3e})");
        assert!(error < tolerance, "tile {tile}: {error}");
    }
    let seams = max_abs_diff(get(&io, "tiled_a"), get(&io, "whole_a"));
    assert!(
        seams > 100.0 * tolerance,
        "tiling changes the images: {seams}"
    );
}

/// Through the entry: `vae_tiling` with 32-px tiles decodes the tiny pipeline's 48 x 64 images
/// in tiles (6 x 8 latents, larger than a 4-latent tile), as the VAE's tiled decoding does;
/// without `vae_tile_size` the VAE's `sample_size` (64) covers them, so they are decoded whole.
#[test]
fn the_entries_decode_in_tiles_when_asked() {
    tch::manual_seed(5);
    let latents = Tensor::randn([2, 4, 6, 8], (Kind::Float, Device::Cpu));
    let mut whole = construct("images/sd1.5", "sd15", json!({})).unwrap();
    let mut default_tiles =
        construct("images/sd1.5", "sd15", json!({ "vae_tiling": true })).unwrap();
    let mut small_tiles = construct(
        "images/sd1.5",
        "sd15",
        json!({ "vae_tiling": true, "vae_tile_size": 32 }),
    )
    .unwrap();
    let reference = decode(whole.as_mut(), &latents);
    assert_eq!(
        max_abs_diff(&decode(default_tiles.as_mut(), &latents), &reference),
        0.0
    );
    let tiled = decode(small_tiles.as_mut(), &latents);
    assert_eq!(tiled.size(), [2, 3, 48, 64]);
    assert!(max_abs_diff(&tiled, &reference) > 1e-3, "tiles were used");
    // The same as the VAE's own tiled decoding, mapped to [0, 1] (sd15's scaling factor 0.5).
    let dir = fixtures("sd/sd15/vae");
    let config: AutoencoderKLConfig = read_config(&dir.join("config.json")).unwrap();
    let weights = Weights::from_files(&model_files(&dir), Kind::Float, Device::Cpu).unwrap();
    let mut vae = AutoencoderKL::new(&weights.root(), &config).unwrap();
    vae.set_tiling(Some(VaeTiling::new(32, 8)));
    // One image at a time, as `decode_chunk` = 1 decodes.
    let expected: Vec<Tensor> = latents
        .split(1, 0)
        .iter()
        .map(|z| tch::no_grad(|| (vae.decode_latents(z) / 2.0 + 0.5).clamp(0.0, 1.0)))
        .collect();
    let error = max_abs_diff(&tiled, &Tensor::cat(&expected, 0));
    assert!(error < 1e-6, "{error}");
}

#[test]
fn tile_sizes_the_entries_cannot_use_are_refused() {
    let refuse = |extra: Value| refused(construct("images/sd1.5", "sd15", extra));
    let err = refuse(json!({ "vae_tiling": true, "vae_tile_size": 40 }));
    assert_eq!(
        err,
        "argument `vae_tile_size` is 40, not a multiple of 32 (accepted: 0 (the VAE config's \
         sample_size) or a multiple of 32 pixels)"
    );
    let err = refuse(json!({ "vae_tile_size": 64 }));
    assert!(
        err.contains("argument `vae_tile_size` is 64 but `vae_tiling` is false"),
        "{err}"
    );
    let err = refuse(json!({ "vae_tiling": "yes" }));
    assert!(err.contains("argument `vae_tiling` expects bool"), "{err}");
}
