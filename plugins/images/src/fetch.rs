//! Fetching model files from the Hugging Face hub on first use.
//!
//! Downloads go through Hugging Face's own client, `hf-hub` (its blocking API), into the
//! standard cache layout that the Python tools share: `models--org--name/blobs/<hash>`, the
//! files of a revision as links in `snapshots/<commit>/`, and the commit of `main` in
//! `refs/main`. A transfer that stops leaves `blobs/<hash>.part`, which the next attempt resumes
//! with a range request; a file only takes its place in `blobs/` when complete.
//!
//! What this module adds around `hf-hub`:
//! - the settings of the Python tools ([`HubSettings`]): `HF_ENDPOINT`, `HF_TOKEN` (or the token
//!   file), `HF_HUB_OFFLINE`, and the cache location of [`HubCache::from_env`];
//! - the repository listing (`/api/models/<repo>/revision/main?blobs=true`), so that only the
//!   files an entry needs are fetched, with their sizes and hashes;
//! - a check of every downloaded file against the listing: its size, and its sha256 (files
//!   stored with LFS, the weights) or git blob hash (small files). A file that fails is removed
//!   from the cache, so that it is never taken as whole;
//! - errors that name the repository, the file and what to do ([`FetchError`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use sha2::Digest;

use crate::hub::{hf_home, HubCache};

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Downloads retried after a dropped connection, resuming where the transfer stopped.
const RETRIES: usize = 3;

/// Where and how files are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The hub's address (`HF_ENDPOINT`, default `https://huggingface.co`), without a trailing `/`.
    pub endpoint: String,
    /// The cache downloads go to (and are looked for in).
    pub cache: HubCache,
    /// The access token (`HF_TOKEN`, else the token file of `hf auth login`).
    pub token: Option<String>,
    /// Never touch the network (`HF_HUB_OFFLINE=1`, or the host's `--offline`).
    pub offline: bool,
    /// Show a progress bar per file (on a terminal).
    pub progress: bool,
}

impl HubSettings {
    /// The settings of the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The settings that the variables `var` gives (`HF_ENDPOINT`, `HF_TOKEN`,
    /// `HF_TOKEN_PATH`, `HF_HUB_OFFLINE` and those of [`HubCache::from_vars`]).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| hf_home(&var).join("token"));
                let token = std::fs::read_to_string(path).ok()?;
                Some(token.trim().to_string()).filter(|t| !t.is_empty())
            })
            .map(|t| t.trim().to_string());
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v));
        Self {
            endpoint,
            cache: HubCache::from_vars(&var),
            token,
            offline,
            progress: true,
        }
    }

    /// Settings that only read the cache at `cache` (never the network).
    pub fn offline(cache: HubCache) -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            cache,
            token: None,
            offline: true,
            progress: false,
        }
    }
}

/// Whether an environment value means yes, as the Python tools read it.
fn is_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

/// One file of a repository listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Its path in the repository (`unet/config.json`).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The sha256 of a file stored with LFS (the weights).
    pub sha256: Option<String>,
    /// The git blob hash of a file stored in git (configs, tokenizer files).
    pub git_sha1: Option<String>,
}

/// The files of one revision of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoListing {
    /// `org/name`.
    pub repo: String,
    /// The commit the listing is of.
    pub commit: String,
    /// Its files.
    pub files: Vec<RemoteFile>,
}

impl RepoListing {
    /// Whether the repository has the file `name`.
    pub fn has(&self, name: &str) -> bool {
        self.file(name).is_some()
    }

    /// The file `name`.
    pub fn file(&self, name: &str) -> Option<&RemoteFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Reads the hub's answer to `/api/models/<repo>/revision/main?blobs=true`.
    pub fn from_json(repo: &str, json: &serde_json::Value) -> Result<Self, String> {
        let commit = json["sha"]
            .as_str()
            .ok_or("the listing has no commit (`sha`)")?
            .to_string();
        let siblings = json["siblings"]
            .as_array()
            .ok_or("the listing has no files (`siblings`)")?;
        let files = siblings
            .iter()
            .map(|s| {
                let name = s["rfilename"]
                    .as_str()
                    .ok_or("a file without `rfilename`")?;
                let lfs = &s["lfs"];
                let size = lfs["size"]
                    .as_u64()
                    .or_else(|| s["size"].as_u64())
                    .ok_or_else(|| format!("`{name}` has no size (listing without blobs)"))?;
                Ok(RemoteFile {
                    name: name.to_string(),
                    size,
                    sha256: lfs["sha256"].as_str().map(str::to_string),
                    git_sha1: s["blobId"].as_str().map(str::to_string),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            repo: repo.to_string(),
            commit,
            files,
        })
    }
}

/// Why files could not be fetched. Each message names the repository (and the file) and says
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The hub has no such repository (or it is private).
    #[error("{repo}: no such repository on {endpoint} (removed, renamed, or private: a private one needs HF_TOKEN)")]
    RepoNotFound {
        /// `org/name`.
        repo: String,
        /// The hub.
        endpoint: String,
    },
    /// The hub refused access: gated or private.
    #[error(
        "{repo}: {endpoint} refused access ({status}{code}): the repository is gated or private. \
         Accept its terms at {endpoint}/{repo} with your account, then set HF_TOKEN to an access \
         token ({endpoint}/settings/tokens) or run `hf auth login`{token_note}"
    )]
    Unauthorized {
        /// `org/name`.
        repo: String,
        /// The hub.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// `: <X-Error-Code>` when the hub gave one.
        code: String,
        /// Whether a token was sent, as a note.
        token_note: String,
    },
    /// A file the entry needs is not in the repository.
    #[error("{repo}: the file `{file}` is not on {endpoint} (404); the repository does not hold the files this entry reads")]
    FileNotFound {
        /// `org/name`.
        repo: String,
        /// The file.
        file: String,
        /// The hub.
        endpoint: String,
    },
    /// The repository is there but does not hold the model the entry reads.
    #[error("{repo}: not the model this entry reads: {why}")]
    WrongRepo {
        /// `org/name`.
        repo: String,
        /// What is missing or wrong.
        why: String,
    },
    /// The hub could not be reached.
    #[error(
        "cannot reach the hub at {endpoint} for {repo}: {message}. Check the network (or \
         HF_ENDPOINT), or work offline (--offline, or HF_HUB_OFFLINE=1) with files already in \
         the cache"
    )]
    Unreachable {
        /// The hub.
        endpoint: String,
        /// `org/name`.
        repo: String,
        /// What failed.
        message: String,
    },
    /// The hub answered with an error.
    #[error("{repo}: {endpoint} answered {status} for `{file}`: {message}")]
    Http {
        /// `org/name`.
        repo: String,
        /// The file, or `(listing)`.
        file: String,
        /// The hub.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The body or reason.
        message: String,
    },
    /// The transfer stopped before the end; the partial file is kept.
    #[error(
        "{repo}: the download of `{file}` stopped ({message}); {have} of {size} bytes are kept \
         in {partial}, and running again resumes from there"
    )]
    Interrupted {
        /// `org/name`.
        repo: String,
        /// The file.
        file: String,
        /// What failed.
        message: String,
        /// Bytes kept.
        have: u64,
        /// The file's size.
        size: u64,
        /// The partial file.
        partial: String,
    },
    /// A downloaded file is not the one the hub lists (wrong size or hash); it was removed.
    #[error(
        "{repo}: the downloaded `{file}` has {what} {found}, but the hub lists {expected}; it was \
         removed from the cache and nothing was loaded. Run again to download it again; if it \
         fails again, the server (HF_ENDPOINT) serves a file other than the one it lists"
    )]
    Mismatch {
        /// `org/name`.
        repo: String,
        /// The file.
        file: String,
        /// `size` or `sha256` / `git hash`.
        what: String,
        /// What the hub lists.
        expected: String,
        /// What the file has.
        found: String,
    },
    /// The cache cannot be written (disk full, not writable).
    #[error(
        "cannot write the Hugging Face cache at {path} ({message}) while fetching {repo}. Free \
         space or make it writable, or set HF_HUB_CACHE (or HF_HOME) to a writable folder \
         with room for the files"
    )]
    Cache {
        /// `org/name`.
        repo: String,
        /// The path written.
        path: String,
        /// What failed.
        message: String,
    },
    /// Another process holds the lock of a file being downloaded.
    #[error("{repo}: {path} is locked by another download; wait for it to finish (or remove the lock file if no download runs)")]
    Locked {
        /// `org/name`.
        repo: String,
        /// The lock file.
        path: String,
    },
}

impl FetchError {
    /// Whether this repository cannot serve the entry, so that the next one listed should be
    /// tried (as opposed to failures that another repository of the same hub would meet too).
    pub fn try_next_repo(&self) -> bool {
        matches!(
            self,
            FetchError::RepoNotFound { .. }
                | FetchError::Unauthorized { .. }
                | FetchError::FileNotFound { .. }
                | FetchError::WrongRepo { .. }
        )
    }
}

/// Fetches the files of `repo` that `select` picks from its listing (those not already in the
/// cache's snapshot), checks each, and returns the snapshot folder that holds them all.
pub fn fetch_repo(
    settings: &HubSettings,
    repo: &str,
    select: &dyn Fn(&RepoListing) -> Result<Vec<String>, String>,
) -> Result<PathBuf, FetchError> {
    let cache_root = settings.cache.root().to_path_buf();
    let api = ApiBuilder::from_cache(Cache::new(cache_root.clone()))
        .with_endpoint(settings.endpoint.clone())
        .with_token(settings.token.clone())
        .with_progress(settings.progress)
        .with_retries(RETRIES)
        .build()
        .map_err(|e| classify(settings, repo, "(client)", e))?;
    let api_repo = api.repo(Repo::new(repo.to_string(), RepoType::Model));
    let listing = list(settings, repo, api_repo.info_request())?;
    let names = select(&listing).map_err(|why| FetchError::WrongRepo {
        repo: repo.to_string(),
        why,
    })?;
    let mut snapshot = settings
        .cache
        .repo_dir(repo)
        .join("snapshots")
        .join(&listing.commit);
    let missing: Vec<&RemoteFile> = names
        .iter()
        .filter(|name| !snapshot.join(name).is_file())
        .map(|name| {
            listing.file(name).ok_or_else(|| FetchError::FileNotFound {
                repo: repo.to_string(),
                file: name.to_string(),
                endpoint: settings.endpoint.clone(),
            })
        })
        .collect::<Result<_, _>>()?;
    if !missing.is_empty() && settings.progress {
        let bytes: u64 = missing.iter().map(|f| f.size).sum();
        eprintln!(
            "fetching {} file(s) of {repo} ({}) from {} into {}",
            missing.len(),
            human_bytes(bytes),
            settings.endpoint,
            cache_root.display()
        );
    }
    for file in missing {
        let path = api_repo
            .download(&file.name)
            .map_err(|e| download_error(settings, repo, file, e))?;
        verify(repo, file, &path)?;
        if let Some(root) = snapshot_of(&path, &file.name) {
            snapshot = root;
        }
    }
    Ok(snapshot)
}

/// The repository listing with sizes and hashes.
fn list(
    settings: &HubSettings,
    repo: &str,
    request: ureq::Request,
) -> Result<RepoListing, FetchError> {
    let response = request.query("blobs", "true").call().map_err(|e| {
        classify(
            settings,
            repo,
            "(listing)",
            ApiError::RequestError(e.into()),
        )
    })?;
    let json: serde_json::Value = response.into_json().map_err(|e| FetchError::Http {
        repo: repo.to_string(),
        file: "(listing)".to_string(),
        endpoint: settings.endpoint.clone(),
        status: 200,
        message: format!("not a repository listing: {e}"),
    })?;
    RepoListing::from_json(repo, &json).map_err(|message| FetchError::Http {
        repo: repo.to_string(),
        file: "(listing)".to_string(),
        endpoint: settings.endpoint.clone(),
        status: 200,
        message,
    })
}

/// The snapshot folder of `path`, the local copy of the repository file `name`.
fn snapshot_of(path: &Path, name: &str) -> Option<PathBuf> {
    let depth = Path::new(name).components().count();
    path.ancestors().nth(depth).map(Path::to_path_buf)
}

/// The error of a failed download of `file`.
fn download_error(
    settings: &HubSettings,
    repo: &str,
    file: &RemoteFile,
    error: ApiError,
) -> FetchError {
    let error = match error {
        ApiError::TooManyRetries(inner) => *inner,
        other => other,
    };
    match error {
        ApiError::IoError(io) => {
            let partial = partial_path(settings, repo, file);
            let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            if is_write_error(&io) || (have == 0 && !partial.exists()) {
                FetchError::Cache {
                    repo: repo.to_string(),
                    path: partial.display().to_string(),
                    message: io.to_string(),
                }
            } else {
                FetchError::Interrupted {
                    repo: repo.to_string(),
                    file: file.name.clone(),
                    message: io.to_string(),
                    have,
                    size: file.size,
                    partial: partial.display().to_string(),
                }
            }
        }
        ApiError::InvalidResume => {
            let partial = partial_path(settings, repo, file);
            let _ = std::fs::remove_file(&partial);
            FetchError::Interrupted {
                repo: repo.to_string(),
                file: file.name.clone(),
                message: "the partial file was longer than the file, so it was removed".into(),
                have: 0,
                size: file.size,
                partial: partial.display().to_string(),
            }
        }
        other => classify(settings, repo, &file.name, other),
    }
}

/// Whether an I/O error comes from writing the cache rather than from the transfer.
fn is_write_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        PermissionDenied | StorageFull | ReadOnlyFilesystem | QuotaExceeded
    )
}

/// Where the partial download of `file` lies: `blobs/<hash>.part`.
fn partial_path(settings: &HubSettings, repo: &str, file: &RemoteFile) -> PathBuf {
    let hash = file
        .sha256
        .clone()
        .or_else(|| file.git_sha1.clone())
        .unwrap_or_default();
    settings
        .cache
        .repo_dir(repo)
        .join("blobs")
        .join(format!("{hash}.part"))
}

/// The error of a request for `file` (or the listing) that did not succeed.
fn classify(settings: &HubSettings, repo: &str, file: &str, error: ApiError) -> FetchError {
    let endpoint = settings.endpoint.clone();
    let repo_s = repo.to_string();
    match error {
        ApiError::RequestError(boxed) => match *boxed {
            ureq::Error::Status(status, response) => {
                let code = response.header("x-error-code").unwrap_or("").to_string();
                let message = response.into_string().unwrap_or_default();
                status_error(settings, repo, file, status, &code, message)
            }
            ureq::Error::Transport(transport) => FetchError::Unreachable {
                endpoint,
                repo: repo_s,
                message: transport.to_string(),
            },
        },
        ApiError::LockAcquisition(path) => FetchError::Locked {
            repo: repo_s,
            path: path.display().to_string(),
        },
        ApiError::IoError(io) => FetchError::Cache {
            repo: repo_s,
            path: settings.cache.repo_dir(repo).display().to_string(),
            message: io.to_string(),
        },
        other => FetchError::Http {
            repo: repo_s,
            file: file.to_string(),
            endpoint,
            status: 0,
            message: format!("{other} (is HF_ENDPOINT a Hugging Face hub?)"),
        },
    }
}

/// The error of an HTTP status, read with the hub's `X-Error-Code`.
fn status_error(
    settings: &HubSettings,
    repo: &str,
    file: &str,
    status: u16,
    code: &str,
    message: String,
) -> FetchError {
    let (repo, endpoint) = (repo.to_string(), settings.endpoint.clone());
    let listing = file == "(listing)";
    if code == "RepoNotFound" || code == "RepositoryNotFound" || (status == 404 && listing) {
        return FetchError::RepoNotFound { repo, endpoint };
    }
    if code == "EntryNotFound" || status == 404 {
        return FetchError::FileNotFound {
            repo,
            file: file.to_string(),
            endpoint,
        };
    }
    if status == 401 || status == 403 || code == "GatedRepo" {
        let token_note = if settings.token.is_some() {
            " (a token was sent: it may lack access to this repository)".to_string()
        } else {
            " (no token was sent)".to_string()
        };
        let code = if code.is_empty() {
            String::new()
        } else {
            format!(": {code}")
        };
        return FetchError::Unauthorized {
            repo,
            endpoint,
            status,
            code,
            token_note,
        };
    }
    let message: String = message.chars().take(300).collect();
    FetchError::Http {
        repo,
        file: file.to_string(),
        endpoint,
        status,
        message,
    }
}

/// Checks the downloaded `path` against the listing's size and hash; a file that fails is
/// removed (its blob and its link) so that it is not taken as whole later.
fn verify(repo: &str, file: &RemoteFile, path: &Path) -> Result<(), FetchError> {
    let mismatch = |what: &str, expected: String, found: String| {
        remove_download(path);
        FetchError::Mismatch {
            repo: repo.to_string(),
            file: file.name.clone(),
            what: what.to_string(),
            expected,
            found,
        }
    };
    let cache_error = |e: std::io::Error| FetchError::Cache {
        repo: repo.to_string(),
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let size = std::fs::metadata(path).map_err(cache_error)?.len();
    if size != file.size {
        return Err(mismatch(
            "size",
            format!("{} bytes", file.size),
            format!("{size} bytes"),
        ));
    }
    let (sha256, git_sha1) = hashes(path, size).map_err(cache_error)?;
    if let Some(expected) = &file.sha256 {
        if !expected.eq_ignore_ascii_case(&sha256) {
            return Err(mismatch("sha256", expected.clone(), sha256));
        }
    } else if let Some(expected) = &file.git_sha1 {
        if !expected.eq_ignore_ascii_case(&git_sha1) {
            return Err(mismatch("git hash", expected.clone(), git_sha1));
        }
    }
    Ok(())
}

/// The sha256 of a file and its git blob hash (sha1 of `blob <size>\0` and the contents).
fn hashes(path: &Path, size: u64) -> std::io::Result<(String, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut sha256 = sha2::Sha256::new();
    let mut sha1 = sha1::Sha1::new();
    sha1.update(format!("blob {size}\0").as_bytes());
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        sha256.update(&buffer[..n]);
        sha1.update(&buffer[..n]);
    }
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Ok((hex(&sha256.finalize()), hex(&sha1.finalize())))
}

/// Removes a downloaded file: the blob its link points to (and the blob's lock file), then
/// the link.
fn remove_download(path: &Path) {
    if let Ok(blob) = std::fs::canonicalize(path) {
        let _ = std::fs::remove_file(&blob);
        let mut lock = blob.into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
    let _ = std::fs::remove_file(path);
}

/// `1.3 GB`, `143.0 MB`, `512 B`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn settings_follow_the_python_tools_variables() {
        let s = HubSettings::from_vars(vars(&[
            ("HOME", "/home/u"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_TOKEN", " hf_abc \n"),
            ("HF_HUB_OFFLINE", "yes"),
        ]));
        assert_eq!(s.endpoint, "http://127.0.0.1:9");
        assert_eq!(s.token.as_deref(), Some("hf_abc"));
        assert!(s.offline);
        assert_eq!(s.cache.root(), Path::new("/home/u/.cache/huggingface/hub"));
        let s = HubSettings::from_vars(vars(&[("HOME", "/h"), ("HF_HUB_OFFLINE", "0")]));
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert!(!s.offline);
    }

    #[test]
    fn a_listing_with_blobs_gives_sizes_and_hashes() {
        let json = serde_json::json!({
            "sha": "abc",
            "siblings": [
                {"rfilename": "config.json", "size": 10, "blobId": "0123"},
                {"rfilename": "w.safetensors", "size": 134, "blobId": "9",
                 "lfs": {"sha256": "ff", "size": 2000, "pointerSize": 134}}
            ]
        });
        let listing = RepoListing::from_json("a/b", &json).unwrap();
        assert_eq!(listing.commit, "abc");
        let w = listing.file("w.safetensors").unwrap();
        assert_eq!((w.size, w.sha256.as_deref()), (2000, Some("ff")));
        assert_eq!(
            listing.file("config.json").unwrap().git_sha1.as_deref(),
            Some("0123")
        );
        let no_sizes = serde_json::json!({"sha": "a", "siblings": [{"rfilename": "x"}]});
        assert_eq!(
            RepoListing::from_json("a/b", &no_sizes).unwrap_err(),
            "`x` has no size (listing without blobs)"
        );
    }

    #[test]
    fn the_git_blob_hash_is_that_of_git() {
        let dir = std::env::temp_dir().join(format!("flowgym-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hello");
        std::fs::write(&path, b"hello\n").unwrap();
        // `printf 'hello\n' | git hash-object --stdin`
        let (sha256, sha1) = hashes(&path, 6).unwrap();
        assert_eq!(sha1, "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(
            sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
