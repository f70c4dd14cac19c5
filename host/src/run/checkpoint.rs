//! Checkpoints: the method's named tensors plus the number of finished iterations, in one
//! safetensors file written atomically.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use tch::{Device, Tensor};

use crate::atomic_file::write_atomically;

const ITERATIONS_KEY: &str = "run.iterations_done";

/// Writes `tensors` and `iterations_done` to `path` (via a temporary file and a rename).
pub fn save(path: &Path, tensors: &[(String, Tensor)], iterations_done: usize) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    named.push((
        ITERATIONS_KEY.to_string(),
        Tensor::from_slice(&[iterations_done as i64]),
    ));
    write_atomically(path, |tmp| {
        Tensor::write_safetensors(&named, tmp)
            .map_err(|e| anyhow!("cannot write checkpoint {}: {e}", tmp.display()))
    })
}

/// Reads a checkpoint: (finished iterations, tensors).
pub fn load(path: &Path) -> Result<(usize, Vec<(String, Tensor)>)> {
    let mut tensors = Tensor::read_safetensors(path)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let index = tensors
        .iter()
        .position(|(n, _)| n == ITERATIONS_KEY)
        .with_context(|| {
            format!(
                "{} is not a Flow Gym checkpoint (no `{ITERATIONS_KEY}`)",
                path.display()
            )
        })?;
    let (_, done) = tensors.remove(index);
    Ok((done.int64_value(&[0]) as usize, tensors))
}

/// The newest checkpoint that can be read among `candidates` (newest first): its path, its
/// finished iterations and tensors, and the unreadable ones passed over with their errors.
pub fn load_newest(candidates: &[PathBuf]) -> Option<Restored> {
    let mut unreadable = Vec::new();
    for path in candidates.iter().filter(|p| p.exists()) {
        match load(path) {
            Ok((iterations_done, tensors)) => {
                return Some(Restored {
                    path: path.clone(),
                    iterations_done,
                    tensors,
                    unreadable,
                })
            }
            Err(e) => unreadable.push((path.clone(), format!("{e:#}"))),
        }
    }
    None
}

/// A checkpoint read back for resuming.
pub struct Restored {
    /// The file it came from.
    pub path: PathBuf,
    /// Iterations finished when it was written.
    pub iterations_done: usize,
    /// Its tensors.
    pub tensors: Vec<(String, Tensor)>,
    /// Newer files that could not be read, with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip() {
        let dir = std::env::temp_dir().join(format!("flowgym-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latest.safetensors");
        let w = Tensor::from_slice(&[1.5f32, -2.0]).view([1, 2]);
        save(&path, &[("value.w".into(), w.shallow_clone())], 7).unwrap();
        let (done, tensors) = load(&path).unwrap();
        assert_eq!(done, 7);
        assert_eq!(tensors.len(), 1);
        assert!(tensors[0].1.equal(&w));
        std::fs::write(dir.join("other.safetensors"), b"not a checkpoint").unwrap();
        let err = load(&dir.join("other.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot read checkpoint"), "{err}");
        let restored = load_newest(&[
            dir.join("missing.safetensors"),
            dir.join("other.safetensors"),
            path.clone(),
        ])
        .unwrap();
        assert_eq!((restored.path, restored.iterations_done), (path, 7));
        assert_eq!(restored.unreadable.len(), 1);
        assert!(restored.unreadable[0]
            .1
            .starts_with("cannot read checkpoint"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
