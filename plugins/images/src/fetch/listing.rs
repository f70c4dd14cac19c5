//! The hub's listing of a repository's files, with their sizes and hashes.

/// One file of a repository listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Its path in the repository (`unet/config.json`).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The sha256 of a file stored with LFS (the weights).
    pub sha256: Option<String>,
    /// The git blob hash of a file stored in git (configs, tokenizer files).
    pub git_sha1: Option<String>,
}

/// The files of one revision of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoListing {
    /// `org/name`.
    pub repo: String,
    /// The commit the listing is of.
    pub commit: String,
    /// Its files.
    pub files: Vec<RemoteFile>,
}

impl RepoListing {
    /// Whether the repository has the file `name`.
    pub fn has(&self, name: &str) -> bool {
        self.file(name).is_some()
    }

    /// The file `name`.
    pub fn file(&self, name: &str) -> Option<&RemoteFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Reads the hub's answer to `/api/models/<repo>/revision/main?blobs=true`.
    pub fn from_json(repo: &str, json: &serde_json::Value) -> Result<Self, String> {
        let commit = json["sha"]
            .as_str()
            .ok_or("the listing has no commit (`sha`)")?
            .to_string();
        let siblings = json["siblings"]
            .as_array()
            .ok_or("the listing has no files (`siblings`)")?;
        let files = siblings
            .iter()
            .map(|s| {
                let name = s["rfilename"]
                    .as_str()
                    .ok_or("a file without `rfilename`")?;
                let lfs = &s["lfs"];
                let size = lfs["size"]
                    .as_u64()
                    .or_else(|| s["size"].as_u64())
                    .ok_or_else(|| format!("`{name}` has no size (listing without blobs)"))?;
                Ok(RemoteFile {
                    name: name.to_string(),
                    size,
                    sha256: lfs["sha256"].as_str().map(str::to_string),
                    git_sha1: s["blobId"].as_str().map(str::to_string),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            repo: repo.to_string(),
            commit,
            files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_with_blobs_gives_sizes_and_hashes() {
        let json = serde_json::json!({
            "sha": "abc",
            "siblings": [
                {"rfilename": "config.json", "size": 10, "blobId": "0123"},
                {"rfilename": "w.safetensors", "size": 134, "blobId": "9",
                 "lfs": {"sha256": "ff", "size": 2000, "pointerSize": 134}}
            ]
        });
        let listing = RepoListing::from_json("a/b", &json).unwrap();
        assert_eq!(listing.commit, "abc");
        let w = listing.file("w.safetensors").unwrap();
        assert_eq!((w.size, w.sha256.as_deref()), (2000, Some("ff")));
        assert_eq!(
            listing.file("config.json").unwrap().git_sha1.as_deref(),
            Some("0123")
        );
        let no_sizes = serde_json::json!({"sha": "a", "siblings": [{"rfilename": "x"}]});
        assert_eq!(
            RepoListing::from_json("a/b", &no_sizes).unwrap_err(),
            "`x` has no size (listing without blobs)"
        );
    }
}
