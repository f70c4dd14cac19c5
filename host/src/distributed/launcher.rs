//! What an MPI launcher (`mpirun`, `mpiexec`, Slurm's `srun`) tells the processes it starts,
//! read from their environment before MPI is initialised.

/// How a process was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The launcher, as recognised from its variables.
    pub launcher: &'static str,
    /// Ranks the launcher started.
    pub size: usize,
    /// This process's rank.
    pub rank: usize,
    /// Its rank among the ranks of its node (which GPU it takes).
    pub local_rank: usize,
    /// Ranks on its node.
    pub local_size: Option<usize>,
}

/// Variables of each launcher: name, world size, rank, local rank, local size.
const LAUNCHERS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "Open MPI",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    ),
    (
        "MPICH (Hydra)",
        "PMI_SIZE",
        "PMI_RANK",
        "MPI_LOCALRANKID",
        "MPI_LOCALNRANKS",
    ),
    (
        "Slurm",
        "SLURM_NTASKS",
        "SLURM_PROCID",
        "SLURM_LOCALID",
        "SLURM_NTASKS_PER_NODE",
    ),
];

/// The launch described by `var` (the environment in practice), if any launcher started this
/// process. Slurm's variables count only inside a job step (`SLURM_STEP_ID`), so that a
/// plain `flowgym-host run` inside an allocation is not taken for a rank.
pub fn detect_with(var: impl Fn(&str) -> Option<String>) -> Option<Launch> {
    let number = |name: &str| var(name).and_then(|v| v.trim().parse::<usize>().ok());
    for (launcher, size, rank, local_rank, local_size) in LAUNCHERS {
        if *launcher == "Slurm" && var("SLURM_STEP_ID").is_none() {
            continue;
        }
        let (Some(size), Some(rank)) = (number(size), number(rank)) else {
            continue;
        };
        return Some(Launch {
            launcher,
            size,
            rank,
            local_rank: number(local_rank).unwrap_or(0),
            local_size: number(local_size),
        });
    }
    None
}

/// The launch of this process, from its environment.
pub fn detect() -> Option<Launch> {
    detect_with(|name| std::env::var(name).ok())
}

/// The refusal for a host without the `mpi` feature started as one of several ranks: each
/// rank would run the whole job alone and they would write over each other.
pub fn without_mpi_feature(launch: &Launch) -> String {
    format!(
        "{} started this flowgym-host as rank {} of {}, but it was built without MPI support, so every rank would run the whole job alone; build it with the `mpi` feature: `cargo xtask --mpi run ...` (installs Open MPI and libclang from the Debian packages), or `cargo xtask cargo build --release -p flowgym-host --features mpi` with an MPI library installed",
        launch.launcher, launch.rank, launch.size
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn launchers_are_recognised_by_their_variables() {
        let open_mpi = detect_with(env(&[
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ]))
        .unwrap();
        assert_eq!(
            (open_mpi.size, open_mpi.rank, open_mpi.local_rank),
            (4, 3, 1)
        );
        assert_eq!(open_mpi.local_size, Some(2));
        let hydra = detect_with(env(&[
            ("PMI_SIZE", "2"),
            ("PMI_RANK", "1"),
            ("MPI_LOCALRANKID", "1"),
        ]))
        .unwrap();
        assert_eq!((hydra.launcher, hydra.local_rank), ("MPICH (Hydra)", 1));
        let allocation_only = env(&[("SLURM_NTASKS", "8"), ("SLURM_PROCID", "0")]);
        assert_eq!(detect_with(allocation_only), None);
        let step = detect_with(env(&[
            ("SLURM_NTASKS", "8"),
            ("SLURM_PROCID", "5"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_STEP_ID", "0"),
        ]))
        .unwrap();
        assert_eq!((step.size, step.rank, step.local_rank), (8, 5, 1));
        assert_eq!(detect_with(env(&[])), None);
    }

    #[test]
    fn the_refusal_says_how_to_build_with_mpi() {
        let launch = Launch {
            launcher: "Open MPI",
            size: 2,
            rank: 1,
            local_rank: 1,
            local_size: Some(2),
        };
        let message = without_mpi_feature(&launch);
        assert!(message.contains("rank 1 of 2"), "{message}");
        assert!(message.contains("--features mpi"), "{message}");
    }
}
