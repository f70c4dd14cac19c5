//! A reward plugin written the way a third party would: it depends on
//! `flowgym-plugin-api` alone, links no libtorch, and builds in seconds.
//!
//! `1d/closeness` scores points on the line by how close they are to a target:
//! `exp(-|x - target| / width)`.
//!
//! Build it with `cargo build --release` in this directory and drop
//! `target/release/libthird_party_reward.so` (`.dylib`, `.dll`) into a plugin directory, e.g.
//! `~/.local/share/flowgym/plugins/`, or pass `--plugins DIR` to `flowgym-host`.

use flowgym_plugin_api::{
    arguments, register_reward, Batch, ConstructContext, DType, Dim, Kwargs, LeafSpec,
    ManagedTensor, PluginError, PluginResult, Reward, RewardOutput,
};

arguments! {
    /// Arguments of `1d/closeness`.
    pub struct ClosenessArgs {
        /// The point that scores 1.
        target: f64 = 2.0;
        /// How fast the score decays with the distance (positive).
        width: f64 = 0.5;
    }
}

/// `exp(-|x - target| / width)`.
pub struct Closeness {
    args: ClosenessArgs,
}

impl Closeness {
    /// Checks the width is positive.
    pub fn new(args: ClosenessArgs, _ctx: &ConstructContext) -> PluginResult<Self> {
        if args.width.is_nan() || args.width <= 0.0 {
            return Err(PluginError::new(format!(
                "argument `width` must be positive, got {}",
                args.width
            )));
        }
        Ok(Self { args })
    }
}

impl Reward for Closeness {
    fn reward(
        &mut self,
        sample: Batch,
        _latent: Batch,
        _kwargs: Kwargs,
    ) -> PluginResult<RewardOutput> {
        let x = sample.require("x")?.to_vec::<f32>()?;
        let scores: Vec<f32> = x
            .iter()
            .map(|&v| (-(f64::from(v) - self.args.target).abs() / self.args.width).exp() as f32)
            .collect();
        Ok(RewardOutput::all_valid(ManagedTensor::from_slice(&scores)))
    }
}

register_reward! {
    id: "1d/closeness",
    version: "0.1.0",
    data_type: ("1d", "1.0.0"),
    description: "exp(-|x - target| / width): a third-party reward built only against flowgym-plugin-api",
    arguments: ClosenessArgs,
    leaves: vec![LeafSpec::new("x", DType::F32, [Dim::Batch, Dim::Fixed(1)])],
    construct: Closeness::new,
}

// `1d` is a standard data type: declared identically by every plugin that uses it.
flowgym_plugin_api::register_data_type! { standard: flowgym_plugin_api::standard::ONE_D }

flowgym_plugin_api::export_plugin!();
