//! The isolated reward's worker: the host executable started with a hidden subcommand. It
//! reads its set-up from standard input, sandboxes itself, loads the plugin file (after
//! checking it is the file the host chose), constructs the reward and scores the batches the
//! host puts in the shared region, until its standard input closes.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use flowgym_plugin_api::{EntryKind, RewardBox};
use tch::Device;

use super::protocol::{
    align, byte_len, Answer, Init, KwargSlot, LeafSlot, OutputSlot, ScoreRequest,
};
use super::region::Region;
use super::sandbox;
use crate::kwargs::{HostKwarg, HostKwargs};
use crate::plugins::trust::sha256_file;
use crate::plugins::{Registry, TrustPolicy};
use crate::state::State;

/// The answer channel: the worker's original standard output. Standard output itself is
/// pointed at standard error, so that whatever the plugin prints cannot garble the answers.
fn answer_channel() -> Result<File> {
    // SAFETY: dup and dup2 on the process's own standard descriptors; nothing else holds
    // them yet, and the duplicate is owned by the returned File alone.
    unsafe {
        let fd = libc::dup(1);
        if fd < 0 || libc::dup2(2, 1) < 0 {
            bail!(
                "cannot set up the answer channel: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(File::from_raw_fd(fd))
    }
}

fn send(out: &mut File, answer: &Answer) -> Result<()> {
    let mut line = serde_json::to_string(answer)?;
    line.push('\n');
    out.write_all(line.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Runs the worker; returns when the host closes its standard input.
pub fn main() -> Result<()> {
    // Die with the host: a worker must not outlive the run that started it.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with these arguments only sets the signal sent when the parent exits.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let mut out = answer_channel()?;
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        bail!("no set-up on standard input");
    }
    let init: Init = serde_json::from_str(&line).context("an unreadable set-up")?;
    let (mut region, mut reward, warnings) = match start(&init) {
        Ok(started) => started,
        Err(e) => return send(&mut out, &Answer::Failed(format!("{e:#}"))),
    };
    send(&mut out, &Answer::Ready { warnings })?;
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request: ScoreRequest = serde_json::from_str(&line).context("an unreadable request")?;
        let answer = score(&mut region, &mut reward, &request)
            .unwrap_or_else(|e| Answer::Failed(format!("{e:#}")));
        send(&mut out, &answer)?;
    }
}

/// Maps the region, checks the plugin file, sandboxes, loads and constructs.
fn start(init: &Init) -> Result<(Region, RewardBox, Vec<String>)> {
    let region = Region::open(Path::new(&init.region))?;
    let plugin = PathBuf::from(&init.plugin);
    let sha256 =
        sha256_file(&plugin).with_context(|| format!("cannot read {}", plugin.display()))?;
    if sha256 != init.sha256 {
        bail!(
            "{} changed after the host chose it: sha256 {} then, {sha256} now",
            plugin.display(),
            init.sha256
        );
    }
    if init.threads > 0 {
        tch::set_num_threads(init.threads as i32);
    }
    let warnings = sandbox::apply(Path::new(&init.private_dir), init.memory_bytes);
    let registry = Registry::load_files(std::slice::from_ref(&plugin), &[], TrustPolicy::default());
    if let Some(failure) = registry.failures.first() {
        bail!("{failure}");
    }
    let entry = registry.resolve(&init.entry, EntryKind::Reward)?;
    let weights: Vec<PathBuf> = init.weight_dirs.iter().map(PathBuf::from).collect();
    let ctx = crate::compose::construct_context(Device::Cpu, &weights)?;
    let reward = registry.construct_reward(entry, &init.args_json, &ctx)?;
    // The plugin stays loaded for the worker's life: the reward's code lives in it.
    std::mem::forget(registry);
    Ok((region, reward, warnings))
}

fn state(region: &mut Region, data_type: &str, leaves: &[LeafSlot]) -> Result<State> {
    let leaves = leaves
        .iter()
        .map(|leaf| Ok((leaf.name.clone(), region.view(&leaf.tensor)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(State::new(data_type, leaves))
}

fn kwargs(region: &mut Region, slots: &[(String, KwargSlot)]) -> Result<HostKwargs> {
    let entries = slots
        .iter()
        .map(|(name, slot)| {
            let value = match slot {
                KwargSlot::Tensor(t) => HostKwarg::Tensor(region.view(t)?),
                KwargSlot::Strings(s) => HostKwarg::Strings(s.clone()),
                KwargSlot::Text(s) => HostKwarg::Text(s.clone()),
                KwargSlot::Float(v) => HostKwarg::Float(*v),
                KwargSlot::Int(v) => HostKwarg::Int(*v),
                KwargSlot::Bool(v) => HostKwarg::Bool(*v),
            };
            Ok((name.clone(), value))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(HostKwargs { entries })
}

/// Scores one request: the batch is read in place, the plugin's tensors are written after it
/// when they fit (the host checks shapes and types, as it does for a reward in its process).
fn score(region: &mut Region, reward: &mut RewardBox, request: &ScoreRequest) -> Result<Answer> {
    region.follow(request.region_len)?;
    let sample = state(region, &request.data_type, &request.sample)?;
    let latent = state(region, &request.data_type, &request.latent)?;
    let kwargs = kwargs(region, &request.kwargs)?;
    let out = reward
        .reward(sample.to_batch()?, latent.to_batch()?, kwargs.to_plugin()?)
        .into_result()
        .map_err(|e| anyhow!("{e}"))?;
    let end = request.output_offset + request.output_len;
    let mut offset = request.output_offset;
    let mut place = |tensor: tch::Tensor| -> Result<OutputSlot> {
        let kind = super::protocol::kind_name(tensor.kind()).unwrap_or("unsupported");
        let size = tensor.size();
        let fits =
            super::protocol::kind_of(kind).is_some_and(|k| offset + byte_len(k, &size) <= end);
        let slot = if fits {
            let written = region.write(offset, &tensor)?;
            offset = align(offset + byte_len(tensor.kind(), &size));
            Some(written.offset)
        } else {
            None
        };
        Ok(OutputSlot {
            kind: kind.to_string(),
            shape: size,
            offset: slot,
        })
    };
    let reward_tensor = out.reward.into_tch().map_err(|e| anyhow!("{e}"))?;
    let reward_slot = place(reward_tensor)?;
    let valid = match out.valid.into_option() {
        None => None,
        Some(v) => Some(place(v.into_tch().map_err(|e| anyhow!("{e}"))?)?),
    };
    Ok(Answer::Scored {
        reward: reward_slot,
        valid,
        cpu_seconds: super::process_cpu_seconds(),
    })
}
