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
    ensure_cuda_loaded();
    let count = tch::Cuda::device_count();
    if count == 0 {
        bail!(
            "device `{text}`: CUDA is not available to this host. It links the libtorch in {}; for GPUs, build with a CUDA libtorch 2.13 (LIBTORCH=/path/to/libtorch, or LIBTORCH_USE_PYTORCH=1 with a CUDA build of PyTorch 2.13)",
            option_env!("FLOWGYM_LIBTORCH_LIB").unwrap_or("an unknown directory")
        );
    }
    if let Device::Cuda(index) = device {
        if index as i64 >= count {
            bail!("device `{text}`: there are only {count} CUDA device(s)");
        }
    }
    Ok(device)
}

/// libtorch registers its CUDA backend when `libtorch_cuda` is loaded; the linker may have
/// dropped it as unused, so load it explicitly when the libtorch directory has one.
fn ensure_cuda_loaded() {
    if let Some(dir) = option_env!("FLOWGYM_LIBTORCH_LIB") {
        let path = std::path::Path::new(dir).join(format!(
            "{}torch_cuda{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ));
        if path.exists() {
            // SAFETY: loading libtorch's own CUDA library, which only registers its backend.
            if let Ok(library) = unsafe { libloading::Library::new(&path) } {
                std::mem::forget(library);
            }
        }
    }
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
}
