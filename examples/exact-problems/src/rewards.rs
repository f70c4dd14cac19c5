//! Rewards on `vec` samples whose tilt of a Gaussian mixture is known exactly or to high
//! precision. All return float32 `[n]` rewards, every sample valid; vector arguments must have
//! the samples' dimension `d`, checked at each call.
//!
//! - `vec/halfspace`: `1[normal . x >= offset]`.
//! - `vec/box`: `1[low <= x <= high]`, elementwise.
//! - `vec/bump`: `exp(-|x - center|^2 / (2 width^2))`.
//! - `vec/linear`: `weights . x + bias`.

use flowgym_plugin_api::{
    arguments, register_reward, Batch, ConstructContext, DType, Dim, Kwargs, LeafSpec,
    ManagedTensor, PluginResult, Reward, RewardOutput,
};

use crate::{read_points, DATA_TYPE};

/// The leaf every reward reads.
fn leaves() -> Vec<LeafSpec> {
    vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Any])]
}

/// Refuses an empty or non-finite vector argument.
fn check_vector(name: &str, values: &[f64]) -> PluginResult<()> {
    if values.is_empty() {
        return Err(format!("argument `{name}` must not be empty").into());
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(format!("argument `{name}` must hold finite numbers, got {v}").into());
    }
    Ok(())
}

fn check_number(name: &str, value: f64) -> PluginResult<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(format!("argument `{name}` must be finite, got {value}").into())
    }
}

/// Refuses a vector argument whose length is not the samples' dimension.
fn check_dim(name: &str, len: usize, dim: usize) -> PluginResult<()> {
    if len == dim {
        Ok(())
    } else {
        Err(
            format!("argument `{name}` has {len} entries but the samples have dimension {dim}")
                .into(),
        )
    }
}

/// Scores each point of leaf `x` after checking the named vector arguments against `d`.
fn score(
    sample: &Batch,
    vectors: &[(&str, usize)],
    f: impl Fn(&[f64]) -> f64,
) -> PluginResult<RewardOutput> {
    let points = read_points(sample)?;
    for (name, len) in vectors {
        check_dim(name, *len, points.dim)?;
    }
    // `read_points` guarantees d >= 1.
    let r: Vec<f32> = points
        .values
        .chunks(points.dim)
        .map(|x| f(x) as f32)
        .collect();
    Ok(RewardOutput::all_valid(ManagedTensor::from_slice(&r)))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

arguments! {
    /// Arguments of `vec/halfspace`.
    pub struct HalfSpaceArgs {
        /// Normal of the half-space (d numbers, not all zero).
        normal: Vec<f64> = vec![1.0];
        /// The reward is 1 where normal . x >= offset.
        offset: f64 = 0.0;
    }
}

/// `1[normal . x >= offset]`.
pub struct HalfSpace(HalfSpaceArgs);

impl HalfSpace {
    /// Checks the normal is finite and not zero.
    pub fn new(args: HalfSpaceArgs, _ctx: &ConstructContext) -> PluginResult<Self> {
        check_vector("normal", &args.normal)?;
        if args.normal.iter().all(|v| *v == 0.0) {
            return Err("argument `normal` must not be zero".into());
        }
        check_number("offset", args.offset)?;
        Ok(Self(args))
    }
}

impl Reward for HalfSpace {
    fn reward(&mut self, sample: Batch, _: Batch, _: Kwargs) -> PluginResult<RewardOutput> {
        let a = &self.0;
        score(&sample, &[("normal", a.normal.len())], |x| {
            if dot(&a.normal, x) >= a.offset {
                1.0
            } else {
                0.0
            }
        })
    }
}

register_reward! {
    id: "vec/halfspace",
    version: "1.0.0",
    data_type: (DATA_TYPE, "1.0.0"),
    description: "1 where normal . x >= offset, else 0",
    arguments: HalfSpaceArgs,
    leaves: leaves(),
    construct: HalfSpace::new,
}

arguments! {
    /// Arguments of `vec/box`.
    pub struct BoxArgs {
        /// Lower corner (d numbers).
        low: Vec<f64> = vec![0.0];
        /// Upper corner (d numbers, each at least the lower one).
        high: Vec<f64> = vec![1.0];
    }
}

/// `1[low <= x <= high]`, elementwise.
pub struct BoxReward(BoxArgs);

impl BoxReward {
    /// Checks the corners are finite, of one length and ordered.
    pub fn new(args: BoxArgs, _ctx: &ConstructContext) -> PluginResult<Self> {
        check_vector("low", &args.low)?;
        check_vector("high", &args.high)?;
        if args.low.len() != args.high.len() {
            return Err(format!(
                "arguments `low` and `high` have {} and {} entries; they must have one length",
                args.low.len(),
                args.high.len()
            )
            .into());
        }
        if let Some(i) = (0..args.low.len()).find(|&i| args.low[i] > args.high[i]) {
            return Err(format!(
                "argument `low` exceeds `high` at coordinate {i}: {} > {}",
                args.low[i], args.high[i]
            )
            .into());
        }
        Ok(Self(args))
    }
}

impl Reward for BoxReward {
    fn reward(&mut self, sample: Batch, _: Batch, _: Kwargs) -> PluginResult<RewardOutput> {
        let a = &self.0;
        score(&sample, &[("low", a.low.len())], |x| {
            let inside = x
                .iter()
                .zip(a.low.iter().zip(&a.high))
                .all(|(v, (lo, hi))| lo <= v && v <= hi);
            if inside {
                1.0
            } else {
                0.0
            }
        })
    }
}

register_reward! {
    id: "vec/box",
    version: "1.0.0",
    data_type: (DATA_TYPE, "1.0.0"),
    description: "1 where low <= x <= high elementwise, else 0",
    arguments: BoxArgs,
    leaves: leaves(),
    construct: BoxReward::new,
}

arguments! {
    /// Arguments of `vec/bump`.
    pub struct BumpArgs {
        /// Centre of the bump (d numbers).
        center: Vec<f64> = vec![0.0];
        /// Width (positive): the reward is exp(-|x - center|^2 / (2 width^2)).
        width: f64 = 1.0;
    }
}

/// `exp(-|x - center|^2 / (2 width^2))`.
pub struct Bump(BumpArgs);

impl Bump {
    /// Checks the centre is finite and the width positive.
    pub fn new(args: BumpArgs, _ctx: &ConstructContext) -> PluginResult<Self> {
        check_vector("center", &args.center)?;
        if !(args.width > 0.0 && args.width.is_finite()) {
            return Err(format!("argument `width` must be positive, got {}", args.width).into());
        }
        Ok(Self(args))
    }
}

impl Reward for Bump {
    fn reward(&mut self, sample: Batch, _: Batch, _: Kwargs) -> PluginResult<RewardOutput> {
        let a = &self.0;
        score(&sample, &[("center", a.center.len())], |x| {
            let sq: f64 = x.iter().zip(&a.center).map(|(v, c)| (v - c).powi(2)).sum();
            (-sq / (2.0 * a.width * a.width)).exp()
        })
    }
}

register_reward! {
    id: "vec/bump",
    version: "1.0.0",
    data_type: (DATA_TYPE, "1.0.0"),
    description: "exp(-|x - center|^2 / (2 width^2)): a Gaussian bump, 1 at its centre",
    arguments: BumpArgs,
    leaves: leaves(),
    construct: Bump::new,
}

arguments! {
    /// Arguments of `vec/linear`.
    pub struct LinearArgs {
        /// Weights (d numbers).
        weights: Vec<f64> = vec![1.0];
        /// Constant added.
        bias: f64 = 0.0;
    }
}

/// `weights . x + bias`.
pub struct Linear(LinearArgs);

impl Linear {
    /// Checks the weights and bias are finite.
    pub fn new(args: LinearArgs, _ctx: &ConstructContext) -> PluginResult<Self> {
        check_vector("weights", &args.weights)?;
        check_number("bias", args.bias)?;
        Ok(Self(args))
    }
}

impl Reward for Linear {
    fn reward(&mut self, sample: Batch, _: Batch, _: Kwargs) -> PluginResult<RewardOutput> {
        let a = &self.0;
        score(&sample, &[("weights", a.weights.len())], |x| {
            dot(&a.weights, x) + a.bias
        })
    }
}

register_reward! {
    id: "vec/linear",
    version: "1.0.0",
    data_type: (DATA_TYPE, "1.0.0"),
    description: "weights . x + bias (unbounded: its tilt of a Gaussian mixture is again one)",
    arguments: LinearArgs,
    leaves: leaves(),
    construct: Linear::new,
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgym_plugin_api::Arguments;

    fn batch(points: &[&[f32]]) -> Batch {
        let d = points[0].len();
        let flat: Vec<f32> = points.iter().flat_map(|p| p.iter().copied()).collect();
        Batch::single(
            DATA_TYPE,
            "x",
            ManagedTensor::from_vec(flat, &[points.len(), d]).unwrap(),
        )
    }

    fn rewards(reward: &mut dyn Reward, points: &[&[f32]]) -> PluginResult<Vec<f32>> {
        let out = reward.reward(batch(points), batch(points), Kwargs::new())?;
        assert!(out.valid.is_none());
        assert_eq!(out.reward.dtype(), Some(DType::F32));
        Ok(out.reward.to_vec::<f32>()?)
    }

    fn ctx() -> ConstructContext {
        ConstructContext::cpu()
    }

    #[test]
    fn half_space_counts_its_boundary_in() {
        let args = HalfSpaceArgs::from_json(r#"{"normal": [1, 1], "offset": 1}"#).unwrap();
        let mut r = HalfSpace::new(args, &ctx()).unwrap();
        let got = rewards(
            &mut r,
            &[&[0.5, 0.5], &[0.0, 0.9], &[3.0, -1.0], &[-4.0, 1.0]],
        )
        .unwrap();
        assert_eq!(got, vec![1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn box_is_closed_on_both_sides() {
        let args = BoxArgs::from_json(r#"{"low": [0, -1], "high": [1, 1]}"#).unwrap();
        let mut r = BoxReward::new(args, &ctx()).unwrap();
        let got = rewards(
            &mut r,
            &[&[0.0, 1.0], &[0.5, 0.0], &[1.5, 0.0], &[0.5, -1.5]],
        )
        .unwrap();
        assert_eq!(got, vec![1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn bump_and_linear_match_hand_computed_values() {
        let args = BumpArgs::from_json(r#"{"center": [1, 2], "width": 0.5}"#).unwrap();
        let mut r = Bump::new(args, &ctx()).unwrap();
        let got = rewards(&mut r, &[&[1.0, 2.0], &[1.5, 2.0], &[0.0, 3.0]]).unwrap();
        // |x - c|^2 = 0, 0.25, 2; 2 width^2 = 0.5.
        let want = [1.0, (-0.5f64).exp(), (-4.0f64).exp()];
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-7, "{g} vs {w}");
        }
        let args = LinearArgs::from_json(r#"{"weights": [2, -1, 0.5], "bias": 0.25}"#).unwrap();
        let mut r = Linear::new(args, &ctx()).unwrap();
        let got = rewards(&mut r, &[&[1.0, 1.0, 1.0], &[0.0, 2.0, -4.0]]).unwrap();
        assert_eq!(got, vec![1.75, -3.75]);
    }

    #[test]
    fn vector_arguments_must_have_the_samples_dimension() {
        let mut r = HalfSpace::new(HalfSpaceArgs::default(), &ctx()).unwrap();
        assert_eq!(
            rewards(&mut r, &[&[1.0, 2.0]]).unwrap_err().message(),
            "argument `normal` has 1 entries but the samples have dimension 2"
        );
        let mut r = BoxReward::new(BoxArgs::default(), &ctx()).unwrap();
        assert_eq!(
            rewards(&mut r, &[&[1.0, 2.0, 3.0]]).unwrap_err().message(),
            "argument `low` has 1 entries but the samples have dimension 3"
        );
        let mut r = Bump::new(BumpArgs::default(), &ctx()).unwrap();
        assert_eq!(
            rewards(&mut r, &[&[1.0, 2.0]]).unwrap_err().message(),
            "argument `center` has 1 entries but the samples have dimension 2"
        );
        let mut r = Linear::new(LinearArgs::default(), &ctx()).unwrap();
        assert_eq!(
            rewards(&mut r, &[&[1.0, 2.0]]).unwrap_err().message(),
            "argument `weights` has 1 entries but the samples have dimension 2"
        );
    }

    #[test]
    fn malformed_arguments_are_refused_by_name() {
        let err = |e: PluginResult<()>| e.unwrap_err().message().to_string();
        let half =
            |json: &str| HalfSpace::new(HalfSpaceArgs::from_json(json).unwrap(), &ctx()).map(drop);
        assert_eq!(
            err(half(r#"{"normal": [0, 0]}"#)),
            "argument `normal` must not be zero"
        );
        assert_eq!(
            err(half(r#"{"normal": []}"#)),
            "argument `normal` must not be empty"
        );
        let boxed =
            |json: &str| BoxReward::new(BoxArgs::from_json(json).unwrap(), &ctx()).map(drop);
        assert_eq!(
            err(boxed(r#"{"low": [0, 0], "high": [1]}"#)),
            "arguments `low` and `high` have 2 and 1 entries; they must have one length"
        );
        assert_eq!(
            err(boxed(r#"{"low": [0, 2], "high": [1, 1]}"#)),
            "argument `low` exceeds `high` at coordinate 1: 2 > 1"
        );
        let bump = |json: &str| Bump::new(BumpArgs::from_json(json).unwrap(), &ctx()).map(drop);
        assert_eq!(
            err(bump(r#"{"width": 0}"#)),
            "argument `width` must be positive, got 0"
        );
        let linear =
            |json: &str| Linear::new(LinearArgs::from_json(json).unwrap(), &ctx()).map(drop);
        assert_eq!(
            err(linear(r#"{"weights": []}"#)),
            "argument `weights` must not be empty"
        );
        assert_eq!(
            LinearArgs::from_json(r#"{"weight": [1]}"#)
                .unwrap_err()
                .to_string(),
            "unknown argument `weight`; accepted: weights, bias"
        );
    }
}
