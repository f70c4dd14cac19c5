//! `cargo xtask`: the set-up behind the README's commands.
//!
//! tch needs libtorch when it compiles. Unless the user points at their own (`LIBTORCH`, or
//! `LIBTORCH_USE_PYTORCH=1` with PyTorch installed), this fetches libtorch 2.13.0 from the PyPI
//! wheels into a cache outside the repository, once (the CPU libraries, or on a Linux machine
//! with an NVIDIA driver the CUDA ones with the NVIDIA runtime wheels: see [`cuda`]), and runs cargo with
//! `LIBTORCH` set, and with an rpath to libtorch's directory in `RUSTFLAGS`: the one place the
//! rpath is set, for every binary, test and plugin file the workspace links, so nothing else is
//! needed at run time.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::OnceLock;

mod cuda;
mod mpi;
mod wheel_metadata;

use cuda::Variant;
use wheel_metadata::{expand_extras, merge, native_requirements, MarkerEnv};

/// The libtorch release tch 0.26 is built for.
const TORCH_VERSION: &str = "2.13.0";
/// `libtorch_cpu.so` of the PyPI wheel also needs the CUDA runtime and CUPTI stubs.
const LINUX_WHEELS: &[&str] = &[
    "torch==2.13.0",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cupti==13.0.85",
];
const OTHER_WHEELS: &[&str] = &["torch==2.13.0"];

/// The host as a library, without its command-line, progress-bar and figure dependencies:
/// checked by `test`, so that programs embedding it keep compiling.
const HOST_LIBRARY_ALONE: &[&str] = &[
    "check",
    "--release",
    "--package",
    "flowgym-host",
    "--lib",
    "--no-default-features",
];

/// Packages that are not part of what `run` needs next to the host executable.
const EXCLUDED_FROM_RUN_BUILD: &[&str] = &["xtask", "flowgym-tests", "third-party-reward"];

/// Broken-on-purpose plugin fixtures of the tests. The tests build them into a target
/// directory of their own; built with the workspace they would land next to the host, where
/// discovery finds them and every command warns about them.
const TEST_PLUGINS: &[&str] = &[
    "flowgym-test-faulty",
    "flowgym-test-foreign-libtorch",
    "flowgym-test-not-a-plugin",
];

/// Plugins that link no libtorch. They are built in a cargo invocation of their own: built
/// together with the others, cargo would unify plugin-api's `tch` feature into them.
pub const LIBTORCH_FREE_PLUGINS: &[&str] = &[
    "flowgym-toy-rewards",
    "flowgym-image-rewards",
    "exact-problems",
];

const USAGE: &str = "\
usage: cargo xtask <command> [args...]

  run [ARGS...]     build the host and plugins (release), then `flowgym-host run ARGS`
                    (no ARGS: the built-in toy, 1d/gmm adapted to 1d/binary)
  host [ARGS...]    build, then `flowgym-host ARGS` (list, check, sample, bench, ...)
  test [ARGS...]    the whole test suite: `cargo test --release --workspace ARGS` (the tests
                    build their broken plugin fixtures apart from the host), then a
                    check that the host library builds without its CLI features
  cargo [ARGS...]   any cargo command with libtorch set up (clippy, doc, bench, ...)
  env               print the environment variables the commands above set
  libtorch          only fetch libtorch into the cache and print where it is

  --mpi             (with run, host, test, cargo) build the host's `mpi` feature, for
                    data-parallel runs; installs an MPI library and libclang from the Debian
                    packages (libopenmpi-dev openmpi-bin libclang-dev) when they are missing
  --ranks N         (with run, host) launch N ranks with `mpirun -np N` (implies --mpi)

libtorch: LIBTORCH=DIR or LIBTORCH_USE_PYTORCH=1 use your own; otherwise libtorch 2.13.0 is
fetched once from PyPI into $FLOWGYM_CACHE (default: ~/.cache/flowgym): the CUDA 13.0 build
with its NVIDIA runtime libraries on Linux with an NVIDIA driver (580 or newer), else the CPU
build. FLOWGYM_CUDA=1 fetches the CUDA build without a driver, FLOWGYM_CUDA=0 never.";

fn main() -> ExitCode {
    let mut args: Vec<OsString> = env::args_os().skip(1).collect();
    if args.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let mpi = match mpi::take_request(&mut args) {
        Ok(request) => request,
        Err(message) => {
            eprintln!("xtask: {message}");
            return ExitCode::from(2);
        }
    };
    if args.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    if mpi.enabled {
        if let Err(message) = mpi::ensure_installed() {
            eprintln!("xtask: {message}");
            return ExitCode::FAILURE;
        }
    }
    let command = args.remove(0);
    let result = match command.to_str() {
        Some("run") => {
            let mut host_args = vec![OsString::from("run")];
            host_args.extend(args);
            build_and_run_host(host_args, &mpi)
        }
        Some("host") => build_and_run_host(args, &mpi),
        Some("test") => {
            let mut cargo_args: Vec<OsString> = ["test", "--release", "--workspace"]
                .iter()
                .map(OsString::from)
                .collect();
            cargo_args.extend(excluding(TEST_PLUGINS));
            if mpi.enabled {
                cargo_args.extend(os_args(&["--features", MPI_TEST_FEATURES]));
            }
            cargo_args.extend(args);
            cargo(&cargo_args).and_then(|()| cargo(&os_args(HOST_LIBRARY_ALONE)))
        }
        Some("cargo") => cargo(&args),
        Some("env") => print_env(),
        Some("libtorch") => libtorch_env().map(|env| {
            for (key, value) in env {
                println!("{key}={value}");
            }
        }),
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!(
            "unknown command `{}`\n\n{USAGE}",
            command.to_string_lossy()
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn print_env() -> Result<(), String> {
    for (key, value) in libtorch_env()? {
        println!("export {key}={}", shell_quote(&value));
    }
    Ok(())
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The features `--mpi` adds to a workspace test: the host's MPI support, and the
/// end-to-end tests that launch it with `mpirun`.
const MPI_TEST_FEATURES: &str = "flowgym-host/mpi,flowgym-tests/mpi";

fn build_and_run_host(host_args: Vec<OsString>, mpi: &mpi::MpiRequest) -> Result<(), String> {
    let mut build: Vec<OsString> = ["build", "--release", "--workspace"]
        .iter()
        .map(OsString::from)
        .collect();
    if mpi.enabled {
        build.extend(os_args(&["--features", "flowgym-host/mpi"]));
    }
    build.extend(excluding(EXCLUDED_FROM_RUN_BUILD));
    build.extend(excluding(TEST_PLUGINS));
    build.extend(excluding(LIBTORCH_FREE_PLUGINS));
    cargo(&build)?;
    remove_stale_test_plugins();
    let mut free: Vec<OsString> = vec!["build".into(), "--release".into()];
    for package in LIBTORCH_FREE_PLUGINS {
        free.push("-p".into());
        free.push(OsString::from(package));
    }
    cargo(&free)?;
    let host = target_dir().join("release").join(exe("flowgym-host"));
    let mut command = match mpi.ranks {
        Some(ranks) => {
            let mut mpirun = mpi::mpirun(ranks);
            mpirun.arg(&host);
            mpirun
        }
        None => Command::new(&host),
    };
    let status = command
        .args(&host_args)
        .envs(libtorch_env()?)
        .status()
        .map_err(|e| format!("could not start {}: {e}", host.display()))?;
    exit_status(status, "flowgym-host")
}

/// `--exclude P` for each package.
fn excluding(packages: &[&str]) -> Vec<OsString> {
    packages
        .iter()
        .flat_map(|package| [OsString::from("--exclude"), OsString::from(package)])
        .collect()
}

/// Removes test fixtures that an older build left next to the host.
fn remove_stale_test_plugins() {
    for package in TEST_PLUGINS {
        let file = format!(
            "{}{}{}",
            env::consts::DLL_PREFIX,
            package.replace('-', "_"),
            env::consts::DLL_SUFFIX
        );
        let _ = std::fs::remove_file(target_dir().join("release").join(file));
    }
}

fn cargo(args: &[OsString]) -> Result<(), String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .envs(libtorch_env()?)
        .status()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    exit_status(status, "cargo")
}

fn exit_status(status: std::process::ExitStatus, what: &str) -> Result<(), String> {
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} exited with {status}"))
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    }
}

fn exe(name: &str) -> String {
    format!("{name}{}", env::consts::EXE_SUFFIX)
}

/// The environment that makes tch find libtorch: the user's own if they set one, else the
/// cache. It also adds an rpath to libtorch's directory to `RUSTFLAGS` (and `RUSTDOCFLAGS`, for
/// doctests), so that every binary
/// the workspace links runs without `LD_LIBRARY_PATH`, test binaries of libtorch-free crates
/// included (cargo unifies plugin-api's `tch` feature across a workspace build).
fn libtorch_env() -> Result<Vec<(String, String)>, String> {
    // Decided, fetched and reported once per command.
    static ENV: OnceLock<Result<Vec<(String, String)>, String>> = OnceLock::new();
    ENV.get_or_init(find_libtorch).clone()
}

fn find_libtorch() -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    if env::var_os("LIBTORCH_CXX11_ABI").is_none() {
        vars.push(("LIBTORCH_CXX11_ABI".to_string(), "1".to_string()));
    }
    let lib_dir = if let Some(lib) = env::var_os("LIBTORCH_LIB") {
        PathBuf::from(lib).join("lib")
    } else if let Some(root) = env::var_os("LIBTORCH") {
        PathBuf::from(root).join("lib")
    } else if env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        pytorch_lib_dir()?
    } else {
        let setting = env::var("FLOWGYM_CUDA").ok();
        let linux = cfg!(target_os = "linux");
        let choice = cuda::choose(setting.as_deref(), &cuda::detect_driver(), linux)?;
        let dir = ensure_cached_libtorch(choice.variant)?;
        eprintln!(
            "xtask: libtorch {TORCH_VERSION}+{} ({}): {}",
            choice.variant.tag(),
            dir.display(),
            choice.reason
        );
        vars.push(("LIBTORCH".to_string(), dir.display().to_string()));
        dir.join("lib")
    };
    let rpath = format!("-C link-arg=-Wl,-rpath,{}", lib_dir.display());
    // rustdoc links doctests with its own flags, so they get the rpath too.
    for flags in ["RUSTFLAGS", "RUSTDOCFLAGS"] {
        let value = match env::var(flags) {
            Ok(existing) if existing.contains(&rpath) => existing,
            Ok(existing) if !existing.trim().is_empty() => format!("{existing} {rpath}"),
            _ => rpath.clone(),
        };
        vars.push((flags.to_string(), value));
    }
    Ok(vars)
}

/// The `lib` directory of the PyTorch installation `LIBTORCH_USE_PYTORCH=1` points tch at.
fn pytorch_lib_dir() -> Result<PathBuf, String> {
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let output = Command::new(&python)
        .args([
            "-c",
            "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .map_err(|e| format!("LIBTORCH_USE_PYTORCH is set but {python} cannot be run: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "LIBTORCH_USE_PYTORCH is set but {python} cannot import torch: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

fn cache_root() -> Result<PathBuf, String> {
    if let Some(dir) = env::var_os("FLOWGYM_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("flowgym"));
    }
    let home = env::var_os("HOME")
        .or_else(|| env::var_os("USERPROFILE"))
        .ok_or("neither FLOWGYM_CACHE, XDG_CACHE_HOME nor HOME is set: set FLOWGYM_CACHE to a directory for the libtorch cache")?;
    Ok(PathBuf::from(home).join(".cache").join("flowgym"))
}

const COMPLETE_MARKER: &str = ".complete";

/// The cached libtorch of `variant`, fetched first when the cache has no complete copy.
fn ensure_cached_libtorch(variant: Variant) -> Result<PathBuf, String> {
    let root = cache_root()?;
    let tag = variant.tag();
    let dir = root.join(format!("libtorch-{TORCH_VERSION}-{tag}"));
    if dir.join(COMPLETE_MARKER).exists() {
        return Ok(dir);
    }
    if dir.exists() {
        eprintln!(
            "xtask: {} is incomplete (no {COMPLETE_MARKER} marker: an earlier fetch stopped part-way); fetching it again",
            dir.display()
        );
    }
    let size = match variant {
        Variant::Cpu => "about 0.5 GB to download",
        Variant::Cuda => "about 2.5 GB to download, 3.6 GB on disk",
    };
    eprintln!(
        "xtask: fetching libtorch {TORCH_VERSION}+{tag} from the PyPI wheels into {} (once; {size})",
        dir.display()
    );
    fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    remove_abandoned_staging(&root);
    let staging = root.join(format!(".staging-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let wheels = staging.join("wheels");
    let unpacked = staging.join("libtorch");
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let requirements: Vec<String> = match variant {
        Variant::Cpu if cfg!(target_os = "linux") => os_strings(LINUX_WHEELS),
        Variant::Cpu => os_strings(OTHER_WHEELS),
        Variant::Cuda => cuda_wheels(&python, &staging, &wheels)?,
    };
    pip_download(&python, &wheels, &requirements)?;
    let status = Command::new(&python)
        .arg("-c")
        .arg(UNPACK_WHEELS)
        .arg(&wheels)
        .arg(&unpacked)
        .arg(tag)
        .status()
        .map_err(|e| format!("could not run {python}: {e}"))?;
    exit_status(status, "unpacking the libtorch wheels")?;
    fs::write(
        unpacked.join("build-version"),
        format!("{TORCH_VERSION}+{tag}\n"),
    )
    .map_err(|e| format!("cannot write build-version: {e}"))?;
    // Written last: a copy without it is never used.
    fs::write(unpacked.join(COMPLETE_MARKER), requirements.join("\n"))
        .map_err(|e| format!("cannot write the cache marker: {e}"))?;
    if dir.exists() {
        fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot replace the incomplete {}: {e}", dir.display()))?;
    }
    match fs::rename(&unpacked, &dir) {
        Ok(()) => {}
        // Another process finished the same fetch first: use theirs.
        Err(_) if dir.join(COMPLETE_MARKER).exists() => {}
        Err(e) => return Err(format!("cannot move libtorch into {}: {e}", dir.display())),
    }
    let _ = fs::remove_dir_all(&staging);
    eprintln!(
        "xtask: libtorch {TORCH_VERSION}+{tag} is in {}",
        dir.display()
    );
    Ok(dir)
}

fn os_strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Downloads the wheels `requirements` (exact pins, no dependencies) into `dest`.
fn pip_download(python: &str, dest: &Path, requirements: &[String]) -> Result<(), String> {
    let status = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--progress-bar", "off", "--dest"])
        .arg(dest)
        .args(requirements)
        .status()
        .map_err(|e| {
            format!("could not run `{python} -m pip` to fetch libtorch ({e}); install Python 3 with pip, or set LIBTORCH to an unpacked libtorch {TORCH_VERSION}")
        })?;
    exit_status(status, "pip download")
}

/// Downloads the torch wheel into `wheels` and returns it with the NVIDIA runtime wheels its
/// METADATA requires on this machine (the `cuda-toolkit` meta-package's extras expanded
/// through that package's own METADATA), each with the version torch pins.
fn cuda_wheels(python: &str, staging: &Path, wheels: &Path) -> Result<Vec<String>, String> {
    let torch = format!("torch=={TORCH_VERSION}");
    pip_download(python, wheels, std::slice::from_ref(&torch))?;
    let here = MarkerEnv::linux_here();
    let mut selected = Vec::new();
    for requirement in native_requirements(&wheel_metadata(python, wheels, "torch")?, &here)? {
        if requirement.name != wheel_metadata::CUDA_TOOLKIT {
            selected.push(requirement);
            continue;
        }
        // A meta-package without libraries: only its METADATA is read, from a folder apart.
        let meta = staging.join("meta");
        pip_download(python, &meta, &[requirement.pip_spec()])?;
        let toolkit = wheel_metadata(python, &meta, "cuda_toolkit")?;
        selected.extend(expand_extras(&toolkit, &requirement.extras, &here)?);
    }
    if selected.is_empty() {
        return Err(format!(
            "the torch {TORCH_VERSION} wheel pip downloaded names no NVIDIA runtime wheel for this machine: it is not the CUDA build (only Linux x86_64 and aarch64 wheels are); set LIBTORCH to a CUDA libtorch {TORCH_VERSION} instead"
        ));
    }
    let mut all = vec![torch];
    all.extend(merge(selected).iter().map(|r| r.pip_spec()));
    Ok(all)
}

/// The METADATA text of the wheel in `dir` whose file name starts with `distribution-`.
fn wheel_metadata(python: &str, dir: &Path, distribution: &str) -> Result<String, String> {
    let output = Command::new(python)
        .arg("-c")
        .arg(READ_METADATA)
        .arg(dir)
        .arg(distribution)
        .output()
        .map_err(|e| format!("could not run {python}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cannot read the METADATA of the {distribution} wheel in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Removes the staging folders of fetches whose process is gone (interrupted downloads).
fn remove_abandoned_staging(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(".staging-") else {
            continue;
        };
        let alive = Path::new("/proc").join(pid).exists();
        if cfg!(target_os = "linux") && !alive {
            eprintln!("xtask: removing {name}, left by an interrupted fetch");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Prints the METADATA of the wheel in argv[1] whose name starts with argv[2] + "-".
const READ_METADATA: &str = r#"
import os, sys, zipfile
folder, dist = sys.argv[1], sys.argv[2]
[wheel] = [w for w in os.listdir(folder) if w.startswith(dist + "-") and w.endswith(".whl")]
with zipfile.ZipFile(os.path.join(folder, wheel)) as archive:
    [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1]
    sys.stdout.write(archive.read(name).decode("utf-8"))
"#;

/// Copies, from the downloaded wheels, the libtorch shared libraries and the C++ headers into
/// the layout of a libtorch release (`lib/`, `include/`). `cpu` (argv[3]) takes the CPU
/// libraries and the CUDA runtime stubs libtorch_cpu links; `cu130` takes every library of
/// torch/lib but the Python bindings, and every library of the NVIDIA wheels, all into `lib/`
/// (the torch libraries find their neighbours through their `$ORIGIN` rpath).
const UNPACK_WHEELS: &str = r#"
import os, re, sys, zipfile
wheels, out, variant = sys.argv[1], sys.argv[2], sys.argv[3]
shared = re.compile(r"^[A-Za-z].*\.so(\.[0-9]+)*$")
python_only = re.compile(r"^lib(torch_python|shm)\.so$")
cpu_libs = re.compile(r"^(lib)?(torch_cpu|torch|c10|gomp|omp|iomp5)[.-].*(so|dylib|dll|lib)(\.[0-9]+)*$")
cuda_stubs = re.compile(r"^lib(cudart|cupti)\.so\.[0-9]+$")
def wanted(name, base):
    if variant == "cpu":
        if name.startswith("torch/lib/"):
            return cpu_libs.match(base)
        return name.startswith("nvidia/") and "/lib/" in name and cuda_stubs.match(base)
    if name == "torch/lib/" + base:
        return shared.match(base) and not python_only.match(base)
    return name.startswith("nvidia/") and "/lib/" in name and shared.match(base)
for wheel in sorted(os.listdir(wheels)):
    with zipfile.ZipFile(os.path.join(wheels, wheel)) as archive:
        for info in archive.infolist():
            name = info.filename
            if name.endswith("/"):
                continue
            base = name.rsplit("/", 1)[-1]
            if name.startswith("torch/include/"):
                target = os.path.join(out, name[len("torch/"):])
            elif wanted(name, base):
                target = os.path.join(out, "lib", base)
            else:
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as dst:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    dst.write(chunk)
            if info.external_attr >> 16 & 0o111:
                os.chmod(target, 0o755)
"#;
