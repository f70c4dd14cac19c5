//! Rewards in a child process: a reward that crashes, aborts, hangs or runs out of memory
//! takes down its worker, not the host, and becomes an error naming the plugin and the batch.
//!
//! The host starts the worker (its own executable with a hidden subcommand, [`worker::main`]),
//! which sandboxes itself ([`sandbox`]), loads the plugin and constructs the reward. Batches
//! are copied once into a file both processes map ([`region`]); the worker reads them in place
//! and writes the rewards after them; small JSON messages on pipes say where ([`protocol`]).

mod host;
pub mod protocol;
pub mod region;
pub mod sandbox;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

pub use host::IsolatedReward;

/// How an isolated reward runs.
#[derive(Debug, Clone)]
pub struct IsolationOptions {
    /// The executable to start as the worker (the `flowgym-host` binary).
    pub executable: PathBuf,
    /// Longest wait for the worker's start or for one batch (None: no limit).
    pub timeout: Option<Duration>,
    /// Times a crashed or stopped worker is started again and sent the batch again.
    pub retries: usize,
    /// The worker's memory limit in bytes (0: none).
    pub memory_bytes: u64,
    /// libtorch threads in the worker (0: libtorch's default).
    pub threads: usize,
}

/// The hidden subcommand that runs the worker.
pub const WORKER_COMMAND: &str = "reward-worker";

/// CPU time this process has used so far, all threads, in seconds.
pub fn process_cpu_seconds() -> f64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which lives for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut time) };
    time.tv_sec as f64 + time.tv_nsec as f64 * 1e-9
}
