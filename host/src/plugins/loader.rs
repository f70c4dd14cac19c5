//! Loading one plugin file and checking that it fits this host.
//!
//! The checks, in order: the file's headers describe a complete library; it opens as a
//! dynamic library; it exports an abi_stable root
//! module; the plugin-api version it was built against is semver-compatible with the host's;
//! abi_stable finds the layouts of every type in the contract identical; a plugin that links
//! libtorch was built against the host's release. A file that fails is reported with its path
//! and the reason and never takes the host down (the library stays mapped but unused).

use std::fmt;
use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RawLibrary};
use abi_stable::std_types::RResult;
use flowgym_plugin_api::{
    DataTypeMeta, EntryMeta, PluginModuleRef, PluginPackage, API_VERSION, LIBTORCH_VERSION,
    PACKAGE_SYMBOL,
};
use semver::{Version, VersionReq};

use super::integrity::check_library_file;

/// A loaded, checked plugin file.
pub struct Plugin {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// The plugin-api version it was built against.
    pub api_version: Version,
    /// The crate it was built from (`name version`); none for files built against 1.0.
    pub package: Option<String>,
    /// The libtorch release it links, if any.
    pub libtorch: Option<String>,
    /// Its root module.
    pub module: PluginModuleRef,
    /// Its entries.
    pub entries: Vec<EntryMeta>,
    /// The data types it defines.
    pub data_types: Vec<DataTypeMeta>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("api_version", &self.api_version)
            .field("package", &self.package)
            .field("libtorch", &self.libtorch)
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// A file that could not be used as a plugin, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    /// The file.
    pub path: PathBuf,
    /// Why it was refused.
    pub reason: String,
}

impl fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// The plugin-api versions this host accepts: `^MAJOR.MINOR` before 1.0, `^MAJOR` after.
pub fn accepted_api_versions() -> VersionReq {
    let ours = host_api_version();
    let req = if ours.major == 0 {
        format!("^0.{}", ours.minor)
    } else {
        format!("^{}", ours.major)
    };
    VersionReq::parse(&req).expect("a caret requirement parses")
}

/// This host's plugin-api version.
pub fn host_api_version() -> Version {
    Version::parse(API_VERSION).expect("the crate version is semver")
}

/// Why a plugin built against `theirs` cannot run here, if it cannot.
pub fn check_api_version(theirs: &Version) -> Result<(), String> {
    let accepted = accepted_api_versions();
    if accepted.matches(theirs) {
        Ok(())
    } else {
        Err(format!(
            "built against flowgym-plugin-api {theirs}, but this host has {} and accepts {accepted}; rebuild the plugin against a compatible flowgym-plugin-api",
            host_api_version()
        ))
    }
}

/// Why a plugin linking libtorch `theirs` cannot share this host's libtorch, if it cannot.
/// Releases must agree in major and minor version (the C++ ABI changes between them).
pub fn check_libtorch(theirs: &str) -> Result<(), String> {
    let release = |v: &str| -> Option<(u64, u64)> {
        let v = Version::parse(v.split('+').next()?).ok()?;
        Some((v.major, v.minor))
    };
    match (release(theirs), release(LIBTORCH_VERSION)) {
        (Some(a), Some(b)) if a == b => Ok(()),
        _ => Err(format!(
            "links libtorch {theirs}, but this host runs libtorch {LIBTORCH_VERSION}; a plugin shares the host's libtorch, so rebuild it against libtorch {LIBTORCH_VERSION}"
        )),
    }
}

fn describe(err: &LibraryError) -> String {
    match err {
        LibraryError::OpenError { err, .. } => {
            format!("cannot be opened as a dynamic library: {err}")
        }
        LibraryError::GetSymbolError { .. } => {
            "is not a Flow Gym plugin: it exports no abi_stable root module (build it with flowgym_plugin_api::export_plugin!)".to_string()
        }
        LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
            "was built with an abi_stable release whose ABI differs from this host's".to_string()
        }
        LibraryError::AbiInstability(detail) => {
            let detail = detail.to_string();
            let first: Vec<&str> = detail.lines().filter(|l| !l.trim().is_empty()).take(6).collect();
            format!(
                "its plugin-api types differ in layout from this host's:\n    {}",
                first.join("\n    ")
            )
        }
        other => other.to_string().trim().to_string(),
    }
}

/// The crate the plugin file at `path` (already loaded and checked) was built from, from the
/// symbol plugin-api 1.1 on exports; none when the file lacks it.
fn package_of(path: &Path) -> Option<String> {
    let library = RawLibrary::load_at(path).ok()?;
    let symbol = format!("{PACKAGE_SYMBOL}\0");
    // SAFETY: the file passed the plugin-api version and layout checks, and every plugin-api
    // that exports this symbol declares it with this signature.
    let package = unsafe { library.get::<extern "C" fn() -> PluginPackage>(symbol.as_bytes()) }
        .ok()
        .map(|package| package())?;
    Some(format!("{} {}", package.name, package.version))
}

/// Loads and checks the plugin file at `path`.
pub fn load_plugin(path: &Path) -> Result<Plugin, LoadFailure> {
    let fail = |reason: String| LoadFailure {
        path: path.to_path_buf(),
        reason,
    };
    check_library_file(path).map_err(fail)?;
    let header = lib_header_from_path(path).map_err(|e| fail(describe(&e)))?;
    let version_text = header.version_strings().version.as_str().to_string();
    let api_version = Version::parse(&version_text).map_err(|e| {
        fail(format!(
            "records an unreadable plugin-api version `{version_text}`: {e}"
        ))
    })?;
    check_api_version(&api_version).map_err(fail)?;
    let module = header
        .init_root_module::<PluginModuleRef>()
        .map_err(|e| fail(describe(&e)))?;
    let libtorch = module
        .libtorch_version()
        .into_option()
        .map(|v| v.to_string());
    if let Some(theirs) = &libtorch {
        check_libtorch(theirs).map_err(fail)?;
    }
    let entries = match (module.entries())() {
        RResult::ROk(entries) => entries.into_vec(),
        RResult::RErr(e) => return Err(fail(format!("failed to list its entries: {e}"))),
    };
    let data_types = match (module.data_types())() {
        RResult::ROk(types) => types.into_vec(),
        RResult::RErr(e) => return Err(fail(format!("failed to list its data types: {e}"))),
    };
    Ok(Plugin {
        path: path.to_path_buf(),
        api_version,
        package: package_of(path),
        libtorch,
        module,
        entries,
        data_types,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_follow_semver() {
        let ours = host_api_version();
        assert!(check_api_version(&ours).is_ok());
        let next_patch = Version::new(ours.major, ours.minor, ours.patch + 1);
        assert!(check_api_version(&next_patch).is_ok());
        let next_breaking = if ours.major == 0 {
            Version::new(0, ours.minor + 1, 0)
        } else {
            Version::new(ours.major + 1, 0, 0)
        };
        let err = check_api_version(&next_breaking).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "built against flowgym-plugin-api {next_breaking}, but this host has {ours} and accepts"
            )),
            "{err}"
        );
    }

    #[test]
    fn libtorch_releases_must_agree_in_minor_version() {
        assert!(check_libtorch(LIBTORCH_VERSION).is_ok());
        let err = check_libtorch("2.1.0").unwrap_err();
        assert_eq!(
            err,
            format!("links libtorch 2.1.0, but this host runs libtorch {LIBTORCH_VERSION}; a plugin shares the host's libtorch, so rebuild it against libtorch {LIBTORCH_VERSION}")
        );
    }
}
