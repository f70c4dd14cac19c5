//! Plugin discovery, checks and bad input, end to end on real plugin files.

use flowgym_plugin_api::API_VERSION;
use flowgym_tests::{assert_exit, fixture_plugin, plugin, stderr, stdout, Sandbox};

#[test]
fn list_shows_plugins_entries_versions_and_arguments() {
    let sandbox = Sandbox::new("list").with_toys();
    let out = sandbox.run(&["list"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains(
            "libflowgym_toy.so  (flowgym-toy 0.1.0, plugin-api 1.1.0, libtorch 2.13.0, 1 entries)"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "(flowgym-toy-rewards 0.1.0, plugin-api {API_VERSION}, no libtorch, 2 entries)"
        )),
        "{text}"
    );
    assert!(text.contains("1d 1.0.0  Plain layout"), "{text}");
    assert!(
        text.contains("  1d/gmm  1.0.0  (data type 1d 1.0.0)"),
        "{text}"
    );
    assert!(text.contains("      produces: x: f32 [n, 1]"), "{text}");
    assert!(
        text.contains(
            "        stds: Vec<f64> = [1.0,0.4]  Component standard deviations (positive)."
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "  1d/binary  1.0.0  (data type 1d 1.0.0)  1 on [low, high] (default [0, 1]), else 0"
        ),
        "{text}"
    );
    assert!(
        text.contains("      capabilities: any batch, CPU only"),
        "{text}"
    );
}

#[test]
fn plugins_are_found_in_every_search_directory() {
    let sandbox = Sandbox::new("search");
    sandbox.install_as(&plugin("flowgym-toy"), "flag-dir", "libtoy.so");
    sandbox.install_as(
        &plugin("flowgym-toy-rewards"),
        "home/plugins",
        "librewards.so",
    );
    let out = sandbox.run(&[
        "--plugins",
        "flag-dir",
        "check",
        "--model",
        "1d/gmm",
        "--reward",
        "1d/gaussian",
    ]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).starts_with("ok: model `1d/gmm` and reward `1d/gaussian` can run together"),
        "{}",
        stdout(&out)
    );

    let env_sandbox = Sandbox::new("search-env").with_toys();
    let extra = env_sandbox.install_as(
        &flowgym_tests::fixture_plugin("flowgym-test-faulty"),
        "env-dir",
        "libfaulty.so",
    );
    let out = env_sandbox
        .command(&["list"])
        .env("FLOWGYM_PLUGIN_PATH", extra.parent().unwrap())
        .output()
        .unwrap();
    assert!(stdout(&out).contains("1d/nan-model"), "{}", stdout(&out));
}

#[test]
fn broken_files_are_reported_by_name_and_the_rest_still_loads() {
    let sandbox = Sandbox::new("broken").with_toys();
    let garbage = sandbox.bin().join("libgarbage.so");
    std::fs::write(&garbage, b"this is not an ELF file at all").unwrap();
    let toy = std::fs::read(plugin("flowgym-toy-rewards")).unwrap();
    let truncated = sandbox.bin().join("libtruncated.so");
    std::fs::write(&truncated, &toy[..toy.len() / 3]).unwrap();
    sandbox.install(&fixture_plugin("flowgym-test-not-a-plugin"));
    sandbox.install(&fixture_plugin("flowgym-test-foreign-libtorch"));

    let out = sandbox.run(&["list"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let refused = text
        .split("Refused files:")
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        refused.contains(&format!(
            "{}: is not a complete dynamic library (its headers do not parse: Unknown file magic)",
            garbage.display()
        )),
        "{refused}"
    );
    assert!(
        refused.contains(&format!(
            "{}: is not a complete dynamic library",
            truncated.display()
        )) || refused.contains(&format!("{}: is truncated", truncated.display())),
        "{refused}"
    );
    assert!(refused.contains("libflowgym_test_not_a_plugin.so: is not a Flow Gym plugin: it exports no abi_stable root module"), "{refused}");
    assert!(
        refused.contains("libflowgym_test_foreign_libtorch.so: links libtorch 2.1.0, but this host runs libtorch 2.13.0; a plugin shares the host's libtorch, so rebuild it against libtorch 2.13.0"),
        "{refused}"
    );
    // The good plugins are still served.
    let out = sandbox.run(&["check", "--model", "1d/gmm", "--reward", "1d/binary"]);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("warning: skipped"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_same_id_in_two_files_names_both_unless_one_is_preferred() {
    let sandbox = Sandbox::new("duplicate").with_toys();
    let first = sandbox.bin().join("libflowgym_toy_rewards.so");
    let second = sandbox.install_as(&first, "more", "librewards_copy.so");
    let out = sandbox.run(&[
        "--plugins",
        "more",
        "check",
        "--model",
        "1d/gmm",
        "--reward",
        "1d/binary",
    ]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("error: `1d/binary` is defined by more than one plugin file:"),
        "{err}"
    );
    assert!(
        err.contains(&second.display().to_string()) && err.contains(&first.display().to_string()),
        "{err}"
    );
    assert!(
        err.contains("remove all but one, or pick one with --prefer FILE"),
        "{err}"
    );
    let out = sandbox.run(&[
        "--plugins",
        "more",
        "--prefer",
        &second.display().to_string(),
        "check",
        "--model",
        "1d/gmm",
        "--reward",
        "1d/binary",
    ]);
    assert_exit(&out, 0);
}

#[test]
fn unknown_ids_list_what_is_available() {
    let sandbox = Sandbox::new("unknown").with_toys();
    let out = sandbox.run(&["check", "--model", "1d/gmm", "--reward", "1d/nope"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out)
            .contains("error: unknown reward `1d/nope`; available rewards: 1d/binary, 1d/gaussian"),
        "{}",
        stderr(&out)
    );
    let out = sandbox.run(&["check", "--model", "1d/binary", "--reward", "1d/binary"]);
    assert!(
        stderr(&out).contains("error: `1d/binary` is a reward, not a model"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mismatched_data_types_are_refused_before_anything_is_constructed() {
    let sandbox = Sandbox::new("datatypes").with_toys();
    sandbox.install(&plugin("flowgym-images"));
    let out = sandbox.run(&["check", "--model", "images/cifar", "--reward", "1d/binary"]);
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("  - model `images/cifar` produces data type `images` but reward `1d/binary` scores `1d`"),
        "{}",
        stdout(&out)
    );
    // `run` refuses the pair before constructing the model (which would fail for its missing
    // weights: that error must not appear).
    let out = sandbox.run(&[
        "run",
        "--model",
        "images/cifar",
        "--reward",
        "1d/binary",
        "--out",
        "r",
    ]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("cannot run together"), "{err}");
    assert!(!err.contains("weights"), "{err}");
}

#[test]
fn unknown_or_mistyped_arguments_name_the_key_and_what_is_accepted() {
    let sandbox = Sandbox::new("arguments").with_toys();
    let out = sandbox.run(&["run", "--reward-args", r#"{"lowe": 1}"#, "--out", "r1"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("unknown argument `lowe`; accepted: low, high"),
        "{}",
        stderr(&out)
    );
    let out = sandbox.run(&["run", "--model-args", r#"{"stds": "wide"}"#, "--out", "r2"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("cannot construct model `1d/gmm`")
            && stderr(&out).contains("argument `stds` expects Vec<f64>, got \"wide\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn panics_in_plugins_become_errors_and_never_abort_the_host() {
    let sandbox = Sandbox::new("panics").with_toys();
    sandbox.install(&fixture_plugin("flowgym-test-faulty"));
    let out = sandbox.run(&["run", "--reward", "1d/panic-construct", "--out", "r1"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("cannot construct reward `1d/panic-construct`")
            && stderr(&out).contains(
                "the constructor panicked at tests/plugins/faulty/src/lib.rs:37: constructor exploded"
            ),
        "{}",
        stderr(&out)
    );
    let out = sandbox.run(&[
        "run",
        "--reward",
        "1d/panic-call",
        "--out",
        "r2",
        "--eval-samples",
        "8",
    ]);
    assert_exit(&out, 1);
    // Said once, by the host, naming the entry once and the place in the plugin's source.
    let err = stderr(&out);
    assert!(
        err.contains("reward `1d/panic-call`: the call panicked at tests/plugins/faulty/src/lib.rs:46: reward exploded"),
        "{err}"
    );
    assert_eq!(err.matches("reward exploded").count(), 1, "{err}");
    assert_eq!(
        err.matches("1d/panic-call").count(),
        2,
        "the run header and the error: {err}"
    );
}

#[test]
fn a_third_party_plugin_is_found_listed_and_constructed() {
    let built = fixture_plugin("third-party-reward");
    let sandbox = Sandbox::new("third-party").with_toys();
    sandbox.install_as(&built, "dropped", "libcloseness.so");
    let out = sandbox.run(&["--plugins", "dropped", "list"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("  1d/closeness  0.1.0  (data type 1d 1.0.0)"),
        "{}",
        stdout(&out)
    );
    let out = sandbox.run(&[
        "--plugins",
        "dropped",
        "sample",
        "--model",
        "1d/gmm",
        "--reward",
        "1d/closeness",
        "-n",
        "64",
        "--out",
        "s",
    ]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("reward `1d/closeness`: mean"),
        "{}",
        stdout(&out)
    );
    assert!(sandbox.path("s/samples.safetensors").exists());
}

#[test]
fn reward_plugins_build_without_libtorch() {
    for package in [
        "flowgym-toy-rewards",
        "flowgym-image-rewards",
        "exact-problems",
        "third-party-reward",
    ] {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = std::process::Command::new(cargo)
            .current_dir(flowgym_tests::workspace())
            .args(["tree", "-e", "normal", "-p", package])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let tree = stdout(&out);
        assert!(
            !tree.contains("torch-sys") && !tree.contains("tch v"),
            "{package} depends on libtorch:\n{tree}"
        );
    }
}

#[test]
fn check_with_arguments_constructs_and_runs_the_pair_on_two_samples() {
    let sandbox = Sandbox::new("check-args").with_toys();
    sandbox.install(&fixture_plugin("flowgym-test-faulty"));
    let check = |reward: &str, model_args: &str| {
        sandbox.run(&[
            "check",
            "--model",
            "1d/gmm",
            "--reward",
            reward,
            "--model-args",
            model_args,
        ])
    };
    let out = check("1d/binary", r#"{"means": [0.0, 2.0]}"#);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains(
            "ok: constructed with these arguments, two samples drawn, denoised and scored"
        ),
        "{}",
        stdout(&out)
    );
    let out = check("1d/binary", r#"{"mean": [0.0]}"#);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("unknown argument `mean`; accepted: weights, means, stds"),
        "{}",
        stderr(&out)
    );
    // Only running the pair shows that this reward miscounts its samples.
    let out = check("1d/short", "{}");
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("the end-to-end trial on two samples failed"),
        "{err}"
    );
    assert!(err.contains("1d/short"), "{err}");
}
