//! What a run does differently on a team of ranks: agreeing on where and what it runs,
//! placing each rank on its device, and gathering evaluation samples on rank 0.

use anyhow::{bail, Result};
use tch::{Device, Tensor};

use super::Start;
use crate::distributed::{launcher, Team};
use crate::kwargs::{HostKwarg, HostKwargs};
use crate::reward::Scores;
use crate::run::RunConfig;
use crate::sde::Trajectory;
use crate::state::State;

/// A new run's directory as rank 0 chose it (a default name carries the time, which ranks
/// could read on either side of a second).
pub fn same_directory(team: &dyn Team, start: Start) -> Result<Start> {
    if team.size() == 1 {
        return Ok(start);
    }
    Ok(match start {
        Start::New { config, dir } => Start::New {
            config,
            dir: team.broadcast(&dir)?,
        },
        resume => resume,
    })
}

/// Refuses ranks whose configuration or plugin files differ from rank 0's, naming the
/// difference: they would not compute the same run.
pub fn check_agreement(
    team: &dyn Team,
    registry: &crate::plugins::Registry,
    config: &RunConfig,
) -> Result<()> {
    if team.size() == 1 {
        return Ok(());
    }
    let mine = team.agree(config.to_toml())?;
    let configs = team.all_gather_bytes(mine.as_bytes());
    let mut differences = Vec::new();
    for (rank, other) in configs.iter().enumerate().skip(1) {
        if *other != configs[0] {
            let other = String::from_utf8_lossy(other);
            differences.push(format!(
                "rank {rank}'s configuration differs from rank 0's: {}",
                config_difference(&String::from_utf8_lossy(&configs[0]), &other)
            ));
        }
    }
    let files = team.agree(plugin_files(registry))?;
    let all = team.all_gather_bytes(files.join("\n").as_bytes());
    for (rank, other) in all.iter().enumerate().skip(1) {
        if *other != all[0] {
            differences.push(format!(
                "rank {rank} loaded other plugin files than rank 0: {}",
                list_difference(
                    &String::from_utf8_lossy(&all[0]),
                    &String::from_utf8_lossy(other)
                )
            ));
        }
    }
    if !differences.is_empty() {
        bail!(
            "the ranks of this job disagree, so they would not run the same training: {}",
            differences.join("; ")
        );
    }
    Ok(())
}

/// `name sha256` of every plugin file loaded, sorted (paths may differ between nodes).
fn plugin_files(registry: &crate::plugins::Registry) -> Result<Vec<String>> {
    let mut files = registry
        .plugins
        .iter()
        .map(|p| {
            let hash = crate::plugins::trust::sha256_file(&p.path)?;
            let name = p.path.file_name().unwrap_or_default().to_string_lossy();
            Ok(format!("{name} (sha256 {hash})"))
        })
        .collect::<Result<Vec<_>>>()?;
    files.sort();
    Ok(files)
}

/// The keys whose values differ between two configurations, with both values.
pub fn config_difference(root: &str, other: &str) -> String {
    let parse = |text: &str| text.parse::<toml::Table>().unwrap_or_default();
    let (a, b) = (parse(root), parse(other));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&toml::Value>| v.map_or("(not set)".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "`{k}` is {} there, {} on rank 0",
                show(b.get(k)),
                show(a.get(k))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lines only one of two lists has.
fn list_difference(root: &str, other: &str) -> String {
    let only = |a: &str, b: &str| -> Vec<String> {
        a.lines()
            .filter(|l| !b.lines().any(|m| m == *l))
            .map(str::to_string)
            .collect()
    };
    format!(
        "only there: [{}]; only on rank 0: [{}]",
        only(other, root).join(", "),
        only(root, other).join(", ")
    )
}

/// Refuses batches with fewer samples than ranks (a rank would have nothing to do); larger
/// ones are split as evenly as they go, the first ranks taking one more.
pub fn check_shares(team: &dyn Team, batch_size: usize, eval_samples: usize) -> Result<()> {
    let ranks = team.size();
    for (what, n) in [
        ("batch size", batch_size),
        ("evaluation samples", eval_samples),
    ] {
        if n < ranks {
            bail!("the {what} ({n}) is smaller than the number of ranks ({ranks}): every rank needs at least one trajectory; use at least {ranks} or fewer ranks");
        }
    }
    if team.is_root() && !batch_size.is_multiple_of(ranks) {
        eprintln!(
            "note: the batch of {batch_size} does not divide among {ranks} ranks: ranks 0..{} sample {} trajectories, the others {}",
            batch_size % ranks,
            batch_size / ranks + 1,
            batch_size / ranks
        );
    }
    Ok(())
}

/// The device of this rank: `cuda` without an index means the GPU of the rank's place on its
/// node (its local rank), so one node with 8 GPUs runs 8 ranks.
pub fn device(team: &dyn Team, parsed: Device, written: &str) -> Device {
    let local = launcher::detect().map_or(0, |l| l.local_rank);
    match parsed {
        Device::Cuda(_) if team.size() > 1 && !written.contains(':') => {
            let count = tch::Cuda::device_count().max(1) as usize;
            Device::Cuda(local % count)
        }
        other => other,
    }
}

/// Threads per rank when the configuration leaves it open and several ranks share a node:
/// the node's cores divided among them.
pub fn threads_per_rank(configured: usize) -> Option<usize> {
    let local = launcher::detect()?.local_size.filter(|n| *n > 1)?;
    if configured > 0 {
        return Some(configured);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some((cores / local).max(1))
}

/// For messages: `, 2 ranks (Open MPI v4.1.4)` on a team, nothing alone.
pub fn describe(team: &dyn Team) -> String {
    if team.size() == 1 {
        return String::new();
    }
    let text = team.describe();
    let library = text
        .split_once('(')
        .map(|(_, l)| format!(" ({l}"))
        .unwrap_or_default();
    format!(" on each of {} ranks{library}", team.size())
}

/// The evaluation samples of every rank, joined in order on rank 0 (`None` elsewhere): the
/// samples, latents, scores and prompts that are saved.
pub fn gather_samples(team: &dyn Team, trajectory: Trajectory) -> Result<Option<Trajectory>> {
    if team.size() == 1 {
        return Ok(Some(trajectory));
    }
    let mut named = vec![
        (
            "reward".to_string(),
            trajectory.scores.reward.shallow_clone(),
        ),
        ("valid".to_string(), trajectory.scores.valid.shallow_clone()),
    ];
    for (prefix, state) in [
        ("sample.", &trajectory.sample),
        ("latent.", &trajectory.final_state),
    ] {
        for (leaf, t) in &state.leaves {
            named.push((format!("{prefix}{leaf}"), t.shallow_clone()));
        }
    }
    let prompts: Vec<(String, Vec<String>)> = trajectory
        .kwargs
        .entries
        .iter()
        .filter_map(|(name, value)| match value {
            HostKwarg::Strings(s) => Some((name.clone(), s.clone())),
            _ => None,
        })
        .collect();
    let ranks = team.gather_named(&named)?;
    let texts = team.all_gather_bytes(&serde_json::to_vec(&prompts)?);
    if !team.is_root() {
        return Ok(None);
    }
    let device = trajectory.scores.reward.device();
    let field = |name: &str| -> Tensor {
        let parts: Vec<Tensor> = ranks
            .iter()
            .filter_map(|r| {
                r.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t.to_device(device))
            })
            .collect();
        Tensor::cat(&parts, 0)
    };
    let state = |prefix: &str, like: &State| {
        State::new(
            like.data_type.clone(),
            like.leaves
                .iter()
                .map(|(leaf, _)| (leaf.clone(), field(&format!("{prefix}{leaf}"))))
                .collect(),
        )
    };
    let mut kwargs = HostKwargs::default();
    for bytes in &texts {
        let part: Vec<(String, Vec<String>)> = serde_json::from_slice(bytes)?;
        for (name, values) in part {
            match kwargs.entries.iter_mut().find(|(n, _)| *n == name) {
                Some((_, HostKwarg::Strings(all))) => all.extend(values),
                _ => kwargs.entries.push((name, HostKwarg::Strings(values))),
            }
        }
    }
    Ok(Some(Trajectory {
        sample: state("sample.", &trajectory.sample),
        final_state: state("latent.", &trajectory.final_state),
        scores: Scores {
            reward: field("reward"),
            valid: field("valid"),
        },
        kwargs,
        ..trajectory
    }))
}
