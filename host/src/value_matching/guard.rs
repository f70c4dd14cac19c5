//! The divergence guard: stops training whose fit or control explodes without producing NaN
//! (a learning rate too high for the problem), before the exploded state is saved.

use std::collections::VecDeque;

/// Optimiser steps the fit's error is compared over.
const WINDOW: usize = 20;
/// Optimiser steps before the error check starts: the first fits move fast.
const WARM_UP: usize = 10;
/// A squared error this many times the largest of the recent window (or of the targets'
/// variance, the error of a constant prediction) has exploded.
const ERROR_FACTOR: f64 = 1e3;
/// A mean control cost this many times the largest the optimum can need has exploded.
const CONTROL_FACTOR: f64 = 10.0;

/// Training diverged: the error names the iteration and what exploded.
#[derive(Debug, thiserror::Error)]
#[error("Value Matching diverged at iteration {iteration}: {what}")]
pub struct Diverged {
    /// The iteration at which it was noticed.
    pub iteration: usize,
    /// What exploded, with the figures.
    pub what: String,
}

/// Watches the fit's squared error at successive optimiser steps and the control cost of
/// successive iterations.
#[derive(Debug, Clone)]
pub struct DivergenceGuard {
    errors: VecDeque<f64>,
    reward_low: f64,
    reward_high: f64,
}

impl Default for DivergenceGuard {
    fn default() -> Self {
        Self {
            errors: VecDeque::with_capacity(WINDOW),
            reward_low: f64::INFINITY,
            reward_high: f64::NEG_INFINITY,
        }
    }
}

impl DivergenceGuard {
    /// Checks the mean control cost of a batch sampled with the current control. The optimal
    /// control's expected cost is `KL(p* | p_base) <= lambda (r_max - r_min)` for a reward in
    /// `[r_min, r_max]` (docs/mathematics.md, section 5); rewards seen so far bound the range.
    pub fn check_control(
        &mut self,
        iteration: usize,
        control_cost: f64,
        rewards: (f64, f64),
        lambda: f64,
    ) -> Result<(), Diverged> {
        self.reward_low = self.reward_low.min(rewards.0);
        self.reward_high = self.reward_high.max(rewards.1);
        let range = (self.reward_high - self.reward_low).max(0.0);
        let bound = CONTROL_FACTOR * (lambda * range).max(1.0);
        if control_cost > bound {
            return Err(Diverged {
                iteration,
                what: format!(
                    "the mean control cost {control_cost:.3e} is more than {CONTROL_FACTOR} times what the optimum can need (lambda x reward range = {:.3e})",
                    lambda * range
                ),
            });
        }
        Ok(())
    }

    /// Checks the mean squared error of the value's predictions before the optimiser steps
    /// on it (the squared error whatever the loss: the exponential loss grows exponentially
    /// with the error of one rare, much better sample, which is news, not an explosion).
    /// `target_variance` is the variance of the targets it was fitted to: a network that
    /// predicts their mean does that well, so an error that exceeds it a thousandfold has
    /// exploded, while one that rises from zero when a rare reward is first seen (all earlier
    /// targets equal) has not.
    pub fn check_error(
        &mut self,
        iteration: usize,
        squared_error: f64,
        target_variance: f64,
    ) -> Result<(), Diverged> {
        if self.errors.len() >= WARM_UP {
            let largest = self.errors.iter().copied().fold(0.0, f64::max);
            let reference = largest.max(target_variance);
            if squared_error > ERROR_FACTOR * reference && squared_error > 1e-6 {
                return Err(Diverged {
                    iteration,
                    what: format!(
                        "the value's squared error {squared_error:.3e} is more than {ERROR_FACTOR} times the largest of the last {} optimiser steps, {largest:.3e}, and the targets' variance, {target_variance:.3e}",
                        self.errors.len()
                    ),
                });
            }
        }
        if self.errors.len() == WINDOW {
            self.errors.pop_front();
        }
        self.errors.push_back(squared_error);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_training_passes_and_explosions_are_named() {
        let mut guard = DivergenceGuard::default();
        for i in 0..30 {
            guard.check_error(i, 0.4 / (1.0 + i as f64), 0.1).unwrap();
            guard.check_control(i, 2.0, (0.0, 1.0), 5.0).unwrap();
        }
        let err = guard.check_error(30, 500.0, 0.1).unwrap_err();
        assert_eq!(err.iteration, 30);
        assert!(err.to_string().starts_with(
            "Value Matching diverged at iteration 30: the value's squared error 5.000e2 is more than 1000 times the largest of the last 20 optimiser steps"
        ));
        let err = guard.check_control(31, 60.0, (0.0, 1.0), 5.0).unwrap_err();
        assert!(
            err.to_string().contains("the mean control cost 6.000e1"),
            "{err}"
        );
    }

    #[test]
    fn the_first_iterations_may_move_fast() {
        let mut guard = DivergenceGuard::default();
        for (i, loss) in [1e-6, 1.0, 1e-3, 10.0].into_iter().enumerate() {
            guard.check_error(i, loss, 0.0).unwrap();
        }
    }

    #[test]
    fn a_loss_rising_from_zero_with_the_targets_spread_is_not_an_explosion() {
        let mut guard = DivergenceGuard::default();
        // A rare reward: every target equal, so every fit is exact, until one sample scores.
        for i in 0..16 {
            guard.check_error(i, 0.0, 0.0).unwrap();
        }
        guard.check_error(16, 0.07, 0.008).unwrap();
        let err = guard.check_error(17, 100.0, 0.008).unwrap_err();
        assert!(
            err.to_string().contains("the targets' variance, 8.000e-3"),
            "{err}"
        );
    }
}
