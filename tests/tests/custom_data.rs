//! A data type with a custom layout end to end: `points` (sets of points, a different number
//! per sample) from the third-party-style `exact-problems` plugin, sampled, trained and
//! evaluated through its own slice, collate and aggregate, with the set value network the
//! host picks for it, against the optimum known in closed form.

use flowgym_tests::{assert_exit, plugin, Sandbox};

#[test]
fn value_matching_runs_on_point_sets_and_approaches_their_exact_optimum() {
    let sandbox = Sandbox::new("custom-data");
    sandbox.install(&plugin("exact-problems"));
    // Each point ~ N(0, I) in 2-d, 1, 2 or 4 points per sample (uniformly); the reward is the
    // mean over the points of x_1. With m points the optimum tilts each point by
    // exp(lambda x_1 / m), i.e. shifts it by lambda / m along x_1, and the number of points
    // is not the sampler's to change: E*[r] = lambda (1 + 1/2 + 1/4) / 3, E_base[r] = 0.
    let lambda = 2.0;
    let optimum = lambda * (1.0 + 0.5 + 0.25) / 3.0;
    let out = sandbox.run(&[
        "run",
        "--model",
        "points/gmm",
        "--reward",
        "points/linear",
        "--model-args",
        r#"{"counts": [1, 2, 4], "weights": [1], "means": [[0, 0]], "stds": [1]}"#,
        "--reward-args",
        r#"{"weights": [1, 0]}"#,
        "--reward-scale",
        "2",
        "--iterations",
        "40",
        "--batch-size",
        "64",
        "--steps",
        "25",
        "--out",
        "run",
    ]);
    assert_exit(&out, 0);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sandbox.path("run/summary.json")).unwrap())
            .unwrap();
    let network = summary["value_network"].as_str().unwrap();
    assert!(network.starts_with("DeepSets"), "{network}");
    let before = summary["before"]["reward_mean"].as_f64().unwrap();
    let after = summary["after"]["reward_mean"].as_f64().unwrap();
    assert!(before.abs() < 0.05, "base reward {before}");
    let improvement = after / optimum;
    assert!(
        (0.8..=1.05).contains(&improvement),
        "normalised improvement {improvement:.3} (after {after:.4}, optimum {optimum:.4})"
    );
    // The base-sample estimate of the optimum would tilt the number of points too: not shown.
    assert!(summary["optimum"].is_null(), "{summary}");
}
