//! Pinned plugin files: the trust file the user owns, `trust.toml` in the user's configuration
//! directory (`$FLOWGYM_HOME`, else `$XDG_CONFIG_HOME/flowgym`, else `~/.config/flowgym`). It
//! records, for each pinned file, its sha256 and the entries (ids and versions) it defined
//! when it was pinned, and may set `require_trusted = true`: then the host refuses every
//! plugin file that is not pinned or whose contents changed since.

use std::collections::BTreeMap;
use std::env;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The environment variable that turns the strict setting on (`1`, `true`, `yes`) or off.
pub const REQUIRE_TRUSTED_ENV: &str = "FLOWGYM_REQUIRE_TRUSTED";

/// Why the trust file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid trust file.
    #[error("{path} is not a valid trust file: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// No configuration directory can be found.
    #[error("no configuration directory: set FLOWGYM_HOME, XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
    /// The environment variable has a value that is neither on nor off.
    #[error("{REQUIRE_TRUSTED_ENV}=`{0}`: expected 1, true, yes, 0, false or no")]
    BadEnv(String),
}

/// The user's configuration directory for Flow Gym.
pub fn config_dir() -> Option<PathBuf> {
    if let Some(home) = env::var_os("FLOWGYM_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(config) = env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(config).join("flowgym"));
    }
    let home = env::var_os("HOME").or_else(|| env::var_os("USERPROFILE"))?;
    Some(PathBuf::from(home).join(".config/flowgym"))
}

/// Where the trust file is.
pub fn trust_file_path() -> Result<PathBuf, TrustError> {
    config_dir()
        .map(|d| d.join("trust.toml"))
        .ok_or(TrustError::NoConfigDir)
}

/// The sha256 of a file, in lower-case hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// An entry a pinned file defined when it was pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedEntry {
    /// The entry id.
    pub id: String,
    /// Its version.
    pub version: String,
}

/// One pinned file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// sha256 of the file's contents, lower-case hex.
    pub sha256: String,
    /// The plugin-api version it was built against.
    pub api_version: String,
    /// Its entries.
    #[serde(default)]
    pub entries: Vec<PinnedEntry>,
}

/// The trust file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFile {
    /// Refuse plugin files that are not pinned or whose hash changed.
    #[serde(default)]
    pub require_trusted: bool,
    /// Pinned files by absolute path.
    #[serde(default)]
    pub files: BTreeMap<PathBuf, Pin>,
}

/// A plugin file's standing against the trust file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustState {
    /// Pinned, and its contents are the ones pinned.
    Pinned,
    /// Not in the trust file.
    Unpinned {
        /// Its sha256 now.
        sha256: String,
    },
    /// Pinned, but its contents changed since.
    Changed {
        /// The sha256 recorded when it was pinned.
        pinned: String,
        /// Its sha256 now.
        now: String,
    },
    /// It cannot be read to be hashed.
    Unreadable(String),
}

impl TrustState {
    /// Whether the strict setting lets the file load.
    pub fn is_trusted(&self) -> bool {
        matches!(self, TrustState::Pinned)
    }

    /// Why the strict setting refuses the file (None when it is pinned).
    pub fn refusal(&self) -> Option<String> {
        match self {
            TrustState::Pinned => None,
            TrustState::Unpinned { sha256 } => Some(format!(
                "is not pinned (sha256 {sha256}) and plugins must be trusted; pin it with `flowgym-host trust FILE` if you trust it"
            )),
            TrustState::Changed { pinned, now } => Some(format!(
                "changed since it was pinned: pinned sha256 {pinned}, now {now}; it is refused until you pin it again with `flowgym-host trust FILE`"
            )),
            TrustState::Unreadable(e) => Some(format!("cannot be hashed: {e}")),
        }
    }
}

impl fmt::Display for TrustState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustState::Pinned => f.write_str("pinned"),
            TrustState::Unpinned { .. } => f.write_str("not pinned"),
            TrustState::Changed { pinned, now } => write!(
                f,
                "CHANGED since pinned (pinned sha256 {pinned}, now {now})"
            ),
            TrustState::Unreadable(e) => write!(f, "cannot be hashed: {e}"),
        }
    }
}

/// The key a file is pinned under: its absolute, resolved path.
pub fn pin_key(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| {
        env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    })
}

impl TrustFile {
    /// Reads the trust file at `path`; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(TrustError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|e| TrustError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Writes the trust file to `path` (readable and writable by its owner only), through a
    /// temporary sibling so that a crash never leaves half a file.
    pub fn save(&self, path: &Path) -> Result<(), TrustError> {
        let io = |source| TrustError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = toml::to_string_pretty(self).map_err(|e| TrustError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let text = format!(
            "# Plugin files pinned by `flowgym-host trust`: path, sha256, plugin-api version and\n# entries. Set `require_trusted = true` to refuse every other plugin file.\n{text}"
        );
        let tmp = crate::atomic_file::temporary_path(path);
        write_private(&tmp, text.as_bytes()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }

    /// The state of the file at `path` (hashes it).
    pub fn state_of(&self, path: &Path) -> TrustState {
        let now = match sha256_file(path) {
            Ok(hash) => hash,
            Err(e) => return TrustState::Unreadable(e.to_string()),
        };
        match self.files.get(&pin_key(path)) {
            None => TrustState::Unpinned { sha256: now },
            Some(pin) if pin.sha256 == now => TrustState::Pinned,
            Some(pin) => TrustState::Changed {
                pinned: pin.sha256.clone(),
                now,
            },
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Whether the strict setting is on: the flag, else `FLOWGYM_REQUIRE_TRUSTED`, else the trust
/// file's `require_trusted`.
pub fn require_trusted(flag: bool, file: &TrustFile) -> Result<bool, TrustError> {
    if flag {
        return Ok(true);
    }
    match env::var(REQUIRE_TRUSTED_ENV) {
        Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            _ => Err(TrustError::BadEnv(value)),
        },
        Err(_) => Ok(file.require_trusted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_vector() {
        let dir = env::temp_dir().join(format!("flowgym-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("abc");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(
            sha256_file(&file).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut trust = TrustFile::default();
        assert!(matches!(trust.state_of(&file), TrustState::Unpinned { .. }));
        trust.files.insert(
            pin_key(&file),
            Pin {
                sha256: sha256_file(&file).unwrap(),
                api_version: "0.1.0".into(),
                entries: vec![],
            },
        );
        assert_eq!(trust.state_of(&file), TrustState::Pinned);
        std::fs::write(&file, b"abd").unwrap();
        let state = trust.state_of(&file);
        assert!(
            state
                .refusal()
                .unwrap()
                .starts_with("changed since it was pinned: pinned sha256 ba7816bf"),
            "{state:?}"
        );
        let path = dir.join("trust.toml");
        trust.save(&path).unwrap();
        assert_eq!(TrustFile::load(&path).unwrap(), trust);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
