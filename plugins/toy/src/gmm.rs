//! `1d/gmm`: the exact optimal-transport flow from `N(0, 1)` to a 1-d Gaussian mixture.
//!
//! For one component `N(mu, s^2)`, `x_t = t x_1 + (1 - t) x_0` is Gaussian with mean `t mu`
//! and variance `v = t^2 s^2 + (1 - t)^2`, and the conditional velocity is
//! `E[x_1 - x_0 | x_t = x] = mu + (t s^2 - (1 - t)) / v * (x - t mu)`. The mixture's velocity
//! averages these with the posterior weights of the components given `x_t = x`.

use flowgym_plugin_api::tch_interop::device_of;
use flowgym_plugin_api::{
    arguments, register_base_model, BaseModel, Batch, ConstructContext, DType, Dim, Kwargs,
    LeafSpec, ManagedTensor, OutputType, PluginError, PluginResult, ScheduleSpec,
};
use tch::{Device, Kind, Tensor};

arguments! {
    /// Arguments of `1d/gmm`: the target mixture.
    pub struct GmmArgs {
        /// Mixture weights (normalised to sum to 1).
        weights: Vec<f64> = vec![0.5, 0.5];
        /// Component means.
        means: Vec<f64> = vec![0.0, 3.0];
        /// Component standard deviations (positive).
        stds: Vec<f64> = vec![1.0, 0.4];
    }
}

/// The target mixture, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixture {
    /// Normalised weights.
    pub weights: Vec<f64>,
    /// Means.
    pub means: Vec<f64>,
    /// Standard deviations.
    pub stds: Vec<f64>,
}

impl Mixture {
    /// Checks the arguments describe a mixture.
    pub fn from_args(args: &GmmArgs) -> PluginResult<Self> {
        let k = args.weights.len();
        if k == 0 || args.means.len() != k || args.stds.len() != k {
            return Err(PluginError::new(format!(
                "arguments `weights`, `means` and `stds` must be non-empty lists of one length, got {}, {} and {}",
                args.weights.len(),
                args.means.len(),
                args.stds.len()
            )));
        }
        if let Some(s) = args.stds.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
            return Err(PluginError::new(format!(
                "argument `stds` must hold positive numbers, got {s}"
            )));
        }
        let total: f64 = args.weights.iter().sum();
        if args.weights.iter().any(|w| !(*w >= 0.0 && w.is_finite())) || total <= 0.0 {
            return Err(PluginError::new(format!(
                "argument `weights` must hold non-negative numbers with a positive sum, got {:?}",
                args.weights
            )));
        }
        Ok(Self {
            weights: args.weights.iter().map(|w| w / total).collect(),
            means: args.means.clone(),
            stds: args.stds.clone(),
        })
    }
}

/// The exact velocity field of the mixture's optimal-transport path.
pub struct GmmFlow {
    device: Device,
    means: Tensor,
    variances: Tensor,
    log_weights: Tensor,
}

impl GmmFlow {
    /// The flow to `mixture`, computing on `device`.
    pub fn new(mixture: &Mixture, device: Device) -> Self {
        let row = |values: Vec<f64>| {
            Tensor::from_slice(&values)
                .to_kind(Kind::Float)
                .view([1, -1])
                .to_device(device)
        };
        Self {
            device,
            means: row(mixture.means.clone()),
            variances: row(mixture.stds.iter().map(|s| s * s).collect()),
            log_weights: row(mixture.weights.iter().map(|w| w.ln()).collect()),
        }
    }

    /// The velocity at `x` (`[n, 1]`) and times `t` (`[n]`).
    pub fn velocity(&self, x: &Tensor, t: &Tensor) -> Tensor {
        let kind = x.kind();
        let x = x.to_kind(Kind::Float);
        let t = t.to_kind(Kind::Float).view([-1, 1]);
        let one_minus_t = t.ones_like() - &t;
        let variance = &t * &t * &self.variances + &one_minus_t * &one_minus_t;
        let deviation = &x - &t * &self.means;
        let log_density =
            &self.log_weights - variance.log() * 0.5 - deviation.square() / (&variance * 2.0);
        let posterior = log_density.softmax(1, Kind::Float);
        let component_velocity =
            &self.means + (&t * &self.variances - one_minus_t) / variance * deviation;
        (posterior * component_velocity)
            .sum_dim_intlist(1, true, Kind::Float)
            .to_kind(kind)
    }
}

impl BaseModel for GmmFlow {
    fn output_type(&self) -> OutputType {
        OutputType::Velocity
    }

    fn schedule(&self) -> ScheduleSpec {
        ScheduleSpec::OptimalTransport
    }

    fn sample_p0(&mut self, n: usize, _seed: u64) -> PluginResult<(Batch, Kwargs)> {
        let x0 = Tensor::randn([n as i64, 1], (Kind::Float, self.device));
        Ok((Batch::from_tch("1d", [("x", &x0)])?, Kwargs::new()))
    }

    fn forward(&mut self, mut x: Batch, t: ManagedTensor, _kwargs: Kwargs) -> PluginResult<Batch> {
        let x = x.take_tch("x")?;
        let t = t.into_tch()?;
        let v = self.velocity(&x, &t);
        Batch::from_tch("1d", [("x", &v)])
    }
}

fn construct(args: GmmArgs, ctx: &ConstructContext) -> PluginResult<GmmFlow> {
    let mixture = Mixture::from_args(&args)?;
    Ok(GmmFlow::new(&mixture, device_of(ctx.device)?))
}

register_base_model! {
    id: "1d/gmm",
    version: "1.0.0",
    data_type: ("1d", "1.0.0"),
    description: "Exact optimal-transport flow from N(0,1) to a Gaussian mixture (default 0.5 N(0,1) + 0.5 N(3,0.4^2))",
    arguments: GmmArgs,
    leaves: vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Fixed(1)])],
    construct: construct,
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgym_plugin_api::Arguments;

    fn default_flow() -> GmmFlow {
        let mixture = Mixture::from_args(&GmmArgs::default()).unwrap();
        GmmFlow::new(&mixture, Device::Cpu)
    }

    /// The velocity must transport the marginals: the continuity equation
    /// d/dt p_t(x) + d/dx (p_t(x) v_t(x)) = 0, checked by finite differences on a grid.
    #[test]
    fn velocity_solves_the_continuity_equation() {
        let flow = default_flow();
        let mixture = Mixture::from_args(&GmmArgs::default()).unwrap();
        let density = |x: f64, t: f64| -> f64 {
            (0..2)
                .map(|k| {
                    let v = t * t * mixture.stds[k].powi(2) + (1.0 - t).powi(2);
                    let d = x - t * mixture.means[k];
                    mixture.weights[k] * (-d * d / (2.0 * v)).exp()
                        / (2.0 * std::f64::consts::PI * v).sqrt()
                })
                .sum()
        };
        let velocity = |x: f64, t: f64| -> f64 {
            let xs = Tensor::from_slice(&[x]).view([1, 1]);
            let ts = Tensor::from_slice(&[t]);
            flow.velocity(&xs, &ts).double_value(&[0, 0])
        };
        let h = 1e-3;
        for &t in &[0.1, 0.5, 0.9] {
            for &x in &[-1.5, 0.0, 1.0, 2.5, 3.2] {
                let dp_dt = (density(x, t + h) - density(x, t - h)) / (2.0 * h);
                let flux = |x: f64| density(x, t) * velocity(x, t);
                let dflux_dx = (flux(x + h) - flux(x - h)) / (2.0 * h);
                assert!(
                    (dp_dt + dflux_dx).abs() < 1e-3,
                    "continuity violated at x={x}, t={t}: {dp_dt} + {dflux_dx}"
                );
            }
        }
    }

    #[test]
    fn at_time_zero_the_velocity_points_to_the_mixture_mean() {
        // With x_t = x_0, E[x_1 - x_0 | x_0 = x] = E[x_1] - x = 1.5 - x.
        let flow = default_flow();
        let x = Tensor::from_slice(&[-1.0f32, 0.0, 2.0]).view([3, 1]);
        let t = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let v = Vec::<f32>::try_from(flow.velocity(&x, &t).view([-1])).unwrap();
        for (got, want) in v.iter().zip([2.5f32, 1.5, -0.5]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn malformed_mixtures_are_refused_by_name() {
        let args = GmmArgs::from_json(r#"{"stds": [1.0, -0.4]}"#).unwrap();
        assert_eq!(
            Mixture::from_args(&args).unwrap_err().message(),
            "argument `stds` must hold positive numbers, got -0.4"
        );
        let args = GmmArgs::from_json(r#"{"means": [0.0]}"#).unwrap();
        assert_eq!(
            Mixture::from_args(&args).unwrap_err().message(),
            "arguments `weights`, `means` and `stds` must be non-empty lists of one length, got 2, 1 and 2"
        );
    }
}
