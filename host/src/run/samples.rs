//! Evaluation samples: `NAME.safetensors` (sample and latent leaves, rewards, validity),
//! `NAME-prompts.txt` when the samples have prompts, and `NAME.png` for images; and what the
//! figures and the summary read of them.

use std::path::Path;

use anyhow::{anyhow, Result};
use tch::{Device, Kind, Tensor};

use crate::atomic_file::{write_atomically, write_bytes_atomically};
use crate::reward::RewardStats;
use crate::sde::Trajectory;
use crate::state::State;

/// Whether samples are RGB or grey images `[n, 3, H, W]`, `[n, 1, H, W]`.
pub fn is_image(state: &State) -> bool {
    let floating: Vec<&Tensor> = state.floating().collect();
    floating.len() == 1 && floating[0].dim() == 4 && matches!(floating[0].size()[1], 1 | 3)
}

/// The prompts of the samples, if their keyword arguments carry any.
pub fn prompts_of(trajectory: &Trajectory) -> Option<Vec<String>> {
    ["prompt", "prompts"]
        .iter()
        .find_map(|name| trajectory.kwargs.strings(name).map(|s| s.to_vec()))
}

/// Images shown in a grid (and its columns); small images (16 pixels a side or less) show
/// [`SMALL_GRID_IMAGES`].
pub const GRID_IMAGES: i64 = 16;

/// Images shown in a grid of small images, 8 columns.
pub const SMALL_GRID_IMAGES: i64 = 64;

/// Writes `dir/NAME.safetensors` (and prompts), plus `figure` as an image grid when the samples
/// are images; returns what the figures and the summary need of them.
pub fn save(
    dir: &Path,
    name: &str,
    trajectory: &Trajectory,
    figure: Option<&Path>,
) -> Result<EvalSamples> {
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (leaf, t) in &trajectory.sample.leaves {
        named.push((
            format!("sample.{leaf}"),
            t.to_device(Device::Cpu).contiguous(),
        ));
    }
    for (leaf, t) in &trajectory.final_state.leaves {
        named.push((
            format!("latent.{leaf}"),
            t.to_device(Device::Cpu).contiguous(),
        ));
    }
    named.push((
        "reward".into(),
        trajectory.scores.reward.to_device(Device::Cpu),
    ));
    named.push((
        "valid".into(),
        trajectory.scores.valid.to_device(Device::Cpu),
    ));
    write_atomically(&dir.join(format!("{name}.safetensors")), |tmp| {
        Tensor::write_safetensors(&named, tmp).map_err(|e| anyhow!("{e}"))
    })?;
    let prompts = prompts_of(trajectory);
    if let Some(prompts) = &prompts {
        write_bytes_atomically(
            &dir.join(format!("{name}-prompts.txt")),
            (prompts.join("\n") + "\n").as_bytes(),
        )?;
    }
    #[cfg(feature = "figures")]
    if let (Some(figure), true) = (figure, is_image(&trajectory.sample)) {
        let images = trajectory
            .sample
            .floating()
            .next()
            .expect("is_image checked");
        let size = images.size();
        let small = size[2].max(size[3]) <= 16 && prompts.is_none();
        let (count, columns) = if small {
            (SMALL_GRID_IMAGES, 8)
        } else {
            (GRID_IMAGES, 4)
        };
        let shown = images.narrow(0, 0, size[0].min(count));
        let captions = prompts.map(|p| p[..shown.size()[0] as usize].to_vec());
        crate::report::grid::image_grid(figure, &shown, captions.as_deref(), columns)?;
    }
    #[cfg(not(feature = "figures"))]
    let _ = (figure, prompts);
    let first_leaf = trajectory
        .sample
        .leaves
        .first()
        .map(|(_, t)| t.shallow_clone())
        .ok_or_else(|| anyhow!("the samples have no leaves"))?;
    EvalSamples::new(
        &first_leaf,
        &trajectory.scores.reward,
        &trajectory.scores.valid,
    )
}

/// What the figures and the summary read of a set of samples: the first sample leaf,
/// rewards, validity and their statistics.
#[derive(Debug, Clone)]
pub struct EvalSamples {
    /// The first sample leaf, flattened.
    pub values: Vec<f64>,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Rewards.
    pub reward: Vec<f64>,
    /// Validity.
    pub valid: Vec<bool>,
    /// Reward statistics.
    pub stats: RewardStats,
}

impl EvalSamples {
    /// From the first sample leaf and the scores.
    pub fn new(first_leaf: &Tensor, reward: &Tensor, valid: &Tensor) -> Result<Self> {
        let doubles = |t: &Tensor| {
            Vec::<f64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Double).view([-1]))
        };
        Ok(Self {
            values: doubles(first_leaf)?,
            shape: first_leaf.size(),
            reward: doubles(reward)?,
            valid: Vec::<bool>::try_from(valid.to_device(Device::Cpu).view([-1]))?,
            stats: RewardStats::of(reward, valid),
        })
    }

    /// The samples as points: one row of `values` per sample (trailing dimensions flattened).
    pub fn points(&self) -> Vec<Vec<f64>> {
        let n = self.shape.first().copied().unwrap_or(0).max(1) as usize;
        self.values
            .chunks(self.values.len() / n)
            .map(<[f64]>::to_vec)
            .collect()
    }

    /// Whether the samples are points on the line (`[n, 1]`).
    pub fn is_1d(&self) -> bool {
        self.is_flat() && self.shape[1] == 1
    }

    /// Whether the samples are vectors, one row of the first leaf per sample (`[n, d]`); not
    /// so for a custom layout, whose rows are the elements of all samples.
    pub fn is_flat(&self) -> bool {
        self.shape.len() == 2 && self.shape[0] as usize == self.reward.len()
    }
}

/// Reads `dir/NAME.safetensors`, if it exists.
pub fn load(dir: &Path, name: &str) -> Result<Option<EvalSamples>> {
    let path = dir.join(format!("{name}.safetensors"));
    if !path.exists() {
        return Ok(None);
    }
    let tensors = Tensor::read_safetensors(&path)
        .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    let find = |prefix: &str| {
        tensors
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|(_, t)| t.shallow_clone())
    };
    let (Some(x), Some(r), Some(v)) = (find("sample."), find("reward"), find("valid")) else {
        return Err(anyhow!(
            "{} lacks sample, reward or validity tensors",
            path.display()
        ));
    };
    EvalSamples::new(&x, &r, &v).map(Some)
}
