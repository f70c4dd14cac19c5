//! The image models in half precision (`dtype` float16 and bfloat16) against diffusers and
//! transformers run in the same precision: the tiny random models of `tests/fixtures/ddpm/gray16`,
//! `tests/fixtures/sd/sd2` and `tests/fixtures/clip/aesthetic`, converted by diffusers' and
//! transformers' own `torch_dtype` loading and run on the inputs of their float32 fixtures by
//! `scripts/make_precision_fixtures.py` (torch 2.13.0, diffusers 0.42.1, transformers 5.24.0),
//! outputs in `tests/fixtures/precision/cases.safetensors`; the `dtype` argument of the entries;
//! and the error a float16 overflow gives.
//!
//! **Tolerances.** In NCHW both sides call the same libtorch kernels in the same order (diffusers'
//! `AttnProcessor2_0` and transformers' `sdpa` attention are the fused
//! `scaled_dot_product_attention` this crate calls; convolutions, matrix products and norms
//! accumulate half-precision inputs in float32 inside the kernels and round each result to the
//! format). On the machine that wrote the fixtures the outputs agree to the last bit, except the
//! VAE's final `x / 2 + 0.5`, which this crate maps in float32 and diffusers in the half format:
//! one rounding. [`half_tolerance`] allows `16 u` relative to the output's scale, `u` the format's
//! unit roundoff (2^-9 for bfloat16's 8 significant bits, 2^-12 for float16's 11). On a processor
//! with other vector instructions libtorch picks other kernels: on an Intel Xeon with AVX512-FP16
//! and AMX, against fixtures written on an AMD EPYC, the float16 VAE differed by 11 `u x scale`,
//! the float16 UNet of `gray16` by 7 and the bfloat16 VAE by 4, where `4 u` had been allowed
//! (the rest by at most 2.1). In bfloat16 on the CPU this crate keeps images channels-last and
//! runs the convolutions of big weights on small images as matrix products (`nn::Conv2d`),
//! where diffusers runs NCHW kernels: other kernels, other roundings. On an Intel Xeon with AMX
//! the bfloat16 UNet of `gray16` then differed by 2.4 `u x scale` and that of `sd2` by 4.9
//! (0 in NCHW). At full size (`scripts/bench_unet_eager.py --check`) the UNets of CIFAR and SD
//! differed from diffusers by 1.0% and 1.2% of the scale, as much as diffusers' own
//! channels-last run differs from its NCHW one, and each of them from float32. A wrong layer,
//! weight conversion or scaling moves the output by far more than 16 `u x scale` (3% of the
//! scale in bfloat16, 0.4% in float16); that each component really computes in the format asked
//! for is asserted by its output's kind.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{copy_dir, get, max_abs, max_abs_diff, read_tensors, safetensors_metadata, TempDir};
use flowgym_images::ddpm::{DdpmFiles, DdpmModel, LoadOptions, Source, DDPM_INCLUDE};
use flowgym_images::fetch::HubSettings;
use flowgym_images::hub::HubCache;
use flowgym_images::models::aesthetic::AestheticPredictor;
use flowgym_images::precision::Precision;
use flowgym_images::sd::{SdArgs, SdFiles, SdModel, SdVersion};
use flowgym_plugin_api::{ConstructContext, Constructor, EntryRegistration};
use tch::{Device, Kind, Tensor};

/// The half-precision formats and their unit roundoff.
const HALF: [(Precision, f64); 2] = [
    (Precision::Float16, 1.0 / 4096.0),
    (Precision::BFloat16, 1.0 / 512.0),
];

fn fixtures(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn cases() -> BTreeMap<String, Tensor> {
    read_tensors(&fixtures("precision/cases.safetensors"))
}

/// `16 u scale` (see the module documentation).
fn half_tolerance(unit_roundoff: f64, scale: f64) -> f64 {
    16.0 * unit_roundoff * scale
}

/// Asserts `|ours - reference| < half_tolerance(u, max |reference|)`.
fn assert_close(what: &str, ours: &Tensor, reference: &Tensor, u: f64) {
    let tolerance = half_tolerance(u, max_abs(reference));
    let error = max_abs_diff(ours, reference);
    eprintln!("{what}: max abs error {error:.3e} (tolerance {tolerance:.3e})");
    assert!(
        error < tolerance,
        "{what}: max abs error {error} >= {tolerance}"
    );
}

fn ddpm(precision: Precision) -> DdpmModel {
    let folder = fixtures("ddpm/gray16");
    let source = Source {
        entry: "images/ddpm",
        weights: folder.to_str().unwrap(),
        repo_id: "",
        include: DDPM_INCLUDE,
        size: "",
    };
    let offline = HubSettings::offline(HubCache::at("/nonexistent"));
    let files = DdpmFiles::locate(&source, &[], &offline).unwrap();
    let options = LoadOptions {
        precision,
        ..LoadOptions::default()
    };
    DdpmModel::load(&files, &options, Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn ddpm_unet_in_half_precision_matches_diffusers() {
    let cases = cases();
    let io = read_tensors(&fixtures("ddpm/gray16/io.safetensors"));
    let (x, k) = (get(&io, "x"), get(&io, "timesteps"));
    for (precision, u) in HALF {
        let model = ddpm(precision);
        let out = tch::no_grad(|| model.unet().forward(&x.to_kind(precision.kind()), k));
        assert_eq!(
            out.kind(),
            precision.kind(),
            "the UNet computes in {precision:?}"
        );
        let reference = get(&cases, &format!("ddpm_gray16.{}.out", precision.name()));
        assert_close(&format!("gray16 {}", precision.name()), &out, reference, u);
        // The entry's prediction takes and gives float32.
        let eps = model.predict(x, k).unwrap();
        assert_eq!(eps.kind(), Kind::Float);
    }
}

fn sd2(dtype: &str) -> SdModel {
    sd2_from(&fixtures("sd/sd2"), dtype)
}

fn sd2_from(folder: &Path, dtype: &str) -> SdModel {
    let version = SdVersion::Sd2;
    let args = SdArgs {
        weights: folder.to_str().unwrap().to_string(),
        height: 48,
        width: 64,
        dtype: dtype.to_string(),
        ..version.default_args()
    };
    let offline = HubSettings::offline(HubCache::at("/nonexistent"));
    let files = SdFiles::locate(version, &args, &[], &offline).unwrap_or_else(|e| panic!("{e}"));
    SdModel::load(version, args, &files, Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

/// The prompts of the float32 fixture (its metadata).
fn sd2_prompts() -> Vec<String> {
    let metadata = safetensors_metadata(&fixtures("sd/sd2_io.safetensors"));
    serde_json::from_str(&metadata["prompts"]).unwrap()
}

#[test]
fn sd2_text_encoder_unet_and_vae_in_half_precision_match_diffusers() {
    let cases = cases();
    let io = read_tensors(&fixtures("sd/sd2_io.safetensors"));
    let prompts = sd2_prompts();
    let latents = get(&io, "latents");
    let k = get(&io, "timestep").reshape([1]).expand([3], false);
    for (precision, u) in HALF {
        let name = precision.name();
        let model = sd2(name);
        let pipeline = model.pipeline();
        assert_eq!(pipeline.precision(), precision);
        let embeds = pipeline.encode_prompts(&prompts).unwrap();
        let reference = get(&cases, &format!("sd2.{name}.prompt_embeds"));
        let ids = pipeline.tokenize(&prompts).unwrap();
        let hidden = tch::no_grad(|| pipeline.text_encoder().forward(&ids)).unwrap();
        assert_eq!(
            hidden.kind(),
            precision.kind(),
            "the text encoder computes in {name}"
        );
        assert_close(&format!("sd2 text encoder {name}"), &embeds, reference, u);
        // The UNet on the reference's own conditioning, so its error is the UNet's alone.
        let eps = pipeline.predict(latents, &k, reference);
        let (kind, context) = (precision.kind(), reference.to_kind(precision.kind()));
        let raw = tch::no_grad(|| {
            pipeline
                .unet()
                .forward(&latents.to_kind(kind), &k, &context)
        });
        assert_eq!(raw.kind(), kind, "the UNet computes in {name}");
        let reference = get(&cases, &format!("sd2.{name}.eps"));
        assert_close(&format!("sd2 UNet {name}"), &eps, reference, u);

        let decoded = pipeline.decode(get(&io, "decode_latents"), 3);
        if precision == Precision::Float16 {
            // `force_upcast` (set in the fixture's config, as published): float32 decoding, as
            // diffusers' SDXL pipelines do, so the float32 reference holds to float32 rounding.
            assert_eq!(pipeline.vae_precision(), Precision::Float32);
            let error = max_abs_diff(&decoded, get(&io, "images"));
            assert!(error < 1e-4, "float16 pipeline, float32 VAE: {error}");
        } else {
            assert_eq!(pipeline.vae_precision(), Precision::BFloat16);
            let z = get(&io, "decode_latents").to_kind(Kind::BFloat16);
            let raw = tch::no_grad(|| pipeline.vae().decode_latents(&z));
            assert_eq!(raw.kind(), Kind::BFloat16, "the VAE computes in bfloat16");
            let reference = get(&cases, &format!("sd2.{name}.images"));
            assert_close(&format!("sd2 VAE {name}"), &decoded, reference, u);
        }
    }
}

#[test]
fn a_float16_vae_without_force_upcast_runs_in_float16_like_diffusers() {
    let tmp = TempDir::new("precision-vae-fp16");
    for entry in std::fs::read_dir(fixtures("sd/sd2")).unwrap() {
        let path = entry.unwrap().path();
        let to = tmp.path().join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &to);
        } else {
            std::fs::copy(&path, &to).unwrap();
        }
    }
    let config_path = tmp.path().join("vae/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["force_upcast"] = serde_json::Value::Bool(false);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = sd2_from(tmp.path(), "float16");
    assert_eq!(model.pipeline().vae_precision(), Precision::Float16);
    let io = read_tensors(&fixtures("sd/sd2_io.safetensors"));
    let decoded = model.pipeline().decode(get(&io, "decode_latents"), 3);
    let reference = get(&cases(), "sd2.float16.images").shallow_clone();
    assert_close("sd2 VAE float16", &decoded, &reference, HALF[0].1);
}

#[test]
fn aesthetic_clip_in_half_precision_matches_transformers() {
    let cases = cases();
    let dir = fixtures("clip/aesthetic");
    let images = get(
        &read_tensors(&dir.join("aesthetic_cases.safetensors")),
        "images",
    )
    .shallow_clone();
    for (precision, u) in HALF {
        let predictor = AestheticPredictor::load_as(
            &dir.join("clip"),
            &dir.join("head_mlp.safetensors"),
            precision.kind(),
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(predictor.clip().kind(), precision.kind());
        let scores = predictor.score(&images).unwrap();
        assert_eq!(scores.kind(), Kind::Float);
        let reference = get(&cases, &format!("aesthetic.{}.mlp", precision.name()));
        assert_close(
            &format!("aesthetic {}", precision.name()),
            &scores,
            reference,
            u,
        );
    }
}

fn registration(id: &str) -> &'static EntryRegistration {
    flowgym_plugin_api::inventory::iter::<EntryRegistration>
        .into_iter()
        .find(|r| (r.meta)().id.as_str() == id)
        .unwrap_or_else(|| panic!("{id} is registered"))
}

#[test]
fn every_image_entry_declares_the_dtype_argument_and_its_values() {
    for id in [
        "images/ddpm",
        "images/cifar",
        "images/digits",
        "images/sd2",
        "images/sd1.5",
        "images/aesthetic",
    ] {
        let meta = (registration(id).meta)();
        let spec = meta
            .arguments
            .iter()
            .find(|a| a.name.as_str() == "dtype")
            .unwrap_or_else(|| panic!("{id} has no `dtype` argument"));
        assert_eq!(spec.default.as_str(), "\"auto\"", "{id}");
        for value in ["auto", "float32", "float16", "bfloat16"] {
            assert!(
                spec.accepted.as_str().contains(value),
                "{id}: {}",
                spec.accepted
            );
        }
    }
}

#[test]
fn the_float32_default_is_unchanged_and_unknown_dtypes_are_refused() {
    let Constructor::BaseModel(construct) = registration("images/ddpm").constructor else {
        panic!("images/ddpm is not a base model");
    };
    let weights = fixtures("ddpm/gray16");
    let io = read_tensors(&weights.join("io.safetensors"));
    let (x, k) = (get(&io, "x"), get(&io, "timesteps"));
    // `auto` on the CPU is float32: the same numbers as before the argument existed.
    let default = ddpm(Precision::default());
    assert_eq!(default.precision(), Precision::Float32);
    let out = tch::no_grad(|| default.unet().forward(x, k));
    assert_eq!(out.kind(), Kind::Float);
    assert!(max_abs_diff(&out, get(&io, "out")) < 1e-5);
    let json = serde_json::json!({ "weights": weights, "dtype": "auto" }).to_string();
    construct(&json, &ConstructContext::cpu()).unwrap_or_else(|e| panic!("{e}"));

    let json = serde_json::json!({ "weights": weights, "dtype": "half" }).to_string();
    let err = construct(&json, &ConstructContext::cpu())
        .err()
        .expect("an unknown dtype")
        .to_string();
    assert!(
        err.contains("dtype") && err.contains("bfloat16") && err.contains("float16"),
        "{err}"
    );
}

#[test]
fn a_float16_overflow_is_an_error_that_names_the_precision() {
    let Constructor::BaseModel(construct) = registration("images/digits").constructor else {
        panic!("images/digits is not a base model");
    };
    let model = ddpm(Precision::Float16);
    // Inputs near float16's largest value: the first convolution's sums overflow.
    let x = Tensor::full([2, 1, 16, 16], 6.0e4, (Kind::Float, Device::Cpu));
    let k = Tensor::from_slice(&[10.0f32, 500.0]);
    let err = model.predict(&x, &k).expect_err("an overflow").to_string();
    assert!(
        err.contains("images/ddpm")
            && err.contains("float16 overflow")
            && err.contains("bfloat16 or float32"),
        "{err}"
    );
    // The same input in float32 or bfloat16 is finite.
    for precision in [Precision::Float32, Precision::BFloat16] {
        let eps = ddpm(precision).predict(&x, &k).unwrap();
        assert!(
            bool::try_from(eps.isfinite().all()).unwrap(),
            "{precision:?}"
        );
    }
    // A preset names itself.
    let mut digits = construct(r#"{"dtype": "float16"}"#, &ConstructContext::cpu()).unwrap();
    let x = Tensor::full([1, 1, 8, 8], 6.0e4, (Kind::Float, Device::Cpu));
    let batch = flowgym_plugin_api::Batch::from_tch("images", [("x", &x)]).unwrap();
    let t = flowgym_plugin_api::ManagedTensor::from_tch(&Tensor::from_slice(&[10.0f32])).unwrap();
    let err = digits
        .forward(batch, t, flowgym_plugin_api::Kwargs::new())
        .expect_err("an overflow")
        .to_string();
    assert!(
        err.contains("images/digits") && err.contains("float16 overflow"),
        "{err}"
    );
}
