//! The memoryless SDE: noise level, diffusion coefficient and the base drift of each output
//! type, as scalars per time.
//!
//! With `kappa = alpha' / alpha`, `eta = beta (kappa beta - beta')`, `sigma_m = sqrt(2 eta)`,
//! a diffusion coefficient `s` and `g = s^2 / 2 + eta`, the base drift is `a x + b f(x, t)`:
//! velocity `a = -kappa s^2 / (2 eta)`, `b = 1 + s^2 / (2 eta)`; epsilon `a = kappa`,
//! `b = -g / beta`; score `a = kappa`, `b = g`; endpoint `a = kappa - g / beta^2`,
//! `b = g alpha / beta^2`.

use flowgym_plugin_api::OutputType;
use serde::{Deserialize, Serialize};

use super::schedule::{Coefficients, Schedule};

/// The diffusion coefficient `s(t)` of the sampler.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "level")]
pub enum NoiseSchedule {
    /// `s = sigma_m = sqrt(2 eta)`: the memoryless schedule Value Matching is proven for.
    Memoryless,
    /// A constant `s`.
    Constant(f64),
}

/// `a` and `b` of the base drift `a x + b f(x, t)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftCoefficients {
    /// Coefficient of the state.
    pub a: f64,
    /// Coefficient of the model output.
    pub b: f64,
}

/// Everything the sampler needs at one time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCoefficients {
    /// The schedule at this time.
    pub schedule: Coefficients,
    /// `alpha' / alpha`.
    pub kappa: f64,
    /// `beta (kappa beta - beta')`.
    pub eta: f64,
    /// The memoryless noise level `sqrt(2 eta)`.
    pub sigma_m: f64,
    /// The diffusion coefficient.
    pub s: f64,
    /// The base drift.
    pub drift: DriftCoefficients,
}

/// The sampler's coefficients at `t` for a model predicting `output`.
pub fn step_coefficients(
    schedule: &Schedule,
    noise: NoiseSchedule,
    output: OutputType,
    t: f64,
) -> StepCoefficients {
    let c = schedule.at(t);
    let kappa = c.alpha_dot / c.alpha;
    let eta = c.beta * (kappa * c.beta - c.beta_dot);
    let sigma_m = (2.0 * eta).max(0.0).sqrt();
    let s = match noise {
        NoiseSchedule::Memoryless => sigma_m,
        NoiseSchedule::Constant(level) => level,
    };
    let g = s * s / 2.0 + eta;
    // s^2 / (2 eta), exactly 1 when memoryless (also where eta vanishes at t = 1).
    let ratio = match noise {
        NoiseSchedule::Memoryless => 1.0,
        NoiseSchedule::Constant(_) => s * s / (2.0 * eta),
    };
    let drift = match output {
        OutputType::Velocity => DriftCoefficients {
            a: -kappa * ratio,
            b: 1.0 + ratio,
        },
        OutputType::Epsilon => DriftCoefficients {
            a: kappa,
            b: -g / c.beta,
        },
        OutputType::Score => DriftCoefficients { a: kappa, b: g },
        OutputType::Endpoint => DriftCoefficients {
            a: kappa - g / (c.beta * c.beta),
            b: g * c.alpha / (c.beta * c.beta),
        },
    };
    StepCoefficients {
        schedule: c,
        kappa,
        eta,
        sigma_m,
        s,
        drift,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data `x_1 ~ N(m, v)`: every parameterisation of the model is known in closed form.
    fn exact_output(output: OutputType, c: &Coefficients, x: f64) -> f64 {
        let (m, v) = (0.7, 0.3);
        let var_t = c.alpha * c.alpha * v + c.beta * c.beta;
        let dev = x - c.alpha * m;
        let endpoint = m + c.alpha * v / var_t * dev;
        let epsilon = c.beta / var_t * dev;
        match output {
            OutputType::Endpoint => endpoint,
            OutputType::Epsilon => epsilon,
            OutputType::Score => -dev / var_t,
            OutputType::Velocity => c.alpha_dot * endpoint + c.beta_dot * epsilon,
        }
    }

    fn schedules() -> Vec<Schedule> {
        let mut ab = Vec::new();
        let mut prod = 1.0;
        for i in 0..1000 {
            prod *= 1.0 - (1e-4 + (0.02 - 1e-4) * i as f64 / 999.0);
            ab.push(prod);
        }
        vec![
            Schedule::OptimalTransport,
            Schedule::Cosine { nu: 1.0 },
            Schedule::Discrete { alpha_bar: ab },
        ]
    }

    #[test]
    fn the_four_parameterisations_give_one_drift() {
        for schedule in schedules() {
            for noise in [NoiseSchedule::Memoryless, NoiseSchedule::Constant(0.8)] {
                for &t in &[0.05, 0.3, 0.6, 0.9] {
                    for &x in &[-1.0, 0.2, 2.5] {
                        let drifts: Vec<f64> = [
                            OutputType::Velocity,
                            OutputType::Epsilon,
                            OutputType::Score,
                            OutputType::Endpoint,
                        ]
                        .iter()
                        .map(|&output| {
                            let k = step_coefficients(&schedule, noise, output, t);
                            let f = exact_output(output, &k.schedule, x);
                            k.drift.a * x + k.drift.b * f
                        })
                        .collect();
                        for d in &drifts[1..] {
                            assert!(
                                (d - drifts[0]).abs() < 1e-9 * drifts[0].abs().max(1.0),
                                "{schedule:?} {noise:?} t={t} x={x}: {drifts:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn optimal_transport_noise_level_is_closed_form() {
        // alpha = t: kappa = 1/t, eta = (1 - t)/t, sigma_m = sqrt(2 (1 - t) / t).
        let k = step_coefficients(
            &Schedule::OptimalTransport,
            NoiseSchedule::Memoryless,
            OutputType::Velocity,
            0.25,
        );
        assert!((k.kappa - 4.0).abs() < 1e-12);
        assert!((k.eta - 3.0).abs() < 1e-12);
        assert!((k.sigma_m - 6f64.sqrt()).abs() < 1e-12);
        assert_eq!(k.drift, DriftCoefficients { a: -4.0, b: 2.0 });
    }

    /// With zero noise the base drift must be the probability-flow ODE of the true marginals:
    /// for Gaussian data the ODE maps the variance var_t = alpha^2 v + beta^2 exactly, i.e.
    /// d var_t / dt = 2 d(x)/dx-coefficient * var_t. Checked with the velocity drift at s = 0.
    #[test]
    fn zero_noise_drift_transports_the_marginal_variance() {
        let (v, h) = (0.3, 1e-6);
        for schedule in schedules().into_iter().take(2) {
            for &t in &[0.2, 0.5, 0.8] {
                let k = step_coefficients(
                    &schedule,
                    NoiseSchedule::Constant(0.0),
                    OutputType::Velocity,
                    t,
                );
                let c = k.schedule;
                let var_t = |c: &Coefficients| c.alpha * c.alpha * v + c.beta * c.beta;
                // drift is linear in x: slope = a + b * d(velocity)/dx.
                let slope_f = (exact_output(OutputType::Velocity, &c, 1.0)
                    - exact_output(OutputType::Velocity, &c, 0.0))
                    * k.drift.b;
                let slope = k.drift.a + slope_f;
                let dvar = (var_t(&schedule.at(t + h)) - var_t(&schedule.at(t - h))) / (2.0 * h);
                assert!(
                    (dvar - 2.0 * slope * var_t(&c)).abs() < 1e-5,
                    "{schedule:?} t={t}"
                );
            }
        }
    }
}
