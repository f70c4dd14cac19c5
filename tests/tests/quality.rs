//! The fast subset of the quality suite end to end: `flowgym-host bench quality --fast` with the
//! default configuration, on exact problems whose optimum `host/src/quality` computes
//! independently (closed forms here), through the third-party-style `exact-problems` plugin.

use flowgym_tests::{assert_exit, plugin, stderr, stdout, Sandbox};

#[test]
fn the_default_configuration_reaches_the_optimum_of_the_fast_problems() {
    let sandbox = Sandbox::new("quality").with_toys();
    sandbox.install(&plugin("exact-problems"));
    let out = sandbox.run(&["bench", "quality", "--fast", "--out", "q"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("json: "))
        .expect("a json line");
    let rows: serde_json::Value = serde_json::from_str(json).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{text}");
    for row in rows {
        let name = row["problem"].as_str().unwrap();
        let improvement = row["normalised_improvement"].as_f64().unwrap();
        let before = row["distance_before"].as_f64().unwrap();
        let after = row["distance_after"].as_f64().unwrap();
        // The quality suite's goal for the mean reward: 95% of the possible improvement. An
        // overshoot past the optimum shows as more than 1: on `1d-two-modes-halfspace` an
        // earlier default put every sample in the half-space at seed 1, 1.033 where 1.034 is
        // the most a binary reward allows, and another machine's rounding draws like another
        // seed, so the bound above is 1.05 (docs/value-matching-quality.md).
        assert!(
            (0.95..=1.05).contains(&improvement),
            "{name}: normalised improvement {improvement:.3}\n{text}"
        );
        // The samples have covered at least 95% of their distance to p*. (The suite's goal
        // of twice the noise floor of two exact samples is not reached yet on all of them:
        // docs/value-matching-quality.md.)
        assert!(
            after <= 0.05 * before,
            "{name}: distance to p* {after:.4}, from {before:.4} before training\n{text}"
        );
        // Against two exact samples of p* of the same size (the floor, averaged over 8 pairs):
        // seeds 0 to 2 put these three problems at 0.9-2.6 times it with the default 200
        // sampling steps (1.0-3.2 at seeds 0 to 4 with 100); the control at the start of each
        // step with 16 optimiser steps had put them at up to 9.6 times (against one pair), so
        // 5 catches that kind of regression and leaves room for another machine's rounding.
        let ratio = row["distance_ratio"].as_f64().unwrap();
        assert!(
            ratio <= 5.0,
            "{name}: distance to p* {ratio:.2} times its noise floor\n{text}"
        );
    }
    assert!(sandbox.path("q/quality.csv").exists());
}

#[test]
fn a_problem_that_cannot_run_is_named_and_the_table_says_none_was_judged() {
    let sandbox = Sandbox::new("quality-refused").with_toys();
    sandbox.install(&plugin("exact-problems"));
    // The CNN value network reads images; the suite's problems are flat vectors.
    std::fs::write(sandbox.path("cnn.toml"), "value_net = \"cnn\"\n").unwrap();
    let out = sandbox.run(&[
        "bench",
        "quality",
        "--problems",
        "2d-gaussian-linear",
        "--config",
        "cnn.toml",
        "--out",
        "q",
    ]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("quality: 2d-gaussian-linear not judged: ")
            && err.contains("the CNN value network needs one floating leaf shaped [n, C, H, W]"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("Value Matching quality: no problem was judged"),
        "{}",
        stdout(&out)
    );
}
