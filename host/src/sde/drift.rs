//! The memoryless SDE: noise level, diffusion coefficient and the base drift of each output
//! type, as scalars per time.
//!
//! With `kappa = alpha' / alpha`, `eta = beta (kappa beta - beta')`, `sigma_m = sqrt(2 eta)`,
//! a diffusion coefficient `s` and `g = s^2 / 2 + eta`, the base drift is `a x + b f(x, t)`:
//! velocity `a = -kappa s^2 / (2 eta)`, `b = 1 + s^2 / (2 eta)`; epsilon `a = kappa`,
//! `b = -g / beta`; score `a = kappa`, `b = g`; endpoint `a = kappa - g / beta^2`,
//! `b = g alpha / beta^2`.

use flowgym_plugin_api::OutputType;

use super::diffusion::Diffusion;
use super::interpolant::{Interpolant, InterpolantAt};

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
pub struct SdeCoefficients {
    /// The interpolant at this time.
    pub interpolant: InterpolantAt,
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
pub fn sde_coefficients(
    schedule: &Interpolant,
    noise: Diffusion,
    output: OutputType,
    t: f64,
) -> SdeCoefficients {
    let c = schedule.at(t);
    let kappa = c.alpha_dot / c.alpha;
    let eta = c.beta * (kappa * c.beta - c.beta_dot);
    let sigma_m = (2.0 * eta).max(0.0).sqrt();
    let s = match noise {
        Diffusion::Memoryless => sigma_m,
        Diffusion::Constant(level) => level,
    };
    let g = s * s / 2.0 + eta;
    // s^2 / (2 eta), exactly 1 when memoryless (also where eta vanishes at t = 1).
    let ratio = match noise {
        Diffusion::Memoryless => 1.0,
        Diffusion::Constant(_) => s * s / (2.0 * eta),
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
    SdeCoefficients {
        interpolant: c,
        kappa,
        eta,
        sigma_m,
        s,
        drift,
    }
}

/// `x_hat_1 = x * x + f * f`: the model's estimate of the endpoint `E[x_1 | x_t]` from its
/// output `f`, linear in both (docs/mathematics.md, section 2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointCoefficients {
    /// Coefficient of the state.
    pub x: f64,
    /// Coefficient of the model output.
    pub f: f64,
}

/// The endpoint estimate of a model predicting `output`, at the interpolant's values `c`:
/// endpoint `f`; epsilon `(x - beta f) / alpha`; score `(x + beta^2 f) / alpha`; velocity
/// `(beta f - beta' x) / (alpha' beta - beta' alpha)`.
pub fn endpoint_coefficients(output: OutputType, c: &InterpolantAt) -> EndpointCoefficients {
    match output {
        OutputType::Endpoint => EndpointCoefficients { x: 0.0, f: 1.0 },
        OutputType::Epsilon => EndpointCoefficients {
            x: 1.0 / c.alpha,
            f: -c.beta / c.alpha,
        },
        OutputType::Score => EndpointCoefficients {
            x: 1.0 / c.alpha,
            f: c.beta * c.beta / c.alpha,
        },
        OutputType::Velocity => {
            let determinant = c.alpha_dot * c.beta - c.beta_dot * c.alpha;
            EndpointCoefficients {
                x: -c.beta_dot / determinant,
                f: c.beta / determinant,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data `x_1 ~ N(m, v)`: every parameterisation of the model is known in closed form.
    fn exact_output(output: OutputType, c: &InterpolantAt, x: f64) -> f64 {
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

    fn schedules() -> Vec<Interpolant> {
        let mut ab = Vec::new();
        let mut prod = 1.0;
        for i in 0..1000 {
            prod *= 1.0 - (1e-4 + (0.02 - 1e-4) * i as f64 / 999.0);
            ab.push(prod);
        }
        vec![
            Interpolant::OptimalTransport,
            Interpolant::Cosine { nu: 1.0 },
            Interpolant::Discrete { alpha_bar: ab },
        ]
    }

    #[test]
    fn the_four_parameterisations_give_one_drift() {
        for schedule in schedules() {
            for noise in [Diffusion::Memoryless, Diffusion::Constant(0.8)] {
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
                            let k = sde_coefficients(&schedule, noise, output, t);
                            let f = exact_output(output, &k.interpolant, x);
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
        let k = sde_coefficients(
            &Interpolant::OptimalTransport,
            Diffusion::Memoryless,
            OutputType::Velocity,
            0.25,
        );
        assert!((k.kappa - 4.0).abs() < 1e-12);
        assert!((k.eta - 3.0).abs() < 1e-12);
        assert!((k.sigma_m - 6f64.sqrt()).abs() < 1e-12);
        assert_eq!(k.drift, DriftCoefficients { a: -4.0, b: 2.0 });
    }

    /// For Gaussian data `N(m, v)` every output is affine in `x`, so the drift is `A x + B`
    /// and the SDE moves mean and variance by `dm/dt = A m + B`, `dV/dt = 2 A V + s^2`. Those
    /// must be the interpolant's own `alpha m` and `alpha^2 v + beta^2` at every time, for
    /// every interpolant, output type and diffusion coefficient: a wrong `s^2 / 2` anywhere in
    /// the drift breaks the variance equation.
    #[test]
    fn the_drift_keeps_the_interpolants_marginals() {
        let (m, v) = (0.7, 0.3);
        let mut interpolants = schedules();
        interpolants.push(Interpolant::Cosine { nu: 0.7 });
        interpolants.push(
            Interpolant::from_plugin(&flowgym_plugin_api::ScheduleSpec::Tabulated {
                t: vec![0.0, 0.5, 1.0].into(),
                alpha: vec![0.0, 0.4, 1.0].into(),
                beta: vec![1.0, 0.8, 0.0].into(),
                alpha_dot: vec![0.8, 1.2, 1.2].into(),
                beta_dot: vec![-0.4, -1.6, -1.6].into(),
            })
            .unwrap(),
        );
        let outputs = [
            OutputType::Velocity,
            OutputType::Epsilon,
            OutputType::Score,
            OutputType::Endpoint,
        ];
        let noises = [
            Diffusion::Memoryless,
            Diffusion::Constant(0.0),
            Diffusion::Constant(0.8),
        ];
        for interpolant in &interpolants {
            for output in outputs {
                for noise in noises {
                    for &t in &[0.05, 0.3, 0.6, 0.9] {
                        let k = sde_coefficients(interpolant, noise, output, t);
                        let c = k.interpolant;
                        let f0 = exact_output(output, &c, 0.0);
                        let f1 = exact_output(output, &c, 1.0) - f0;
                        let (slope, offset) = (k.drift.a + k.drift.b * f1, k.drift.b * f0);
                        let mean = c.alpha * m;
                        let var = c.alpha * c.alpha * v + c.beta * c.beta;
                        let dmean = c.alpha_dot * m;
                        let dvar = 2.0 * c.alpha * c.alpha_dot * v + 2.0 * c.beta * c.beta_dot;
                        let what = format!("{interpolant:?} {output:?} {noise:?} t={t}");
                        assert!((slope * mean + offset - dmean).abs() < 1e-9, "mean: {what}");
                        assert!(
                            (2.0 * slope * var + k.s * k.s - dvar).abs()
                                < 1e-9 * dvar.abs().max(1.0),
                            "variance: {what}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_output_type_gives_the_same_endpoint_estimate() {
        let mut interpolants = schedules();
        interpolants.push(Interpolant::Cosine { nu: 0.7 });
        for interpolant in &interpolants {
            for &t in &[0.05, 0.5, 0.99] {
                let c = interpolant.at(t);
                for &x in &[-1.0, 0.3, 2.0] {
                    let truth = exact_output(OutputType::Endpoint, &c, x);
                    for output in [
                        OutputType::Velocity,
                        OutputType::Epsilon,
                        OutputType::Score,
                        OutputType::Endpoint,
                    ] {
                        let e = endpoint_coefficients(output, &c);
                        let estimate = e.x * x + e.f * exact_output(output, &c, x);
                        assert!(
                            (estimate - truth).abs() < 1e-9 * truth.abs().max(1.0),
                            "{interpolant:?} {output:?} t={t} x={x}: {estimate} vs {truth}"
                        );
                    }
                }
            }
        }
    }
}
