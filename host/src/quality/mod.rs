//! The quality reference: problems whose Value Matching optimum is known exactly or to high
//! precision, computed independently of the plugins and of libtorch, in plain `f64` Rust.
//!
//! For a base distribution `p_base` and a reward `r`, the optimum of `lambda E_p[r] -
//! KL(p || p_base)` is the tilt `p*(x) ∝ p_base(x) exp(lambda r(x))`. When the base is a
//! Gaussian mixture (the exact flow of `vec/gmm` in the `exact-problems` plugin) and the reward
//! is a half-space, box, Gaussian bump or linear function (`vec/halfspace`, `vec/box`,
//! `vec/bump`, `vec/linear`), `E_p*[r]`, `log Z` and exact samples of `p*` can be computed:
//!
//! - [`exact`]: [`Gmm`], [`RewardSpec`] and [`tilted_optimum`], which says for each quantity
//!   whether it is a closed form, a quadrature or a Monte Carlo estimate with its standard
//!   error, and refuses (never guesses) what it cannot compute.
//! - [`distance`]: 1-Wasserstein in 1-d, sliced 1-Wasserstein and the energy distance between
//!   sample sets.
//! - [`suite`]: the problems of `bench quality`, each carrying the argument documents of the
//!   plugin entries it runs, generated from the same values as its reference.
//!
//! Randomness comes from a seeded generator of its own (xoshiro256**), so results are
//! reproducible bit for bit from a seed.

pub mod distance;
pub mod exact;
mod linalg;
mod special;
pub mod suite;

pub use distance::{
    energy_distance, sliced_wasserstein1, sliced_wasserstein1_weighted, wasserstein1,
    wasserstein1_1d, Weighted,
};
pub use exact::{
    tilted_optimum, tilted_optimum_with, Estimate, Gmm, Optimum, OptimumOptions, RewardSpec,
};
pub use special::{erfc, normal_cdf, normal_sf};
pub use suite::{
    fast_subset, suite, ModelOutput, ModelSchedule, Problem, MODEL_ID, POINTS_MODEL_ID,
};
