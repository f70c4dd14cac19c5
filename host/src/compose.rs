//! Composing the environment: resolving a model and a reward, checking they fit before either
//! is constructed, then constructing them on the chosen device.

use abi_stable::std_types::RStr;
use anyhow::{bail, Result};
use flowgym_plugin_api::tch_interop::dl_device_of;
use flowgym_plugin_api::{ConstructContext, DataLayout, EntryKind, EntryMeta};
use std::path::PathBuf;
use std::sync::Arc;
use tch::Device;

use crate::compat::pair_problems;
use crate::layout::CustomLayout;
use crate::model::Model;
use crate::plugins::Registry;
use crate::reward::Reward;

/// The context plugins construct entries in.
pub fn construct_context(device: Device, weight_dirs: &[PathBuf]) -> Result<ConstructContext> {
    Ok(ConstructContext {
        device: dl_device_of(device).map_err(|e| anyhow::anyhow!("{e}"))?,
        weight_dirs: weight_dirs
            .iter()
            .map(|p| p.display().to_string().into())
            .collect(),
    })
}

/// Constructs the base model `id`.
pub fn open_model(
    registry: &Registry,
    id: &str,
    args_json: &str,
    ctx: &ConstructContext,
) -> Result<(Model, EntryMeta)> {
    let entry = registry.resolve(id, EntryKind::BaseModel)?;
    let layout = custom_layout(registry, &entry.meta.data_type.name)?;
    // A model that computes on the CPU only is built there; the host moves tensors around it.
    let cpu_only = entry.meta.capabilities.cpu_only;
    let cpu_ctx;
    let ctx = if cpu_only {
        cpu_ctx = ConstructContext {
            device: flowgym_plugin_api::DLDevice::CPU,
            ..ctx.clone()
        };
        &cpu_ctx
    } else {
        ctx
    };
    let inner = registry.construct_model(entry, args_json, ctx)?;
    let mut model = Model::new(id, &entry.meta.data_type.name, inner)?;
    model.layout = layout;
    model.cpu_only = cpu_only;
    Ok((model, entry.meta.clone()))
}

/// Constructs the reward `id`.
pub fn open_reward(
    registry: &Registry,
    id: &str,
    args_json: &str,
    ctx: &ConstructContext,
) -> Result<(Reward, EntryMeta)> {
    let entry = registry.resolve(id, EntryKind::Reward)?;
    let inner = registry.construct_reward(entry, args_json, ctx)?;
    Ok((
        Reward::new(id, entry.meta.capabilities.clone(), inner),
        entry.meta.clone(),
    ))
}

/// Constructs the reward `id` in a sandboxed child process (see [`crate::isolate`]): its
/// constructor and every call run there, so that a crash, a hang or an exhausted memory limit
/// becomes an error instead of taking the host down.
#[cfg(unix)]
pub fn open_isolated_reward(
    registry: &Registry,
    id: &str,
    args_json: &str,
    weight_dirs: &[PathBuf],
    options: crate::isolate::IsolationOptions,
) -> Result<(Reward, EntryMeta)> {
    let entry = registry.resolve(id, EntryKind::Reward)?;
    let inner = crate::isolate::IsolatedReward::start(
        id,
        &entry.plugin.path,
        args_json,
        weight_dirs,
        options,
    )?;
    Ok((
        Reward::isolated(id, entry.meta.capabilities.clone(), inner),
        entry.meta.clone(),
    ))
}

/// The batch operations of data type `data_type` when its plugin lays out batches itself
/// (`None` for plain data, with every leaf's batch on dimension 0).
pub fn custom_layout(registry: &Registry, data_type: &str) -> Result<Option<Arc<CustomLayout>>> {
    let Some((plugin, meta)) = registry.declared_data_type(data_type)? else {
        return Ok(None);
    };
    if meta.layout != DataLayout::Custom {
        return Ok(None);
    }
    let what = format!("data type `{data_type}` (from {})", plugin.path.display());
    let ops = (plugin.module.data_type_ops())(RStr::from_str(data_type))
        .into_result()
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))?
        .into_option()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{what} declares a custom layout but its plugin serves no operations for it"
            )
        })?;
    Ok(Some(Arc::new(CustomLayout::new(
        data_type,
        plugin.path.clone(),
        meta.set.clone().into_option(),
        ops,
    ))))
}

/// Refuses a model and a reward that cannot run together, from their metadata alone.
pub fn check_pair(registry: &Registry, model: &str, reward: &str) -> Result<()> {
    let m = registry.resolve(model, EntryKind::BaseModel)?;
    let r = registry.resolve(reward, EntryKind::Reward)?;
    let problems = pair_problems(m.meta, r.meta);
    if !problems.is_empty() {
        bail!(
            "model `{model}` and reward `{reward}` cannot run together:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(())
}
