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
//!   file), `HF_HUB_OFFLINE`, and the cache location of [`crate::hub::HubCache::from_env`];
//! - the repository listing (`/api/models/<repo>/revision/main?blobs=true`), so that only the
//!   files an entry needs are fetched, with their sizes and hashes;
//! - a check of every downloaded file against the listing: its size, and its sha256 (files
//!   stored with LFS, the weights) or git blob hash (small files). A file that fails is removed
//!   from the cache, so that it is never taken as whole;
//! - errors that name the repository, the file and what to do ([`FetchError`]).

mod error;
mod listing;
mod settings;
mod verify;

pub use error::FetchError;
pub use listing::{RemoteFile, RepoListing};
pub use settings::{HubSettings, DEFAULT_ENDPOINT};

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use error::classify;
use verify::verify;

/// Downloads retried after a dropped connection, resuming where the transfer stopped.
const RETRIES: usize = 3;

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
