//! Value Matching end to end on the 1-d toys, against the exact optimum
//! `p*(x) ~ p_base(x) exp(lambda r(x))` computed here from the closed-form base density.

use std::path::Path;

use flowgym_tests::{
    assert_exit, fixture_plugin, read_tensors, stderr, stdout, summary, tensor, Sandbox,
};

/// The toy's base: 0.5 N(0, 1) + 0.5 N(3, 0.4^2).
fn base_density(x: f64) -> f64 {
    let normal = |x: f64, m: f64, s: f64| {
        (-0.5 * ((x - m) / s).powi(2)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt())
    };
    0.5 * normal(x, 0.0, 1.0) + 0.5 * normal(x, 3.0, 0.4)
}

fn binary(x: f64) -> f64 {
    if (0.0..=1.0).contains(&x) {
        1.0
    } else {
        0.0
    }
}

fn gaussian(x: f64) -> f64 {
    (-0.5 * ((x + 2.5) / 0.8).powi(2)).exp() / (0.8 * (2.0 * std::f64::consts::PI).sqrt())
}

/// The optimum on a fine grid: (grid, density, CDF, E_p*[r]).
struct Optimum {
    grid: Vec<f64>,
    cdf: Vec<f64>,
    reward_mean: f64,
}

fn optimum(reward: fn(f64) -> f64, lambda: f64) -> Optimum {
    let h = 1e-3;
    let grid: Vec<f64> = (0..16_001).map(|i| -8.0 + i as f64 * h).collect();
    let unnormalised: Vec<f64> = grid
        .iter()
        .map(|&x| base_density(x) * (lambda * reward(x)).exp())
        .collect();
    let z: f64 = unnormalised.iter().sum::<f64>() * h;
    let reward_mean = grid
        .iter()
        .zip(&unnormalised)
        .map(|(&x, p)| p * reward(x))
        .sum::<f64>()
        * h
        / z;
    let mut cdf = Vec::with_capacity(grid.len());
    let mut acc = 0.0;
    for p in &unnormalised {
        acc += p * h / z;
        cdf.push(acc);
    }
    Optimum {
        grid,
        cdf,
        reward_mean,
    }
}

/// W1 between the empirical distribution of `samples` and the optimum: the integral of
/// |F_n - F*| over the grid.
fn wasserstein_to(samples: &[f64], optimum: &Optimum) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let h = optimum.grid[1] - optimum.grid[0];
    let mut below = 0;
    optimum
        .grid
        .iter()
        .zip(&optimum.cdf)
        .map(|(&x, &f)| {
            while below < sorted.len() && sorted[below] <= x {
                below += 1;
            }
            (below as f64 / n - f).abs() * h
        })
        .sum()
}

/// The largest gap between the empirical CDF of `samples` and `cdf` (Kolmogorov-Smirnov).
fn ks_statistic(samples: &[f64], cdf: impl Fn(f64) -> f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = cdf(x);
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        })
        .fold(0.0, f64::max)
}

fn normal_cdf(x: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 via erf, accurate to 1.5e-7.
    let z = x / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    0.5 * (1.0 + if z >= 0.0 { erf } else { -erf })
}

fn valid_rewards(path: &Path) -> Vec<f64> {
    tensor(path, "reward")
}

/// Without control, the sampler must reproduce the base model's target, 0.5 N(0, 1) +
/// 0.5 N(3, 0.4^2). Kolmogorov-Smirnov on 20000 samples at the 0.1% level: the critical value
/// is 1.949 / sqrt(n) = 0.0138; a correct sampler fails this fixed-seed test with
/// probability 0.001. 400 steps keep the Euler-Maruyama bias well below that.
#[test]
fn the_base_sampler_reproduces_the_target_mixture() {
    let sandbox = Sandbox::new("base-sampler").with_toys();
    let out = sandbox.run(&[
        "sample", "--model", "1d/gmm", "-n", "20000", "--steps", "400", "--seed", "7", "--out", "s",
    ]);
    assert_exit(&out, 0);
    let x = tensor(&sandbox.path("s/samples.safetensors"), "sample.x");
    assert_eq!(x.len(), 20_000);
    let mixture_cdf = |x: f64| 0.5 * normal_cdf(x) + 0.5 * normal_cdf((x - 3.0) / 0.4);
    let d = ks_statistic(&x, mixture_cdf);
    let critical = 1.949 / (x.len() as f64).sqrt();
    assert!(
        d < critical,
        "KS statistic {d:.4} exceeds the 0.1% critical value {critical:.4}"
    );
    assert!(sandbox.path("s/samples.png").exists());
}

/// Trains with the default configuration and compares the
/// adapted samples with the exact optimum.
fn learns(
    reward_id: &str,
    reward: fn(f64) -> f64,
    iterations: &str,
) -> (f64, f64, Optimum, serde_json::Value) {
    let sandbox = Sandbox::new(&format!("learn-{}", reward_id.replace('/', "-"))).with_toys();
    let out = sandbox.run(&[
        "run",
        "--reward",
        reward_id,
        "--reward-scale",
        "5",
        "--iterations",
        iterations,
        "--eval-samples",
        "4000",
        "--seed",
        "3",
        "--out",
        "run",
    ]);
    assert_exit(&out, 0);
    let dir = sandbox.path("run");
    let x = tensor(&dir.join("samples/after.safetensors"), "sample.x");
    let r = valid_rewards(&dir.join("samples/after.safetensors"));
    let mean_reward = r.iter().sum::<f64>() / r.len() as f64;
    let optimum = optimum(reward, 5.0);
    let w1 = wasserstein_to(&x, &optimum);
    // Everything a user opens is there.
    for file in [
        "config.toml",
        "metrics.csv",
        "summary.json",
        "reward.png",
        "loss.png",
        "samples.png",
        "checkpoints/latest.safetensors",
        "samples/before.safetensors",
    ] {
        assert!(dir.join(file).exists(), "{file} is missing");
    }
    (mean_reward, w1, optimum, summary(&dir))
}

/// Binary reward on [0, 1] at scale 5 with the default configuration (300 iterations):
/// E_p*[r] = 0.968 (computed below in closed form), the base has 0.171 and W1 1.45.
/// `host/tests/exact_control.rs` shows the exact optimal control on the same 100-step grid
/// reaches within about 0.001 of E_p*[r] (0.006 with the base model's endpoint estimate at the
/// last step) with W1 below 0.02, the discretisation floor. The goal the
/// quality suite sets is 95% of the possible improvement and W1 at most 0.05. The default
/// configuration reaches W1 0.013-0.019 and 97-98% of the improvement on this problem over
/// seeds 0-2 (docs/value-matching-quality.md); the test asserts the W1 goal and 90% of the
/// improvement, so that losing a tenth of what Value Matching gains here fails it.
#[test]
fn value_matching_reaches_the_optimum_of_the_binary_reward() {
    let (mean, w1, optimum, summary) = learns("1d/binary", binary, "300");
    // Independently of the grid: E_p*[r] = e^lambda q / (e^lambda q + 1 - q) with
    // q = P_base([0, 1]) from the normal CDF.
    let q = 0.5 * (normal_cdf(1.0) - normal_cdf(0.0))
        + 0.5 * (normal_cdf((1.0 - 3.0) / 0.4) - normal_cdf((0.0 - 3.0) / 0.4));
    let closed_form = 5f64.exp() * q / (5f64.exp() * q + 1.0 - q);
    assert!(
        (optimum.reward_mean - closed_form).abs() < 1e-3,
        "{} vs {closed_form}",
        optimum.reward_mean
    );
    let base = summary["before"]["reward_mean"].as_f64().unwrap();
    let improvement = (mean - base) / (optimum.reward_mean - base);
    assert!(
        improvement >= 0.9,
        "adapted mean reward {mean:.4} vs optimum {:.4} from {base:.4}: {improvement:.3} of the improvement",
        optimum.reward_mean
    );
    assert!(w1 <= 0.05, "W1 to p* = {w1:.4}");
    // summary.json reports the same figures from its own estimate of p*.
    let reported = summary["optimum"]["reward_mean"].as_f64().unwrap();
    assert!(
        (reported - optimum.reward_mean).abs() < 0.02,
        "summary's E_p*[r] {reported}"
    );
    assert_eq!(summary["optimum"]["distance"], "W1");
    assert!(summary["optimum"]["distance_after"].as_f64().unwrap() < 0.1);
    assert!(summary["optimum"]["distance_before"].as_f64().unwrap() > 1.0);
    assert_eq!(summary["iterations_done"], 300);
}

/// Gaussian-density reward N(-2.5, 0.8^2) at scale 5: the tilt moves mass from the base's
/// modes at 0 and 3 towards -2.5 (E_p*[r] = 0.085 against 0.023 for the base). The same goal
/// as above: 90% of the improvement guarded, and W1 within 0.1 (the base is about 0.76 away).
#[test]
fn value_matching_reaches_the_optimum_of_the_gaussian_reward() {
    let (mean, w1, optimum, summary) = learns("1d/gaussian", gaussian, "300");
    let base = summary["before"]["reward_mean"].as_f64().unwrap();
    let improvement = (mean - base) / (optimum.reward_mean - base);
    assert!(
        improvement >= 0.9,
        "adapted mean reward {mean:.4} vs optimum {:.4} from {base:.4}: {improvement:.3} of the improvement",
        optimum.reward_mean
    );
    assert!(w1 <= 0.1, "W1 to p* = {w1:.4}");
    assert!(summary["optimum"]["distance_before"].as_f64().unwrap() > 2.0 * w1);
}

#[test]
fn a_resumed_run_continues_exactly_where_it_stopped() {
    let sandbox = Sandbox::new("resume").with_toys();
    let common = [
        "--eval-samples",
        "64",
        "--checkpoint-every",
        "1",
        "--seed",
        "11",
    ];
    let straight = sandbox.run(
        &[
            &["run", "--iterations", "6", "--out", "straight"],
            &common[..],
        ]
        .concat(),
    );
    assert_exit(&straight, 0);
    let first =
        sandbox.run(&[&["run", "--iterations", "3", "--out", "split"], &common[..]].concat());
    assert_exit(&first, 0);
    let refused = sandbox.run(&["run", "--resume", "split", "--lr", "0.1"]);
    assert_exit(&refused, 1);
    assert!(
        stderr(&refused).contains("drop --lr (only --iterations may change)"),
        "{}",
        stderr(&refused)
    );
    let second = sandbox.run(&["run", "--resume", "split", "--iterations", "6"]);
    assert_exit(&second, 0);
    let a = read_tensors(&sandbox.path("straight/checkpoints/latest.safetensors"));
    let b = read_tensors(&sandbox.path("split/checkpoints/latest.safetensors"));
    assert_eq!(a.len(), b.len());
    for ((name, _, x), (_, _, y)) in a.iter().zip(&b) {
        assert_eq!(
            x, y,
            "{name} differs between the straight and the resumed run"
        );
    }
    let metrics = std::fs::read_to_string(sandbox.path("split/metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 7, "{metrics}");
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_the_run_resumes() {
    let sandbox = Sandbox::new("ctrl-c").with_toys();
    let child = sandbox
        .command(&[
            "run",
            "--iterations",
            "100000",
            "--eval-samples",
            "64",
            "--checkpoint-every",
            "1000",
            "--out",
            "run",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = sandbox.path("run/metrics.csv");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics)
        .map(|m| m.lines().count())
        .unwrap_or(0)
        < 4
    {
        assert!(started.elapsed().as_secs() < 300, "the run never got going");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 130);
    assert!(
        stdout(&out).contains("interrupted: checkpoint written after iteration"),
        "{}",
        stdout(&out)
    );
    let done = tensor(
        &sandbox.path("run/checkpoints/latest.safetensors"),
        "run.iterations_done",
    )[0] as usize;
    assert!(done >= 3, "{done}");
    let rows = std::fs::read_to_string(&metrics).unwrap().lines().count() - 1;
    assert_eq!(rows, done, "metrics rows match the checkpoint");
    let out = sandbox.run(&[
        "run",
        "--resume",
        "run",
        "--iterations",
        &(done + 2).to_string(),
    ]);
    assert_exit(&out, 0);
    assert!(sandbox.path("run/samples/after.safetensors").exists());
}

#[test]
fn a_nan_reward_stops_the_run_naming_it_and_keeps_the_last_good_checkpoint() {
    let sandbox = Sandbox::new("nan-reward").with_toys();
    sandbox.install(&fixture_plugin("flowgym-test-faulty"));
    // One call scores the samples drawn before training, then one per iteration: the sixth
    // call (iteration 4) is the first NaN.
    let out = sandbox.run(&[
        "run",
        "--reward",
        "1d/nan-after",
        "--reward-args",
        r#"{"after": 5}"#,
        "--iterations",
        "10",
        "--eval-samples",
        "16",
        "--checkpoint-every",
        "3",
        "--out",
        "run",
    ]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("the run stopped at iteration 4"), "{err}");
    assert!(
        err.contains(
            "reward `1d/nan-after` returned NaN or infinite rewards for valid samples [0, 1, 2"
        ),
        "{err}"
    );
    assert!(
        err.contains("resume with `flowgym-host run --resume run`"),
        "{err}"
    );
    let done = tensor(
        &sandbox.path("run/checkpoints/latest.safetensors"),
        "run.iterations_done",
    )[0];
    assert_eq!(done, 4.0);
    assert!(sandbox
        .path("run/checkpoints/iter-000003.safetensors")
        .exists());
    assert_eq!(
        std::fs::read_to_string(sandbox.path("run/metrics.csv"))
            .unwrap()
            .lines()
            .count(),
        5
    );
    // The directory says it failed, and why, until a session ends well.
    let note = std::fs::read_to_string(sandbox.path("run/failed.txt")).unwrap();
    assert!(note.contains("returned NaN or infinite rewards"), "{note}");
    assert!(note.contains("flowgym-host run --resume run"), "{note}");
    // A new process counts the reward's calls from zero again: two iterations and the
    // samples after training are scored before its fifth call.
    let out = sandbox.run(&["run", "--resume", "run", "--iterations", "6"]);
    assert_exit(&out, 0);
    assert!(!sandbox.path("run/failed.txt").exists());
}

#[test]
fn an_overflowing_loss_stops_the_run_naming_it() {
    let sandbox = Sandbox::new("huge-loss").with_toys();
    sandbox.install(&fixture_plugin("flowgym-test-faulty"));
    let out = sandbox.run(&[
        "run",
        "--reward",
        "1d/huge",
        "--iterations",
        "3",
        "--eval-samples",
        "8",
        "--out",
        "run",
    ]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    // Rewards of 3e38 overflow float32 in the loss: inf, or NaN once an inf meets another.
    assert!(
        err.contains("the Value Matching loss became inf at iteration 0")
            || err.contains("the Value Matching loss became NaN at iteration 0"),
        "{err}"
    );
    assert!(err.contains("the run stopped at iteration 0"), "{err}");
    let done = tensor(
        &sandbox.path("run/checkpoints/latest.safetensors"),
        "run.iterations_done",
    )[0];
    assert_eq!(done, 0.0);
}

#[test]
fn nan_model_outputs_and_malformed_rewards_are_errors_not_crashes() {
    let sandbox = Sandbox::new("faulty").with_toys();
    sandbox.install(&fixture_plugin("flowgym-test-faulty"));
    let cases = [
        (
            ["1d/nan-model", "1d/binary"],
            // The model turns NaN from t = 0.5: step 98 of flat data's 200 on OT's uniform
            // grid from t0 = 0.02 (t = 0.02 + 0.98 * 98 / 200).
            "model `1d/nan-model` forward returned NaN or infinite values at step 98 (t = 0.5002)",
        ),
        (
            ["1d/gmm", "1d/short"],
            "reward `1d/short` returned rewards of shape [7] for 8 samples; expected [8]",
        ),
        (
            ["1d/gmm", "1d/integer"],
            "reward `1d/integer` returned rewards of type Int64; rewards must be floating point",
        ),
    ];
    for ([model, reward], expected) in cases {
        let out = sandbox.run(&[
            "sample", "--model", model, "--reward", reward, "-n", "8", "--out", "s",
        ]);
        assert_exit(&out, 1);
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
}

#[test]
fn a_config_file_sets_the_run_and_flags_override_it() {
    let sandbox = Sandbox::new("config").with_toys();
    std::fs::write(
        sandbox.path("run.toml"),
        "reward = \"1d/gaussian\"\niterations = 2\nsteps = 20\neval_samples = 32\n[reward_args]\nmean = -2.0\n",
    )
    .unwrap();
    let out = sandbox.run(&[
        "run", "--config", "run.toml", "--steps", "10", "--out", "run",
    ]);
    assert_exit(&out, 0);
    let config = std::fs::read_to_string(sandbox.path("run/config.toml")).unwrap();
    assert!(config.contains("reward = \"1d/gaussian\""), "{config}");
    assert!(config.contains("steps = 10"), "{config}");
    assert!(config.contains("mean = -2.0"), "{config}");
    let out = sandbox.run(&["run", "--config", "run.toml", "--out", "run"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("already holds a run; continue it with --resume"),
        "{}",
        stderr(&out)
    );
    std::fs::write(sandbox.path("bad.toml"), "learning_rate = 1\n").unwrap();
    let out = sandbox.run(&["run", "--config", "bad.toml"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("unknown field `learning_rate`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn samples_come_from_the_saved_value_network() {
    let sandbox = Sandbox::new("sample-run").with_toys();
    let out = sandbox.run(&[
        "run",
        "--iterations",
        "150",
        "--eval-samples",
        "64",
        "--out",
        "run",
    ]);
    assert_exit(&out, 0);
    let adapted = sandbox.run(&["sample", "--run", "run", "-n", "2000", "--out", "adapted"]);
    assert_exit(&adapted, 0);
    let base = sandbox.run(&[
        "sample",
        "--model",
        "1d/gmm",
        "--reward",
        "1d/binary",
        "-n",
        "2000",
        "--out",
        "base",
    ]);
    assert_exit(&base, 0);
    let mean = |dir: &str| {
        let r = tensor(
            &sandbox.path(&format!("{dir}/samples.safetensors")),
            "reward",
        );
        r.iter().sum::<f64>() / r.len() as f64
    };
    assert!(
        mean("adapted") > mean("base") + 0.4,
        "adapted {} vs base {}",
        mean("adapted"),
        mean("base")
    );
    // The run steered with the moving average of its weights (the default), so sampling
    // from it does too.
    assert!(
        stderr(&adapted).contains("steering with MLP")
            && stderr(&adapted).contains("the moving average of its weights"),
        "{}",
        stderr(&adapted)
    );
}

#[test]
fn a_stiff_constant_diffusion_is_refused_before_anything_is_written() {
    let sandbox = Sandbox::new("stiff-noise").with_toys();
    let out = sandbox.run(&["run", "--noise", "0.5", "--out", "run"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    // OT on the 200 steps of flat data: beta = 2 dt at the last Euler step, so the largest
    // stable level is 2 beta / sqrt(dt) = 4 sqrt(dt) = 4 sqrt(0.98 / 200) = 0.28.
    assert!(
        err.contains("the constant diffusion level 0.5 is too stiff for 200 steps"),
        "{err}"
    );
    assert!(err.contains("a level of at most 0.2800"), "{err}");
    assert!(
        !sandbox.path("run").exists(),
        "a refused run leaves no directory"
    );
    // A level under that bound runs.
    let out = sandbox.run(&[
        "run",
        "--noise",
        "0.25",
        "--iterations",
        "2",
        "--eval-samples",
        "16",
        "--out",
        "run",
    ]);
    assert_exit(&out, 0);
}

#[test]
fn a_diverging_run_stops_naming_the_iteration_and_keeps_the_last_good_checkpoint() {
    let sandbox = Sandbox::new("diverge").with_toys();
    // A learning rate of 0.5 without clipping blows the value network up within a few
    // iterations; no NaN needs to appear for the guard to stop it.
    let out = sandbox.run(&[
        "run",
        "--lr",
        "0.5",
        "--grad-clip",
        "1e9",
        "--iterations",
        "200",
        "--checkpoint-every",
        "10",
        "--eval-samples",
        "16",
        "--out",
        "run",
    ]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("Value Matching diverged at iteration"),
        "{err}"
    );
    assert!(
        err.contains("start a new run with a lower --lr (now 0.5)"),
        "{err}"
    );
    let kept = tensor(
        &sandbox.path("run/checkpoints/latest.safetensors"),
        "run.iterations_done",
    )[0];
    assert!(
        err.contains(&format!(
            "the last good checkpoint, after {kept} iterations"
        )),
        "{err}"
    );
}

#[test]
fn resume_passes_over_a_damaged_checkpoint_to_the_newest_readable_one() {
    let sandbox = Sandbox::new("damaged").with_toys();
    let out = sandbox.run(&[
        "run",
        "--iterations",
        "6",
        "--checkpoint-every",
        "3",
        "--eval-samples",
        "16",
        "--out",
        "run",
    ]);
    assert_exit(&out, 0);
    let latest = sandbox.path("run/checkpoints/latest.safetensors");
    let bytes = std::fs::read(&latest).unwrap();
    std::fs::write(&latest, &bytes[..bytes.len() / 2]).unwrap();
    let out = sandbox.run(&["run", "--resume", "run", "--iterations", "8"]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("warning: passing over"), "{err}");
    assert!(
        err.contains("from the newest readable checkpoint")
            && err.contains("iter-000006.safetensors (after iteration 6)"),
        "{err}"
    );
    let rows = std::fs::read_to_string(sandbox.path("run/metrics.csv"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(rows, 9, "a header and eight iterations");
}
