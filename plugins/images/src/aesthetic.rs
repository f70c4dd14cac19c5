//! The `images/aesthetic` reward: the LAION aesthetic predictor on CLIP ViT-L/14.
//!
//! Scores each image `[3, h, w]` in `[0, 1]` with a head on the L2-normalised CLIP image
//! embedding (see [`crate::models::aesthetic`]). Weights come from the paths given as arguments,
//! else from the host's weight directories and the Hugging Face caches, else they are fetched
//! from the hub on first use:
//! - `clip`: `openai/clip-vit-large-patch14` in the transformers layout (`config.json` and
//!   `model.safetensors`);
//! - `head`: `sac+logos+ava1-l14-linearMSE.pth` (improved-aesthetic-predictor, the head DDPO
//!   uses, also `aesthetic-model.pth` of `trl-lib/ddpo-aesthetic-predictor`) or
//!   `sa_0_4_vit_l_14_linear.pth` (LAION-AI/aesthetic-predictor), or the same as `.safetensors`.

use std::path::{Path, PathBuf};

use flowgym_plugin_api::tch_interop::device_of;
use flowgym_plugin_api::{
    arguments, register_reward, Batch, Capabilities, ConstructContext, DType, Dim, Kwargs,
    LeafSpec, ManagedTensor, PluginError, PluginResult, Reward, RewardOutput,
};
use tch::{Device, Kind, Tensor};

use crate::fetch::{fetch_repo, HubSettings, RepoListing};
use crate::hub::{NotFound, Search};
use crate::models::aesthetic::AestheticPredictor;
use crate::precision::Precision;
use crate::sources::{download_hint, find_or_fetch, in_folder, select_transformers, Lookup};
use crate::weights::model_files;

/// The CLIP model the LAION heads were trained on.
pub const CLIP_REPO: &str = "openai/clip-vit-large-patch14";

/// The largest batch one forward pass takes (ViT-L/14 at 224 x 224 in float32).
pub const MAX_BATCH: u64 = 32;

/// Head files looked for, in order of preference: `(Hugging Face repository or "", file name)`.
const HEAD_FILES: &[(&str, &str)] = &[
    (
        "camenduru/improved-aesthetic-predictor",
        "sac+logos+ava1-l14-linearMSE.pth",
    ),
    ("", "sac+logos+ava1-l14-linearMSE.safetensors"),
    ("trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth"),
    ("", "aesthetic-model.safetensors"),
    ("", "sa_0_4_vit_l_14_linear.pth"),
    ("", "sa_0_4_vit_l_14_linear.safetensors"),
];

/// The files of [`CLIP_REPO`] the reward reads, as `hf download --include` patterns.
const CLIP_INCLUDE: &[&str] = &["config.json", "model.safetensors"];

/// How to get the head by hand.
const HEAD_HINT: &str = "\
With network access the reward fetches the head itself on first use (unless offline: \
HF_HUB_OFFLINE=1 or --offline). To fetch it beforehand into the same cache (3.7 MB):
  hf download camenduru/improved-aesthetic-predictor sac+logos+ava1-l14-linearMSE.pth
or pass it as the argument `head`: sac+logos+ava1-l14-linearMSE.pth from \
https://github.com/christophschuhmann/improved-aesthetic-predictor, or sa_0_4_vit_l_14_linear.pth \
from https://github.com/LAION-AI/aesthetic-predictor.";

arguments! {
    /// Arguments of `images/aesthetic`.
    pub struct AestheticArgs {
        /// Folder of openai/clip-vit-large-patch14 in the transformers layout (config.json, model.safetensors or pytorch_model.bin); empty: the weight directories, then the Hugging Face cache, else fetched from the hub (1.7 GB).
        clip: String = String::new();
        /// Aesthetic head file (.pth or .safetensors): sac+logos+ava1-l14-linearMSE (MLP) or sa_0_4_vit_l_14_linear (linear); empty: looked for by name in the weight directories, the CLIP folder and the Hugging Face cache, else fetched from camenduru/improved-aesthetic-predictor (3.7 MB).
        head: String = String::new();
        /// The precision the CLIP vision model computes in (weights converted once at load; the head and the embedding's normalisation stay in float32): `auto` is float32 on the CPU and float16 on CUDA.
        dtype: String = "auto".to_string() => one_of("auto", "float32", "float16", "bfloat16");
    }
}

register_reward! {
    id: "images/aesthetic",
    version: "1.0.0",
    data_type: ("images", "1.0.0"),
    description: "LAION aesthetic score (CLIP ViT-L/14 embedding + LAION head) of RGB images in [0, 1]; weights: openai/clip-vit-large-patch14 (1.7 GB) and camenduru/improved-aesthetic-predictor (3.7 MB), fetched on first use",
    arguments: AestheticArgs,
    leaves: vec![LeafSpec::new(
        "x",
        DType::F32,
        [Dim::Batch, Dim::Fixed(3), Dim::Any, Dim::Any],
    )
    .with_range(0.0, 1.0)],
    capabilities: Capabilities {
        max_batch: MAX_BATCH,
        cpu_only: false,
    },
    construct: AestheticReward::new,
}

/// The CLIP folder: `clip` when given, else the first candidate holding `config.json` and
/// weights, else fetched from the hub (unless `hub` is offline).
pub fn find_clip(
    clip: Option<&Path>,
    weight_dirs: &[PathBuf],
    hub: &HubSettings,
) -> Result<PathBuf, NotFound> {
    let repos = vec![CLIP_REPO.to_string()];
    let what = format!("the CLIP model {CLIP_REPO}");
    let hint = download_hint(
        &repos,
        CLIP_INCLUDE,
        "1.7 GB",
        "Or pass the argument `clip` naming a folder with config.json and model.safetensors.",
    );
    if let Some(clip) = clip {
        return in_folder(what, clip, hint, &clip_in_root);
    }
    let lookup = Lookup {
        what,
        repos,
        weight_dirs,
        settings: hub,
        hint,
    };
    find_or_fetch(&lookup, &|l| select_transformers(l, ""), &clip_in_root)
}

/// `root` when it holds a CLIP model (`config.json` and weights).
fn clip_in_root(root: &Path, search: &mut Search) -> Option<PathBuf> {
    if !root.join("config.json").is_file() {
        search.looked(root, "has no config.json");
    } else if model_files(root).is_empty() {
        search.looked(root, "has no *.safetensors or pytorch_model.bin weights");
    } else {
        return Some(root.to_path_buf());
    }
    None
}

/// The head file: `head` when given, else a published file name in the weight directories, the
/// CLIP folder or the Hugging Face caches, else fetched from the first repository of
/// [`HEAD_FILES`] that serves it (unless `hub` is offline).
pub fn find_head(
    head: Option<&Path>,
    clip_dir: &Path,
    weight_dirs: &[PathBuf],
    hub: &HubSettings,
) -> Result<PathBuf, NotFound> {
    let mut search = Search::new();
    if let Some(head) = head {
        if head.is_file() {
            return Ok(head.to_path_buf());
        }
        search.looked(head, "does not exist");
    } else if let Some(found) = local_head(clip_dir, weight_dirs, hub, &mut search) {
        return Ok(found);
    } else if hub.offline {
        search.fetch_failed("not tried: offline mode (HF_HUB_OFFLINE=1, or the host's --offline)");
    } else {
        for (repo, name) in HEAD_FILES.iter().filter(|(repo, _)| !repo.is_empty()) {
            let select = |l: &RepoListing| {
                l.has(name)
                    .then(|| vec![name.to_string()])
                    .ok_or_else(|| format!("it has no {name}"))
            };
            match fetch_repo(hub, repo, &select) {
                Ok(snapshot) => return Ok(snapshot.join(name)),
                Err(e) => {
                    let next = e.try_next_repo();
                    search.fetch_failed(e.to_string());
                    if !next {
                        break;
                    }
                }
            }
        }
    }
    Err(NotFound {
        what: "the LAION aesthetic head".to_string(),
        search,
        hint: HEAD_HINT.to_string(),
    })
}

/// A head file by its published name in the weight directories, the CLIP folder or the caches.
fn local_head(
    clip_dir: &Path,
    weight_dirs: &[PathBuf],
    hub: &HubSettings,
    search: &mut Search,
) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = weight_dirs
        .iter()
        .cloned()
        .chain([clip_dir.to_path_buf()])
        .collect();
    for (repo, name) in HEAD_FILES {
        for dir in &dirs {
            let path = dir.join(name);
            if path.is_file() {
                return Some(path);
            }
            search.looked(&path, "does not exist");
        }
        if repo.is_empty() {
            continue;
        }
        for snapshot in hub.cache.snapshots(repo, search) {
            let path = snapshot.join(name);
            if path.is_file() {
                return Some(path);
            }
            search.looked(&path, "does not exist");
        }
    }
    None
}

/// The `images/aesthetic` reward.
#[derive(Debug)]
pub struct AestheticReward {
    predictor: AestheticPredictor,
}

fn non_empty(path: &str) -> Option<PathBuf> {
    (!path.trim().is_empty()).then(|| PathBuf::from(path.trim()))
}

impl AestheticReward {
    /// Finds and loads the weights onto the host's device.
    pub fn new(args: AestheticArgs, ctx: &ConstructContext) -> PluginResult<Self> {
        let device = device_of(ctx.device)?;
        if let Device::Cuda(index) = device {
            if !tch::Cuda::is_available() || index >= tch::Cuda::device_count() as usize {
                return Err(PluginError::new(format!(
                    "images/aesthetic: CUDA device {index} is not available to this libtorch"
                )));
            }
        }
        let weight_dirs: Vec<PathBuf> = ctx
            .weight_dirs
            .iter()
            .map(|d| PathBuf::from(d.as_str()))
            .collect();
        let hub = HubSettings::from_env();
        let clip = non_empty(&args.clip);
        let clip_dir = find_clip(clip.as_deref(), &weight_dirs, &hub).map_err(|e| e.to_string())?;
        let head = non_empty(&args.head);
        let head =
            find_head(head.as_deref(), &clip_dir, &weight_dirs, &hub).map_err(|e| e.to_string())?;
        let precision = Precision::resolve(&args.dtype, device)?;
        precision.check_device("images/aesthetic", device)?;
        let predictor = AestheticPredictor::load_as(&clip_dir, &head, precision.kind(), device)
            .map_err(|e| PluginError::new(e.to_string()))?;
        Ok(Self { predictor })
    }

    /// A reward around an already loaded predictor.
    pub fn from_predictor(predictor: AestheticPredictor) -> Self {
        Self { predictor }
    }

    /// Scores `[n, 3, h, w]` images in `[0, 1]` in batches of at most [`MAX_BATCH`]:
    /// float32 `[n]` on the model's device.
    pub fn score(&self, images: &Tensor) -> PluginResult<Tensor> {
        let size = images.size();
        if size.len() != 4 || size[1] != 3 || !images.is_floating_point() {
            return Err(PluginError::new(format!(
                "images/aesthetic expects leaf `x` as float RGB images [n, 3, h, w], got {:?} {size:?}",
                images.kind()
            )));
        }
        let n = size[0];
        if n == 0 {
            return Ok(Tensor::zeros(
                [0],
                (Kind::Float, self.predictor.clip().device()),
            ));
        }
        let chunks = images.split(MAX_BATCH as i64, 0);
        let scores = chunks
            .iter()
            .map(|chunk| self.predictor.score(chunk))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PluginError::new(e.to_string()))?;
        let scores = Tensor::cat(&scores, 0).to_kind(Kind::Float).contiguous();
        Precision::of_kind(self.predictor.clip().kind()).check_finite(
            "images/aesthetic",
            "the score",
            &scores,
        )?;
        Ok(scores)
    }
}

impl Reward for AestheticReward {
    fn reward(
        &mut self,
        mut sample: Batch,
        _latent: Batch,
        _kwargs: Kwargs,
    ) -> PluginResult<RewardOutput> {
        let images = sample.take_tch("x")?;
        let scores = self.score(&images)?;
        let finite = scores.isfinite();
        let reward = ManagedTensor::from_tch(&scores)?;
        if bool::try_from(finite.all()).unwrap_or(false) {
            Ok(RewardOutput::all_valid(reward))
        } else {
            Ok(RewardOutput {
                reward,
                valid: Some(ManagedTensor::from_tch(&finite)?).into(),
            })
        }
    }
}
