//! Where plugin files are looked for, in order: `--plugins DIR` flags, `FLOWGYM_PLUGIN_PATH`,
//! the directory of the host executable (so `cargo build` then `cargo run` finds the
//! workspace's own plugins), and the user directory. The current directory is searched only
//! when named (`--plugins .`): a relative entry of `FLOWGYM_PLUGIN_PATH` would make what loads
//! depend on where the host happens to be started, so it is passed over with a warning.

use std::collections::HashSet;
use std::env;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a directory is searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchSource {
    /// `--plugins DIR`.
    Flag,
    /// `FLOWGYM_PLUGIN_PATH`.
    EnvVar,
    /// Next to the `flowgym-host` executable.
    ExecutableDir,
    /// `$FLOWGYM_HOME/plugins`, else `$XDG_DATA_HOME/flowgym/plugins`, else
    /// `~/.local/share/flowgym/plugins`.
    UserDir,
}

impl fmt::Display for SearchSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SearchSource::Flag => "--plugins",
            SearchSource::EnvVar => "FLOWGYM_PLUGIN_PATH",
            SearchSource::ExecutableDir => "executable directory",
            SearchSource::UserDir => "user directory",
        })
    }
}

/// A directory to search, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchDir {
    /// The directory.
    pub path: PathBuf,
    /// Where it came from.
    pub source: SearchSource,
}

/// The user's plugin directory.
pub fn user_plugin_dir() -> Option<PathBuf> {
    if let Some(home) = env::var_os("FLOWGYM_HOME") {
        return Some(PathBuf::from(home).join("plugins"));
    }
    if let Some(data) = env::var_os("XDG_DATA_HOME") {
        return Some(PathBuf::from(data).join("flowgym").join("plugins"));
    }
    let home = env::var_os("HOME").or_else(|| env::var_os("USERPROFILE"))?;
    Some(PathBuf::from(home).join(".local/share/flowgym/plugins"))
}

/// The directories to search, in order, and warnings about entries passed over.
pub fn search_dirs(flags: &[PathBuf]) -> (Vec<SearchDir>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut dirs: Vec<SearchDir> = flags
        .iter()
        .map(|p| SearchDir {
            path: p.clone(),
            source: SearchSource::Flag,
        })
        .collect();
    if let Some(paths) = env::var_os("FLOWGYM_PLUGIN_PATH") {
        for path in env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()) {
            if path.is_relative() {
                warnings.push(format!(
                    "FLOWGYM_PLUGIN_PATH entry `{}` is relative, so it would load plugins from the current directory; passed over (give an absolute path, or --plugins DIR)",
                    path.display()
                ));
                continue;
            }
            dirs.push(SearchDir {
                path,
                source: SearchSource::EnvVar,
            });
        }
    }
    if let Some(dir) = env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(SearchDir {
            path: dir,
            source: SearchSource::ExecutableDir,
        });
    }
    if let Some(dir) = user_plugin_dir() {
        dirs.push(SearchDir {
            path: dir,
            source: SearchSource::UserDir,
        });
    }
    (dirs, warnings)
}

/// Whether `path` has the platform's dynamic-library extension (`.so`, `.dylib`, `.dll`).
pub fn is_library_file(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e == env::consts::DLL_EXTENSION)
}

/// The library files of the search directories (not recursive), each once, in search order
/// and by name within a directory. Missing directories are skipped silently: the defaults
/// need not exist.
pub fn candidate_files(dirs: &[SearchDir]) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for dir in dirs {
        // Absolute paths, so that messages name files unambiguously.
        let path = dir.path.canonicalize().unwrap_or_else(|_| dir.path.clone());
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        let mut in_dir: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_library_file(p))
            .collect();
        in_dir.sort();
        for file in in_dir {
            let key = file.canonicalize().unwrap_or_else(|_| file.clone());
            if seen.insert(key) {
                files.push(file);
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_files_are_found_once_in_order() {
        let dir = std::env::temp_dir().join(format!("flowgym-discovery-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let ext = env::consts::DLL_EXTENSION;
        for name in [
            format!("b.{ext}"),
            format!("a.{ext}"),
            "notes.txt".to_string(),
        ] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        std::fs::write(dir.join("sub").join(format!("c.{ext}")), b"x").unwrap();
        let search = |path: PathBuf| SearchDir {
            path,
            source: SearchSource::Flag,
        };
        let files = candidate_files(&[
            search(dir.clone()),
            search(dir.clone()),
            search(dir.join("missing")),
        ]);
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![format!("a.{ext}"), format!("b.{ext}")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
