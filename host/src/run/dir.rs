//! The run directory and atomic writes into it.
//!
//! ```text
//! RUN/config.toml                 the resolved configuration
//! RUN/metrics.csv                 one row per iteration
//! RUN/checkpoints/latest.safetensors, iter-NNNNNN.safetensors
//! RUN/samples/before.safetensors, after.safetensors
//! RUN/before.png, after.png       samples (image grids, or histograms for 1-d data)
//! RUN/reward.png, loss.png        curves over iterations
//! RUN/summary.json
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Paths of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The directory.
    pub root: PathBuf,
}

impl RunDir {
    /// Creates (or opens) `root` and its subdirectories.
    pub fn create(root: &Path) -> Result<Self> {
        for dir in [
            root.to_path_buf(),
            root.join("checkpoints"),
            root.join("samples"),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// `RUN/config.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// `RUN/metrics.csv`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }
    /// `RUN/checkpoints/latest.safetensors`.
    pub fn latest_checkpoint(&self) -> PathBuf {
        self.root.join("checkpoints").join("latest.safetensors")
    }
    /// `RUN/checkpoints/iter-NNNNNN.safetensors`.
    pub fn checkpoint_at(&self, iterations_done: usize) -> PathBuf {
        self.root
            .join("checkpoints")
            .join(format!("iter-{iterations_done:06}.safetensors"))
    }
    /// `RUN/samples/NAME.safetensors`.
    pub fn samples(&self, name: &str) -> PathBuf {
        self.root
            .join("samples")
            .join(format!("{name}.safetensors"))
    }
    /// `RUN/NAME.png`.
    pub fn figure(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.png"))
    }
    /// `RUN/summary.json`.
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }
}

/// The hidden temporary sibling `path` is written to before it is renamed into place; it keeps
/// the extension, for writers that pick the format from it.
pub fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".tmp-{}-{name}", std::process::id()))
}

/// Writes through `write` into a temporary file, syncs it, then renames it over `path`, so a
/// reader (or a crash) sees either the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temporary_path(path);
    let result = write(&tmp).and_then(|()| {
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, |tmp| {
        let mut file =
            fs::File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_clean_up_on_failure() {
        let dir = std::env::temp_dir().join(format!("flowgym-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.txt");
        write_bytes_atomically(&path, b"first").unwrap();
        write_bytes_atomically(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let err = write_atomically(&path, |tmp| {
            fs::write(tmp, b"partial")?;
            anyhow::bail!("disk full")
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert!(!temporary_path(&path).exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
