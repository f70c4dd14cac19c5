//! The aesthetic predictor and the `images/aesthetic` reward against a PyTorch reference (tiny
//! random CLIP, random linear and MLP heads; `scripts/make_clip_fixtures.py`). The max abs error
//! allowed on the scores is what float32 rounding explains (see [`tolerance`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flowgym_images::aesthetic::{find_clip, find_head, AestheticArgs, AestheticReward};
use flowgym_images::fetch::HubSettings;
use flowgym_images::hub::HubCache;
use flowgym_images::models::aesthetic::{read_head_tensors, AestheticHead, AestheticPredictor};
use flowgym_images::pth;
use flowgym_plugin_api::{Arguments, Batch, ConstructContext, Kwargs, Reward};
mod common;

use common::{clip_vision_depth, clip_vision_terms, max_abs, max_abs_diff, rounding_tolerance};
use flowgym_images::models::clip::ClipVisionConfig;
use tch::{Device, Kind, Tensor};

/// Settings that never use the network and have an empty cache.
fn offline() -> HubSettings {
    HubSettings::offline(HubCache::at("/nonexistent"))
}

/// Layers of the deeper of the two heads (the MLP's five linear layers).
const HEAD_LAYERS: usize = 5;
/// Sums in sequence in preprocessing: two resampling passes and the normalisation.
const PREPROCESS_SUMS: usize = 3;

/// What rounding explains (see [`rounding_tolerance`]) for scores of the fixture's predictor at
/// the magnitude of `reference`: preprocessing, the vision tower with its projection, the L2
/// normalisation and the head, the longest sum being the vision tower's.
fn tolerance(reference: &Tensor) -> f64 {
    let vision = ClipVisionConfig::from_file(&dir().join("clip/config.json")).unwrap();
    let depth = PREPROCESS_SUMS + clip_vision_depth(&vision) + 1 + HEAD_LAYERS;
    rounding_tolerance(depth, clip_vision_terms(&vision), max_abs(reference))
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip/aesthetic")
}

fn cases() -> BTreeMap<String, Tensor> {
    common::read_tensors(&dir().join("aesthetic_cases.safetensors"))
}

fn predictor(head: &str) -> AestheticPredictor {
    AestheticPredictor::load(&dir().join("clip"), &dir().join(head), Device::Cpu).unwrap()
}

#[test]
fn scores_match_the_reference_for_both_heads_and_both_file_formats() {
    let cases = cases();
    for (kind, file) in [
        ("linear", "head_linear.safetensors"),
        ("linear", "head_linear.pth"),
        ("mlp", "head_mlp.safetensors"),
        ("mlp", "head_mlp.pth"),
    ] {
        let scores = predictor(file).score(&cases["images"]).unwrap();
        let reference = &cases[&format!("{kind}.score")];
        let error = max_abs_diff(&scores, reference);
        let ddpo = max_abs_diff(&scores, &cases[&format!("{kind}.score_ddpo_uint8")]);
        let tolerance = tolerance(reference);
        println!(
            "{file}: max abs error {error:.2e} (tolerance {tolerance:.2e}); vs the uint8 \
             CLIPImageProcessor path {ddpo:.2e} (scores up to {:.2e})",
            max_abs(reference)
        );
        assert!(error < tolerance, "{file}: {error}");
    }
}

#[test]
fn heads_are_recognised_by_their_names() {
    let linear = AestheticHead::load(&dir().join("head_linear.pth"), 24, Device::Cpu).unwrap();
    assert!(matches!(linear, AestheticHead::Linear(_)));
    let mlp = AestheticHead::load(&dir().join("head_mlp.pth"), 24, Device::Cpu).unwrap();
    assert!(matches!(mlp, AestheticHead::Mlp(ref layers) if layers.len() == 5));
    let err = AestheticHead::load(&dir().join("head_mlp.pth"), 768, Device::Cpu).unwrap_err();
    assert!(
        err.to_string()
            .contains("layers.0.weight: file has [40, 24], expected [40, 768]"),
        "{err}"
    );
}

#[test]
fn pth_files_read_exactly_like_their_safetensors() {
    for name in ["head_linear", "head_mlp"] {
        let pth = read_head_tensors(&dir().join(format!("{name}.pth"))).unwrap();
        let safe = read_head_tensors(&dir().join(format!("{name}.safetensors"))).unwrap();
        assert_eq!(
            pth.keys().collect::<Vec<_>>(),
            safe.keys().collect::<Vec<_>>()
        );
        for (key, tensor) in &pth {
            assert_eq!(tensor.kind(), Kind::Float);
            assert!(tensor.equal(&safe[key]), "{name}: {key}");
        }
    }
}

#[test]
fn a_legacy_pth_file_says_how_to_convert_it() {
    let err = read_head_tensors(&dir().join("head_linear_legacy.pth"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a zip-format PyTorch checkpoint"), "{err}");
    assert!(err.contains("st.save_file"), "{err}");
    assert!(pth::read_state_dict(&dir().join("head_linear.safetensors")).is_err());
}

fn reward_args(clip: &Path, head: &Path) -> AestheticArgs {
    let json = serde_json::json!({"clip": clip, "head": head}).to_string();
    AestheticArgs::from_json(&json).unwrap()
}

#[test]
fn the_reward_entry_scores_batches_like_the_reference() {
    let cases = cases();
    let args = reward_args(&dir().join("clip"), &dir().join("head_mlp.pth"));
    let mut reward = AestheticReward::new(args, &ConstructContext::cpu()).unwrap();
    let images = &cases["images"];
    let sample = Batch::from_tch("images", [("x", images)]).unwrap();
    let latent = Batch::from_tch("images", [("x", images)]).unwrap();
    let out = reward.reward(sample, latent, Kwargs::default()).unwrap();
    assert!(out.valid.is_rnone());
    let scores = out.reward.into_tch().unwrap();
    assert_eq!(scores.kind(), Kind::Float);
    let reference = &cases["mlp.score"];
    assert!(max_abs_diff(&scores, reference) < tolerance(reference));

    // Larger than one forward pass: split into chunks, same scores.
    let many = images.repeat([12, 1, 1, 1]);
    let scores = reward.score(&many).unwrap();
    assert_eq!(scores.size(), vec![36]);
    assert!(max_abs_diff(&scores, &reference.repeat([12])) < tolerance(reference));
}

#[test]
fn missing_weights_say_where_the_search_looked_and_how_to_get_them() {
    let missing = dir().join("no-such-folder");
    let args = reward_args(&missing, &dir().join("head_mlp.pth"));
    let err = AestheticReward::new(args, &ConstructContext::cpu())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-folder"), "{err}");
    assert!(
        err.contains(
            "hf download openai/clip-vit-large-patch14 --include \"config.json\" --include \
             \"model.safetensors\""
        ),
        "{err}"
    );

    let err = find_head(Some(&dir().join("nothing.pth")), &dir(), &[], &offline())
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing.pth (does not exist)"), "{err}");
    assert!(err.contains("sac+logos+ava1-l14-linearMSE.pth"), "{err}");
}

#[test]
fn weights_are_found_in_a_hugging_face_cache_layout() {
    let root = std::env::temp_dir().join(format!("flowgym-aesthetic-hub-{}", std::process::id()));
    let snapshot = root.join("models--openai--clip-vit-large-patch14/snapshots/0123abc");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(root.join("models--openai--clip-vit-large-patch14/refs")).unwrap();
    std::fs::write(
        root.join("models--openai--clip-vit-large-patch14/refs/main"),
        "0123abc",
    )
    .unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(dir().join("clip").join(file), snapshot.join(file)).unwrap();
    }
    std::fs::copy(
        dir().join("head_linear.pth"),
        root.join("sa_0_4_vit_l_14_linear.pth"),
    )
    .unwrap();

    let weight_dirs = vec![root.clone()];
    let clip = find_clip(None, &weight_dirs, &offline()).unwrap();
    assert_eq!(clip, snapshot);
    let head = find_head(None, &clip, &weight_dirs, &offline()).unwrap();
    assert_eq!(head, root.join("sa_0_4_vit_l_14_linear.pth"));
    let ctx = ConstructContext {
        weight_dirs: vec![root.display().to_string().into()].into(),
        ..ConstructContext::cpu()
    };
    let reward = AestheticReward::new(AestheticArgs::default(), &ctx).unwrap();
    let cases = cases();
    let scores = reward.score(&cases["images"]).unwrap();
    let reference = &cases["linear.score"];
    assert!(max_abs_diff(&scores, reference) < tolerance(reference));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn the_entry_declares_its_leaves_and_capabilities() {
    let entry = flowgym_plugin_api::inventory::iter::<flowgym_plugin_api::EntryRegistration>
        .into_iter()
        .map(|r| (r.meta)())
        .find(|m| m.id.as_str() == "images/aesthetic")
        .expect("images/aesthetic is registered");
    assert_eq!(entry.data_type.name.as_str(), "images");
    assert_eq!(entry.data_type.version.as_str(), "1.0.0");
    assert_eq!(entry.capabilities.max_batch, 32);
    assert!(!entry.capabilities.cpu_only);
    assert_eq!(entry.leaves.len(), 1);
    assert_eq!(entry.leaves[0].name.as_str(), "x");
    let names: Vec<&str> = entry.arguments.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["clip", "head", "dtype"]);
}
