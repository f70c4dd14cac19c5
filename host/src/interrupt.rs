//! Ctrl-C (or SIGTERM, which `mpirun` and Slurm send every rank): the first asks the run to
//! stop at the next step and write a checkpoint; a second exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once per process; later calls are no-ops).
#[cfg(feature = "cli")]
pub fn install() {
    // Under an MPI launcher every rank gets the signal; rank 0 speaks for them.
    let quiet = crate::distributed::launcher::detect().is_some_and(|l| l.rank > 0);
    let _ = ctrlc::set_handler(move || {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            if !quiet {
                eprintln!("\nsecond interrupt: exiting now");
            }
            std::process::exit(130);
        }
        if !quiet {
            eprintln!("\ninterrupt: stopping after this step and writing a checkpoint (press Ctrl-C again to exit now)");
        }
    });
}

/// Without the `cli` feature the embedding program handles signals; [`request`] stops a run.
#[cfg(not(feature = "cli"))]
pub fn install() {}

/// Asks the running sampler or run to stop after its current step, as Ctrl-C does.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
