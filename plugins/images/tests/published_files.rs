//! The files people have: PyTorch `.bin` weights (zip-pickled state dicts, float32 and float16,
//! as older repositories and caches hold them) and configs with `null` values, for the UNets,
//! the VAE and the text encoder. The `.bin` fixtures are the tiny safetensors fixtures saved
//! with `torch.save` by `scripts/make_bin_fixtures.py`.

mod common;

use std::path::Path;

use common::{fixture, TempDir};
use flowgym_images::cifar::{self, CifarArgs};
use flowgym_images::fetch::HubSettings;
use flowgym_images::hub::{read_config, HubCache};
use flowgym_images::models::scheduler::SchedulerConfig;
use flowgym_images::models::unet_2d::UNet2DConfig;
use flowgym_images::models::unet_2d_condition::{OneOrMany, UNet2DConditionConfig};
use flowgym_images::models::vae::AutoencoderKLConfig;
use flowgym_images::pth::read_state_dict;
use flowgym_images::sd::{SdArgs, SdFiles, SdModel, SdVersion};
use tch::{Device, Kind, Tensor};

fn bin(name: &str) -> std::path::PathBuf {
    fixture("../bin").join(name)
}

fn sd2() -> std::path::PathBuf {
    fixture("../sd/sd2")
}

/// Copies the folder `from` with its subfolders into `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn bin_state_dicts_read_as_the_safetensors_they_were_saved_from() {
    let cases = [
        (
            "cifar_unet",
            fixture("cifar-tiny/diffusion_pytorch_model.safetensors"),
        ),
        (
            "sd2_unet",
            sd2().join("unet/diffusion_pytorch_model.safetensors"),
        ),
        (
            "sd2_vae",
            sd2().join("vae/diffusion_pytorch_model.safetensors"),
        ),
        (
            "sd2_text_encoder",
            sd2().join("text_encoder/model.safetensors"),
        ),
    ];
    for (name, source) in cases {
        let expected: std::collections::BTreeMap<String, Tensor> =
            Tensor::read_safetensors(&source)
                .unwrap()
                .into_iter()
                .collect();
        for (file, half) in [
            (format!("{name}.bin"), false),
            (format!("{name}.fp16.bin"), true),
        ] {
            let read = read_state_dict(&bin(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(read.len(), expected.len(), "{file}");
            for (key, tensor) in read {
                let want = &expected[&key];
                let want = if half && want.is_floating_point() {
                    want.to_kind(Kind::Half)
                } else {
                    want.shallow_clone()
                };
                assert_eq!(tensor.kind(), want.kind(), "{file}: {key}");
                assert!(tensor.equal(&want), "{file}: {key} differs");
            }
        }
    }
}

fn sd_args(folder: &Path) -> SdArgs {
    SdArgs {
        weights: folder.to_str().unwrap().to_string(),
        height: 32,
        width: 32,
        ..SdVersion::Sd2.default_args()
    }
}

fn sd_model(folder: &Path) -> SdModel {
    let args = sd_args(folder);
    let hub = HubSettings::offline(HubCache::at("/nonexistent"));
    let files = SdFiles::locate(SdVersion::Sd2, &args, &[], &hub).unwrap_or_else(|e| panic!("{e}"));
    SdModel::load(SdVersion::Sd2, args, &files, Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

/// Prompt embeddings, the UNet's prediction and the decoded images of `model` on fixed inputs.
fn sd_outputs(model: &SdModel) -> [Tensor; 3] {
    let p = model.pipeline();
    let cond = p.encode_prompts(&["a red bicycle"]).unwrap();
    // Not from the global generator, which the tests running in parallel share.
    let x = Tensor::arange(64, (Kind::Float, Device::Cpu))
        .reshape([1, 4, 4, 4])
        .sin();
    let k = Tensor::from_slice(&[500.0f32]);
    let eps = p.predict(&x, &k, &cond);
    let images = p.decode(&x, 1);
    [cond, eps, images]
}

/// The sd2 fixture with its weights replaced by the `.bin` fixtures (`suffix` `""` or `.fp16`).
fn sd2_with_bins(dir: &Path, suffix: &str) {
    copy_tree(&sd2(), dir);
    for (component, file, fixture_name) in [
        ("unet", "diffusion_pytorch_model", "sd2_unet"),
        ("vae", "diffusion_pytorch_model", "sd2_vae"),
        ("text_encoder", "pytorch_model", "sd2_text_encoder"),
    ] {
        let folder = dir.join(component);
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "safetensors") {
                std::fs::remove_file(path).unwrap();
            }
        }
        let target = folder.join(format!("{file}{suffix}.bin"));
        std::fs::copy(bin(&format!("{fixture_name}{suffix}.bin")), target).unwrap();
    }
}

#[test]
fn a_pipeline_of_bin_files_computes_what_its_safetensors_compute() {
    let reference = sd_outputs(&sd_model(&sd2()));
    let dir = TempDir::new("published-bin32");
    sd2_with_bins(dir.path(), "");
    let outputs = sd_outputs(&sd_model(dir.path()));
    for (got, want) in outputs.iter().zip(&reference) {
        assert!(got.equal(want));
    }
}

#[test]
fn a_pipeline_of_fp16_bin_files_loads_in_float32() {
    let reference = sd_outputs(&sd_model(&sd2()));
    let dir = TempDir::new("published-bin16");
    sd2_with_bins(dir.path(), ".fp16");
    let model = sd_model(dir.path());
    for (got, want) in sd_outputs(&model).iter().zip(&reference) {
        assert_eq!(got.kind(), Kind::Float);
        let scale = f64::try_from(want.abs().max()).unwrap().max(1.0);
        let diff = f64::try_from((got - want).abs().max()).unwrap();
        // Weights rounded to 11 significant bits move the outputs by about that much.
        assert!(
            diff < 1e-2 * scale,
            "max difference {diff} at scale {scale}"
        );
    }
}

#[test]
fn a_ddpm_checkpoint_with_only_a_bin_file_loads() {
    let dir = TempDir::new("published-cifar-bin");
    for name in ["config.json", "scheduler_config.json"] {
        std::fs::copy(fixture("cifar-tiny").join(name), dir.path().join(name)).unwrap();
    }
    std::fs::copy(
        bin("cifar_unet.bin"),
        dir.path().join("diffusion_pytorch_model.bin"),
    )
    .unwrap();
    let predict = |folder: &Path| {
        let args = CifarArgs {
            weights: folder.to_str().unwrap().to_string(),
            ..CifarArgs::default()
        };
        let hub = HubSettings::offline(HubCache::at("/nonexistent"));
        let files = cifar::locate(&args, &[], &hub).unwrap_or_else(|e| panic!("{e}"));
        let model = cifar::load(&files, &args, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let x = Tensor::arange(3 * 32 * 32, (Kind::Float, Device::Cpu))
            .reshape([1, 3, 32, 32])
            .cos();
        model.predict(&x, &Tensor::from_slice(&[250i64])).unwrap()
    };
    assert!(predict(dir.path()).equal(&predict(&fixture("cifar-tiny"))));
}

/// `path`'s JSON object with `keys` set to `null`, written to `out`.
fn with_nulls(path: &Path, keys: &[&str], out: &Path) {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for key in keys {
        json[*key] = serde_json::Value::Null;
    }
    std::fs::write(out, json.to_string()).unwrap();
}

/// The keys diffusers writes as `null`: those whose constructor default is `None`
/// (`inspect.signature` of diffusers 0.42.1), and the booleans converters pass on as `None`.
const UNET_NULLS: &[&str] = &[
    "sample_size",
    "reverse_transformer_layers_per_block",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "num_attention_heads",
    "class_embed_type",
    "addition_embed_type",
    "addition_time_embed_dim",
    "num_class_embeds",
    "time_embedding_dim",
    "time_embedding_act_fn",
    "timestep_post_act",
    "time_cond_proj_dim",
    "projection_class_embeddings_input_dim",
    "mid_block_only_cross_attention",
    "cross_attention_norm",
    "upcast_attention",
    "dual_cross_attention",
    "only_cross_attention",
    "center_input_sample",
    "resnet_skip_time_act",
    "class_embeddings_concat",
];

#[test]
fn configs_with_null_values_load() {
    let dir = TempDir::new("published-nulls");
    let unet = dir.path().join("unet.json");
    with_nulls(&sd2().join("unet/config.json"), UNET_NULLS, &unet);
    let config: UNet2DConditionConfig = read_config(&unet).unwrap_or_else(|e| panic!("{e}"));
    let published: UNet2DConditionConfig = read_config(&sd2().join("unet/config.json")).unwrap();
    assert!(!config.upcast_attention && !config.dual_cross_attention);
    assert_eq!(config.only_cross_attention, OneOrMany::One(false));
    assert_eq!(config.num_attention_heads, None);
    assert_eq!(config.block_out_channels, published.block_out_channels);

    let vae = dir.path().join("vae.json");
    let vae_nulls = [
        "shift_factor",
        "latents_mean",
        "latents_std",
        "force_upcast",
    ];
    with_nulls(&sd2().join("vae/config.json"), &vae_nulls, &vae);
    let config: AutoencoderKLConfig = read_config(&vae).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((config.shift_factor, config.force_upcast), (None, false));

    let ddpm = dir.path().join("ddpm.json");
    let ddpm_nulls = [
        "sample_size",
        "time_embedding_dim",
        "attn_norm_num_groups",
        "class_embed_type",
        "num_class_embeds",
        "num_train_timesteps",
        "center_input_sample",
    ];
    with_nulls(&fixture("cifar-tiny/config.json"), &ddpm_nulls, &ddpm);
    let config: UNet2DConfig = read_config(&ddpm).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.attn_norm_num_groups, None);

    let scheduler = dir.path().join("scheduler.json");
    let scheduler_nulls = ["trained_betas", "rescale_betas_zero_snr"];
    with_nulls(
        &sd2().join("scheduler/scheduler_config.json"),
        &scheduler_nulls,
        &scheduler,
    );
    let config = SchedulerConfig::from_file(&scheduler).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.trained_betas, None);
}

#[test]
fn a_pipeline_whose_unet_config_has_upcast_attention_null_runs_as_published() {
    let reference = sd_outputs(&sd_model(&sd2()));
    let dir = TempDir::new("published-upcast-null");
    copy_tree(&sd2(), dir.path());
    let config = dir.path().join("unet/config.json");
    with_nulls(
        &sd2().join("unet/config.json"),
        &["upcast_attention"],
        &config,
    );
    let outputs = sd_outputs(&sd_model(dir.path()));
    for (got, want) in outputs.iter().zip(&reference) {
        assert!(got.equal(want));
    }
}
