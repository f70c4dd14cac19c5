//! Finding, loading and checking plugin files, and looking entries up across them.

pub mod discovery;
pub mod integrity;
pub mod loader;
pub mod permissions;
pub mod registry;
pub mod trust;

pub use discovery::{candidate_files, search_dirs, SearchDir, SearchSource};
pub use loader::{load_plugin, LoadFailure, Plugin};
pub use registry::{EntryRef, Registry, RegistryError, TrustPolicy};
pub use trust::{TrustFile, TrustState};
