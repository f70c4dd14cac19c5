//! The isolated reward's sandbox, applied by the worker to itself before it loads the plugin:
//! a memory limit (`setrlimit(RLIMIT_DATA)`), no writes outside its private directory and no
//! TCP (Landlock), no sockets and no io_uring (seccomp). A part the system cannot enforce is
//! returned as a warning, not an error: the reward still runs in its own process.

use std::path::Path;

/// Applies the sandbox; returns what could not be enforced.
pub fn apply(private_dir: &Path, memory_bytes: u64) -> Vec<String> {
    let mut warnings = Vec::new();
    if memory_bytes > 0 {
        if let Err(e) = rlimit::setrlimit(rlimit::Resource::DATA, memory_bytes, memory_bytes) {
            warnings.push(format!("no memory limit ({e})"));
        }
    }
    #[cfg(target_os = "linux")]
    {
        if let Some(warning) = linux::filesystem(private_dir) {
            warnings.push(warning);
        }
        if let Some(warning) = linux::no_sockets() {
            warnings.push(warning);
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = private_dir;
        warnings.push(
            "no filesystem or network sandbox on this system (Linux only): the reward runs in its own process with your rights".to_string(),
        );
    }
    warnings
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeMap;
    use std::path::Path;

    use landlock::{
        path_beneath_rules, Access, AccessFs, AccessNet, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus, Scope, ABI,
    };
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

    /// Read everywhere, write only under `private_dir` (and to `/dev/null`), no TCP bind or
    /// connect, no abstract Unix sockets or signals outside the sandbox.
    pub fn filesystem(private_dir: &Path) -> Option<String> {
        let abi = ABI::V6;
        let result = landlock::Ruleset::default()
            .handle_access(AccessFs::from_all(abi))
            .and_then(|r| r.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp))
            .and_then(|r| r.scope(Scope::AbstractUnixSocket | Scope::Signal))
            .and_then(|r| r.create())
            .and_then(|r| r.add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi))))
            .and_then(|r| {
                r.add_rules(path_beneath_rules(
                    [private_dir, Path::new("/dev/null")],
                    AccessFs::from_all(abi),
                ))
            })
            .and_then(|r| r.restrict_self());
        match result {
            Ok(status) => match status.ruleset {
                RulesetStatus::FullyEnforced => None,
                RulesetStatus::PartiallyEnforced => Some(
                    "this kernel enforces only part of the Landlock rules (an older Landlock ABI): writes outside the private directory are refused, some newer restrictions are not".to_string(),
                ),
                RulesetStatus::NotEnforced => Some(
                    "this kernel does not enforce Landlock: the reward can write wherever you can".to_string(),
                ),
            },
            Err(e) => Some(format!(
                "the Landlock filesystem sandbox could not be set up ({e}): the reward can write wherever you can"
            )),
        }
    }

    /// `socket` and `io_uring_setup` fail with EACCES.
    pub fn no_sockets() -> Option<String> {
        let arch = match std::env::consts::ARCH.try_into() {
            Ok(arch) => arch,
            Err(_) => {
                return Some(format!(
                    "no seccomp filter on {}: the reward may open network connections",
                    std::env::consts::ARCH
                ))
            }
        };
        let rules = BTreeMap::from([
            (libc::SYS_socket, vec![]),
            (libc::SYS_io_uring_setup, vec![]),
        ]);
        let program: Result<BpfProgram, String> = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
            arch,
        )
        .map_err(|e| e.to_string())
        .and_then(|f| {
            f.try_into()
                .map_err(|e: seccompiler::BackendError| e.to_string())
        });
        let applied = program
            .and_then(|p| seccompiler::apply_filter_all_threads(&p).map_err(|e| e.to_string()));
        applied.err().map(|e| {
            format!("the seccomp network filter could not be applied ({e}): the reward may open network connections")
        })
    }
}
