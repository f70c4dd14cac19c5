//! The layout of a run directory.
//!
//! ```text
//! RUN/config.toml                 the resolved configuration
//! RUN/metrics.csv                 one row per iteration
//! RUN/checkpoints/latest.safetensors, iter-NNNNNN.safetensors
//! RUN/samples/before.safetensors, after.safetensors
//! RUN/before.png, after.png       samples (image grids, or histograms for 1-d data)
//! RUN/reward.png, loss.png        curves over iterations
//! RUN/summary.json
//! RUN/failed.txt                  only while the last session ended in an error: which, and
//!                                 how to continue
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::config::RunConfig;
use crate::atomic_file::write_bytes_atomically;

/// Paths of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The directory.
    pub root: PathBuf,
}

/// The name of a run's configuration file.
pub const CONFIG: &str = "config.toml";

impl RunDir {
    /// The run directory at `root` (nothing is created yet).
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// An existing run directory: one that holds a configuration.
    pub fn open(root: &Path) -> Result<Self> {
        let dir = Self::at(root);
        if !dir.config().is_file() {
            bail!(
                "{} is not a run directory (it has no {CONFIG})",
                root.display()
            );
        }
        Ok(dir)
    }

    /// Creates the directory and its subdirectories.
    pub fn create(&self) -> Result<()> {
        for dir in [
            self.root.clone(),
            self.root.join("checkpoints"),
            self.samples_dir(),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Ok(())
    }

    /// The run's configuration.
    pub fn read_config(&self) -> Result<RunConfig> {
        RunConfig::from_toml_file(&self.config())
    }

    /// Writes the configuration (atomically).
    pub fn write_config(&self, config: &RunConfig) -> Result<()> {
        write_bytes_atomically(&self.config(), config.to_toml()?.as_bytes())
    }

    /// `RUN/samples`.
    pub fn samples_dir(&self) -> PathBuf {
        self.root.join("samples")
    }

    /// `RUN/config.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG)
    }
    /// `RUN/metrics.csv`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }
    /// `RUN/checkpoints/latest.safetensors`.
    pub fn latest_checkpoint(&self) -> PathBuf {
        self.root.join("checkpoints").join("latest.safetensors")
    }
    /// Every checkpoint file, newest first: `latest`, then the numbered ones by decreasing
    /// iteration.
    pub fn checkpoints_newest_first(&self) -> Vec<PathBuf> {
        let mut numbered: Vec<(usize, PathBuf)> = fs::read_dir(self.root.join("checkpoints"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let number = name.strip_prefix("iter-")?.strip_suffix(".safetensors")?;
                Some((number.parse().ok()?, entry.path()))
            })
            .collect();
        numbered.sort_by_key(|(number, _)| std::cmp::Reverse(*number));
        std::iter::once(self.latest_checkpoint())
            .chain(numbered.into_iter().map(|(_, path)| path))
            .collect()
    }

    /// `RUN/checkpoints/iter-NNNNNN.safetensors`.
    pub fn checkpoint_at(&self, iterations_done: usize) -> PathBuf {
        self.root
            .join("checkpoints")
            .join(format!("iter-{iterations_done:06}.safetensors"))
    }
    /// `RUN/NAME.png`.
    pub fn figure(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.png"))
    }
    /// `RUN/summary.json`.
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }

    /// `RUN/failed.txt`.
    pub fn failure(&self) -> PathBuf {
        self.root.join("failed.txt")
    }

    /// Says in the directory that the session ended in `error`, so that a run directory
    /// left by a failure is never mistaken for a finished one.
    pub fn record_failure(&self, error: &anyhow::Error) -> Result<()> {
        let text = format!(
            "This run stopped with an error:\n\n{error:#}\n\nEverything up to its last checkpoint is kept; after fixing the cause, continue with\n  flowgym-host run --resume {}\n",
            self.root.display()
        );
        write_bytes_atomically(&self.failure(), text.as_bytes())
    }

    /// Removes the failure note of an earlier session, once one has run to its end.
    pub fn clear_failure(&self) -> Result<()> {
        match fs::remove_file(self.failure()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.failure().display()))
            }
            _ => Ok(()),
        }
    }
}
