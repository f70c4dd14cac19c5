//! The [`Team`] of an MPI job (rsmpi): the world communicator of `mpirun`, `mpiexec` or
//! `srun`.

use std::cell::Cell;
use std::time::Instant;

use anyhow::{bail, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use mpi::Threading;

use super::launcher::Launch;
use super::Team;

/// The MPI release the host was built against, as `mpirun --version` named it.
pub const BUILT_WITH: &str = env!("FLOWGYM_MPI_BUILT_WITH");

/// The ranks of an MPI job. MPI is finalised when it is dropped.
pub struct MpiTeam {
    world: SimpleCommunicator,
    library: String,
    /// Seconds spent in exchanges.
    spent: Cell<f64>,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

/// Starts MPI for a process `launch` describes, checking that the library found at run time
/// sees the job the launcher started.
pub fn init(launch: &Launch) -> Result<MpiTeam> {
    let Some((universe, _)) = mpi::initialize_with_threading(Threading::Funneled) else {
        bail!("MPI was already initialised in this process");
    };
    let world = universe.world();
    let library = mpi::environment::library_version()
        .unwrap_or_else(|_| "an MPI library".to_string())
        .lines()
        .next()
        .unwrap_or_default()
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let team = MpiTeam {
        world,
        library,
        spent: Cell::new(0.0),
        _universe: universe,
    };
    check_library(&team, launch)?;
    Ok(team)
}

/// The flavour of an MPI version string, and its `major.minor`.
fn flavour_and_version(text: &str) -> (&'static str, Option<String>) {
    let lower = text.to_lowercase();
    let flavour = if lower.contains("open mpi") {
        "Open MPI"
    } else if lower.contains("mpich") || lower.contains("hydra") {
        "MPICH"
    } else if lower.contains("intel") {
        "Intel MPI"
    } else {
        "another MPI"
    };
    let version = text
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|w| w.contains('.') && w.starts_with(|c: char| c.is_ascii_digit()))
        .map(|w| w.split('.').take(2).collect::<Vec<_>>().join("."));
    (flavour, version)
}

/// Refuses a library of another flavour or release than the one the host was built against,
/// and a world that is not the one the launcher started (an `mpirun` of another MPI starts
/// processes that each see a world of one).
fn check_library(team: &MpiTeam, launch: &Launch) -> Result<()> {
    let (built_flavour, built_version) = flavour_and_version(BUILT_WITH);
    let (run_flavour, run_version) = flavour_and_version(&team.library);
    let built_known = !BUILT_WITH.starts_with("unknown");
    // Some launchers do not print their version on the first line: compare what both name.
    let versions_differ = matches!((&built_version, &run_version), (Some(a), Some(b)) if a != b);
    if built_known && (built_flavour != run_flavour || versions_differ) {
        bail!(
            "this flowgym-host was built against {BUILT_WITH}, but runs with {}: rebuild it against the MPI you launch with (`cargo xtask cargo build --release -p flowgym-host --features mpi` with that MPI's `mpicc` first on the PATH), or launch with the `mpirun` of {BUILT_WITH}",
            team.library
        );
    }
    let world = team.world.size() as usize;
    if world != launch.size {
        bail!(
            "{} started {} ranks, but the MPI library this host runs with ({}) sees a world of {world}: the launcher belongs to another MPI than the library; launch with the `mpirun` of {BUILT_WITH}",
            launch.launcher,
            launch.size,
            team.library
        );
    }
    Ok(())
}

impl Team for MpiTeam {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn sum_f64(&self, values: &mut [f64]) {
        let started = Instant::now();
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::sum());
        self.count(started);
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        // One leading byte, so that no buffer is empty (MPI refuses some empty ones).
        let started = Instant::now();
        let sent: Vec<u8> = std::iter::once(1).chain(bytes.iter().copied()).collect();
        let bytes = &sent[..];
        let size = self.size();
        let mut counts = vec![0i32; size];
        self.world
            .all_gather_into(&(bytes.len() as i32), &mut counts[..]);
        let displs: Vec<i32> = counts
            .iter()
            .scan(0, |at, &c| {
                let d = *at;
                *at += c;
                Some(d)
            })
            .collect();
        let total: i32 = counts.iter().sum();
        let mut all = vec![0u8; total as usize];
        {
            let mut partition = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(bytes, &mut partition);
        }
        let parts = counts
            .iter()
            .zip(&displs)
            .map(|(&c, &d)| all[d as usize + 1..(d + c) as usize].to_vec())
            .collect();
        self.count(started);
        parts
    }

    fn broadcast_bytes(&self, mut bytes: Vec<u8>) -> Vec<u8> {
        let started = Instant::now();
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        root.broadcast_into(&mut bytes[..]);
        self.count(started);
        bytes
    }

    fn describe(&self) -> String {
        format!("rank {} of {} ({})", self.rank(), self.size(), self.library)
    }

    fn exchange_seconds(&self) -> f64 {
        self.spent.get()
    }
}

impl MpiTeam {
    fn count(&self, started: Instant) {
        self.spent
            .set(self.spent.get() + started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_both_spellings() {
        assert_eq!(
            flavour_and_version("mpirun (Open MPI) 4.1.4"),
            ("Open MPI", Some("4.1".to_string()))
        );
        assert_eq!(
            flavour_and_version("Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4"),
            ("Open MPI", Some("4.1".to_string()))
        );
        assert_eq!(
            flavour_and_version("MPICH Version:      4.0.2"),
            ("MPICH", Some("4.0".to_string()))
        );
        assert_eq!(flavour_and_version("HYDRA build details:"), ("MPICH", None));
    }
}
