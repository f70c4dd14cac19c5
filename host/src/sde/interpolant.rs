//! Noise schedules `alpha(t)`, `beta(t)` and their time derivatives.

use flowgym_plugin_api::ScheduleSpec;

/// How far a discrete schedule's `alpha_bar` is kept from 0 and 1 (see
/// [`Interpolant::from_plugin`]).
pub const ALPHA_BAR_CLIP: f64 = 1.0 / (1u64 << 24) as f64;

/// `alpha`, `beta` and their derivatives at one time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InterpolantAt {
    /// Weight of the data.
    pub alpha: f64,
    /// Weight of the noise.
    pub beta: f64,
    /// `d alpha / dt`.
    pub alpha_dot: f64,
    /// `d beta / dt`.
    pub beta_dot: f64,
}

/// A schedule the host can evaluate.
#[derive(Debug, Clone, PartialEq)]
pub enum Interpolant {
    /// `alpha = t`.
    OptimalTransport,
    /// `alpha = 1 - cos^2(pi/2 t^nu)`.
    Cosine {
        /// Exponent of `t`.
        nu: f64,
    },
    /// Discrete diffusion from `alpha_bar[0..=K]`, index 0 the cleanest.
    Discrete {
        /// The cumulative products.
        alpha_bar: Vec<f64>,
    },
    /// Linear interpolation of a table.
    Tabulated {
        /// Increasing grid.
        t: Vec<f64>,
        /// `[alpha, beta, alpha', beta']` at each grid point.
        values: Vec<[f64; 4]>,
    },
}

impl Interpolant {
    /// The host's form of a plugin's scheduler descriptor, checked for sense. A discrete
    /// schedule's `alpha_bar` is clipped to `[2^-24, 1 - 2^-24]`, so that zero terminal SNR
    /// or an exactly clean first step divide by nothing.
    pub fn from_plugin(scheduler: &ScheduleSpec) -> Result<Self, String> {
        match scheduler {
            ScheduleSpec::OptimalTransport => Ok(Interpolant::OptimalTransport),
            ScheduleSpec::Cosine { nu } => {
                if *nu > 0.0 && nu.is_finite() {
                    Ok(Interpolant::Cosine { nu: *nu })
                } else {
                    Err(format!("cosine scheduler needs nu > 0, got {nu}"))
                }
            }
            ScheduleSpec::DiscreteDiffusion { alpha_bar } => {
                if alpha_bar.len() < 2 {
                    return Err("discrete scheduler needs at least two alpha_bar values".into());
                }
                if let Some(i) = alpha_bar.iter().position(|a| !(0.0..=1.0).contains(a)) {
                    return Err(format!(
                        "discrete scheduler's alpha_bar must lie in [0, 1]; alpha_bar[{i}] = {}",
                        alpha_bar[i]
                    ));
                }
                // A clean end with alpha_bar = 1 (beta = 0) or a noisy end with zero terminal
                // SNR (alpha = 0) would divide by zero; both are clipped by 2^-24, as diffusers'
                // schedulers do for zero terminal SNR.
                let alpha_bar: Vec<f64> = alpha_bar
                    .iter()
                    .map(|a| a.clamp(ALPHA_BAR_CLIP, 1.0 - ALPHA_BAR_CLIP))
                    .collect();
                if alpha_bar.windows(2).any(|w| w[1] > w[0]) {
                    return Err(
                        "discrete scheduler's alpha_bar must not increase with the index (index 0 is the cleanest)"
                            .into(),
                    );
                }
                Ok(Interpolant::Discrete { alpha_bar })
            }
            ScheduleSpec::Tabulated {
                t,
                alpha,
                beta,
                alpha_dot,
                beta_dot,
            } => {
                let n = t.len();
                if n < 2 || [alpha.len(), beta.len(), alpha_dot.len(), beta_dot.len()] != [n; 4] {
                    return Err(
                        "tabulated scheduler needs at least two points and equal-length columns"
                            .into(),
                    );
                }
                if t.windows(2).any(|w| w[1] <= w[0]) {
                    return Err("tabulated scheduler's t must increase".into());
                }
                // The SDE needs eta = beta (kappa beta - beta') >= 0: alpha / beta must not
                // decrease with t.
                for i in 0..n {
                    let eta = beta[i] * (alpha_dot[i] / alpha[i] * beta[i] - beta_dot[i]);
                    if alpha[i] > 0.0 && eta < -1e-12 {
                        return Err(format!(
                            "tabulated scheduler: alpha / beta decreases at t = {} (eta = {eta:.3e} < 0); the data must gain weight over noise as t grows",
                            t[i]
                        ));
                    }
                }
                let values = (0..n)
                    .map(|i| [alpha[i], beta[i], alpha_dot[i], beta_dot[i]])
                    .collect();
                Ok(Interpolant::Tabulated {
                    t: t.to_vec(),
                    values,
                })
            }
        }
    }

    /// The discrete step `k(t) = round((1 - t) K)` of a discrete schedule.
    fn step_index(alpha_bar: &[f64], t: f64) -> usize {
        let k_max = (alpha_bar.len() - 1) as f64;
        ((1.0 - t) * k_max).round().clamp(0.0, k_max) as usize
    }

    /// `alpha`, `beta` and their derivatives at `t`.
    pub fn at(&self, t: f64) -> InterpolantAt {
        match self {
            Interpolant::OptimalTransport => InterpolantAt {
                alpha: t,
                beta: 1.0 - t,
                alpha_dot: 1.0,
                beta_dot: -1.0,
            },
            Interpolant::Cosine { nu } => {
                let phase = std::f64::consts::FRAC_PI_2 * t.powf(*nu);
                let alpha = 1.0 - phase.cos().powi(2);
                // d/dt [1 - cos^2(phase)] = sin(2 phase) * phase'
                let phase_dot = std::f64::consts::FRAC_PI_2 * nu * t.powf(nu - 1.0);
                let alpha_dot = (2.0 * phase).sin() * phase_dot;
                InterpolantAt {
                    alpha,
                    beta: 1.0 - alpha,
                    alpha_dot,
                    beta_dot: -alpha_dot,
                }
            }
            Interpolant::Discrete { alpha_bar } => {
                let k = Self::step_index(alpha_bar, t);
                let k_max = (alpha_bar.len() - 1) as f64;
                let ab = alpha_bar[k];
                let previous = if k == 0 { 1.0 } else { alpha_bar[k - 1] };
                let ab_dot = k_max * (previous - ab);
                let alpha = ab.sqrt();
                let beta = (1.0 - ab).max(0.0).sqrt();
                InterpolantAt {
                    alpha,
                    beta,
                    alpha_dot: ab_dot / (2.0 * alpha),
                    beta_dot: if beta > 0.0 {
                        -ab_dot / (2.0 * beta)
                    } else {
                        0.0
                    },
                }
            }
            Interpolant::Tabulated { t: grid, values } => {
                let last = grid.len() - 1;
                let i = grid.partition_point(|&g| g <= t).clamp(1, last);
                let (t0, t1) = (grid[i - 1], grid[i]);
                let w = ((t - t0) / (t1 - t0)).clamp(0.0, 1.0);
                let lerp = |j: usize| values[i - 1][j] * (1.0 - w) + values[i][j] * w;
                InterpolantAt {
                    alpha: lerp(0),
                    beta: lerp(1),
                    alpha_dot: lerp(2),
                    beta_dot: lerp(3),
                }
            }
        }
    }

    /// The time the model's `forward` receives: `t`, or the step `k(t)` for a discrete schedule.
    pub fn model_time(&self, t: f64) -> f64 {
        match self {
            Interpolant::Discrete { alpha_bar } => Self::step_index(alpha_bar, t) as f64,
            _ => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear_alpha_bar(k: usize) -> Vec<f64> {
        // DDPM's linear betas from 1e-4 to 0.02, cumulative products.
        let mut ab = Vec::with_capacity(k);
        let mut prod = 1.0;
        for i in 0..k {
            let beta = 1e-4 + (0.02 - 1e-4) * i as f64 / (k - 1) as f64;
            prod *= 1.0 - beta;
            ab.push(prod);
        }
        ab
    }

    #[test]
    fn continuous_derivatives_match_finite_differences() {
        let h = 1e-6;
        for schedule in [
            Interpolant::OptimalTransport,
            Interpolant::Cosine { nu: 1.0 },
            Interpolant::Cosine { nu: 0.7 },
        ] {
            for &t in &[0.05, 0.3, 0.5, 0.8, 0.97] {
                let c = schedule.at(t);
                let (lo, hi) = (schedule.at(t - h), schedule.at(t + h));
                let alpha_dot = (hi.alpha - lo.alpha) / (2.0 * h);
                let beta_dot = (hi.beta - lo.beta) / (2.0 * h);
                assert!((c.alpha_dot - alpha_dot).abs() < 1e-6, "{schedule:?} t={t}");
                assert!((c.beta_dot - beta_dot).abs() < 1e-6, "{schedule:?} t={t}");
            }
        }
    }

    #[test]
    fn cosine_ends_at_noise_and_data() {
        let s = Interpolant::Cosine { nu: 1.0 };
        assert!(s.at(0.0).alpha.abs() < 1e-12 && (s.at(0.0).beta - 1.0).abs() < 1e-12);
        assert!((s.at(1.0).alpha - 1.0).abs() < 1e-12 && s.at(1.0).beta.abs() < 1e-12);
    }

    #[test]
    fn discrete_schedule_follows_alpha_bar_and_its_difference_quotient() {
        let ab = linear_alpha_bar(1000);
        let s = Interpolant::Discrete {
            alpha_bar: ab.clone(),
        };
        let k_max = 999.0;
        // t = 0.5 -> k = round(0.5 * 999) = 500 (round half away from zero).
        let c = s.at(0.5);
        assert_eq!(s.model_time(0.5), 500.0);
        assert!((c.alpha - ab[500].sqrt()).abs() < 1e-15);
        assert!((c.beta - (1.0 - ab[500]).sqrt()).abs() < 1e-15);
        let ab_dot = k_max * (ab[499] - ab[500]);
        assert!((c.alpha_dot - ab_dot / (2.0 * ab[500].sqrt())).abs() < 1e-12);
        // alpha^2 + beta^2 = 1 makes alpha alpha' + beta beta' = 0.
        assert!((c.alpha * c.alpha_dot + c.beta * c.beta_dot).abs() < 1e-12);
        // The derivative approximates d/dt alpha_bar(k(t)) over one index step.
        let h = 1.0 / k_max;
        let fd = (s.at(0.5).alpha.powi(2) - s.at(0.5 - h).alpha.powi(2)) / h;
        assert!((fd - ab_dot).abs() / ab_dot < 0.01);
        // The cleanest end uses alpha_bar[-1] = 1.
        assert_eq!(s.model_time(1.0), 0.0);
        assert!((s.at(1.0).alpha_dot - k_max * (1.0 - ab[0]) / (2.0 * ab[0].sqrt())).abs() < 1e-12);
    }

    #[test]
    fn tabulated_interpolates_linearly() {
        let s = Interpolant::from_plugin(&ScheduleSpec::Tabulated {
            t: vec![0.0, 1.0].into(),
            alpha: vec![0.0, 1.0].into(),
            beta: vec![1.0, 0.0].into(),
            alpha_dot: vec![1.0, 1.0].into(),
            beta_dot: vec![-1.0, -1.0].into(),
        })
        .unwrap();
        assert_eq!(s.at(0.25), Interpolant::OptimalTransport.at(0.25));
    }

    #[test]
    fn malformed_descriptors_are_refused() {
        let increasing = ScheduleSpec::DiscreteDiffusion {
            alpha_bar: vec![0.5, 0.9].into(),
        };
        assert_eq!(
            Interpolant::from_plugin(&increasing).unwrap_err(),
            "discrete scheduler's alpha_bar must not increase with the index (index 0 is the cleanest)"
        );
        assert_eq!(
            Interpolant::from_plugin(&ScheduleSpec::Cosine { nu: 0.0 }).unwrap_err(),
            "cosine scheduler needs nu > 0, got 0"
        );
        let outside = ScheduleSpec::DiscreteDiffusion {
            alpha_bar: vec![1.5, 0.5].into(),
        };
        assert_eq!(
            Interpolant::from_plugin(&outside).unwrap_err(),
            "discrete scheduler's alpha_bar must lie in [0, 1]; alpha_bar[0] = 1.5"
        );
        let shrinking = ScheduleSpec::Tabulated {
            t: vec![0.0, 1.0].into(),
            alpha: vec![0.5, 0.5].into(),
            beta: vec![0.5, 0.5].into(),
            alpha_dot: vec![-0.5, -0.5].into(),
            beta_dot: vec![0.0, 0.0].into(),
        };
        assert!(Interpolant::from_plugin(&shrinking)
            .unwrap_err()
            .starts_with("tabulated scheduler: alpha / beta decreases at t = 0"));
    }

    /// A schedule from exactly clean data (alpha_bar[0] = 1) to zero terminal SNR
    /// (alpha_bar[K] = 0) gives finite coefficients for every output type everywhere.
    #[test]
    fn clean_ends_and_zero_terminal_snr_give_finite_coefficients() {
        let mut alpha_bar = linear_alpha_bar(1000);
        alpha_bar[0] = 1.0;
        alpha_bar[999] = 0.0;
        let s = Interpolant::from_plugin(&ScheduleSpec::DiscreteDiffusion {
            alpha_bar: alpha_bar.into(),
        })
        .unwrap();
        for i in 0..=1000 {
            let t = i as f64 / 1000.0;
            for output in [
                flowgym_plugin_api::OutputType::Velocity,
                flowgym_plugin_api::OutputType::Epsilon,
                flowgym_plugin_api::OutputType::Score,
                flowgym_plugin_api::OutputType::Endpoint,
            ] {
                let c = super::super::drift::sde_coefficients(
                    &s,
                    super::super::Diffusion::Memoryless,
                    output,
                    t,
                );
                let e = super::super::drift::endpoint_coefficients(output, &c.interpolant);
                let all = [c.kappa, c.eta, c.s, c.drift.a, c.drift.b, e.x, e.f];
                assert!(
                    all.iter().all(|v| v.is_finite()),
                    "t={t} {output:?}: {all:?}"
                );
            }
        }
    }
}
