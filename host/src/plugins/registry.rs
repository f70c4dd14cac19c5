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
    /// Two plugin files declare one data type differently.
    #[error("data type `{name}` is declared differently by two plugin files:\n  {first}: {first_declaration}\n  {second}: {second_declaration}\na data type has one owner: declare it in one place (a crate both plugins depend on, or `flowgym_plugin_api::standard` for the standard ones) and register that declaration in both, or remove one file")]
    DataTypeConflict {
        /// The data type.
        name: String,
        /// The first file that declares it.
        first: String,
        /// Its declaration there.
        first_declaration: String,
        /// A file that declares it otherwise.
        second: String,
        /// Its declaration there.
        second_declaration: String,
    },
    /// No loaded plugin declares an entry's data type.
    #[error("{kind} `{id}` (from {file}) is of data type `{data_type}`, which no loaded plugin declares; declare it in the plugin with `flowgym_plugin_api::register_data_type! {{ name: \"{data_type}\", version: \"1.0.0\", description: \"...\" }}` (a standard one with `register_data_type! {{ standard: flowgym_plugin_api::standard::.. }}`), or load the plugin that declares it")]
    UndeclaredDataType {
        /// Model or reward.
        kind: EntryKind,
        /// The entry.
        id: String,
        /// Its plugin file.
        file: String,
        /// The data type it names.
        data_type: String,
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
        let data_type = chosen.meta.data_type.name.as_str();
        if self.declared_data_type(data_type)?.is_none() {
            return Err(RegistryError::UndeclaredDataType {
                kind,
                id: id.to_string(),
                file: chosen.plugin.path.display().to_string(),
                data_type: data_type.to_string(),
            });
        }
        Ok(chosen)
    }

    /// The declaration of data type `name` and the first file that makes it, checking that
    /// every file that declares it declares it identically.
    pub fn declared_data_type(
        &self,
        name: &str,
    ) -> Result<Option<(&Plugin, &DataTypeMeta)>, RegistryError> {
        let mut declarations = self.plugins.iter().flat_map(|plugin| {
            plugin
                .data_types
                .iter()
                .filter(move |d| d.id.name.as_str() == name)
                .map(move |d| (plugin, d))
        });
        let Some(first) = declarations.next() else {
            return Ok(None);
        };
        if let Some(other) = declarations.find(|(_, d)| describe(d) != describe(first.1)) {
            return Err(RegistryError::DataTypeConflict {
                name: name.to_string(),
                first: first.0.path.display().to_string(),
                first_declaration: describe(first.1),
                second: other.0.path.display().to_string(),
                second_declaration: describe(other.1),
            });
        }
        Ok(Some(first))
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
}

/// A data type's declaration in one line: what two declarations of a name must agree on.
fn describe(meta: &DataTypeMeta) -> String {
    let set = match &meta.set {
        abi_stable::std_types::ROption::RSome(set) => format!(
            ", elements {} indexed by `{}`",
            set.elements
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", "),
            set.sample_index
        ),
        abi_stable::std_types::ROption::RNone => String::new(),
    };
    format!(
        "version {}, {:?} layout{set}, \"{}\"",
        meta.id.version, meta.layout, meta.description
    )
}

fn construct_error(entry: EntryRef<'_>, message: &str) -> RegistryError {
    RegistryError::Construct {
        kind: entry.meta.kind,
        id: entry.id().to_string(),
        file: entry.plugin.path.display().to_string(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod data_type_owner_tests {
    use super::*;
    use abi_stable::std_types::{ROption, RVec};
    use flowgym_plugin_api::{plugin_module, DataLayout, DataTypeRef};

    fn declaration(name: &str, description: &str) -> DataTypeMeta {
        DataTypeMeta {
            id: DataTypeRef::new(name, "1.0.0"),
            description: description.into(),
            layout: DataLayout::Plain,
            set: ROption::RNone,
        }
    }

    fn plugin(path: &str, data_types: Vec<DataTypeMeta>, entry_type: Option<&str>) -> Plugin {
        Plugin {
            path: PathBuf::from(path),
            api_version: semver::Version::new(1, 0, 0),
            package: None,
            libtorch: None,
            module: plugin_module(ROption::RNone),
            entries: entry_type
                .map(|dt| EntryMeta {
                    kind: EntryKind::Reward,
                    id: format!("{dt}/r").into(),
                    data_type: DataTypeRef::new(dt, "1.0.0"),
                    version: "1.0.0".into(),
                    description: "".into(),
                    arguments: RVec::new(),
                    leaves: RVec::new(),
                    capabilities: Default::default(),
                })
                .into_iter()
                .collect(),
            data_types,
        }
    }

    fn registry(plugins: Vec<Plugin>) -> Registry {
        Registry {
            plugins,
            ..Registry::default()
        }
    }

    #[test]
    fn identical_declarations_are_one_data_type() {
        let r = registry(vec![
            plugin("/p/a.so", vec![declaration("2d", "points")], Some("2d")),
            plugin("/p/b.so", vec![declaration("2d", "points")], None),
        ]);
        let (owner, meta) = r.declared_data_type("2d").unwrap().unwrap();
        assert_eq!(
            (owner.path.to_str(), meta.description.as_str()),
            (Some("/p/a.so"), "points")
        );
        assert!(r.resolve("2d/r", EntryKind::Reward).is_ok());
    }

    #[test]
    fn different_declarations_of_one_name_are_refused_naming_both_files() {
        let r = registry(vec![
            plugin("/p/a.so", vec![declaration("2d", "points")], Some("2d")),
            plugin("/p/b.so", vec![declaration("2d", "pairs")], None),
        ]);
        let err = r
            .resolve("2d/r", EntryKind::Reward)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("data type `2d` is declared differently by two plugin files:\n  /p/a.so: version 1.0.0, Plain layout, \"points\"\n  /p/b.so: version 1.0.0, Plain layout, \"pairs\"\n"),
            "{err}"
        );
    }

    #[test]
    fn an_entry_of_an_undeclared_data_type_is_refused_saying_how_to_declare_it() {
        let r = registry(vec![plugin("/p/a.so", vec![], Some("2d"))]);
        let err = r
            .resolve("2d/r", EntryKind::Reward)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("reward `2d/r` (from /p/a.so) is of data type `2d`, which no loaded plugin declares; declare it in the plugin with `flowgym_plugin_api::register_data_type! { name: \"2d\", version: \"1.0.0\", description: \"...\" }`"),
            "{err}"
        );
    }
}
