//! Toy rewards on the real line, in plain Rust: this plugin file does not link libtorch, so it
//! builds in seconds and runs under any host of a compatible plugin-api version.
//!
//! - `1d/binary`: 1 on `[low, high]` (default `[0, 1]`), else 0.
//! - `1d/gaussian`: the density of `N(mean, std^2)` (default `N(-2.5, 0.8^2)`).

use flowgym_plugin_api::{
    arguments, register_data_type, register_reward, Batch, ConstructContext, DType, Dim, Kwargs,
    LeafSpec, ManagedTensor, PluginError, PluginResult, Reward, RewardOutput,
};

register_data_type! { standard: flowgym_plugin_api::standard::ONE_D }

/// The leaf both rewards read.
fn points() -> Vec<LeafSpec> {
    vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Fixed(1)])]
}

/// The values of leaf `x`, checked to be `[n, 1]`.
fn read_points(sample: &Batch) -> PluginResult<Vec<f32>> {
    let x = sample.require("x")?;
    if x.shape().len() != 2 || x.shape()[1] != 1 {
        return Err(PluginError::new(format!(
            "leaf `x` must have shape [n, 1], got {:?}",
            x.shape()
        )));
    }
    Ok(x.to_vec::<f32>()?)
}

fn scores(sample: &Batch, score: impl Fn(f64) -> f64) -> PluginResult<RewardOutput> {
    let x = read_points(sample)?;
    let r: Vec<f32> = x.iter().map(|&v| score(f64::from(v)) as f32).collect();
    Ok(RewardOutput::all_valid(ManagedTensor::from_slice(&r)))
}

arguments! {
    /// Arguments of `1d/binary`.
    pub struct BinaryArgs {
        /// Left end of the rewarded interval.
        low: f64 = 0.0;
        /// Right end of the rewarded interval.
        high: f64 = 1.0;
    }
}

/// 1 inside the interval, 0 outside.
pub struct Binary {
    args: BinaryArgs,
}

impl Binary {
    /// Checks the interval is not empty.
    pub fn new(args: BinaryArgs, _ctx: &ConstructContext) -> PluginResult<Self> {
        if args.low.is_nan() || args.high.is_nan() || args.low > args.high {
            return Err(PluginError::new(format!(
                "argument `low` ({}) must not exceed `high` ({})",
                args.low, args.high
            )));
        }
        Ok(Self { args })
    }
}

impl Reward for Binary {
    fn reward(
        &mut self,
        sample: Batch,
        _latent: Batch,
        _kwargs: Kwargs,
    ) -> PluginResult<RewardOutput> {
        let (low, high) = (self.args.low, self.args.high);
        scores(
            &sample,
            |x| if (low..=high).contains(&x) { 1.0 } else { 0.0 },
        )
    }
}

register_reward! {
    id: "1d/binary",
    version: "1.0.0",
    data_type: ("1d", "1.0.0"),
    description: "1 on [low, high] (default [0, 1]), else 0",
    arguments: BinaryArgs,
    leaves: points(),
    construct: Binary::new,
}

arguments! {
    /// Arguments of `1d/gaussian`.
    pub struct GaussianArgs {
        /// Mean of the rewarding density.
        mean: f64 = -2.5;
        /// Standard deviation of the rewarding density (positive).
        std: f64 = 0.8;
    }
}

/// The density of a normal distribution.
pub struct Gaussian {
    args: GaussianArgs,
}

impl Gaussian {
    /// Checks the standard deviation is positive.
    pub fn new(args: GaussianArgs, _ctx: &ConstructContext) -> PluginResult<Self> {
        if !(args.std > 0.0 && args.std.is_finite()) {
            return Err(PluginError::new(format!(
                "argument `std` must be positive, got {}",
                args.std
            )));
        }
        Ok(Self { args })
    }
}

impl Reward for Gaussian {
    fn reward(
        &mut self,
        sample: Batch,
        _latent: Batch,
        _kwargs: Kwargs,
    ) -> PluginResult<RewardOutput> {
        let (mean, std) = (self.args.mean, self.args.std);
        let norm = 1.0 / (std * (2.0 * std::f64::consts::PI).sqrt());
        scores(&sample, |x| {
            norm * (-0.5 * ((x - mean) / std).powi(2)).exp()
        })
    }
}

register_reward! {
    id: "1d/gaussian",
    version: "1.0.0",
    data_type: ("1d", "1.0.0"),
    description: "Density of N(mean, std^2) (default N(-2.5, 0.8^2))",
    arguments: GaussianArgs,
    leaves: points(),
    construct: Gaussian::new,
}

flowgym_plugin_api::export_plugin!();

#[cfg(test)]
mod tests {
    use super::*;
    use flowgym_plugin_api::Arguments;

    fn batch(values: &[f32]) -> Batch {
        let x = ManagedTensor::from_vec(values.to_vec(), &[values.len(), 1]).unwrap();
        Batch::single("1d", "x", x)
    }

    fn score(reward: &mut dyn Reward, values: &[f32]) -> Vec<f32> {
        let out = reward
            .reward(batch(values), batch(values), Kwargs::new())
            .unwrap();
        out.reward.to_vec::<f32>().unwrap()
    }

    #[test]
    fn binary_is_one_on_the_closed_interval() {
        let mut r = Binary::new(BinaryArgs::default(), &ConstructContext::cpu()).unwrap();
        assert_eq!(
            score(&mut r, &[-0.1, 0.0, 0.5, 1.0, 1.01]),
            vec![0.0, 1.0, 1.0, 1.0, 0.0]
        );
    }

    #[test]
    fn gaussian_is_the_normal_density() {
        let mut r = Gaussian::new(GaussianArgs::default(), &ConstructContext::cpu()).unwrap();
        let got = score(&mut r, &[-2.5, -1.7]);
        let peak = 1.0 / (0.8 * (2.0 * std::f64::consts::PI).sqrt());
        assert!((f64::from(got[0]) - peak).abs() < 1e-6);
        assert!((f64::from(got[1]) - peak * (-0.5f64).exp()).abs() < 1e-6);
    }

    #[test]
    fn bad_shapes_and_arguments_are_explained() {
        let mut r = Binary::new(BinaryArgs::default(), &ConstructContext::cpu()).unwrap();
        let flat = Batch::single("1d", "x", ManagedTensor::from_slice(&[1.0f32, 2.0]));
        let err = r.reward(flat, batch(&[0.0]), Kwargs::new()).unwrap_err();
        assert_eq!(err.message(), "leaf `x` must have shape [n, 1], got [2]");
        let args = GaussianArgs::from_json(r#"{"std": 0}"#).unwrap();
        assert_eq!(
            Gaussian::new(args, &ConstructContext::cpu())
                .err()
                .unwrap()
                .message(),
            "argument `std` must be positive, got 0"
        );
    }
}
