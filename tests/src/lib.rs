//! Helpers for the end-to-end tests: they build the real plugin files and the host with cargo
//! (so the tests pass from an empty target directory), run the host binary in a sandbox, and
//! read what it wrote.
//!
//! Each test gets a sandbox directory holding the host executable (hard-linked, or copied
//! across file systems), so that the executable-directory search finds exactly the plugins the
//! test puts there, and a private user directory and `FLOWGYM_PLUGIN_PATH`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// `target/` and the profile directory this test binary was built in (`release`, `debug`).
fn target_and_profile() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("test binaries know their path");
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let target = profile_dir.parent().expect("target/").to_path_buf();
    let profile = profile_dir
        .file_name()
        .expect("a profile directory")
        .to_string_lossy()
        .into_owned();
    (target, profile)
}

/// Where cargo builds test-only plugin fixtures: a target directory of their own, so that
/// they never land next to the host in `target/<profile>/` where users' runs would find them.
pub fn fixture_target() -> PathBuf {
    target_and_profile().0.join("test-plugins")
}

fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace());
    command
}

/// `cargo build` in this test binary's profile, into `target` (None: the workspace's).
fn build_command(target: Option<&Path>) -> Command {
    let (_, profile) = target_and_profile();
    let mut command = cargo();
    command.arg("build");
    if profile == "release" {
        command.arg("--release");
    }
    if let Some(target) = target {
        command.env("CARGO_TARGET_DIR", target);
    }
    command
}

/// Runs a build, failing the test with cargo's errors when it fails.
fn run_build(mut command: Command, what: &str) {
    let output = command.output().expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo build {what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds `packages` in one cargo invocation into `target` (None: the workspace's), in this
/// test binary's profile; `"--features", "F"` among them passes features. Packages of one
/// call share features, so libtorch-free plugins are built in calls of their own.
pub fn cargo_build(packages: &[&str], target: Option<&Path>) {
    static BUILT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let key = format!("{packages:?}{target:?}");
    let built = BUILT.get_or_init(|| Mutex::new(HashSet::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if built.contains(&key) {
        return;
    }
    let mut command = build_command(target);
    let mut args = packages.iter();
    while let Some(arg) = args.next() {
        if *arg == "--features" {
            command.args([
                "--features",
                args.next().expect("features after --features"),
            ]);
        } else {
            command.args(["-p", arg]);
        }
    }
    run_build(command, &format!("{packages:?}"));
    built.insert(key);
}

/// The file name of the dynamic library of crate `package` on this platform.
pub fn library_name(package: &str) -> String {
    format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

/// A plugin of the workspace, built (in its own cargo call) and located.
pub fn plugin(package: &str) -> PathBuf {
    cargo_build(&[package], None);
    let (target, profile) = target_and_profile();
    target.join(profile).join(library_name(package))
}

/// A test-only plugin fixture (under `tests/plugins/`), built into the fixture target.
pub fn fixture_plugin(package: &str) -> PathBuf {
    let target = fixture_target();
    cargo_build(&[package], Some(&target));
    let (_, profile) = target_and_profile();
    target.join(profile).join(library_name(package))
}

/// A plugin of a workspace outside this one (`manifest_dir` holds its `Cargo.toml`: the frozen
/// 1.0 contract's, or a copy of it), built into the fixture target and located.
pub fn foreign_plugin(manifest_dir: &Path, package: &str) -> PathBuf {
    let target = fixture_target();
    let mut command = build_command(Some(&target));
    command
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .args(["-p", package]);
    run_build(command, &format!("{package} in {}", manifest_dir.display()));
    let (_, profile) = target_and_profile();
    target.join(profile).join(library_name(package))
}

/// The `summary.json` of the run directory `dir`.
pub fn summary(dir: &Path) -> serde_json::Value {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// The host executable, built (with its `mpi` feature when the tests are built with theirs,
/// so that every test of one build runs the same host).
pub fn host() -> PathBuf {
    if cfg!(feature = "mpi") {
        cargo_build(&["flowgym-host", "--features", "flowgym-host/mpi"], None);
    } else {
        cargo_build(&["flowgym-host"], None);
    }
    let (target, profile) = target_and_profile();
    target
        .join(profile)
        .join(format!("flowgym-host{}", std::env::consts::EXE_SUFFIX))
}

/// Puts `exe` into `dir` so that it can be run at once.
///
/// A hard link when `dir` is on the same file system. Otherwise a copy, which is not enough on
/// its own: while this process holds the copy open for writing, a process that another test
/// thread forks inherits that descriptor until it calls `exec`, and running the copy in that
/// window fails with "Text file busy". Once one run of the copy has started, no writer is left
/// and none can appear, so the copy is run (`--version`) until it starts.
fn place_executable(exe: &Path, dir: &Path) {
    let to = dir.join(exe.file_name().expect("a file"));
    if std::fs::hard_link(exe, &to).is_ok() {
        return;
    }
    std::fs::copy(exe, &to).expect("copy the host");
    for _ in 0..200 {
        match Command::new(&to).arg("--version").output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            started => {
                started.expect("the copied host starts");
                return;
            }
        }
    }
    panic!("{to:?} stayed busy for 2 s after it was copied");
}

/// A private directory with the host (a hard link or a copy) and the plugins a test puts there.
pub struct Sandbox {
    /// The sandbox root (removed on drop).
    pub root: PathBuf,
}

impl Sandbox {
    /// A fresh sandbox holding the host, named after the test.
    pub fn new(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("flowgym-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bin")).expect("temp dir");
        std::fs::create_dir_all(root.join("home")).expect("temp dir");
        place_executable(&host(), &root.join("bin"));
        Self { root }
    }

    /// The directory next to the host executable.
    pub fn bin(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// Copies a plugin file next to the host under its own name; returns the copy.
    pub fn install(&self, plugin: &Path) -> PathBuf {
        let to = self.bin().join(plugin.file_name().expect("a file name"));
        std::fs::copy(plugin, &to).expect("copy a plugin");
        to
    }

    /// Copies a plugin file into `dir` (relative to the sandbox) under `name`; returns the copy.
    pub fn install_as(&self, plugin: &Path, dir: &str, name: &str) -> PathBuf {
        let dir = self.root.join(dir);
        std::fs::create_dir_all(&dir).expect("plugin dir");
        let to = dir.join(name);
        std::fs::copy(plugin, &to).expect("copy a plugin");
        to
    }

    /// The toy plugins (`1d/gmm`, `1d/binary`, `1d/gaussian`) next to the host.
    pub fn with_toys(self) -> Self {
        self.install(&plugin("flowgym-toy"));
        self.install(&plugin("flowgym-toy-rewards"));
        self
    }

    /// The sandboxed host with `args`, to run in the sandbox directory: a private user
    /// directory, no `FLOWGYM_PLUGIN_PATH`, one libtorch thread (tests run hosts side by
    /// side, and threads spinning against each other would slow them all).
    pub fn command(&self, args: &[&str]) -> Command {
        let exe = self.bin().join(host().file_name().expect("a file"));
        let mut command = Command::new(exe);
        command
            .args(args)
            .current_dir(&self.root)
            .env("FLOWGYM_HOME", self.root.join("home"))
            .env_remove("FLOWGYM_PLUGIN_PATH")
            .env("OMP_NUM_THREADS", "1");
        command
    }

    /// The sandboxed host with `args` as `ranks` MPI ranks: `mpirun -np RANKS` with
    /// `--oversubscribe` and, for root, `--allow-run-as-root` (Open MPI), and the environment
    /// of [`Sandbox::command`] passed to every rank.
    pub fn mpirun(&self, ranks: usize, args: &[&str]) -> Command {
        let single = self.command(args);
        let mut command = Command::new("mpirun");
        command.args(["-np", &ranks.to_string(), "--oversubscribe"]);
        if is_root() {
            command.arg("--allow-run-as-root");
        }
        for (key, value) in single.get_envs() {
            match value {
                Some(value) => {
                    command.env(key, value);
                    command.args(["-x", &key.to_string_lossy()]);
                }
                None => {
                    command.env_remove(key);
                }
            }
        }
        command
            .arg(single.get_program())
            .args(single.get_args())
            .current_dir(&self.root);
        command
    }

    /// Runs the sandboxed host with `args` and waits for it.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the host starts")
    }

    /// A path inside the sandbox.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

/// Whether the tests run as root.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Standard output as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the host exited normally (no signal, no abort) with `code`.
pub fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "expected exit code {code}; stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

/// Reads every tensor of a safetensors file as `f64` values with its shape.
pub fn read_tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("a safetensors file");
    let mut out = Vec::new();
    for (name, view) in file.tensors() {
        let data = view.data();
        let values: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I64 => data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::BOOL | safetensors::Dtype::U8 => {
                data.iter().map(|&b| b as f64).collect()
            }
            other => panic!("unexpected dtype {other:?} for {name}"),
        };
        out.push((name, view.shape().to_vec(), values));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The values of tensor `name` in a safetensors file.
pub fn tensor(path: &Path, name: &str) -> Vec<f64> {
    read_tensors(path)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("{} has no tensor `{name}`", path.display()))
        .2
}
