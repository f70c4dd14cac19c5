//! `images/ddpm` against diffusers on `UNet2DModel` shapes other than CIFAR's: the tiny random
//! models of `tests/fixtures/ddpm/` (1 channel at 16 x 16 with a DDIM `v_prediction` config; 3
//! channels at 64 x 64 with other block types, one-head attention, scale-shift conditioning and
//! a clipping DDPM config; 1 channel at 16 x 16 with `ResnetDownsampleBlock2D` /
//! `ResnetUpsampleBlock2D`; 3 channels at 32 x 32 with the skip blocks and a Fourier time
//! embedding; 1 channel at 16 x 16 with a learned time embedding and resnet down- and
//! up-sampling in the attention blocks; 3 channels at 16 x 16 with heads that do not divide the
//! channels and down blocks without resnets), written with diffusers 0.42.1 / torch 2.13.0 by
//! `scripts/make_ddpm_fixtures.py`; and the configurations and files the entry refuses.

mod common;

use std::path::{Path, PathBuf};

use common::{
    copy_dir, get, max_abs, max_abs_diff, read_tensors, rounding_tolerance, unet_2d_depth,
    unet_terms, TempDir,
};
use flowgym_images::ddpm::{DdpmFiles, DdpmModel, LoadOptions, Source, DDPM_INCLUDE};
use flowgym_images::fetch::HubSettings;
use flowgym_images::hub::{HubCache, LoadError};
use flowgym_images::models::unet_2d::UNet2DConfig;
use flowgym_plugin_api::{ConstructContext, Constructor, EntryRegistration};
use tch::Device;

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ddpm")
        .join(name)
}

fn load_with(folder: &Path, options: &LoadOptions) -> Result<DdpmModel, LoadError> {
    let folder = folder.to_str().unwrap();
    let source = Source {
        entry: "images/ddpm",
        weights: folder,
        repo_id: "",
        include: DDPM_INCLUDE,
        size: "",
    };
    let offline = HubSettings::offline(HubCache::at("/nonexistent"));
    let files = DdpmFiles::locate(&source, &[], &offline)?;
    DdpmModel::load(&files, options, Device::Cpu)
}

fn load(folder: &Path) -> Result<DdpmModel, LoadError> {
    load_with(folder, &LoadOptions::default())
}

/// The UNet's output and the noise its scheduler implies, against diffusers, within the
/// rounding tolerance of the UNet's longest chain of sums.
fn check_against_diffusers(name: &str, side: i64) {
    let model = load(&dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let io = read_tensors(&dir(name).join("io.safetensors"));
    let c = model.unet().config();
    let terms = unet_terms(
        &c.block_out_channels,
        c.norm_num_groups.unwrap(),
        side * side,
    );
    let (x, k) = (get(&io, "x"), get(&io, "timesteps"));
    let out = tch::no_grad(|| model.unet().forward(x, k));
    let tolerance = rounding_tolerance(unet_2d_depth(c), terms, max_abs(get(&io, "out")));
    let error = max_abs_diff(&out, get(&io, "out"));
    eprintln!("{name}: UNet max abs error {error:.3e} (tolerance {tolerance:.3e})");
    assert!(error < tolerance, "{name}: UNet max abs error {error}");
    // The conversion to noise divides by b >= 0.03 and multiplies by a <= 1: ten times the
    // UNet's tolerance at the scale of the noise covers it.
    let eps = model.predict(x, k).unwrap();
    let tolerance = 10.0 * rounding_tolerance(unet_2d_depth(c), terms, max_abs(get(&io, "eps")));
    let error = max_abs_diff(&eps, get(&io, "eps"));
    eprintln!("{name}: noise max abs error {error:.3e} (tolerance {tolerance:.3e})");
    assert!(error < tolerance, "{name}: noise max abs error {error}");
}

#[test]
fn one_channel_16_v_prediction_matches_diffusers() {
    check_against_diffusers("gray16", 16);
    let model = load(&dir("gray16")).unwrap();
    assert_eq!(model.shape(), [1, 16, 16]);
    assert_eq!(model.clip(), None);
}

#[test]
fn three_channels_64_other_blocks_clipped_matches_diffusers() {
    check_against_diffusers("rgb64", 64);
    let model = load(&dir("rgb64")).unwrap();
    assert_eq!(model.shape(), [3, 64, 64]);
    assert_eq!(model.clip(), Some(0.5));
}

#[test]
fn resnet_resampling_blocks_with_scale_shift_match_diffusers() {
    check_against_diffusers("resnet16", 16);
}

#[test]
fn skip_blocks_with_fourier_embedding_match_diffusers() {
    check_against_diffusers("skip32", 32);
    let model = load(&dir("skip32")).unwrap();
    assert_eq!(model.shape(), [3, 32, 32]);
}

#[test]
fn learned_embedding_with_resnet_resampling_types_matches_diffusers() {
    check_against_diffusers("learned16", 16);
}

#[test]
fn uneven_heads_and_blocks_without_resnets_match_diffusers() {
    check_against_diffusers("heads16", 16);
}

/// Values diffusers reads as others: null resampling types are `conv`, any mid-block name
/// builds `UNetMidBlock2D`.
#[test]
fn values_diffusers_reads_alike_build_the_same_model() {
    let tmp = TempDir::new("ddpm-alike");
    let model = load(&dir("rgb64")).unwrap();
    let io = read_tensors(&dir("rgb64").join("io.safetensors"));
    let (x, k) = (get(&io, "x"), get(&io, "timesteps"));
    let expected = tch::no_grad(|| model.unet().forward(x, k));
    let edits = [
        ("\"downsample_type\": \"conv\"", "\"downsample_type\": null"),
        ("\"upsample_type\": \"conv\"", "\"upsample_type\": null"),
        (
            "\"mid_block_type\": \"UNetMidBlock2D\"",
            "\"mid_block_type\": \"UNetMidBlock2DCrossAttn\"",
        ),
    ];
    for (from, to) in edits {
        let folder = edited(&tmp, "rgb64", "config.json", from, to);
        let model = load(&folder).unwrap_or_else(|e| panic!("{to}: {e}"));
        let out = tch::no_grad(|| model.unet().forward(x, k));
        assert_eq!(max_abs_diff(&out, &expected), 0.0, "{to}");
    }
}

#[test]
fn clip_sample_changes_the_noise_and_can_be_turned_off() {
    let io = read_tensors(&dir("rgb64").join("io.safetensors"));
    let unclipped = LoadOptions::default().with_clip_argument("false");
    let model = load_with(&dir("rgb64"), &unclipped).unwrap();
    assert_eq!(model.clip(), None);
    let eps = model.predict(get(&io, "x"), get(&io, "timesteps")).unwrap();
    // Without clipping an epsilon model's noise is the UNet's output itself...
    assert!(max_abs_diff(&eps, get(&io, "out")) < 1e-5);
    // ...and far from the clipped one diffusers' scheduler uses.
    assert!(max_abs_diff(&eps, get(&io, "eps")) > 1e-2);
}

fn registration(id: &str) -> &'static EntryRegistration {
    flowgym_plugin_api::inventory::iter::<EntryRegistration>
        .into_iter()
        .find(|r| (r.meta)().id.as_str() == id)
        .unwrap_or_else(|| panic!("{id} is registered"))
}

#[test]
fn the_entry_samples_the_folder_shape() {
    let Constructor::BaseModel(construct) = registration("images/ddpm").constructor else {
        panic!("images/ddpm is not a base model");
    };
    let json = serde_json::json!({ "weights": dir("gray16") }).to_string();
    let mut model = construct(&json, &ConstructContext::cpu()).unwrap_or_else(|e| panic!("{e}"));
    let (mut batch, _) = model.sample_p0(3, 0).unwrap();
    assert_eq!(batch.take_tch("x").unwrap().size(), vec![3, 1, 16, 16]);

    let err = construct("{}", &ConstructContext::cpu())
        .err()
        .expect("no weights named")
        .to_string();
    assert!(
        err.contains("`weights`") && err.contains("`repo_id`"),
        "{err}"
    );
    let err = construct(r#"{"clip_sample": "yes"}"#, &ConstructContext::cpu())
        .err()
        .expect("a bad clip_sample")
        .to_string();
    assert!(
        err.contains("clip_sample") && err.contains("config"),
        "{err}"
    );
}

#[test]
fn cifar_refuses_other_shapes_and_points_to_ddpm() {
    let Constructor::BaseModel(construct) = registration("images/cifar").constructor else {
        panic!("images/cifar is not a base model");
    };
    let json = serde_json::json!({ "weights": dir("gray16") }).to_string();
    let err = construct(&json, &ConstructContext::cpu())
        .err()
        .expect("a 1 x 16 x 16 model")
        .to_string();
    assert!(
        err.contains("sample_size") && err.contains("images/ddpm"),
        "{err}"
    );
}

/// A copy of fixture `name` whose `file` has `from` replaced by `to`.
fn edited(tmp: &TempDir, name: &str, file: &str, from: &str, to: &str) -> PathBuf {
    let folder = tmp.path().join(name);
    copy_dir(&dir(name), &folder);
    let path = folder.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    folder
}

fn load_error(folder: &Path) -> String {
    load(folder).expect_err("refused").to_string()
}

#[test]
fn configs_diffusers_would_reject_name_the_key() {
    let tmp = TempDir::new("ddpm-configs");
    let cases = [
        (
            "config.json",
            "\"sample_size\": 64",
            "\"sample_size\": 60",
            "sample_size",
        ),
        (
            "config.json",
            "\"DownBlock2D\",\n    \"AttnDownBlock2D\"",
            "\"SomeDownBlock2D\",\n    \"AttnDownBlock2D\"",
            "down_block_types",
        ),
        (
            "config.json",
            "\"norm_num_groups\": 4",
            "\"norm_num_groups\": 3",
            "norm_num_groups",
        ),
        (
            "scheduler_config.json",
            "\"DDPMScheduler\"",
            "\"ScoreSdeVeScheduler\"",
            "_class_name",
        ),
        (
            "scheduler_config.json",
            "\"thresholding\": false",
            "\"thresholding\": true",
            "thresholding",
        ),
        (
            "scheduler_config.json",
            "\"prediction_type\": \"epsilon\"",
            "\"prediction_type\": \"flow\"",
            "prediction_type",
        ),
    ];
    for (file, from, to, key) in cases {
        let err = load_error(&edited(&tmp, "rgb64", file, from, to));
        assert!(err.contains(key), "{to}: {err}");
    }
}

#[test]
fn weights_that_do_not_fit_list_every_difference() {
    let tmp = TempDir::new("ddpm-weights");
    let folder = edited(
        &tmp,
        "gray16",
        "config.json",
        "\"layers_per_block\": 1",
        "\"layers_per_block\": 2",
    );
    let err = load_error(&folder);
    assert!(err.contains("missing"), "{err}");
    assert!(
        err.contains("down_blocks.0.resnets.1.conv1.weight"),
        "{err}"
    );
    let folder = edited(
        &tmp,
        "rgb64",
        "config.json",
        "\"in_channels\": 3",
        "\"in_channels\": 4",
    );
    let err = load_error(&folder);
    assert!(err.contains("out_channels"), "{err}");
}

#[test]
fn unconditional_block_and_embedding_limits_name_the_key() {
    let tmp = TempDir::new("ddpm-limits");
    let cases = [
        // Class conditioning: the entry is unconditional.
        (
            "rgb64",
            "\"class_embed_type\": null",
            "\"class_embed_type\": \"timestep\"",
            "class_embed_type",
        ),
        (
            "rgb64",
            "\"num_class_embeds\": null",
            "\"num_class_embeds\": 10",
            "num_class_embeds",
        ),
        // Blocks diffusers builds for other models (k-diffusion) are not built here.
        (
            "rgb64",
            "\"DownBlock2D\",\n    \"AttnDownBlock2D\"",
            "\"KDownBlock2D\",\n    \"AttnDownBlock2D\"",
            "down_block_types",
        ),
        (
            "skip32",
            "\"time_embedding_type\": \"fourier\"",
            "\"time_embedding_type\": \"spectral\"",
            "time_embedding_type",
        ),
        (
            "learned16",
            "\"num_train_timesteps\": 1000",
            "\"num_train_timesteps\": null",
            "num_train_timesteps",
        ),
        // Fewer rows than the scheduler has steps.
        (
            "learned16",
            "\"num_train_timesteps\": 1000",
            "\"num_train_timesteps\": 999",
            "num_train_timesteps",
        ),
        (
            "learned16",
            "\"downsample_type\": \"resnet\"",
            "\"downsample_type\": \"pixel\"",
            "downsample_type",
        ),
        (
            "learned16",
            "\"upsample_type\": \"resnet\"",
            "\"upsample_type\": \"pixel\"",
            "upsample_type",
        ),
        (
            "gray16",
            "\"resnet_time_scale_shift\": \"default\"",
            "\"resnet_time_scale_shift\": \"spatial\"",
            "resnet_time_scale_shift",
        ),
        // Shapes diffusers builds but cannot run: no head fits, the size is not halved, a
        // block without resnets would have to change the width.
        (
            "heads16",
            "\"attention_head_dim\": 6",
            "\"attention_head_dim\": 20",
            "attention_head_dim",
        ),
        (
            "rgb64",
            "\"downsample_padding\": 0",
            "\"downsample_padding\": 2",
            "downsample_padding",
        ),
        (
            "gray16",
            "\"layers_per_block\": 1",
            "\"layers_per_block\": 0",
            "layers_per_block",
        ),
    ];
    for (name, from, to, key) in cases {
        let err = load_error(&edited(&tmp, name, "config.json", from, to));
        assert!(err.contains(key), "{to}: {err}");
    }
    let err = load_error(&edited(
        &tmp,
        "rgb64",
        "config.json",
        "\"DownBlock2D\",\n    \"AttnDownBlock2D\"",
        "\"KDownBlock2D\",\n    \"AttnDownBlock2D\"",
    ));
    assert!(
        err.contains("\"AttnSkipDownBlock2D\""),
        "lists the accepted: {err}"
    );
}

#[test]
fn skip_paths_diffusers_cannot_run_name_the_key() {
    let tmp = TempDir::new("ddpm-skip-paths");
    let cases = [
        // A skip block that down-samples after a plain one: the image would not shrink in step.
        (
            "\"SkipDownBlock2D\",\n    \"SkipDownBlock2D\"",
            "\"DownBlock2D\",\n    \"SkipDownBlock2D\"",
            "down_block_types",
        ),
        // A plain block after the skip image has started.
        (
            "\"AttnSkipUpBlock2D\",\n    \"SkipUpBlock2D\"",
            "\"AttnSkipUpBlock2D\",\n    \"UpBlock2D\"",
            "up_block_types",
        ),
    ];
    for (from, to, key) in cases {
        let err = load_error(&edited(&tmp, "skip32", "config.json", from, to));
        assert!(err.contains(key), "{to}: {err}");
    }
}

#[test]
fn skip_images_need_three_channels() {
    let text = std::fs::read_to_string(dir("skip32").join("config.json")).unwrap();
    let mut config: UNet2DConfig = serde_json::from_str(&text).unwrap();
    config.validate().unwrap();
    (config.in_channels, config.out_channels) = (1, 1);
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("`in_channels`"), "{err}");
    config.in_channels = 3;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("`out_channels`"), "{err}");
}
