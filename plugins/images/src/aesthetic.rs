//! The `images/aesthetic` reward: the LAION aesthetic predictor on CLIP ViT-L/14.
//!
//! Scores each image `[3, h, w]` in `[0, 1]` with a head on the L2-normalised CLIP image
//! embedding (see [`crate::models::aesthetic`]). Weights come from the paths given as arguments,
//! else from the host's weight directories and the Hugging Face cache:
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

use crate::hub::{candidate_roots, HubCache, NotFound, Search};
use crate::models::aesthetic::AestheticPredictor;
use crate::weights::safetensors_files;

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

const HOW_TO_GET: &str = "\
Get the weights once, on a machine with internet access, then pass them as the reward's arguments \
`clip` (the folder) and `head` (the file), or put them in a weight directory of the host:
  CLIP:  huggingface-cli download openai/clip-vit-large-patch14 config.json model.safetensors
  head:  https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth
         (or sa_0_4_vit_l_14_linear.pth from https://github.com/LAION-AI/aesthetic-predictor)";

arguments! {
    /// Arguments of `images/aesthetic`.
    pub struct AestheticArgs {
        /// Folder of openai/clip-vit-large-patch14 in the transformers layout (config.json, model.safetensors); empty: the weight directories, then the Hugging Face cache.
        clip: String = String::new();
        /// Aesthetic head file (.pth or .safetensors): sac+logos+ava1-l14-linearMSE (MLP) or sa_0_4_vit_l_14_linear (linear); empty: looked for by name in the weight directories, the CLIP folder and the Hugging Face cache.
        head: String = String::new();
    }
}

register_reward! {
    id: "images/aesthetic",
    version: "1.0.0",
    data_type: ("images", "1.0.0"),
    description: "LAION aesthetic score (CLIP ViT-L/14 embedding + LAION head) of RGB images in [0, 1]",
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
        gradient: false,
    },
    construct: AestheticReward::new,
}

/// The CLIP folder: `clip` when given, else the first candidate holding `config.json` and
/// safetensors weights.
pub fn find_clip(clip: Option<&Path>, weight_dirs: &[PathBuf]) -> Result<PathBuf, NotFound> {
    let mut search = Search::new();
    let roots = candidate_roots(
        clip,
        CLIP_REPO,
        weight_dirs,
        &HubCache::from_env(),
        &mut search,
    );
    for root in roots {
        if !root.join("config.json").is_file() {
            search.looked(&root, "has no config.json");
        } else if safetensors_files(&root).is_empty() {
            let why = if root.join("pytorch_model.bin").is_file() {
                "has pytorch_model.bin but no *.safetensors; only safetensors weights are read"
            } else {
                "has no *.safetensors weights"
            };
            search.looked(&root, why);
        } else {
            return Ok(root);
        }
    }
    Err(NotFound {
        what: format!("the CLIP model {CLIP_REPO}"),
        search,
        hint: HOW_TO_GET.to_string(),
    })
}

/// The head file: `head` when given, else a published file name in the weight directories, the
/// CLIP folder or the Hugging Face cache.
pub fn find_head(
    head: Option<&Path>,
    clip_dir: &Path,
    weight_dirs: &[PathBuf],
) -> Result<PathBuf, NotFound> {
    let mut search = Search::new();
    if let Some(head) = head {
        if head.is_file() {
            return Ok(head.to_path_buf());
        }
        search.looked(head, "does not exist");
    } else {
        let hub = HubCache::from_env();
        let dirs: Vec<PathBuf> = weight_dirs
            .iter()
            .cloned()
            .chain([clip_dir.to_path_buf()])
            .collect();
        for (repo, name) in HEAD_FILES {
            for dir in &dirs {
                let path = dir.join(name);
                if path.is_file() {
                    return Ok(path);
                }
                search.looked(&path, "does not exist");
            }
            if !repo.is_empty() && hub.repo_dir(repo).is_dir() {
                if let Some(snapshot) = hub.snapshot(repo, &mut search) {
                    let path = snapshot.join(name);
                    if path.is_file() {
                        return Ok(path);
                    }
                    search.looked(&path, "does not exist");
                }
            } else if !repo.is_empty() {
                search.looked(&hub.repo_dir(repo), "does not exist");
            }
        }
    }
    Err(NotFound {
        what: "the LAION aesthetic head".to_string(),
        search,
        hint: HOW_TO_GET.to_string(),
    })
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
        let clip = non_empty(&args.clip);
        let clip_dir = find_clip(clip.as_deref(), &weight_dirs).map_err(|e| e.to_string())?;
        let head = non_empty(&args.head);
        let head =
            find_head(head.as_deref(), &clip_dir, &weight_dirs).map_err(|e| e.to_string())?;
        let predictor = AestheticPredictor::load(&clip_dir, &head, device)
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
        Ok(Tensor::cat(&scores, 0).to_kind(Kind::Float).contiguous())
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
