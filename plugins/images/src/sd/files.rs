//! Finding the files of a Stable Diffusion pipeline folder (diffusers' layout: `unet/`, `vae/`,
//! `text_encoder/`, `tokenizer/`, `scheduler/`) in the `weights` argument, the host's weight
//! directories or the Hugging Face caches, or else fetched from the hub.

use std::path::{Path, PathBuf};

use crate::fetch::HubSettings;
use crate::hub::{find_component, find_file, ComponentFiles, NotFound, Search};
use crate::sources::{download_hint, find_or_fetch, in_folder, parse_repos, select_sd, Lookup};
use crate::weights::model_files;

use super::{SdArgs, SdVersion};

/// The files of a Stable Diffusion pipeline folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdFiles {
    /// `unet/`.
    pub unet: ComponentFiles,
    /// `vae/`.
    pub vae: ComponentFiles,
    /// The `text_encoder/` folder (`config.json`, `*.safetensors` or `pytorch_model.bin`).
    pub text_encoder: PathBuf,
    /// The `tokenizer/` folder.
    pub tokenizer: PathBuf,
    /// `scheduler/scheduler_config.json`.
    pub scheduler: PathBuf,
}

/// The files of a Stable Diffusion repository the entries read, as `hf download --include`
/// patterns: the configs, the full-precision safetensors of the three networks, the tokenizer and
/// the scheduler (not the other checkpoints, 10-17 GB more).
pub const SD_INCLUDE: &[&str] = &[
    "*/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "tokenizer/*",
    "scheduler/scheduler_config.json",
];

impl SdFiles {
    /// Finds the files of entry `version` for `args`: in `args.weights` when it is set, else in
    /// `weight_dirs` and the hub's caches for each repository of `args.repo_id`, else fetched
    /// from the hub (unless `hub` is offline). The error lists every place looked at, every
    /// failed fetch and how to get the files.
    pub fn locate(
        version: SdVersion,
        args: &SdArgs,
        weight_dirs: &[PathBuf],
        hub: &HubSettings,
    ) -> Result<Self, NotFound> {
        let repos = parse_repos(&args.repo_id);
        let what = format!("`{}` ({})", version.id(), repos.join(", "));
        let hint = download_hint(
            &repos,
            SD_INCLUDE,
            version.download_size(),
            "Or pass the argument {\"weights\": \"/path/to/folder\"} naming a diffusers pipeline \
             folder with unet/, vae/, text_encoder/, tokenizer/ and scheduler/.",
        );
        if !args.weights.is_empty() {
            return in_folder(what, Path::new(&args.weights), hint, &Self::in_root);
        }
        let lookup = Lookup {
            what,
            repos,
            weight_dirs,
            settings: hub,
            hint,
        };
        find_or_fetch(&lookup, &select_sd, &Self::in_root)
    }

    /// The pipeline in `root`, if every component is there; what is missing goes to `search`.
    pub fn in_root(root: &Path, search: &mut Search) -> Option<Self> {
        let unet = find_component(root, "unet", search);
        let vae = find_component(root, "vae", search);
        let text_encoder = find_text_encoder(root, search);
        let tokenizer = find_tokenizer(root, search);
        let scheduler = find_file(root, "scheduler", "scheduler_config.json", search);
        Some(Self {
            unet: unet?,
            vae: vae?,
            text_encoder: text_encoder?,
            tokenizer: tokenizer?,
            scheduler: scheduler?,
        })
    }
}

fn find_text_encoder(root: &Path, search: &mut Search) -> Option<PathBuf> {
    let dir = root.join("text_encoder");
    let config = dir.join("config.json");
    if !config.is_file() {
        search.looked(&config, "does not exist");
        return None;
    }
    if model_files(&dir).is_empty() {
        search.looked(
            &dir,
            "has config.json but no *.safetensors, pytorch_model.bin or pytorch_model.fp16.bin",
        );
        return None;
    }
    Some(dir)
}

fn find_tokenizer(root: &Path, search: &mut Search) -> Option<PathBuf> {
    let dir = root.join("tokenizer");
    let has = |name: &str| dir.join(name).is_file();
    if has("tokenizer.json") || (has("vocab.json") && has("merges.txt")) {
        return Some(dir);
    }
    search.looked(
        &dir,
        "has neither vocab.json + merges.txt nor tokenizer.json",
    );
    None
}
