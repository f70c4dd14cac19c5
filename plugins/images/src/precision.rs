//! The floating-point precision an image model computes in: the `dtype` argument of the image
//! entries (`float32`, `float16`, `bfloat16`, or `auto`).
//!
//! Weights are converted once, when they are read; tensors still cross the plugin boundary as
//! float32, so each model casts its inputs to its precision and its outputs back to float32.
//! What stays in float32 follows diffusers and transformers (see the models' documentation):
//! timestep embeddings are computed in float32 and then cast, attention runs through PyTorch's
//! fused `scaled_dot_product_attention` (whose CPU and CUDA kernels accumulate half-precision
//! inputs in float32, which is why diffusers' default `AttnProcessor2_0` ignores the
//! `upcast_attention` and `upcast_softmax` settings), and GroupNorm and LayerNorm take their
//! statistics in float32 inside the same libtorch kernels PyTorch calls.

use tch::{Device, Kind, Tensor};

/// The values the `dtype` argument accepts.
pub const DTYPES: [&str; 4] = ["auto", "float32", "float16", "bfloat16"];

/// A floating-point precision a model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// IEEE single precision (the default on the CPU).
    #[default]
    Float32,
    /// IEEE half precision: 11 significant bits, largest finite value 65504 (the default on
    /// CUDA, as users run Stable Diffusion on GPUs).
    Float16,
    /// bfloat16: 8 significant bits with float32's range.
    BFloat16,
}

/// A precision that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrecisionError {
    /// The `dtype` argument is not one of [`DTYPES`].
    #[error(
        "argument `dtype` is {value:?}; accepted: \"auto\", \"float32\", \"float16\", \"bfloat16\""
    )]
    Unknown {
        /// What was given.
        value: String,
    },
    /// libtorch cannot run the operations of the models in this precision on this device.
    #[error(
        "{entry}: {dtype} does not run on {device:?} with this libtorch ({message}); use \
         {instead} (argument `dtype`)"
    )]
    Unsupported {
        /// The entry.
        entry: String,
        /// The precision asked for.
        dtype: &'static str,
        /// The device.
        device: Device,
        /// libtorch's error.
        message: String,
        /// What to use instead.
        instead: &'static str,
    },
    /// A model produced values that are not finite in half precision.
    #[error(
        "{entry}: {what} computed in {dtype} has {count} non-finite values of {total} \
         ({advice})"
    )]
    NonFinite {
        /// The entry.
        entry: String,
        /// Which output.
        what: String,
        /// The precision.
        dtype: &'static str,
        /// How many values are NaN or infinite.
        count: i64,
        /// How many values there are.
        total: i64,
        /// What to do.
        advice: &'static str,
    },
}

impl From<PrecisionError> for flowgym_plugin_api::PluginError {
    fn from(e: PrecisionError) -> Self {
        Self::new(e.to_string())
    }
}

impl Precision {
    /// The precision the `dtype` argument `value` names on `device`: `auto` is float32 on the
    /// CPU (where half precision is slower on most processors) and float16 on CUDA.
    pub fn resolve(value: &str, device: Device) -> Result<Self, PrecisionError> {
        match value {
            "auto" if device.is_cuda() => Ok(Self::Float16),
            "auto" | "float32" => Ok(Self::Float32),
            "float16" => Ok(Self::Float16),
            "bfloat16" => Ok(Self::BFloat16),
            other => Err(PrecisionError::Unknown {
                value: other.to_string(),
            }),
        }
    }

    /// The precision of tensors of `kind` (float32 for any kind but float16 and bfloat16).
    pub fn of_kind(kind: Kind) -> Self {
        match kind {
            Kind::Half => Self::Float16,
            Kind::BFloat16 => Self::BFloat16,
            _ => Self::Float32,
        }
    }

    /// The libtorch kind.
    pub fn kind(self) -> Kind {
        match self {
            Self::Float32 => Kind::Float,
            Self::Float16 => Kind::Half,
            Self::BFloat16 => Kind::BFloat16,
        }
    }

    /// Its name, as the `dtype` argument spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Float32 => "float32",
            Self::Float16 => "float16",
            Self::BFloat16 => "bfloat16",
        }
    }

    /// Whether it is a 16-bit format.
    pub fn is_half(self) -> bool {
        self != Self::Float32
    }

    /// Checks that libtorch runs the operations the image models use (convolution, matrix
    /// product, group and layer normalisation, fused attention, softmax, SiLU, GELU, nearest
    /// up-sampling) in this precision on `device`, by running each once on a tiny input; the
    /// error names `entry` and the precision to use instead.
    pub fn check_device(self, entry: &str, device: Device) -> Result<(), PrecisionError> {
        if self == Self::Float32 {
            return Ok(());
        }
        probe(self.kind(), device).map_err(|e| PrecisionError::Unsupported {
            entry: entry.to_string(),
            dtype: self.name(),
            device,
            message: e.to_string().lines().next().unwrap_or_default().to_string(),
            instead: match self {
                Self::Float16 if device.is_cuda() => "float32 (or bfloat16 where the GPU has it)",
                Self::Float16 => "bfloat16 or float32",
                _ => "float32 (or float16 on a GPU)",
            },
        })
    }

    /// Checks that `output` of `entry` (named `what` in the message) is finite when computed
    /// in half precision. float32 outputs are not checked here: the host stops on them.
    pub fn check_finite(
        self,
        entry: &str,
        what: &str,
        output: &Tensor,
    ) -> Result<(), PrecisionError> {
        if !self.is_half() || output.numel() == 0 {
            return Ok(());
        }
        let count = output
            .isfinite()
            .logical_not()
            .sum(Kind::Int64)
            .int64_value(&[]);
        if count == 0 {
            return Ok(());
        }
        Err(PrecisionError::NonFinite {
            entry: entry.to_string(),
            what: what.to_string(),
            dtype: self.name(),
            count,
            total: output.numel() as i64,
            advice: match self {
                Self::Float16 => {
                    "float16 overflow: its largest finite value is 65504; use bfloat16 or \
                     float32 (argument `dtype`)"
                }
                _ => "use float32 (argument `dtype`)",
            },
        })
    }
}

/// Runs each operation the models use once in `kind` on `device`.
fn probe(kind: Kind, device: Device) -> Result<(), tch::TchError> {
    let _guard = tch::no_grad_guard();
    let options = (kind, device);
    let x = Tensor::f_ones([1, 4, 4, 4], options)?;
    let w = Tensor::f_ones([4, 4, 3, 3], options)?;
    let y = x.f_conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)?;
    let y = y.f_group_norm(2, None::<Tensor>, None::<Tensor>, 1e-5, false)?;
    let y = y.f_silu()?.f_upsample_nearest2d([8, 8], None, None)?;
    let seq = y.f_view([1, 4, 64])?.f_transpose(1, 2)?;
    let seq = seq.f_layer_norm([4], None::<Tensor>, None::<Tensor>, 1e-5, false)?;
    let seq = seq
        .f_matmul(&Tensor::f_ones([4, 4], options)?)?
        .f_gelu("none")?;
    let heads = seq.f_view([1, 64, 2, 2])?.f_transpose(1, 2)?;
    let out = Tensor::f_scaled_dot_product_attention(
        &heads,
        &heads,
        &heads,
        None::<Tensor>,
        0.0,
        false,
        None,
        false,
    )?;
    let total = out
        .f_softmax(-1, kind)?
        .f_to_kind(Kind::Float)?
        .f_sum(Kind::Float)?;
    total.f_double_value(&[])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_float32_on_the_cpu_and_float16_on_cuda() {
        assert_eq!(
            Precision::resolve("auto", Device::Cpu),
            Ok(Precision::Float32)
        );
        assert_eq!(
            Precision::resolve("auto", Device::Cuda(0)),
            Ok(Precision::Float16)
        );
        assert_eq!(
            Precision::resolve("bfloat16", Device::Cuda(0)),
            Ok(Precision::BFloat16)
        );
        let error = Precision::resolve("fp16", Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`dtype`") && error.contains("\"bfloat16\""),
            "{error}"
        );
    }

    #[test]
    fn every_precision_runs_on_this_cpu() {
        for precision in [Precision::Float32, Precision::Float16, Precision::BFloat16] {
            precision.check_device("images/test", Device::Cpu).unwrap();
        }
    }

    #[test]
    fn half_precision_overflow_is_named() {
        let out = Tensor::from_slice(&[1.0f32, f32::INFINITY, f32::NAN]).to_kind(Kind::Half);
        let error = Precision::Float16
            .check_finite("images/x", "the UNet output", &out)
            .unwrap_err()
            .to_string();
        assert!(error.contains("2 non-finite values of 3"), "{error}");
        assert!(
            error.contains("float16 overflow") && error.contains("bfloat16"),
            "{error}"
        );
        assert!(Precision::Float32
            .check_finite("images/x", "out", &out)
            .is_ok());
    }
}
