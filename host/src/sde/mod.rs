//! The stochastic differential equation the host samples: the model's interpolant
//! `x_t = alpha(t) x_1 + beta(t) x_0` (`t = 0` noise, `t = 1` data), the diffusion coefficient
//! `s(t)`, the base drift of each output type, and the Euler-Maruyama sampler that records
//! trajectories. The mathematics, with derivations, is in `docs/mathematics.md`.

pub mod control_point;
pub mod diffusion;
pub mod drift;
pub mod final_step;
pub mod interpolant;
pub mod sampler;
pub mod time_grid;

pub use control_point::ControlPoint;
pub use diffusion::Diffusion;
pub use drift::{
    endpoint_coefficients, sde_coefficients, DriftCoefficients, EndpointCoefficients,
    SdeCoefficients,
};
pub use final_step::FinalStep;
pub use interpolant::{Interpolant, InterpolantAt};
pub use sampler::{
    never_stop, sample, Control, Interrupted, SampleRequest, SamplerOptions, Trajectory,
};
pub use time_grid::{time_grid, TimeGrid};
