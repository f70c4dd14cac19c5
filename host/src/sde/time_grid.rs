//! Where the sampler's steps fall in `[t_0, 1]`.

use serde::{Deserialize, Serialize};

use super::Interpolant;

/// The smallest noise-to-signal ratio the Karras grid resolves (that of its authors' image
/// models): schedules that end at `sigma = 0`, as OT does, would otherwise spend a tenth of
/// the steps within `1e-5` of `t = 1`.
const KARRAS_SIGMA_MIN: f64 = 0.002;
/// The Karras grid's exponent `rho`.
const KARRAS_RHO: f64 = 7.0;

/// How the `K` steps are spread over `[t_0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum TimeGrid {
    /// `karras` on a discrete diffusion schedule, `uniform` on the others: each family's
    /// grid as it is sampled in practice, and what measured best on the quality suite.
    #[default]
    Auto,
    /// Equal steps in `t`.
    Uniform,
    /// Equal steps in the noise level `beta(t)`: the same as `uniform` for the OT schedule;
    /// on a diffusion schedule, whose `beta` falls fastest near the data end, the steps
    /// crowd where the fine structure of the samples (and of the control) is decided.
    NoiseLevel,
    /// Equal steps in `sigma^(1/7)`, `sigma = beta / alpha` kept above 0.002, the grid of
    /// Karras et al. (2022): crowded at both ends, most at the data end.
    Karras,
}

impl TimeGrid {
    /// The grid `Auto` stands for on `interpolant`.
    pub fn resolve(self, interpolant: &Interpolant) -> TimeGrid {
        match (self, interpolant) {
            (TimeGrid::Auto, Interpolant::Discrete { .. }) => TimeGrid::Karras,
            (TimeGrid::Auto, _) => TimeGrid::Uniform,
            (grid, _) => grid,
        }
    }

    /// The quantity the grid spaces equally, which must not increase with `t` (called on a
    /// resolved grid).
    fn level(self, interpolant: &Interpolant, t: f64) -> f64 {
        let at = interpolant.at(t);
        match self {
            TimeGrid::Auto | TimeGrid::Uniform => -t,
            TimeGrid::NoiseLevel => at.beta,
            TimeGrid::Karras => {
                let sigma = at.beta / at.alpha.max(f64::MIN_POSITIVE);
                sigma.max(KARRAS_SIGMA_MIN).powf(1.0 / KARRAS_RHO)
            }
        }
    }
}

/// The time grid `t_0 < t_1 < .. < t_K = 1`. On a discrete schedule the inner times are
/// rounded to the schedule's own steps and kept at least one of them apart.
pub fn time_grid(steps: usize, t0: f64, spacing: TimeGrid, interpolant: &Interpolant) -> Vec<f64> {
    let uniform: Vec<f64> = (0..=steps)
        .map(|k| t0 + (1.0 - t0) * k as f64 / steps as f64)
        .collect();
    let spacing = spacing.resolve(interpolant);
    if spacing == TimeGrid::Uniform || steps < 2 {
        return uniform;
    }
    let level = |t: f64| spacing.level(interpolant, t);
    let (first, last) = (level(t0), level(1.0));
    if first.partial_cmp(&last) != Some(std::cmp::Ordering::Greater) {
        return uniform;
    }
    let mut grid: Vec<f64> = (0..=steps)
        .map(|k| {
            let target = first + (last - first) * k as f64 / steps as f64;
            first_time_at_or_below(&level, target, t0)
        })
        .collect();
    (grid[0], grid[steps]) = (t0, 1.0);
    match interpolant {
        Interpolant::Discrete { alpha_bar } => {
            snap_to_schedule(grid, alpha_bar.len() - 1).unwrap_or(uniform)
        }
        _ => grid,
    }
}

/// The first `t` in `[t0, 1]` with `level(t) <= target` (`level` does not increase with `t`).
fn first_time_at_or_below(level: &dyn Fn(f64) -> f64, target: f64, t0: f64) -> f64 {
    let (mut low, mut high) = (t0, 1.0);
    for _ in 0..60 {
        let middle = 0.5 * (low + high);
        if level(middle) <= target {
            high = middle;
        } else {
            low = middle;
        }
    }
    high
}

/// Rounds the inner times to multiples of `1 / k_max` (the discrete schedule's steps) and
/// keeps them strictly increasing; `None` when the schedule has too few steps for the grid.
fn snap_to_schedule(mut grid: Vec<f64>, k_max: usize) -> Option<Vec<f64>> {
    let steps = grid.len() - 1;
    let h = 1.0 / k_max as f64;
    let index = |t: f64| ((1.0 - t) * k_max as f64).round() as i64;
    let last_inner = index(grid[0]) - 1;
    if last_inner < steps as i64 - 1 {
        return None;
    }
    // Indices count down from the noise end; inner points need distinct indices in
    // `[1, last_inner]`, decreasing along the grid.
    let mut indices: Vec<i64> = grid[1..steps].iter().map(|&t| index(t)).collect();
    let inner = indices.len() as i64;
    for (j, k) in indices.iter_mut().enumerate() {
        let j = j as i64;
        *k = (*k).clamp(inner - j, last_inner - j);
    }
    for j in 1..indices.len() {
        indices[j] = indices[j].min(indices[j - 1] - 1);
    }
    for (t, k) in grid[1..steps].iter_mut().zip(&indices) {
        *t = 1.0 - *k as f64 * h;
    }
    Some(grid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear_alpha_bar(k: usize) -> Vec<f64> {
        let mut product = 1.0;
        (0..k)
            .map(|i| {
                let beta = 1e-4 + (0.02 - 1e-4) * i as f64 / (k - 1) as f64;
                product *= 1.0 - beta;
                product
            })
            .collect()
    }

    #[test]
    fn noise_level_is_uniform_in_t_for_optimal_transport() {
        let ot = Interpolant::OptimalTransport;
        let even = time_grid(50, 0.02, TimeGrid::Uniform, &ot);
        let by_noise = time_grid(50, 0.02, TimeGrid::NoiseLevel, &ot);
        for (a, b) in even.iter().zip(&by_noise) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }

    #[test]
    fn noise_level_steps_are_equal_in_beta_on_a_continuous_schedule() {
        let cosine = Interpolant::Cosine { nu: 1.0 };
        let grid = time_grid(40, 0.02, TimeGrid::NoiseLevel, &cosine);
        let betas: Vec<f64> = grid.iter().map(|&t| cosine.at(t).beta).collect();
        let step = (betas[40] - betas[0]) / 40.0;
        for w in betas.windows(2) {
            assert!((w[1] - w[0] - step).abs() < 1e-9, "{:?}", w);
        }
        assert_eq!((grid[0], grid[40]), (0.02, 1.0));
    }

    #[test]
    fn discrete_grid_lands_on_distinct_schedule_steps_crowded_at_the_data_end() {
        let ddpm = Interpolant::Discrete {
            alpha_bar: linear_alpha_bar(1000),
        };
        let grid = time_grid(100, 0.02, TimeGrid::NoiseLevel, &ddpm);
        assert_eq!(grid.len(), 101);
        assert_eq!((grid[0], grid[100]), (0.02, 1.0));
        for w in grid.windows(2) {
            assert!(w[1] > w[0], "not increasing: {w:?}");
        }
        for &t in &grid[1..] {
            let k = (1.0 - t) * 999.0;
            assert!((k - k.round()).abs() < 1e-9, "t = {t} is between steps");
        }
        // Where beta < 0.1 (the last ~50 of 1000 steps), a uniform grid has 5 of its 100
        // steps; equal steps in beta put about 9% of the range of beta there.
        let near_data = grid.iter().filter(|&&t| ddpm.at(t).beta < 0.1).count();
        assert!(near_data >= 8, "{near_data} points with beta < 0.1");
    }

    #[test]
    fn karras_grid_crowds_the_data_end_without_wasting_steps_at_sigma_zero() {
        let ot = Interpolant::OptimalTransport;
        let grid = time_grid(100, 0.02, TimeGrid::Karras, &ot);
        assert_eq!((grid[0], grid[100]), (0.02, 1.0));
        // sigma = 0.002 at t = 1 / 1.002: only the last point lies beyond it.
        assert!(grid[99] < 0.998 + 1e-9 && grid[99] > 0.99, "{}", grid[99]);
        let late = grid.iter().filter(|&&t| t > 0.9).count();
        assert!(late > 20, "{late} of 101 points after t = 0.9");
        let ddpm = Interpolant::Discrete {
            alpha_bar: linear_alpha_bar(1000),
        };
        let grid = time_grid(100, 0.02, TimeGrid::Karras, &ddpm);
        assert!(grid.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn auto_is_karras_on_discrete_schedules_and_uniform_on_the_others() {
        let ddpm = Interpolant::Discrete {
            alpha_bar: linear_alpha_bar(1000),
        };
        assert_eq!(
            time_grid(100, 0.02, TimeGrid::Auto, &ddpm),
            time_grid(100, 0.02, TimeGrid::Karras, &ddpm)
        );
        for continuous in [
            Interpolant::OptimalTransport,
            Interpolant::Cosine { nu: 1.0 },
        ] {
            assert_eq!(
                time_grid(100, 0.02, TimeGrid::Auto, &continuous),
                time_grid(100, 0.02, TimeGrid::Uniform, &continuous)
            );
        }
    }

    #[test]
    fn a_schedule_with_too_few_steps_keeps_the_uniform_grid() {
        let short = Interpolant::Discrete {
            alpha_bar: linear_alpha_bar(20),
        };
        let grid = time_grid(50, 0.02, TimeGrid::NoiseLevel, &short);
        assert_eq!(grid, time_grid(50, 0.02, TimeGrid::Uniform, &short));
    }
}
