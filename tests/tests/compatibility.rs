//! The 1.x compatibility promise, end to end: a plugin built against the frozen plugin-api 1.0
//! (`tests/frozen`) is listed and runs in today's host, and the same plugin built against a
//! plugin-api of another major version is refused with both versions named.

use std::path::Path;

use flowgym_plugin_api::API_VERSION;
use flowgym_tests::{assert_exit, foreign_plugin, stdout, summary, workspace, Sandbox};

#[test]
fn a_plugin_built_against_plugin_api_1_0_is_listed_and_runs() {
    let built = foreign_plugin(&workspace().join("tests/frozen"), "frozen-plugin");
    let sandbox = Sandbox::new("frozen-1-0");
    let file = sandbox.install(&built);

    let out = sandbox.run(&["list"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    // 1.0 records no package (that field came in 1.1): the line shows none.
    assert!(
        text.contains(&format!(
            "{}  (plugin-api 1.0.0, no libtorch, 2 entries)",
            file.display()
        )),
        "{text}"
    );
    assert!(text.contains("  1d/frozen-gaussian  1.0.0"), "{text}");
    assert!(text.contains("  1d/frozen-linear  1.0.0"), "{text}");
    assert!(text.contains("greater than 0"), "{text}");

    let out = sandbox.run(&[
        "check",
        "--model",
        "1d/frozen-gaussian",
        "--reward",
        "1d/frozen-linear",
    ]);
    assert_exit(&out, 0);

    // The base is N(1, 0.5^2) and the reward is x: at scale 1 the optimum is N(1.25, 0.5^2).
    let out = sandbox.run(&[
        "run",
        "--model",
        "1d/frozen-gaussian",
        "--reward",
        "1d/frozen-linear",
        "--reward-scale",
        "1",
        "--iterations",
        "40",
        "--eval-samples",
        "4000",
        "--seed",
        "2",
        "--out",
        "run",
    ]);
    assert_exit(&out, 0);
    let summary = summary(&sandbox.path("run"));
    let before = summary["before"]["reward_mean"].as_f64().unwrap();
    let after = summary["after"]["reward_mean"].as_f64().unwrap();
    // The standard error of either mean is 0.008.
    assert!((before - 1.0).abs() < 0.04, "base mean reward {before}");
    assert!(
        after - before > 0.1 && after < 1.3,
        "mean reward {before} -> {after}, the optimum 1.25"
    );
}

#[test]
fn a_plugin_built_against_another_major_is_refused_naming_both_versions() {
    // The frozen plugin, built against a copy of the contract whose version reads 2.0.0.
    let root = flowgym_tests::fixture_target().join("frozen-2.0");
    let _ = std::fs::remove_dir_all(&root);
    copy_dir(&workspace().join("tests/frozen"), &root);
    edit(&root.join("plugin-api-1.0/Cargo.toml"), |text| {
        text.replace("version = \"1.0.0\"", "version = \"2.0.0\"")
    });
    // A package name of its own, so that its file does not replace the 1.0 build's.
    edit(&root.join("plugin/Cargo.toml"), |text| {
        text.replace("name = \"frozen-plugin\"", "name = \"frozen-plugin-2\"")
            .replace("version = \"1\" }", "version = \"2\" }")
    });
    let built = foreign_plugin(&root, "frozen-plugin-2");

    let sandbox = Sandbox::new("api-version").with_toys();
    let file = sandbox.install(&built);
    let out = sandbox.run(&["list"]);
    assert_exit(&out, 0);
    let major = API_VERSION.split('.').next().unwrap();
    assert!(
        stdout(&out).contains(&format!(
            "{}: built against flowgym-plugin-api 2.0.0, but this host has {API_VERSION} and accepts ^{major}",
            file.display()
        )),
        "{}",
        stdout(&out)
    );
    // The others are served.
    assert!(stdout(&out).contains("  1d/gmm  1.0.0"), "{}", stdout(&out));
}

fn edit(path: &Path, change: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    let changed = change(text.clone());
    assert_ne!(changed, text, "{} did not change", path.display());
    std::fs::write(path, changed).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}
