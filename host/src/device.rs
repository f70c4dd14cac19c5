//! Choosing where libtorch computes.

use anyhow::{bail, Context, Result};
use tch::Device;

/// Parses `cpu`, `cuda` or `cuda:N`, checking that the device is there.
pub fn parse_device(text: &str) -> Result<Device> {
    let text = text.trim().to_ascii_lowercase();
    let device =
        match text.as_str() {
            "cpu" => return Ok(Device::Cpu),
            "cuda" => Device::Cuda(0),
            other => match other.strip_prefix("cuda:") {
                Some(index) => Device::Cuda(index.parse().with_context(|| {
                    format!("`{text}`: the CUDA device index must be a number")
                })?),
                None => bail!("unknown device `{text}`; accepted: cpu, cuda, cuda:N"),
            },
        };
    let library = crate::gpu::load_cuda_library();
    let count = tch::Cuda::device_count();
    if count == 0 {
        let driver = crate::gpu::driver();
        let why = crate::gpu::why_no_cuda(&crate::gpu::libtorch(), &library, driver.as_ref());
        bail!("device `{text}`: CUDA is not available to this host: {why}");
    }
    if let Device::Cuda(index) = device {
        if index as i64 >= count {
            bail!("device `{text}`: there are only {count} CUDA device(s)");
        }
    }
    Ok(device)
}

/// Below this many floating elements per batch, libtorch's CPU threads cost more in waking
/// and waiting than they save: its own grain size for splitting one operation is 32,768
/// elements, and a batch of flat samples is that small at every step.
const SMALL_BATCH_ELEMENTS: usize = 1 << 15;

/// The libtorch intra-op threads for a run: `configured` when set, else one thread for
/// small batches on the CPU (the toy's 128 one-dimensional samples ran 10x faster than on two
/// threads on a busy machine; 256 digits of 8 x 8 pixels sampled 4x faster), else libtorch's
/// default. `None` leaves libtorch's setting alone.
pub fn intra_op_threads(
    configured: usize,
    device: Device,
    batch_size: usize,
    example: &crate::state::State,
) -> Option<usize> {
    if configured > 0 {
        return Some(configured);
    }
    let per_sample: usize = example
        .floating()
        .map(|leaf| leaf.numel() / example.len().max(1))
        .sum();
    (device == Device::Cpu && batch_size * per_sample <= SMALL_BATCH_ELEMENTS).then_some(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_or_explain() {
        assert_eq!(parse_device("CPU").unwrap(), Device::Cpu);
        assert_eq!(
            parse_device("tpu").unwrap_err().to_string(),
            "unknown device `tpu`; accepted: cpu, cuda, cuda:N"
        );
        assert_eq!(
            parse_device("cuda:x").unwrap_err().to_string(),
            "`cuda:x`: the CUDA device index must be a number"
        );
    }

    use crate::state::State;
    use tch::{Kind, Tensor};

    fn state(shape: &[i64]) -> State {
        State::new(
            "test",
            vec![("x".into(), Tensor::zeros(shape, (Kind::Float, Device::Cpu)))],
        )
    }

    #[test]
    fn small_flat_batches_run_on_one_thread_and_a_setting_wins() {
        let points = state(&[2, 8]);
        assert_eq!(intra_op_threads(0, Device::Cpu, 128, &points), Some(1));
        assert_eq!(intra_op_threads(3, Device::Cpu, 128, &points), Some(3));
        // 8,192 samples of 8 numbers are past the grain size; the GPU is never throttled.
        assert_eq!(intra_op_threads(0, Device::Cpu, 8192, &points), None);
        assert_eq!(intra_op_threads(0, Device::Cuda(0), 128, &points), None);
    }

    #[test]
    fn small_image_batches_run_on_one_thread_and_large_ones_keep_libtorchs() {
        let digits = state(&[2, 1, 8, 8]);
        assert_eq!(intra_op_threads(0, Device::Cpu, 64, &digits), Some(1));
        let cifar = state(&[2, 3, 32, 32]);
        assert_eq!(intra_op_threads(0, Device::Cpu, 32, &cifar), None);
    }
}
