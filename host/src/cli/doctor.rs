//! `flowgym-host doctor`: the libtorch this host runs, the devices it sees, the NVIDIA driver,
//! and why CUDA is unavailable when it is.

use std::process::{Command, ExitCode};

use anyhow::Result;
use clap::Args;

use crate::gpu::{self, CudaLibrary};

use super::Cli;

/// The arguments of `doctor` (none).
#[derive(Debug, Args)]
pub struct DoctorArgs {}

/// Prints the report; it always succeeds.
pub fn run(_cli: &Cli, _args: &DoctorArgs) -> Result<ExitCode> {
    let libtorch = gpu::libtorch();
    let library = gpu::load_cuda_library();
    let build = match (&library, libtorch.has_cuda_library) {
        (_, false) => "CPU build".to_string(),
        (CudaLibrary::Failed(_), true) => "CUDA build, libtorch_cuda does not load".to_string(),
        _ => "CUDA build".to_string(),
    };
    println!(
        "libtorch: {} ({build})",
        libtorch.version.as_deref().unwrap_or("version unknown")
    );
    println!(
        "  directory: {}",
        libtorch
            .lib_dir
            .as_ref()
            .map_or("unknown".to_string(), |d| d.display().to_string())
    );
    let driver = gpu::driver();
    match &driver {
        Some(d) => println!(
            "NVIDIA driver: {} (runs CUDA up to {})",
            d.version.as_deref().unwrap_or("version unknown"),
            d.cuda.as_deref().unwrap_or("an unknown release")
        ),
        None => println!("NVIDIA driver: none found"),
    }
    let count = tch::Cuda::device_count();
    // nvidia-smi's order is CUDA's only when every GPU is visible to this process.
    let names = match std::env::var_os("CUDA_VISIBLE_DEVICES") {
        None => gpu_names(),
        Some(_) => Vec::new(),
    };
    println!("devices:");
    println!("  cpu");
    for index in 0..count {
        let name = match names.len() as i64 == count {
            true => names[index as usize].as_str(),
            false => "",
        };
        println!("  cuda:{index}  {name}");
    }
    if count > 0 {
        let cudnn = if tch::Cuda::cudnn_is_available() {
            "cuDNN available"
        } else {
            "no cuDNN"
        };
        println!("CUDA: available, {count} device(s), {cudnn}");
    } else {
        let why = gpu::why_no_cuda(&libtorch, &library, driver.as_ref());
        println!("CUDA: unavailable: {why}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The GPUs' names and memory as `nvidia-smi` lists them, in its order; empty without it.
fn gpu_names() -> Vec<String> {
    Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|line| line.trim().replace(", ", ", memory "))
                .collect()
        })
        .unwrap_or_default()
}
