//! A base model and a reward built against the frozen plugin-api 1.0.
//!
//! `1d/frozen-gaussian` is the exact optimal-transport flow from N(0, 1) to N(mean, std^2);
//! `1d/frozen-linear` rewards `x` itself, so the optimum of Value Matching at scale `lambda` is
//! N(mean + lambda std^2, std^2).

use flowgym_plugin_api::*;

arguments! {
    /// Arguments of `1d/frozen-gaussian`.
    pub struct GaussianArgs {
        /// Mean of the data distribution.
        mean: f64 = 1.0;
        /// Standard deviation of the data distribution.
        std: f64 = 0.5 => greater_than(0);
    }
}

/// The exact flow: `x_t = t x_1 + (1 - t) x_0` with `x_0 ~ N(0, 1)`, `x_1 ~ N(mean, std^2)`.
struct Gaussian {
    args: GaussianArgs,
    state: u64,
}

impl Gaussian {
    fn uniform(&mut self) -> f64 {
        // SplitMix64: a seeded generator of the plugin's own, as the contract asks of
        // libtorch-free models.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(f64::MIN_POSITIVE);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

impl BaseModel for Gaussian {
    fn output_type(&self) -> OutputType {
        OutputType::Velocity
    }

    fn schedule(&self) -> ScheduleSpec {
        ScheduleSpec::OptimalTransport
    }

    fn sample_p0(&mut self, n: usize, seed: u64) -> PluginResult<(Batch, Kwargs)> {
        self.state = seed;
        let z: Vec<f32> = (0..n).map(|_| self.normal() as f32).collect();
        Ok((
            Batch::single("1d", "x", ManagedTensor::from_vec(z, &[n, 1])?),
            Kwargs::new(),
        ))
    }

    fn forward(&mut self, x: Batch, t: ManagedTensor, _kwargs: Kwargs) -> PluginResult<Batch> {
        let x = x.require("x")?.to_vec::<f32>()?;
        let t = t.to_vec::<f32>()?;
        if t.len() != x.len() {
            return Err(PluginError::new(format!(
                "{} times for {} samples",
                t.len(),
                x.len()
            )));
        }
        let (m, s2) = (self.args.mean, self.args.std * self.args.std);
        // E[x_1 - x_0 | x_t = x] for the Gaussian pair.
        let v: Vec<f32> = x
            .iter()
            .zip(&t)
            .map(|(&x, &t)| {
                let (x, t) = (f64::from(x), f64::from(t));
                let var = t * t * s2 + (1.0 - t) * (1.0 - t);
                (m + (t * s2 - (1.0 - t)) / var * (x - t * m)) as f32
            })
            .collect();
        let n = v.len();
        Ok(Batch::single(
            "1d",
            "x",
            ManagedTensor::from_vec(v, &[n, 1])?,
        ))
    }
}

/// `r(x) = x`.
struct Linear;

impl Reward for Linear {
    fn reward(
        &mut self,
        sample: Batch,
        _latent: Batch,
        _kwargs: Kwargs,
    ) -> PluginResult<RewardOutput> {
        let x = sample.require("x")?.to_vec::<f32>()?;
        Ok(RewardOutput::all_valid(ManagedTensor::from_slice(&x)))
    }
}

register_data_type! { standard: standard::ONE_D }

register_base_model! {
    id: "1d/frozen-gaussian",
    version: "1.0.0",
    data_type: ("1d", "1.0.0"),
    description: "Exact flow from N(0, 1) to N(mean, std^2), built against plugin-api 1.0",
    arguments: GaussianArgs,
    leaves: vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Fixed(1)])],
    construct: |args: GaussianArgs, _ctx: &ConstructContext| Ok::<_, PluginError>(Gaussian { args, state: 0 }),
}

register_reward! {
    id: "1d/frozen-linear",
    version: "1.0.0",
    data_type: ("1d", "1.0.0"),
    description: "r(x) = x, built against plugin-api 1.0",
    arguments: NoArguments,
    leaves: vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Fixed(1)])],
    construct: |_: NoArguments, _ctx: &ConstructContext| Ok::<_, PluginError>(Linear),
}

export_plugin!();
