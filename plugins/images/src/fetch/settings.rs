//! Where and how files are fetched: the settings the Python tools read from the environment.

use std::path::PathBuf;

use crate::hub::{hf_home, HubCache};

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Where and how files are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The hub's address (`HF_ENDPOINT`, default `https://huggingface.co`), without a trailing `/`.
    pub endpoint: String,
    /// The cache downloads go to (and are looked for in).
    pub cache: HubCache,
    /// The access token (`HF_TOKEN`, else the token file of `hf auth login`).
    pub token: Option<String>,
    /// Never touch the network (`HF_HUB_OFFLINE=1`, or the host's `--offline`).
    pub offline: bool,
    /// Show a progress bar per file (on a terminal).
    pub progress: bool,
}

impl HubSettings {
    /// The settings of the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The settings that the variables `var` gives (`HF_ENDPOINT`, `HF_TOKEN`,
    /// `HF_TOKEN_PATH`, `HF_HUB_OFFLINE` and those of [`HubCache::from_vars`]).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| hf_home(&var).join("token"));
                let token = std::fs::read_to_string(path).ok()?;
                Some(token.trim().to_string()).filter(|t| !t.is_empty())
            })
            .map(|t| t.trim().to_string());
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v));
        Self {
            endpoint,
            cache: HubCache::from_vars(&var),
            token,
            offline,
            progress: true,
        }
    }

    /// Settings that only read the cache at `cache` (never the network).
    pub fn offline(cache: HubCache) -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            cache,
            token: None,
            offline: true,
            progress: false,
        }
    }
}

/// Whether an environment value means yes, as the Python tools read it.
fn is_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn settings_follow_the_python_tools_variables() {
        let s = HubSettings::from_vars(vars(&[
            ("HOME", "/home/u"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_TOKEN", " hf_abc \n"),
            ("HF_HUB_OFFLINE", "yes"),
        ]));
        assert_eq!(s.endpoint, "http://127.0.0.1:9");
        assert_eq!(s.token.as_deref(), Some("hf_abc"));
        assert!(s.offline);
        assert_eq!(s.cache.root(), Path::new("/home/u/.cache/huggingface/hub"));
        let s = HubSettings::from_vars(vars(&[("HOME", "/h"), ("HF_HUB_OFFLINE", "0")]));
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert!(!s.offline);
    }
}
