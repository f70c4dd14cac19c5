//! Finding the files of a Stable Diffusion pipeline folder (diffusers' layout: `unet/`, `vae/`,
//! `text_encoder/`, `tokenizer/`, `scheduler/`) in the `weights` argument, the host's weight
//! directories or the Hugging Face cache.

use std::path::{Path, PathBuf};

use crate::hub::{
    candidate_roots, find_component, find_file, ComponentFiles, HubCache, NotFound, Search,
};
use crate::weights::safetensors_files;

use super::SdArgs;

/// The files of a Stable Diffusion pipeline folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdFiles {
    /// `unet/`.
    pub unet: ComponentFiles,
    /// `vae/`.
    pub vae: ComponentFiles,
    /// The `text_encoder/` folder (`config.json`, `*.safetensors`).
    pub text_encoder: PathBuf,
    /// The `tokenizer/` folder.
    pub tokenizer: PathBuf,
    /// `scheduler/scheduler_config.json`.
    pub scheduler: PathBuf,
}

impl SdFiles {
    /// Finds the files of entry `id` for `args`: in `args.weights` when it is set, else in
    /// `weight_dirs` and then the hub cache. The error lists every place looked at and how to
    /// get the files.
    pub fn locate(
        id: &str,
        args: &SdArgs,
        weight_dirs: &[PathBuf],
        hub: &HubCache,
    ) -> Result<Self, NotFound> {
        let mut search = Search::new();
        let folder = (!args.weights.is_empty()).then(|| Path::new(&args.weights));
        for root in candidate_roots(folder, &args.repo_id, weight_dirs, hub, &mut search) {
            if let Some(files) = Self::in_root(&root, &mut search) {
                return Ok(files);
            }
        }
        Err(NotFound {
            what: format!("`{id}` ({})", args.repo_id),
            search,
            hint: format!(
                "To get them, run `huggingface-cli download {repo}` (it fills the Hugging Face \
                 cache, $HF_HOME, default ~/.cache/huggingface; add `--exclude \"*.ckpt\" \
                 \"*.bin\" \"*fp16*\"` to fetch only the safetensors files read here), or pass the \
                 argument {{\"weights\": \"/path/to/folder\"}} naming a diffusers pipeline folder \
                 with unet/, vae/, text_encoder/, tokenizer/ and scheduler/ (the layout of \
                 https://huggingface.co/{repo}).",
                repo = args.repo_id
            ),
        })
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
    if safetensors_files(&dir).is_empty() {
        let why = if dir.join("pytorch_model.bin").is_file() {
            "has pytorch_model.bin but no model.safetensors; only safetensors weights are read"
        } else {
            "has config.json but no *.safetensors"
        };
        search.looked(&dir, why);
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
