//! Why files could not be fetched, and how the hub's answers are read into those reasons.

use hf_hub::api::sync::ApiError;

use super::HubSettings;

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

/// The error of a request for `file` (or the listing) that did not succeed.
pub(super) fn classify(
    settings: &HubSettings,
    repo: &str,
    file: &str,
    error: ApiError,
) -> FetchError {
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
