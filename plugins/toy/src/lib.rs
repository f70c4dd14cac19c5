//! Toy base models whose flows are known in closed form, for proving Value Matching against
//! exact optima.
//!
//! `1d/gmm` is the exact velocity field of the optimal-transport path
//! `x_t = t x_1 + (1 - t) x_0` from `x_0 ~ N(0, 1)` to a Gaussian mixture `x_1 ~ sum_k w_k
//! N(mu_k, s_k^2)` (default `0.5 N(0, 1) + 0.5 N(3, 0.4^2)`): no training, no weights.

pub mod gmm;

flowgym_plugin_api::register_data_type! { standard: flowgym_plugin_api::standard::ONE_D }

flowgym_plugin_api::export_plugin!(libtorch);
