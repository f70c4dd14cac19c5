//! Data-parallel runs: the processes ("ranks") of one run and what they exchange.
//!
//! A run on `N` ranks splits each batch of trajectories into `N` contiguous shares of the
//! global batch; every rank samples and scores its share, and the ranks add up the value
//! network's gradients and the loss before each optimiser step, so that every rank takes the
//! same step from the same weights. A single process is the team of one ([`Solo`]), for which
//! every exchange is a no-op: the single-process path is the same code.
//!
//! The exchanges are the few a [`Team`] provides (sums, gathers, a broadcast); with the `mpi`
//! feature they run over MPI ([`mpi`]), otherwise only [`Solo`] exists.

pub mod codec;
pub mod launcher;
#[cfg(feature = "mpi")]
pub mod mpi;

use std::ops::Range;
use std::rc::Rc;

use anyhow::{anyhow, Result};
use tch::{Device, Kind, Tensor};

use crate::sde::Interrupted;

/// The ranks of one run, and the collective operations between them. Every method is
/// collective: all ranks call it, in the same order.
pub trait Team {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Replaces `values` by their element-wise sum over the ranks.
    fn sum_f64(&self, values: &mut [f64]);
    /// Every rank's `bytes`, in rank order.
    fn all_gather_bytes(&self, bytes: &[u8]) -> Vec<Vec<u8>>;
    /// Rank 0's `bytes`, on every rank.
    fn broadcast_bytes(&self, bytes: Vec<u8>) -> Vec<u8>;
    /// A description for messages: `"rank 1 of 2 (Open MPI v4.1.4)"`.
    fn describe(&self) -> String;
    /// Seconds this rank has spent in exchanges so far (waiting for the others included).
    fn exchange_seconds(&self) -> f64;
}

/// A shared handle to the team of a run.
pub type TeamRef = Rc<dyn Team>;

/// The team of one: the single-process run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Solo;

impl Team for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f64(&self, _values: &mut [f64]) {}
    fn all_gather_bytes(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        vec![bytes.to_vec()]
    }
    fn broadcast_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }
    fn describe(&self) -> String {
        "a single process".to_string()
    }
    fn exchange_seconds(&self) -> f64 {
        0.0
    }
}

/// The team of one, shared.
pub fn solo() -> TeamRef {
    Rc::new(Solo)
}

/// The team this process belongs to: the MPI job when a launcher started it as one of several
/// ranks (refused, with how to build it, when the host has no MPI support), else [`Solo`].
pub fn join() -> Result<TeamRef> {
    let Some(launch) = launcher::detect().filter(|l| l.size > 1) else {
        return Ok(solo());
    };
    #[cfg(feature = "mpi")]
    {
        Ok(Rc::new(mpi::init(&launch)?))
    }
    #[cfg(not(feature = "mpi"))]
    {
        Err(anyhow!(launcher::without_mpi_feature(&launch)))
    }
}

/// The samples `0..total` of rank `rank` of `size`: contiguous shares in rank order, the first
/// `total % size` ranks holding one more.
pub fn share_of(total: usize, rank: usize, size: usize) -> Range<usize> {
    let (base, extra) = (total / size, total % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Collective helpers built on [`Team`]'s operations.
impl dyn Team + '_ {
    /// Whether this is rank 0, which alone writes the run directory.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// This rank's share of `total` samples.
    pub fn share(&self, total: usize) -> Range<usize> {
        share_of(total, self.rank(), self.size())
    }

    /// The sum of `value` over the ranks.
    pub fn sum(&self, value: f64) -> f64 {
        let mut values = [value];
        self.sum_f64(&mut values);
        values[0]
    }

    /// Whether `flag` holds on any rank.
    pub fn any(&self, flag: bool) -> bool {
        if self.size() == 1 {
            return flag;
        }
        self.sum(f64::from(u8::from(flag))) > 0.0
    }

    /// Adds up `tensors` (gradients) and `scalars` over the ranks in place, in one exchange
    /// (in double precision: the sum does not depend on the order of the ranks beyond it).
    pub fn sum_tensors(&self, tensors: &mut [Tensor], scalars: &mut [f64]) {
        if self.size() == 1 {
            return;
        }
        let _guard = tch::no_grad_guard();
        let mut values: Vec<f64> = Vec::new();
        for t in tensors.iter() {
            let flat = t.to_device(Device::Cpu).to_kind(Kind::Double).reshape([-1]);
            values.extend(Vec::<f64>::try_from(&flat).expect("a double tensor converts"));
        }
        values.extend_from_slice(scalars);
        self.sum_f64(&mut values);
        let count = values.len() - scalars.len();
        scalars.copy_from_slice(&values[count..]);
        let summed = Tensor::from_slice(&values[..count]);
        let mut start = 0;
        for t in tensors.iter_mut() {
            let n = t.numel() as i64;
            let part = summed
                .narrow(0, start, n)
                .reshape(t.size())
                .to_kind(t.kind())
                .to_device(t.device());
            t.copy_(&part);
            start += n;
        }
    }

    /// The concatenation over the ranks (in rank order) of a tensor with the batch on
    /// dimension 0, on `tensor`'s device.
    pub fn gather_cat(&self, tensor: &Tensor) -> Result<Tensor> {
        if self.size() == 1 {
            return Ok(tensor.shallow_clone());
        }
        let named = [("t".to_string(), tensor.shallow_clone())];
        let parts = self.all_gather_bytes(&codec::encode(&named)?);
        let mut tensors = Vec::with_capacity(parts.len());
        for bytes in parts {
            let (_, t) = codec::decode(&bytes)?
                .pop()
                .ok_or_else(|| anyhow!("a rank sent no tensor"))?;
            tensors.push(t.to_device(tensor.device()));
        }
        Ok(Tensor::cat(&tensors, 0))
    }

    /// Every rank's named tensors, in rank order (on the CPU).
    pub fn gather_named(&self, named: &[(String, Tensor)]) -> Result<Vec<Vec<(String, Tensor)>>> {
        if self.size() == 1 {
            return Ok(vec![named
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect()]);
        }
        self.all_gather_bytes(&codec::encode(named)?)
            .iter()
            .map(|bytes| codec::decode(bytes))
            .collect()
    }

    /// Rank 0's value of `value`, on every rank.
    pub fn broadcast<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        value: &T,
    ) -> Result<T> {
        if self.size() == 1 {
            return Ok(serde_json::from_value(serde_json::to_value(value)?)?);
        }
        let bytes = self.broadcast_bytes(serde_json::to_vec(value)?);
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Makes the ranks agree on the outcome of work each did alone: `Ok` everywhere when it
    /// succeeded everywhere; otherwise the same error on every rank, naming each rank that
    /// failed and its cause ([`Interrupted`] when ranks were only interrupted).
    pub fn agree<T>(&self, outcome: Result<T>) -> Result<T> {
        if self.size() == 1 {
            return outcome;
        }
        let status = match &outcome {
            Ok(_) => String::new(),
            Err(e) if e.is::<Interrupted>() => INTERRUPTED.to_string(),
            Err(e) => format!("{e:#}"),
        };
        let statuses: Vec<String> = self
            .all_gather_bytes(status.as_bytes())
            .into_iter()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect();
        if statuses.iter().all(String::is_empty) {
            return outcome;
        }
        let failures: Vec<String> = statuses
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty() && s.as_str() != INTERRUPTED)
            .map(|(rank, s)| format!("rank {rank} of {}: {s}", self.size()))
            .collect();
        if failures.is_empty() {
            return Err(Interrupted.into());
        }
        Err(anyhow!(RankFailed(failures.join("; "))))
    }
}

/// What [`Team::agree`] exchanges for a rank that was interrupted.
const INTERRUPTED: &str = "\u{1}interrupted";

/// One or more ranks failed; the message names each and its cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RankFailed(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_in_order_and_differ_by_at_most_one() {
        for total in [0, 1, 7, 64, 65] {
            for size in 1..=5 {
                let shares: Vec<Range<usize>> =
                    (0..size).map(|r| share_of(total, r, size)).collect();
                assert_eq!(shares[0].start, 0);
                assert_eq!(shares[size - 1].end, total);
                for pair in shares.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                let lens: Vec<usize> = shares.iter().map(|s| s.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
        assert_eq!(share_of(7, 0, 2), 0..4);
        assert_eq!(share_of(7, 1, 2), 4..7);
    }

    #[test]
    fn the_team_of_one_passes_everything_through() {
        let team = solo();
        assert!(team.is_root());
        assert_eq!(team.share(10), 0..10);
        assert_eq!(team.sum(2.5), 2.5);
        assert!(team.any(true) && !team.any(false));
        let err = team.agree::<()>(Err(anyhow!("boom"))).unwrap_err();
        assert_eq!(err.to_string(), "boom");
    }
}
