//! Where published model files are found: a diffusers folder given by the user, the host's
//! weight directories, or the Hugging Face cache (filled by [`crate::fetch`] on first use, or by
//! `hf download`).
//!
//! The Hugging Face cache keeps a repository `org/name` under
//! `$HF_HUB_CACHE/models--org--name/` (default `$HF_HOME/hub`, `HF_HOME` defaulting to
//! `$XDG_CACHE_HOME/huggingface` or `~/.cache/huggingface`), with one folder per downloaded
//! revision in `snapshots/<commit>/` and the commit of `main` in `refs/main`. diffusers before
//! 0.14 kept the same layout in `$HF_HOME/diffusers`, which is searched too. Every place looked
//! at is recorded, so that a failed search can say exactly where it looked.

use std::fmt;
use std::path::{Path, PathBuf};

/// The Hugging Face home folder: `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else
/// `~/.cache/huggingface`, as the Python tools resolve it.
pub fn hf_home(var: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let var = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(home) = var("HF_HOME") {
        return PathBuf::from(home);
    }
    let cache = var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
        let user_home = var("HOME").or_else(|| var("USERPROFILE"));
        user_home
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".cache")
    });
    cache.join("huggingface")
}

/// The Hugging Face hub cache (the folder holding `models--org--name` folders), and the older
/// caches that are searched too but never written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    root: PathBuf,
    legacy: Vec<PathBuf>,
}

impl HubCache {
    /// The cache the Hugging Face tools use (see [`HubCache::from_vars`]).
    pub fn from_env() -> Self {
        Self::from_vars(&|name| std::env::var(name).ok())
    }

    /// The cache the variables `var` give: `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE`,
    /// else `hub/` in the home of [`hf_home`]. The cache of diffusers before 0.14,
    /// `$DIFFUSERS_CACHE` or `diffusers/` in that home, is searched after it.
    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let home = hf_home(var);
        let root = get("HF_HUB_CACHE")
            .or_else(|| get("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let legacy = get("DIFFUSERS_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("diffusers"));
        Self {
            root,
            legacy: vec![legacy],
        }
    }

    /// A cache at `root` (and no other).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            legacy: Vec::new(),
        }
    }

    /// This cache, searching `legacy` caches after it (read only).
    pub fn with_legacy(mut self, legacy: impl Into<PathBuf>) -> Self {
        self.legacy.push(legacy.into());
        self
    }

    /// The cache folder (where downloads go).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `models--org--name` for the repository `org/name`.
    pub fn repo_dir(&self, repo_id: &str) -> PathBuf {
        repo_dir(&self.root, repo_id)
    }

    /// The snapshots of `repo_id` to use, this cache's first, then the legacy caches' (see
    /// [`snapshot_in`]); where none is, the reason is recorded in `search`.
    pub fn snapshots(&self, repo_id: &str, search: &mut Search) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = snapshot_in(&self.root, repo_id, search)
            .into_iter()
            .collect();
        for legacy in &self.legacy {
            if repo_dir(legacy, repo_id).is_dir() {
                found.extend(snapshot_in(legacy, repo_id, search));
            }
        }
        found
    }

    /// The snapshot of `repo_id` in this cache (not the legacy ones), see [`snapshot_in`].
    pub fn snapshot(&self, repo_id: &str, search: &mut Search) -> Option<PathBuf> {
        snapshot_in(&self.root, repo_id, search)
    }
}

fn repo_dir(root: &Path, repo_id: &str) -> PathBuf {
    root.join(format!("models--{}", repo_id.replace('/', "--")))
}

/// The snapshot of `repo_id` in the cache at `root`: the one `refs/main` names when present,
/// else the most recently modified one. `None` (with the reason recorded in `search`) when
/// there is none.
pub fn snapshot_in(root: &Path, repo_id: &str, search: &mut Search) -> Option<PathBuf> {
    let repo = repo_dir(root, repo_id);
    let snapshots = repo.join("snapshots");
    if let Ok(commit) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let dir = snapshots.join(commit.trim());
        if dir.is_dir() {
            return Some(dir);
        }
        search.looked(&dir, "named by refs/main, but missing");
    }
    let Ok(entries) = std::fs::read_dir(&snapshots) else {
        search.looked(&snapshots, "does not exist");
        return None;
    };
    let newest = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path());
    if newest.is_none() {
        search.looked(&snapshots, "holds no snapshot");
    }
    newest
}

/// The places a search looked at, and why each did not do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    looked: Vec<(PathBuf, String)>,
    fetches: Vec<String>,
}

impl Search {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `path` did not do, and why.
    pub fn looked(&mut self, path: &Path, why: impl Into<String>) {
        self.looked.push((path.to_path_buf(), why.into()));
    }

    /// The places looked at, with the reasons.
    pub fn places(&self) -> &[(PathBuf, String)] {
        &self.looked
    }

    /// Records why fetching from the hub did not give the files (a failed attempt, or that
    /// the network was not to be used).
    pub fn fetch_failed(&mut self, why: impl Into<String>) {
        self.fetches.push(why.into());
    }

    /// The recorded reasons why fetching did not give the files.
    pub fn fetches(&self) -> &[String] {
        &self.fetches
    }
}

/// No usable model files were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFound {
    /// What was searched for (`google/ddpm-cifar10-32`).
    pub what: String,
    /// Where the search looked.
    pub search: Search,
    /// How to get the files.
    pub hint: String,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "no weights found for {}; looked in:", self.what)?;
        for (path, why) in self.search.places() {
            writeln!(f, "  {} ({why})", path.display())?;
        }
        if !self.search.fetches().is_empty() {
            writeln!(f, "and fetching from the hub did not give them:")?;
            for why in self.search.fetches() {
                writeln!(f, "  {why}")?;
            }
        }
        write!(f, "{}", self.hint)
    }
}

impl std::error::Error for NotFound {}

/// The files of one diffusers model component (the folder of a `config.json` and its
/// weights, such as `unet/` or `vae/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentFiles {
    /// The folder.
    pub dir: PathBuf,
    /// Its `config.json`.
    pub config: PathBuf,
    /// Its `*.safetensors` weights (several when sharded).
    pub weights: Vec<PathBuf>,
}

/// The diffusers component under `root`: `root/<subfolder>/` (pipeline layout) or `root`
/// itself (a single model repository such as `google/ddpm-cifar10-32`). Reads
/// `diffusion_pytorch_model.safetensors`, its sharded form (`.safetensors.index.json`), or
/// else the `fp16` variant.
pub fn find_component(root: &Path, subfolder: &str, search: &mut Search) -> Option<ComponentFiles> {
    let dirs = [root.join(subfolder), root.to_path_buf()];
    for dir in dirs {
        let config = dir.join("config.json");
        if !config.is_file() {
            search.looked(&config, "does not exist");
            continue;
        }
        match component_weights(&dir) {
            Ok(weights) => {
                return Some(ComponentFiles {
                    dir,
                    config,
                    weights,
                })
            }
            Err(why) => search.looked(&dir, why),
        }
    }
    None
}

fn component_weights(dir: &Path) -> Result<Vec<PathBuf>, String> {
    const NAME: &str = "diffusion_pytorch_model";
    let single = dir.join(format!("{NAME}.safetensors"));
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(format!("{NAME}.safetensors.index.json"));
    if index.is_file() {
        return sharded(&index);
    }
    for name in [
        format!("{NAME}.fp16.safetensors"),
        format!("{NAME}.bin"),
        format!("{NAME}.fp16.bin"),
    ] {
        if dir.join(&name).is_file() {
            return Ok(vec![dir.join(name)]);
        }
    }
    Err(format!(
        "has config.json but no {NAME}.safetensors (nor .fp16.safetensors, .bin, .fp16.bin)"
    ))
}

/// The weight files of a diffusers component that the hub listing `has` (names relative to the
/// repository, the component in `prefix`, `""` or `"unet/"`), in the order
/// [`find_component`] prefers: full-precision safetensors (single or sharded), `fp16`
/// safetensors, then PyTorch `.bin` files.
pub fn remote_component_weights(names: &[&str], prefix: &str) -> Option<Vec<String>> {
    remote_weights(
        names,
        prefix,
        "diffusion_pytorch_model",
        "diffusion_pytorch_model",
    )
}

/// The weight files of a transformers model folder (`model.safetensors`, sharded, `fp16`, or
/// `pytorch_model.bin`) among the hub listing's `names`, in `prefix`.
pub fn remote_transformers_weights(names: &[&str], prefix: &str) -> Option<Vec<String>> {
    remote_weights(names, prefix, "model", "pytorch_model")
}

fn remote_weights(names: &[&str], prefix: &str, st: &str, bin: &str) -> Option<Vec<String>> {
    let has = |name: &str| names.contains(&name);
    let single = format!("{prefix}{st}.safetensors");
    if has(&single) {
        return Some(vec![single]);
    }
    let index = format!("{prefix}{st}.safetensors.index.json");
    if has(&index) {
        let shard_start = format!("{prefix}{st}-");
        let mut files: Vec<String> = names
            .iter()
            .filter(|n| n.starts_with(&shard_start) && n.ends_with(".safetensors"))
            .map(|n| n.to_string())
            .collect();
        files.insert(0, index);
        return Some(files);
    }
    [
        format!("{prefix}{st}.fp16.safetensors"),
        format!("{prefix}{bin}.bin"),
        format!("{prefix}{bin}.fp16.bin"),
    ]
    .into_iter()
    .find(|name| has(name))
    .map(|name| vec![name])
}

/// The shard files an `*.safetensors.index.json` lists, in order.
fn sharded(index: &Path) -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| format!("{}: {e}", index.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format!("{} has no weight_map", index.display()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|v| v.as_str())
        .map(|name| dir.join(name))
        .collect();
    files.sort();
    files.dedup();
    match files.iter().find(|f| !f.is_file()) {
        Some(missing) => Err(format!("shard {} is missing", missing.display())),
        None => Ok(files),
    }
}

/// `name` in `root/<subfolder>/` or else in `root` (such as `scheduler_config.json`).
pub fn find_file(root: &Path, subfolder: &str, name: &str, search: &mut Search) -> Option<PathBuf> {
    for path in [root.join(subfolder).join(name), root.join(name)] {
        if path.is_file() {
            return Some(path);
        }
        search.looked(&path, "does not exist");
    }
    None
}

/// The folders in which to look for the files of `repo_id`, in order: the user's explicit
/// `folder` alone when given; else, for each of the host's weight directories, `dir/org/name`,
/// `dir/name` and the snapshot of a hub cache at `dir`; then the snapshot in `hub`.
pub fn candidate_roots(
    folder: Option<&Path>,
    repo_id: &str,
    weight_dirs: &[PathBuf],
    hub: &HubCache,
    search: &mut Search,
) -> Vec<PathBuf> {
    if let Some(folder) = folder {
        if folder.is_dir() {
            return vec![folder.to_path_buf()];
        }
        search.looked(folder, "does not exist");
        return Vec::new();
    }
    let name = repo_id.rsplit('/').next().unwrap_or(repo_id);
    let mut roots = Vec::new();
    for dir in weight_dirs {
        for candidate in [dir.join(repo_id), dir.join(name)] {
            if candidate.is_dir() {
                roots.push(candidate);
            } else {
                search.looked(&candidate, "does not exist");
            }
        }
        let cache = HubCache::at(dir);
        if cache.repo_dir(repo_id).is_dir() {
            roots.extend(cache.snapshot(repo_id, search));
        }
    }
    roots.extend(hub.snapshots(repo_id, search));
    roots
}

/// Why a published model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No files were found.
    #[error("{0}")]
    NotFound(#[from] NotFound),
    /// A configuration file could not be read or parsed.
    #[error("cannot read {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The configuration describes an architecture this plugin cannot build.
    #[error("{path}: {source}")]
    Architecture {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong with it.
        source: crate::models::resnet::ConfigError,
    },
    /// The scheduler configuration cannot be used.
    #[error(transparent)]
    ScheduleSpec(#[from] crate::models::scheduler::SchedulerError),
    /// The weights do not fit the architecture (every difference listed).
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
}

/// Reads a JSON configuration file into `T`.
pub fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let error = |message: String| LoadError::Config {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_cache_is_where_the_python_tools_put_it() {
        let cache = HubCache::from_vars(&vars(&[("HOME", "/h")]));
        assert_eq!(cache.root(), Path::new("/h/.cache/huggingface/hub"));
        assert_eq!(
            cache.legacy,
            [PathBuf::from("/h/.cache/huggingface/diffusers")]
        );
        let cache = HubCache::from_vars(&vars(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]));
        assert_eq!(cache.root(), Path::new("/x/huggingface/hub"));
        let cache = HubCache::from_vars(&vars(&[("XDG_CACHE_HOME", "/x"), ("HF_HOME", "/hf")]));
        assert_eq!(cache.root(), Path::new("/hf/hub"));
        assert_eq!(cache.legacy, [PathBuf::from("/hf/diffusers")]);
        let cache = HubCache::from_vars(&vars(&[
            ("HF_HOME", "/hf"),
            ("HF_HUB_CACHE", "/c"),
            ("DIFFUSERS_CACHE", "/d"),
        ]));
        assert_eq!(cache.root(), Path::new("/c"));
        assert_eq!(cache.legacy, [PathBuf::from("/d")]);
    }
}
