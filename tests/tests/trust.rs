//! Pinning plugin files, the strict setting, and where discovery refuses to look: end to end
//! on real plugin files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flowgym_plugin_api::API_VERSION;

use flowgym_tests::{assert_exit, fixture_plugin, stderr, stdout, Sandbox};

/// The sha256 of a file, as `sha256sum` prints it (an independent implementation).
fn sha256sum(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    stdout(&out)
        .split_whitespace()
        .next()
        .expect("a hash")
        .to_string()
}

fn check_pair(sandbox: &Sandbox, extra: &[&str]) -> std::process::Output {
    let mut args = extra.to_vec();
    args.extend(["check", "--model", "1d/gmm", "--reward", "1d/binary"]);
    sandbox.run(&args)
}

#[test]
fn pinned_files_load_and_unpinned_or_changed_ones_are_refused_when_trust_is_required() {
    let sandbox = Sandbox::new("trust").with_toys();
    let rewards = sandbox.bin().join("libflowgym_toy_rewards.so");
    let model = sandbox.bin().join("libflowgym_toy.so");
    let pinned_hash = sha256sum(&rewards);

    let out = sandbox.run(&["trust", &rewards.display().to_string()]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "pinned {}  sha256 {pinned_hash}  (plugin-api {API_VERSION}; 1d/binary 1.0.0, 1d/gaussian 1.0.0)",
            rewards.display()
        )),
        "{text}"
    );
    let trust_file = sandbox.path("home/trust.toml");
    assert!(
        text.contains(&format!("trust file: {}", trust_file.display())),
        "{text}"
    );
    let mode = std::fs::metadata(&trust_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the trust file is the user's alone");

    let out = sandbox.run(&["list"]);
    let text = stdout(&out);
    let rewards_line = format!("{}  (flowgym-toy-rewards", rewards.display());
    let state_after = |line: &str| -> String {
        let at = text.find(line).unwrap_or_else(|| panic!("{text}"));
        text[at..]
            .lines()
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(state_after(&rewards_line), "trust: pinned", "{text}");
    assert_eq!(
        state_after(&format!("{}  (flowgym-toy ", model.display())),
        "trust: not pinned",
        "{text}"
    );

    // Strict: the unpinned model file is refused, naming its hash; the same with the
    // environment variable and with the trust file's key.
    let model_hash = sha256sum(&model);
    let refusal = format!(
        "warning: skipped {}: is not pinned (sha256 {model_hash}) and plugins must be trusted",
        model.display()
    );
    let out = check_pair(&sandbox, &["--require-trusted"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains(&refusal), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown model `1d/gmm`"),
        "{}",
        stderr(&out)
    );
    let out = sandbox
        .command(&["check", "--model", "1d/gmm", "--reward", "1d/binary"])
        .env("FLOWGYM_REQUIRE_TRUSTED", "1")
        .output()
        .unwrap();
    assert_exit(&out, 1);
    assert!(stderr(&out).contains(&refusal), "{}", stderr(&out));
    let set_strict = |on: bool| {
        let text = std::fs::read_to_string(&trust_file).unwrap();
        let (from, to) = if on {
            ("false", "true")
        } else {
            ("true", "false")
        };
        std::fs::write(
            &trust_file,
            text.replace(
                &format!("require_trusted = {from}"),
                &format!("require_trusted = {to}"),
            ),
        )
        .unwrap();
    };
    set_strict(true);
    let out = check_pair(&sandbox, &[]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains(&refusal), "{}", stderr(&out));

    // Pinned both: the pair loads under the strict setting.
    assert_exit(&sandbox.run(&["trust", &model.display().to_string()]), 0);
    assert_exit(&check_pair(&sandbox, &[]), 0);

    // A pinned file that changes is refused, naming both hashes; without the strict
    // setting it still loads, with a warning, and `list` shows it changed.
    let mut bytes = std::fs::read(&rewards).unwrap();
    bytes.extend_from_slice(b"tampered");
    std::fs::write(&rewards, &bytes).unwrap();
    let now_hash = sha256sum(&rewards);
    let out = check_pair(&sandbox, &[]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains(&format!(
            "warning: skipped {}: changed since it was pinned: pinned sha256 {pinned_hash}, now {now_hash}",
            rewards.display()
        )),
        "{}",
        stderr(&out)
    );
    let out = check_pair(&sandbox, &["--require-trusted"]);
    assert_exit(&out, 1);
    set_strict(false);
    let out = check_pair(&sandbox, &[]);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains(&format!(
            "warning: the plugin file {} changed since it was pinned: pinned sha256 {pinned_hash}, now {now_hash}",
            rewards.display()
        )),
        "{}",
        stderr(&out)
    );
    let text = stdout(&sandbox.run(&["list"]));
    assert!(
        text.contains(&format!(
            "trust: CHANGED since pinned (pinned sha256 {pinned_hash}, now {now_hash})"
        )),
        "{text}"
    );

    // Listing and unpinning.
    let out = sandbox.run(&["trust"]);
    assert!(
        stdout(&out).contains(&format!("  {}  [CHANGED since pinned", rewards.display())),
        "{}",
        stdout(&out)
    );
    let out = sandbox.run(&["trust", "--remove", &rewards.display().to_string()]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains(&format!("unpinned {}", rewards.display())),
        "{}",
        stdout(&out)
    );
    let out = sandbox.run(&["trust", "--remove", &rewards.display().to_string()]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("is not pinned in"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn only_plugin_files_can_be_pinned() {
    let sandbox = Sandbox::new("trust-bad");
    let garbage = sandbox.path("libgarbage.so");
    std::fs::write(&garbage, b"not a library").unwrap();
    let out = sandbox.run(&["trust", &garbage.display().to_string()]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("is not a complete dynamic library")
            && stderr(&out).contains("only plugin files that load can be pinned"),
        "{}",
        stderr(&out)
    );
    assert!(!sandbox.path("home/trust.toml").exists());
}

#[test]
fn plugin_directories_and_files_others_can_write_are_named_and_refused_when_strict() {
    let sandbox = Sandbox::new("writable").with_toys();
    let shared = sandbox.path("shared");
    sandbox.install_as(
        &fixture_plugin("flowgym-test-faulty"),
        "shared",
        "libfaulty.so",
    );
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = sandbox.run(&["--plugins", "shared", "list"]);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains(&format!(
            "warning: the plugin directory {} (--plugins) is writable by every user (mode 0777); run `chmod go-w {0}`; whoever can write there can run code as you",
            shared.display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("1d/nan-model"), "{}", stdout(&out));
    let out = sandbox.run(&["--plugins", "shared", "--require-trusted", "list"]);
    assert!(
        stderr(&out).contains(&format!(
            "warning: refused the plugin directory {} (--plugins): it is writable by every user",
            shared.display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("1d/nan-model"), "{}", stdout(&out));

    // A group-writable file in a safe directory.
    let rewards = sandbox.bin().join("libflowgym_toy_rewards.so");
    std::fs::set_permissions(&rewards, std::fs::Permissions::from_mode(0o664)).unwrap();
    let out = check_pair(&sandbox, &[]);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains(&format!(
            "warning: the plugin file {} is writable by its group (mode 0664)",
            rewards.display()
        )),
        "{}",
        stderr(&out)
    );
    assert_exit(
        &sandbox.run(&[
            "trust",
            &rewards.display().to_string(),
            &sandbox
                .bin()
                .join("libflowgym_toy.so")
                .display()
                .to_string(),
        ]),
        0,
    );
    let out = check_pair(&sandbox, &["--require-trusted"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains(&format!(
            "warning: skipped {}: is writable by its group (mode 0664); run `chmod go-w {0}`; refused because whoever can write it could run code as you",
            rewards.display()
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_current_directory_is_searched_only_when_named() {
    let sandbox = Sandbox::new("cwd").with_toys();
    sandbox.install_as(
        &fixture_plugin("flowgym-test-faulty"),
        "here",
        "libfaulty.so",
    );
    let out = sandbox
        .command(&["list"])
        .env("FLOWGYM_PLUGIN_PATH", "here")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("warning: FLOWGYM_PLUGIN_PATH entry `here` is relative, so it would load plugins from the current directory; passed over"),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("1d/nan-model"), "{}", stdout(&out));
    let out = sandbox.run(&["--plugins", "here", "list"]);
    assert!(stdout(&out).contains("1d/nan-model"), "{}", stdout(&out));
    // The toys are still found where they are (next to the host).
    assert!(stdout(&out).contains("1d/gmm"), "{}", stdout(&out));
}
