//! Checking a downloaded file against the hub's listing, and removing one that fails.

use std::io::Read;
use std::path::Path;

use sha2::Digest;

use super::{FetchError, RemoteFile};

/// Checks the downloaded `path` against the listing's size and hash; a file that fails is
/// removed (its blob and its link) so that it is not taken as whole later.
pub(super) fn verify(repo: &str, file: &RemoteFile, path: &Path) -> Result<(), FetchError> {
    let mismatch = |what: &str, expected: String, found: String| {
        remove_download(path);
        FetchError::Mismatch {
            repo: repo.to_string(),
            file: file.name.clone(),
            what: what.to_string(),
            expected,
            found,
        }
    };
    let cache_error = |e: std::io::Error| FetchError::Cache {
        repo: repo.to_string(),
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let size = std::fs::metadata(path).map_err(cache_error)?.len();
    if size != file.size {
        return Err(mismatch(
            "size",
            format!("{} bytes", file.size),
            format!("{size} bytes"),
        ));
    }
    let (sha256, git_sha1) = hashes(path, size).map_err(cache_error)?;
    if let Some(expected) = &file.sha256 {
        if !expected.eq_ignore_ascii_case(&sha256) {
            return Err(mismatch("sha256", expected.clone(), sha256));
        }
    } else if let Some(expected) = &file.git_sha1 {
        if !expected.eq_ignore_ascii_case(&git_sha1) {
            return Err(mismatch("git hash", expected.clone(), git_sha1));
        }
    }
    Ok(())
}

/// The sha256 of a file and its git blob hash (sha1 of `blob <size>\0` and the contents).
fn hashes(path: &Path, size: u64) -> std::io::Result<(String, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut sha256 = sha2::Sha256::new();
    let mut sha1 = sha1::Sha1::new();
    sha1.update(format!("blob {size}\0").as_bytes());
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        sha256.update(&buffer[..n]);
        sha1.update(&buffer[..n]);
    }
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Ok((hex(&sha256.finalize()), hex(&sha1.finalize())))
}

/// Removes a downloaded file: the blob its link points to (and the blob's lock file), then
/// the link.
fn remove_download(path: &Path) {
    if let Ok(blob) = std::fs::canonicalize(path) {
        let _ = std::fs::remove_file(&blob);
        let mut lock = blob.into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_git_blob_hash_is_that_of_git() {
        let dir = std::env::temp_dir().join(format!("flowgym-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hello");
        std::fs::write(&path, b"hello\n").unwrap();
        // `printf 'hello\n' | git hash-object --stdin`
        let (sha256, sha1) = hashes(&path, 6).unwrap();
        assert_eq!(sha1, "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(
            sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
