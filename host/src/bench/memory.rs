//! The memory benchmark: the peak resident memory of constructing a model and a reward (their
//! weights loaded), read from the operating system after each step, and the resident memory
//! once both are loaded.

use anyhow::Result;
use flowgym_plugin_api::ConstructContext;
use serde::Serialize;

use crate::compose::{open_model, open_reward};
use crate::memory::{peak_rss_mib, rss_bytes};
use crate::plugins::Registry;

/// Figures of the memory benchmark, in MiB of peak resident memory of the process.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryFigures {
    /// Model id.
    pub model: String,
    /// Reward id (empty: none).
    pub reward: String,
    /// Before constructing anything (the host, libtorch and the plugin files loaded).
    pub peak_mib_start: f64,
    /// After constructing the model.
    pub peak_mib_model: f64,
    /// After constructing the reward as well.
    pub peak_mib_model_and_reward: f64,
    /// Resident (not peak) memory with both constructed: what they hold once loaded.
    pub resident_mib_loaded: f64,
}

/// Constructs `model` and then `reward` (unless empty) with their JSON arguments, and reads the
/// peak resident memory before and after each (Linux; elsewhere an error).
pub fn memory(
    registry: &Registry,
    model: &str,
    model_args: &str,
    reward: &str,
    reward_args: &str,
    ctx: &ConstructContext,
) -> Result<MemoryFigures> {
    let peak =
        || peak_rss_mib().ok_or_else(|| anyhow::anyhow!("this system does not report peak memory"));
    let peak_mib_start = peak()?;
    let (_model, _) = open_model(registry, model, model_args, ctx)?;
    let peak_mib_model = peak()?;
    let _reward = if reward.is_empty() {
        None
    } else {
        Some(open_reward(registry, reward, reward_args, ctx)?)
    };
    let resident = rss_bytes().ok_or_else(|| anyhow::anyhow!("no resident memory figure"))?;
    Ok(MemoryFigures {
        model: model.to_string(),
        reward: reward.to_string(),
        peak_mib_start,
        peak_mib_model,
        peak_mib_model_and_reward: peak()?,
        resident_mib_loaded: resident as f64 / (1024.0 * 1024.0),
    })
}
