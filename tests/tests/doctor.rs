//! `doctor` and `--device cuda`: what the host says about libtorch, the driver and the GPUs, on
//! any machine; the CUDA path itself only where a GPU is present (skipped, with the reason,
//! elsewhere).

use flowgym_tests::{assert_exit, stderr, stdout, Sandbox};

/// Whether this machine shows an NVIDIA driver, the way the host looks for one.
fn driver_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
        || std::process::Command::new("nvidia-smi")
            .output()
            .is_ok_and(|out| out.status.success())
}

/// The `CUDA: ...` line of `doctor`.
fn cuda_line(doctor: &str) -> String {
    doctor
        .lines()
        .find(|line| line.starts_with("CUDA: "))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn doctor_reports_libtorch_devices_driver_and_why_cuda_is_unavailable() {
    let sandbox = Sandbox::new("doctor");
    let out = sandbox.run(&["doctor"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.starts_with("libtorch: "), "{text}");
    assert!(text.contains(" build)\n  directory: "), "{text}");
    assert!(text.contains("devices:\n  cpu\n"), "{text}");
    let cuda = cuda_line(&text);
    if driver_present() {
        assert!(
            cuda.starts_with("CUDA: available") || cuda.starts_with("CUDA: unavailable: "),
            "{text}"
        );
        assert!(text.contains("NVIDIA driver: "), "{text}");
    } else {
        assert!(text.contains("NVIDIA driver: none found\n"), "{text}");
        assert_eq!(
            cuda,
            "CUDA: unavailable: no NVIDIA driver on this machine (no /proc/driver/nvidia/version, and nvidia-smi does not answer)"
        );
    }
}

#[test]
fn device_cuda_runs_the_toy_on_a_gpu_and_elsewhere_says_why_not() {
    let sandbox = Sandbox::new("cuda-toy").with_toys();
    let doctor = stdout(&sandbox.run(&["doctor"]));
    let cuda = cuda_line(&doctor);
    let args = |device: &'static str, out: &'static str| {
        ["run", "--device", device, "--iterations", "3", "--out", out]
    };
    if !cuda.starts_with("CUDA: available") {
        let out = sandbox.run(&args("cuda", "r"));
        assert_exit(&out, 1);
        let err = stderr(&out);
        let why = cuda.trim_start_matches("CUDA: unavailable: ");
        assert!(
            err.contains(&format!(
                "device `cuda`: CUDA is not available to this host: {why}"
            )),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        eprintln!("skipped the run on the GPU: {cuda}");
        return;
    }
    let out = sandbox.run(&args("cuda", "on-gpu"));
    assert_exit(&out, 0);
    assert!(sandbox.path("on-gpu/summary.json").exists());
    let out = sandbox.run(&args("cuda:99", "r"));
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("device `cuda:99`: there are only "),
        "{}",
        stderr(&out)
    );
}
