//! Rewards in a sandboxed child process, end to end: a reward that segfaults, aborts, hangs,
//! allocates without bound, connects to the network or writes outside its directory stops the
//! run with a clear error (the host itself never dies), keeps every finished iteration, and
//! can be retried or resumed.

use std::path::PathBuf;

use flowgym_tests::{assert_exit, fixture_plugin, stderr, stdout, Sandbox};

/// A sandbox with the toys and the faulty plugin; returns it and the faulty file's path.
fn sandbox(name: &str) -> (Sandbox, PathBuf) {
    let sandbox = Sandbox::new(name).with_toys();
    let faulty = sandbox.install(&fixture_plugin("flowgym-test-faulty"));
    (sandbox, faulty)
}

/// A short isolated run of `1d/misbehave` with `reward_args`, plus `extra` flags.
fn misbehave(
    sandbox: &Sandbox,
    out: &str,
    reward_args: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "run",
        "--reward",
        "1d/misbehave",
        "--reward-args",
        reward_args,
        "--isolate-rewards",
        "--iterations",
        "4",
        "--checkpoint-every",
        "1",
        "--batch-size",
        "16",
        "--steps",
        "4",
        "--eval-samples",
        "8",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    sandbox.run(&args)
}

fn metrics_rows(sandbox: &Sandbox, run: &str) -> usize {
    let text =
        std::fs::read_to_string(sandbox.path(&format!("{run}/metrics.csv"))).unwrap_or_default();
    text.lines().count().saturating_sub(1)
}

#[test]
fn a_segfault_stops_the_run_with_its_checkpoint_and_the_run_resumes() {
    let (sandbox, faulty) = sandbox("iso-segv");
    // Calls: the base samples, iterations 1 and 2, then iteration 3 crashes.
    let out = misbehave(&sandbox, "r", r#"{"mode": "segfault", "after": 3}"#, &[]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "error: the run stopped at iteration 2; the last good state (after 2 iterations) is in {}; resume with `flowgym-host run --resume r`",
            std::path::Path::new("r/checkpoints/latest.safetensors").display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "reward `1d/misbehave` (isolated, from {}) crashed with SIGSEGV (segmentation fault), signal 11 while scoring the batch of iteration 3 (samples 0..16); to start it again and retry the batch, set --reward-retries N",
            faulty.display()
        )),
        "{err}"
    );
    assert_eq!(metrics_rows(&sandbox, "r"), 2);
    // A fresh worker counts its calls from zero: iterations 3 and 4 and the adapted samples
    // are its first three.
    // How the reward runs may change on resume.
    let out = sandbox.run(&["run", "--resume", "r", "--reward-retries", "1"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("iterations: 4/4"), "{}", stdout(&out));
    assert_eq!(metrics_rows(&sandbox, "r"), 4);
}

#[test]
fn a_worker_that_crashes_is_started_again_when_retries_are_allowed() {
    let (sandbox, _) = sandbox("iso-retry");
    // Every worker scores one batch and crashes on its second: each batch after the first
    // is scored by a fresh worker.
    let out = misbehave(
        &sandbox,
        "r",
        r#"{"mode": "abort", "after": 1}"#,
        &["--reward-retries", "2"],
    );
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(
        err.contains("crashed with SIGABRT (abort), signal 6 while scoring the batch of iteration 1 (samples 0..16); starting it again (retry 1 of 2)"),
        "{err}"
    );
    assert_eq!(metrics_rows(&sandbox, "r"), 4);
    // Without retries left, the error says so.
    let out = misbehave(
        &sandbox,
        "r2",
        r#"{"mode": "abort"}"#,
        &["--reward-retries", "1"],
    );
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("crashed with SIGABRT (abort), signal 6 while scoring the base model samples (samples 0..8); gave up after 1 retries"),
        "{err}"
    );
}

#[test]
fn a_reward_that_never_returns_is_stopped_after_the_timeout() {
    let (sandbox, faulty) = sandbox("iso-hang");
    let out = misbehave(
        &sandbox,
        "r",
        r#"{"mode": "hang", "after": 2}"#,
        &["--reward-timeout", "2"],
    );
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "reward `1d/misbehave` (isolated, from {}) did not answer within 2 s and was stopped (the limit is set by --reward-timeout) while scoring the batch of iteration 2 (samples 0..16)",
            faulty.display()
        )),
        "{err}"
    );
    assert!(err.contains("the run stopped at iteration 1"), "{err}");
    assert_eq!(metrics_rows(&sandbox, "r"), 1);
}

#[test]
fn a_reward_that_allocates_without_bound_hits_its_memory_limit() {
    let (sandbox, _) = sandbox("iso-oom");
    let out = misbehave(
        &sandbox,
        "r",
        r#"{"mode": "grow"}"#,
        &["--reward-memory-mib", "1024"],
    );
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("crashed with SIGABRT (abort), signal 6 while scoring the base model samples (samples 0..8); it ran out of memory: its limit is 1024 MiB (set by --reward-memory-mib); its last output: ")
            && err.contains("memory allocation of"),
        "{err}"
    );
}

#[test]
fn an_isolated_reward_cannot_connect_or_write_outside_its_directory() {
    let (sandbox, _) = sandbox("iso-escape");
    let out = misbehave(&sandbox, "r", r#"{"mode": "connect"}"#, &[]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(
            "reward `1d/misbehave`: connect to 127.0.0.1:9: Permission denied (os error 13)"
        ),
        "{err}"
    );
    let target = sandbox.path("escaped.txt");
    let args = format!(r#"{{"mode": "write", "path": "{}"}}"#, target.display());
    let out = misbehave(&sandbox, "r2", &args, &[]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "reward `1d/misbehave`: write {}: Permission denied (os error 13)",
            target.display()
        )),
        "{err}"
    );
    assert!(!target.exists());
    // In the host's process the same write succeeds: the sandbox is what stopped it.
    let out = sandbox.run(&[
        "run",
        "--reward",
        "1d/misbehave",
        "--reward-args",
        &args,
        "--iterations",
        "1",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--eval-samples",
        "8",
        "--out",
        "r3",
    ]);
    assert_exit(&out, 0);
    assert_eq!(std::fs::read(&target).unwrap(), b"escaped");
}

#[test]
fn isolated_rewards_score_like_in_process_ones_and_report_plugin_errors_the_same_way() {
    let (sandbox, _) = sandbox("iso-same");
    let common = [
        "--iterations",
        "3",
        "--batch-size",
        "32",
        "--steps",
        "5",
        "--eval-samples",
        "64",
        "--checkpoint-every",
        "3",
    ];
    let mut plain = vec!["run", "--out", "plain"];
    plain.extend(common);
    assert_exit(&sandbox.run(&plain), 0);
    let mut isolated = vec!["run", "--out", "isolated", "--isolate-rewards"];
    isolated.extend(common);
    assert_exit(&sandbox.run(&isolated), 0);
    let metrics =
        |run: &str| std::fs::read_to_string(sandbox.path(&format!("{run}/metrics.csv"))).unwrap();
    // The same rewards, hence the same training, except for the timing column.
    let (a, b) = (metrics("plain"), metrics("isolated"));
    let header: Vec<&str> = a.lines().next().unwrap().split(',').collect();
    let seconds = header.iter().position(|h| *h == "seconds");
    let rows = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .map(|l| {
                l.split(',')
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != seconds)
                    .map(|(_, f)| f.to_string())
                    .collect()
            })
            .collect()
    };
    assert_eq!(rows(&a), rows(&b));
    assert_eq!(
        flowgym_tests::tensor(&sandbox.path("plain/samples/after.safetensors"), "reward"),
        flowgym_tests::tensor(
            &sandbox.path("isolated/samples/after.safetensors"),
            "reward"
        )
    );
    let out = sandbox.run(&[
        "run",
        "--reward",
        "1d/panic-call",
        "--isolate-rewards",
        "--eval-samples",
        "8",
        "--out",
        "p",
    ]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out)
            .contains("reward `1d/panic-call`: the call panicked at tests/plugins/faulty/src/lib.rs:46: reward exploded"),
        "{}",
        stderr(&out)
    );
    let out = sandbox.run(&[
        "run",
        "--reward",
        "1d/panic-construct",
        "--isolate-rewards",
        "--out",
        "c",
    ]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("cannot construct reward `1d/panic-construct`")
            && stderr(&out).contains(
                "the constructor panicked at tests/plugins/faulty/src/lib.rs:37: constructor exploded"
            ),
        "{}",
        stderr(&out)
    );
}
