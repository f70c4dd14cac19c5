//! Image models and rewards end to end, on the tiny random fixtures generated from the
//! reference Python libraries (`plugins/images/scripts/`).

use flowgym_tests::{assert_exit, plugin, stderr, stdout, summary, workspace, Sandbox};

fn image_sandbox(name: &str) -> Sandbox {
    let sandbox = Sandbox::new(name);
    sandbox.install(&plugin("flowgym-images"));
    sandbox.install(&plugin("flowgym-image-rewards"));
    sandbox
}

fn fixture(relative: &str) -> String {
    workspace()
        .join("plugins/images/tests/fixtures")
        .join(relative)
        .display()
        .to_string()
}

/// A Value Matching run of the DDPM fixture with the JPEG compression reward completes and
/// writes what a run promises: the before/after grids, the reward and loss plots, one metrics
/// row per iteration, a checkpoint and a summary naming the image value network.
///
/// This does not assert that compressibility improves. The fixture's UNet has random weights,
/// so its samples are saturated noise whose JPEG sizes spread by only about 0.05 bits per pixel;
/// moving that measurably takes reward scales in the thousands, at which a short run either
/// diverges (the host stops it) or improves by a margin that depends on the seed, and a run
/// long enough to improve reliably takes well over a minute of CPU.
#[test]
fn cifar_run_with_jpeg_compression_writes_grids_metrics_and_a_checkpoint() {
    let sandbox = image_sandbox("cifar");
    let args = format!(r#"{{"weights": "{}"}}"#, fixture("diffusers/cifar-tiny"));
    let iterations = 3;
    let out = sandbox.run(&[
        "run",
        "--model",
        "images/cifar",
        "--model-args",
        &args,
        "--reward",
        "images/compression",
        "--iterations",
        &iterations.to_string(),
        "--batch-size",
        "4",
        "--steps",
        "8",
        "--eval-samples",
        "4",
        "--out",
        "run",
    ]);
    assert_exit(&out, 0);
    for file in [
        "before.png",
        "after.png",
        "reward.png",
        "loss.png",
        "metrics.csv",
        "checkpoints/latest.safetensors",
    ] {
        assert!(sandbox.path("run").join(file).exists(), "{file} is missing");
    }
    let metrics = std::fs::read_to_string(sandbox.path("run/metrics.csv")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        1 + iterations,
        "a header and one row per iteration:\n{metrics}"
    );
    let summary = summary(&sandbox.path("run"));
    assert!(
        summary["value_network"]
            .as_str()
            .unwrap()
            .starts_with("CNN (3 channels in"),
        "{summary}"
    );
    assert!(
        summary["before"]["reward_mean"].as_f64().unwrap() < 0.0,
        "compression rewards are minus bits per pixel"
    );
    let grid = std::fs::read(sandbox.path("run/after.png")).unwrap();
    assert_eq!(&grid[1..4], b"PNG");
}

#[test]
fn missing_weights_say_where_they_were_looked_for_and_how_to_get_them() {
    let sandbox = image_sandbox("no-weights");
    // A hub that would see any connection: --offline must not make one.
    let hub = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    hub.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", hub.local_addr().unwrap());
    let out = sandbox
        .command(&[
            "sample",
            "--model",
            "images/cifar",
            "-n",
            "1",
            "--out",
            "s",
            "--offline",
        ])
        .env("HF_HOME", sandbox.path("hf"))
        .env("HF_ENDPOINT", &endpoint)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("cannot construct model `images/cifar`"),
        "{err}"
    );
    assert!(
        err.contains(&sandbox.path("hf").display().to_string()),
        "{err}"
    );
    assert!(err.contains("not tried: offline mode"), "{err}");
    assert!(
        err.contains("hf download google/ddpm-cifar10-32 --include"),
        "{err}"
    );
    assert_eq!(
        hub.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "the hub was contacted"
    );
}

#[test]
fn image_models_and_rewards_are_matched_by_their_declared_samples() {
    let sandbox = image_sandbox("range");
    let out = sandbox.run(&[
        "check",
        "--model",
        "images/cifar",
        "--reward",
        "images/incompression",
    ]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("samples x: f32 [n, 3, 32, 32] in [0, 1]"),
        "{}",
        stdout(&out)
    );
}

fn peak_mib(text: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with("peak resident memory: "))
        .unwrap_or_else(|| panic!("{text}"));
    line.trim_start_matches("peak resident memory: ")
        .trim_end_matches(" MiB")
        .parse()
        .unwrap()
}

/// The command users quote, on the tiny fixtures: SD2-style pipeline (text encoder, UNet with
/// classifier-free guidance, VAE decode) under Value Matching with the aesthetic reward (CLIP
/// vision tower + MLP head). The value network sees the latent and the time, not the prompt.
///
/// This checks that such a run completes and records each sample's prompt beside the grids,
/// not that the reward improves: the fixtures' random aesthetic head scores every image within
/// about 0.001 of -0.21, too flat a reward for a few iterations to move measurably.
#[test]
fn stable_diffusion_runs_with_the_aesthetic_reward_and_writes_prompts_under_the_grids() {
    let sandbox = image_sandbox("sd2");
    let model_args = format!(
        r#"{{"weights": "{}", "height": 48, "width": 64, "cfg_scale": 7.5}}"#,
        fixture("sd/sd2")
    );
    let reward_args = format!(
        r#"{{"clip": "{}", "head": "{}"}}"#,
        fixture("clip/aesthetic/clip"),
        fixture("clip/aesthetic/head_mlp.safetensors")
    );
    let common = [
        "--model",
        "images/sd2",
        "--model-args",
        &model_args,
        "--steps",
        "6",
    ];
    let out = sandbox.run(
        &[
            &["run"][..],
            &common,
            &[
                "--reward",
                "images/aesthetic",
                "--reward-args",
                &reward_args,
                "--iterations",
                "2",
                "--batch-size",
                "4",
                "--eval-samples",
                "4",
                "--out",
                "run",
            ],
        ]
        .concat(),
    );
    assert_exit(&out, 0);
    for file in [
        "before.png",
        "after.png",
        "samples/before-prompts.txt",
        "samples/after-prompts.txt",
    ] {
        assert!(sandbox.path("run").join(file).exists(), "{file} is missing");
    }
    let prompts = std::fs::read_to_string(sandbox.path("run/samples/after-prompts.txt")).unwrap();
    assert_eq!(prompts.lines().count(), 4);
    let summary = summary(&sandbox.path("run"));
    assert!(
        summary["value_network"]
            .as_str()
            .unwrap()
            .starts_with("CNN (4 channels in"),
        "{summary}"
    );

    // Base-model sampling alone, same batch and steps, for the memory comparison.
    let base = sandbox.run(&[&["sample"][..], &common, &["-n", "4", "--out", "base"]].concat());
    assert_exit(&base, 0);
    assert_training_costs_less_memory_than_sampling(
        peak_mib(&stdout(&out)),
        peak_mib(&stdout(&base)),
    );
}

/// A run adds to sampling the reward (here a tiny CLIP model), the value network with its
/// gradients and Adam's two moments (16 bytes per parameter: 6 MiB for the CNN's 0.38 M
/// parameters) and the activations of fitting one batch of trajectories (here 4 x 6 steps of
/// 4 x 6 x 8 latents, a few MiB), while sampling alone already holds libtorch and the three
/// pipeline components. Training must therefore cost less memory than sampling itself: a run
/// whose peak reached twice the peak of sampling alone would be holding a second copy of what
/// sampling holds.
fn assert_training_costs_less_memory_than_sampling(run_peak: f64, base_peak: f64) {
    eprintln!("peak resident memory: run {run_peak:.0} MiB, base sampling {base_peak:.0} MiB");
    assert!(
        run_peak - base_peak < base_peak,
        "run {run_peak} MiB vs sampling {base_peak} MiB"
    );
}
