//! All loaded plugins, and entry lookup across them.

use std::path::{Path, PathBuf};

use abi_stable::std_types::{RResult, RStr};
use flowgym_plugin_api::{
    BaseModelBox, ConstructContext, DataTypeMeta, EntryKind, EntryMeta, RewardBox,
};

use super::discovery::{candidate_files, search_dirs, SearchDir};
use super::loader::{load_plugin, LoadFailure, Plugin};
use super::permissions::writable_by_others;
use super::trust::{TrustFile, TrustState};

/// Why an entry cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No loaded plugin defines the id.
    #[error("unknown {kind} `{id}`; {available}")]
    Unknown {
        /// Model or reward.
        kind: EntryKind,
        /// The id asked for.
        id: String,
        /// What there is instead.
        available: String,
    },
    /// The id names an entry of the other kind.
    #[error("`{id}` is a {actual}, not a {wanted}")]
    WrongKind {
        /// The id asked for.
        id: String,
        /// Its kind.
        actual: EntryKind,
        /// The kind asked for.
        wanted: EntryKind,
    },
    /// Several files define the id and none is preferred.
    #[error("`{id}` is defined by more than one plugin file:\n  {}\nremove all but one, or pick one with --prefer FILE", files.join("\n  "))]
    Ambiguous {
        /// The id.
        id: String,
        /// The files defining it.
        files: Vec<String>,
    },
    /// The plugin's constructor failed (bad arguments, missing weights, a panic).
    #[error("cannot construct {kind} `{id}` (from {file}): {message}")]
    Construct {
        /// Model or reward.
        kind: EntryKind,
        /// The id.
        id: String,
        /// The plugin file.
        file: String,
        /// The plugin's message.
        message: String,
    },
}

/// An entry and the plugin file that defines it.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    /// The plugin file.
    pub plugin: &'a Plugin,
    /// The entry's metadata.
    pub meta: &'a EntryMeta,
}

impl<'a> EntryRef<'a> {
    /// The entry id.
    pub fn id(&self) -> &'a str {
        self.meta.id.as_str()
    }
}

/// Every plugin found, and every file that was refused.
#[derive(Debug, Default)]
pub struct Registry {
    /// Directories searched, in order.
    pub searched: Vec<SearchDir>,
    /// Plugins that loaded.
    pub plugins: Vec<Plugin>,
    /// Files that were refused, with the reason.
    pub failures: Vec<LoadFailure>,
    /// Files the user prefers when an id is defined twice.
    pub preferred: Vec<PathBuf>,
    /// Things the user should know that refused nothing (or refused a whole directory).
    pub warnings: Vec<String>,
    /// The pinned files.
    pub trust: TrustFile,
    /// Whether only pinned, unchanged files load.
    pub require_trusted: bool,
}

/// Which files may load: the pins and whether they are required.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    /// The pinned files.
    pub trust: TrustFile,
    /// Refuse files that are not pinned or changed since, and plugin directories or files
    /// that other users can write.
    pub require_trusted: bool,
}

impl Registry {
    /// Searches the directories (flags first), loads every library file the policy admits and
    /// keeps the good ones. Directories and files other users can write are warned about, and
    /// refused when the policy requires trusted files.
    pub fn discover(plugin_dirs: &[PathBuf], preferred: &[PathBuf], policy: TrustPolicy) -> Self {
        let (searched, mut warnings) = search_dirs(plugin_dirs);
        let mut admitted = Vec::new();
        for dir in &searched {
            // Absolute, so that the message names the directory wherever the host runs.
            let path = dir.path.canonicalize().unwrap_or_else(|_| dir.path.clone());
            let Some(why) = path.is_dir().then(|| writable_by_others(&path)).flatten() else {
                admitted.push(dir.clone());
                continue;
            };
            if policy.require_trusted {
                warnings.push(format!(
                    "refused the plugin directory {} ({}): it {why}; whoever can write there could run code as you",
                    path.display(),
                    dir.source
                ));
            } else {
                warnings.push(format!(
                    "the plugin directory {} ({}) {why}; whoever can write there can run code as you",
                    path.display(),
                    dir.source
                ));
                admitted.push(dir.clone());
            }
        }
        let mut registry = Self::load_files(&candidate_files(&admitted), preferred, policy);
        warnings.append(&mut registry.warnings);
        registry.warnings = warnings;
        registry.searched = searched;
        registry
    }

    /// Loads exactly these files, as the policy admits them.
    pub fn load_files(files: &[PathBuf], preferred: &[PathBuf], policy: TrustPolicy) -> Self {
        let mut registry = Registry {
            preferred: preferred
                .iter()
                .map(|p| p.canonicalize().unwrap_or_else(|_| p.clone()))
                .collect(),
            trust: policy.trust,
            require_trusted: policy.require_trusted,
            ..Registry::default()
        };
        for file in files {
            if let Err(reason) = registry.admit(file) {
                registry.failures.push(LoadFailure {
                    path: file.clone(),
                    reason,
                });
                continue;
            }
            match load_plugin(file) {
                Ok(plugin) => registry.plugins.push(plugin),
                Err(failure) => registry.failures.push(failure),
            }
        }
        registry
    }

    /// Whether `file` may be loaded: refused (strict) or warned about (otherwise) when others
    /// can write it or it is not the file that was pinned. Unpinned files are hashed only in
    /// the strict setting.
    fn admit(&mut self, file: &Path) -> Result<(), String> {
        if let Some(why) = writable_by_others(file) {
            if self.require_trusted {
                return Err(format!(
                    "{why}; refused because whoever can write it could run code as you"
                ));
            }
            self.warnings.push(format!(
                "the plugin file {} {why}; whoever can write it can run code as you",
                file.display()
            ));
        }
        let pinned = self.trust.files.contains_key(&super::trust::pin_key(file));
        if !self.require_trusted && !pinned {
            return Ok(());
        }
        let state = self.trust.state_of(file);
        match (state.refusal(), self.require_trusted) {
            (None, _) => Ok(()),
            (Some(reason), true) => Err(reason),
            (Some(_), false) => {
                if let TrustState::Changed { pinned, now } = state {
                    self.warnings.push(format!(
                        "the plugin file {} changed since it was pinned: pinned sha256 {pinned}, now {now}",
                        file.display()
                    ));
                }
                Ok(())
            }
        }
    }

    /// The trust state of a loaded or refused file (hashes it).
    pub fn trust_state(&self, file: &Path) -> TrustState {
        self.trust.state_of(file)
    }

    /// Every entry of every plugin, in load order.
    pub fn entries(&self) -> impl Iterator<Item = EntryRef<'_>> {
        self.plugins.iter().flat_map(|plugin| {
            plugin
                .entries
                .iter()
                .map(move |meta| EntryRef { plugin, meta })
        })
    }

    /// Ids defined by more than one file, with the files.
    pub fn duplicates(&self) -> Vec<(String, Vec<String>)> {
        let mut ids: Vec<&str> = self.entries().map(|e| e.id()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| {
                let files: Vec<String> = self
                    .entries()
                    .filter(|e| e.id() == id)
                    .map(|e| e.plugin.path.display().to_string())
                    .collect();
                (files.len() > 1).then(|| (id.to_string(), files))
            })
            .collect()
    }

    fn is_preferred(&self, path: &Path) -> bool {
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        self.preferred.contains(&path)
    }

    /// The entry `id` of kind `kind`.
    pub fn resolve(&self, id: &str, kind: EntryKind) -> Result<EntryRef<'_>, RegistryError> {
        let matches: Vec<EntryRef<'_>> = self.entries().filter(|e| e.id() == id).collect();
        let chosen = match matches.as_slice() {
            [] => return Err(self.unknown(id, kind)),
            [one] => *one,
            several => {
                let preferred: Vec<&EntryRef<'_>> = several
                    .iter()
                    .filter(|e| self.is_preferred(&e.plugin.path))
                    .collect();
                match preferred.as_slice() {
                    [one] => **one,
                    _ => {
                        return Err(RegistryError::Ambiguous {
                            id: id.to_string(),
                            files: several
                                .iter()
                                .map(|e| e.plugin.path.display().to_string())
                                .collect(),
                        })
                    }
                }
            }
        };
        if chosen.meta.kind != kind {
            return Err(RegistryError::WrongKind {
                id: id.to_string(),
                actual: chosen.meta.kind,
                wanted: kind,
            });
        }
        Ok(chosen)
    }

    fn unknown(&self, id: &str, kind: EntryKind) -> RegistryError {
        let mut same_kind: Vec<&str> = self
            .entries()
            .filter(|e| e.meta.kind == kind)
            .map(|e| e.id())
            .collect();
        same_kind.sort_unstable();
        same_kind.dedup();
        let available = if same_kind.is_empty() {
            let dirs: Vec<String> = self
                .searched
                .iter()
                .map(|d| format!("{} ({})", d.path.display(), d.source))
                .collect();
            let mut text = format!(
                "no {kind}s are available: no plugin file defines one. Searched: {}",
                if dirs.is_empty() {
                    "nothing".to_string()
                } else {
                    dirs.join(", ")
                }
            );
            if !self.failures.is_empty() {
                text.push_str(&format!(
                    "; {} file(s) were refused (see warnings)",
                    self.failures.len()
                ));
            }
            text
        } else {
            format!("available {kind}s: {}", same_kind.join(", "))
        };
        RegistryError::Unknown {
            kind,
            id: id.to_string(),
            available,
        }
    }

    /// Constructs the base model `entry` from its JSON arguments.
    pub fn construct_model(
        &self,
        entry: EntryRef<'_>,
        args_json: &str,
        ctx: &ConstructContext,
    ) -> Result<BaseModelBox, RegistryError> {
        let construct = entry.plugin.module.construct_base_model();
        match construct(RStr::from_str(entry.id()), RStr::from_str(args_json), ctx) {
            RResult::ROk(model) => Ok(model),
            RResult::RErr(e) => Err(construct_error(entry, e.message())),
        }
    }

    /// Constructs the reward `entry` from its JSON arguments.
    pub fn construct_reward(
        &self,
        entry: EntryRef<'_>,
        args_json: &str,
        ctx: &ConstructContext,
    ) -> Result<RewardBox, RegistryError> {
        let construct = entry.plugin.module.construct_reward();
        match construct(RStr::from_str(entry.id()), RStr::from_str(args_json), ctx) {
            RResult::ROk(reward) => Ok(reward),
            RResult::RErr(e) => Err(construct_error(entry, e.message())),
        }
    }

    /// The definition of data type `name`, if a plugin declares it.
    pub fn data_type(&self, name: &str) -> Option<(&Plugin, &DataTypeMeta)> {
        self.plugins.iter().find_map(|plugin| {
            plugin
                .data_types
                .iter()
                .find(|d| d.id.name.as_str() == name)
                .map(|d| (plugin, d))
        })
    }
}

fn construct_error(entry: EntryRef<'_>, message: &str) -> RegistryError {
    RegistryError::Construct {
        kind: entry.meta.kind,
        id: entry.id().to_string(),
        file: entry.plugin.path.display().to_string(),
        message: message.to_string(),
    }
}
