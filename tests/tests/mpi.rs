//! Data-parallel runs under `mpirun` (with the `mpi` feature: `cargo xtask --mpi test`): the
//! same run on any number of ranks, faults that end the whole job naming the rank, ranks that
//! disagree refused; and, without the feature, the refusal that says how to build it.

#[cfg(feature = "mpi")]
mod with_mpi {
    use std::path::Path;
    use std::process::Output;

    use flowgym_tests::{fixture_plugin, read_tensors, stderr, summary, Sandbox};

    /// A short toy run: every knob that shapes the numbers is fixed here but the reward and
    /// the batch size, which [`args`] adds unless given.
    const TOY: &[&str] = &[
        "run",
        "--model",
        "1d/gmm",
        "--steps",
        "10",
        "--eval-samples",
        "200",
        "--seed",
        "11",
        "--threads",
        "1",
    ];

    fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut all: Vec<&str> = TOY.iter().copied().chain(extra.iter().copied()).collect();
        for (flag, default) in [("--reward", "1d/binary"), ("--batch-size", "32")] {
            if !extra.contains(&flag) {
                all.extend([flag, default]);
            }
        }
        all
    }

    fn ok(output: &Output) {
        assert!(
            output.status.success(),
            "the run failed: {}\n{}",
            output.status,
            stderr(output)
        );
    }

    /// metrics.csv without its timing column: rows of numbers.
    fn metrics(dir: &Path) -> Vec<Vec<f64>> {
        let text = std::fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv");
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
        let seconds = header.iter().position(|h| *h == "seconds");
        lines
            .map(|line| {
                line.split(',')
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != seconds)
                    .map(|(_, v)| v.parse::<f64>().expect("a number"))
                    .collect()
            })
            .collect()
    }

    fn close(a: f64, b: f64, what: &str) {
        let tolerance = 1e-5 * (1.0 + a.abs().max(b.abs()));
        assert!((a - b).abs() <= tolerance, "{what}: {a} against {b}");
    }

    #[test]
    fn two_ranks_compute_what_one_does_and_resume_on_another_count() {
        let sandbox = Sandbox::new("mpi-same").with_toys();
        ok(&sandbox.run(&args(&["--iterations", "4", "--out", "one"])));
        let two = sandbox
            .mpirun(2, &args(&["--iterations", "2", "--out", "two"]))
            .output()
            .expect("mpirun starts");
        ok(&two);
        // Resumed on three ranks: 32 trajectories split 11, 11, 10.
        let three = sandbox
            .mpirun(3, &["run", "--resume", "two", "--iterations", "4"])
            .output()
            .expect("mpirun starts");
        ok(&three);
        let (one, two) = (metrics(&sandbox.path("one")), metrics(&sandbox.path("two")));
        assert_eq!(one.len(), 4);
        assert_eq!(two.len(), 4, "the resumed run's metrics continue its own");
        for (row, (a, b)) in one.iter().zip(&two).enumerate() {
            for (column, (x, y)) in a.iter().zip(b).enumerate() {
                close(*x, *y, &format!("metrics row {row}, column {column}"));
            }
        }
        let (s1, s2) = (summary(&sandbox.path("one")), summary(&sandbox.path("two")));
        for phase in ["before", "after"] {
            for key in ["samples", "reward_mean", "reward_std", "valid_fraction"] {
                let x = s1[phase][key].as_f64().expect("a number");
                let y = s2[phase][key].as_f64().expect("a number");
                close(x, y, &format!("summary {phase}.{key}"));
            }
        }
        assert_eq!(s2["data_parallel"]["ranks"], 3, "{s2}");
        assert!(s1.get("data_parallel").is_none(), "{s1}");
        // The samples rank 0 gathered are those one process drew, in the same order.
        let samples = |dir: &str| {
            read_tensors(&sandbox.path(&format!("{dir}/samples/after.safetensors")))
                .into_iter()
                .find(|(name, _, _)| name.starts_with("sample."))
                .expect("a sample leaf")
                .2
        };
        let (a, b) = (samples("one"), samples("two"));
        assert_eq!(a.len(), 200);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            close(*x, *y, &format!("sample {i}"));
        }
    }

    /// A 6-iteration toy run on 2 ranks whose reward misbehaves as `reward_args` say, into
    /// the run directory `out`; the job must fail. Returns the sandbox and the job's stderr.
    fn misbehaving_job(out: &str, reward_args: &str, extra: &[&str]) -> (Sandbox, String) {
        let sandbox = Sandbox::new(&format!("mpi-{out}")).with_toys();
        sandbox.install(&fixture_plugin("flowgym-test-faulty"));
        let mut flags = vec![
            "--reward",
            "1d/misbehave",
            "--reward-args",
            reward_args,
            "--iterations",
            "6",
            "--out",
            out,
        ];
        flags.extend_from_slice(extra);
        let output = sandbox
            .mpirun(2, &args(&flags))
            .output()
            .expect("mpirun starts");
        assert!(!output.status.success());
        let err = stderr(&output);
        (sandbox, err)
    }

    /// The latest checkpoint of the run in `out` reads and holds the value network.
    fn assert_checkpoint_readable(sandbox: &Sandbox, out: &str) {
        let checkpoint = sandbox.path(&format!("{out}/checkpoints/latest.safetensors"));
        let tensors = read_tensors(&checkpoint);
        assert!(tensors
            .iter()
            .any(|(name, _, _)| name.starts_with("value.")));
    }

    #[test]
    fn a_failing_rank_ends_the_job_naming_it_and_keeps_the_checkpoint() {
        // One call for the samples before, then one per iteration: rank 1 fails in the 3rd.
        let (sandbox, err) =
            misbehaving_job("failed", r#"{"mode": "error", "rank": 1, "after": 3}"#, &[]);
        assert!(
            err.contains("rank 1 of 2: reward `1d/misbehave`: the reward failed on purpose"),
            "{err}"
        );
        assert!(err.contains("the run stopped at iteration 2"), "{err}");
        assert_checkpoint_readable(&sandbox, "failed");
        assert_eq!(metrics(&sandbox.path("failed")).len(), 2);
    }

    #[test]
    fn a_killed_rank_ends_the_job_naming_it_and_the_checkpoints_stay_readable() {
        // Rank 1 aborts in its 4th reward call (the 3rd iteration), with no chance to report.
        let (sandbox, err) = misbehaving_job(
            "killed",
            r#"{"mode": "abort", "rank": 1, "after": 3}"#,
            &["--checkpoint-every", "1"],
        );
        // The launcher names the rank and the signal; every other rank is ended with it.
        assert!(err.contains("rank 1"), "{err}");
        assert!(err.contains("signal 6"), "{err}");
        assert_checkpoint_readable(&sandbox, "killed");
        // It resumes on one rank (where the fixture behaves) from that checkpoint.
        let resumed = sandbox.run(&["run", "--resume", "killed", "--iterations", "4"]);
        ok(&resumed);
        assert_eq!(metrics(&sandbox.path("killed")).len(), 4);
    }

    #[test]
    fn an_interrupt_under_mpirun_checkpoints_once_and_stops_every_rank() {
        let sandbox = Sandbox::new("mpi-interrupt").with_toys();
        let child = sandbox
            .mpirun(2, &args(&["--iterations", "100000", "--out", "long"]))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("mpirun starts");
        let rows = || metrics(&sandbox.path("long")).len();
        let started = std::time::Instant::now();
        while !sandbox.path("long/metrics.csv").exists() || rows() < 2 {
            assert!(
                started.elapsed().as_secs() < 120,
                "no iterations after 2 minutes"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // What a terminal's Ctrl-C sends mpirun, which passes SIGTERM on to every rank.
        let kill = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(kill.success());
        let output = child.wait_with_output().expect("mpirun ends");
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let done: usize = out
            .split("interrupted: checkpoint written after iteration ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no interruption reported:\n{out}\n{}", stderr(&output)));
        assert_eq!(out.matches("interrupted:").count(), 1, "{out}");
        assert_eq!(rows(), done, "metrics up to the checkpoint");
        let resumed = sandbox
            .command(&[
                "run",
                "--resume",
                "long",
                "--iterations",
                &(done + 1).to_string(),
            ])
            .output()
            .expect("the host starts");
        ok(&resumed);
        assert_eq!(rows(), done + 1);
    }

    #[test]
    fn ranks_that_disagree_on_the_configuration_are_refused() {
        let sandbox = Sandbox::new("mpi-disagree").with_toys();
        let mut command = sandbox.mpirun(1, &args(&["--lr", "0.001", "--out", "x"]));
        command.arg(":").args(["-np", "1"]);
        let host = sandbox.command(&[]);
        command
            .arg(host.get_program())
            .args(args(&["--lr", "0.002", "--out", "x"]));
        let output = command.output().expect("mpirun starts");
        assert!(!output.status.success());
        let err = stderr(&output);
        assert!(
            err.contains("rank 1's configuration differs from rank 0's: `lr` is 0.002 there, 0.001 on rank 0"),
            "{err}"
        );
        assert!(!sandbox.path("x/config.toml").exists(), "nothing written");
    }

    #[test]
    fn a_batch_smaller_than_the_ranks_is_refused_with_the_numbers() {
        let sandbox = Sandbox::new("mpi-small").with_toys();
        let output = sandbox
            .mpirun(3, &args(&["--batch-size", "2", "--out", "small"]))
            .output()
            .expect("mpirun starts");
        assert!(!output.status.success());
        let err = stderr(&output);
        assert!(
            err.contains("the batch size (2) is smaller than the number of ranks (3)"),
            "{err}"
        );
    }
}

#[cfg(not(feature = "mpi"))]
mod without_mpi {
    use flowgym_tests::{assert_exit, stderr, Sandbox};

    #[test]
    fn a_host_without_mpi_started_as_several_ranks_says_how_to_build_it() {
        let sandbox = Sandbox::new("no-mpi").with_toys();
        let output = sandbox
            .command(&["run", "--iterations", "1", "--out", "x"])
            .env("OMPI_COMM_WORLD_SIZE", "2")
            .env("OMPI_COMM_WORLD_RANK", "1")
            .output()
            .expect("the host starts");
        assert_exit(&output, 1);
        let err = stderr(&output);
        assert!(err.contains("rank 1 of 2"), "{err}");
        assert!(err.contains("built without MPI support"), "{err}");
        assert!(err.contains("--features mpi"), "{err}");
        assert!(!sandbox.path("x").exists());
    }
}
