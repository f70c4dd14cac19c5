//! Progress bars of a run (with the `cli` feature; silent without it). When standard error is
//! not a terminal the bars hide themselves and a line per checkpoint reports progress instead.

use crate::value_matching::IterationStats;

/// A progress bar over iterations or sampling steps.
pub struct Progress {
    #[cfg(feature = "cli")]
    bar: indicatif::ProgressBar,
    shown: bool,
}

impl Progress {
    /// A bar over `total` iterations, `done` of them already finished.
    /// `shown`: false on the ranks of a data-parallel run other than rank 0.
    pub fn iterations(total: usize, done: usize, shown: bool) -> Self {
        Self::new(
            total,
            "[{elapsed_precise}] {bar:32} {pos}/{len} iterations ({eta} left)  {msg}",
            done,
            "",
            shown,
        )
    }

    /// A bar over `steps` sampling steps, labelled `what`.
    pub fn steps(steps: usize, what: &str, shown: bool) -> Self {
        Self::new(
            steps,
            "{msg:>24} [{elapsed_precise}] {bar:32} {pos}/{len} steps",
            0,
            what,
            shown,
        )
    }

    #[cfg(feature = "cli")]
    fn new(total: usize, template: &str, position: usize, message: &str, shown: bool) -> Self {
        let bar = indicatif::ProgressBar::new(total as u64);
        if !shown {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_style(indicatif::ProgressStyle::with_template(template).expect("a valid template"));
        bar.set_position(position as u64);
        bar.set_message(message.to_string());
        Self { bar, shown }
    }

    #[cfg(not(feature = "cli"))]
    fn new(_total: usize, _template: &str, _position: usize, _message: &str, _shown: bool) -> Self {
        Self { shown: _shown }
    }

    /// One more step.
    pub fn inc(&self) {
        #[cfg(feature = "cli")]
        self.bar.inc(1);
    }

    /// An iteration finished: `done` in all.
    pub fn iteration_done(&self, done: usize, stats: &IterationStats) {
        #[cfg(feature = "cli")]
        {
            self.bar.set_position(done as u64);
            self.bar.set_message(format!(
                "loss {:.4}  reward {:.4}",
                stats.loss, stats.reward_mean
            ));
        }
        #[cfg(not(feature = "cli"))]
        let _ = (done, stats);
    }

    /// A checkpoint was written: one line of progress where no bar is shown.
    pub fn log_checkpoint(&self, done: usize, total: usize, stats: &IterationStats) {
        if self.is_hidden() && self.shown {
            eprintln!(
                "iteration {done}/{total}: loss {:.5}, reward {:.4} +- {:.4}, {:.3} s/iteration",
                stats.loss, stats.reward_mean, stats.reward_std, stats.seconds
            );
        }
    }

    fn is_hidden(&self) -> bool {
        #[cfg(feature = "cli")]
        return self.bar.is_hidden();
        #[cfg(not(feature = "cli"))]
        true
    }

    /// Removes the bar.
    pub fn finish(&self) {
        #[cfg(feature = "cli")]
        self.bar.finish_and_clear();
    }

    /// Leaves the bar where it stopped (after an error).
    pub fn abandon(&self) {
        #[cfg(feature = "cli")]
        self.bar.abandon();
    }
}
