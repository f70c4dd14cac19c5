//! A look at a library file before the system loader maps it. Loaders map the segments a
//! header describes even when the file ends early, and touching the missing part kills the
//! process (SIGBUS); so a truncated or malformed file is refused here, by reading its headers.

use std::fs::File;
use std::path::Path;

use object::read::ReadCache;
use object::{Object, ObjectSegment};

/// Why `path` cannot be a complete dynamic library, if it cannot.
pub fn check_library_file(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let length = file
        .metadata()
        .map_err(|e| format!("cannot be read: {e}"))?
        .len();
    let cache = ReadCache::new(file);
    let parsed = object::File::parse(&cache).map_err(|e| {
        format!("is not a complete dynamic library (its headers do not parse: {e})")
    })?;
    for segment in parsed.segments() {
        let (offset, size) = segment.file_range();
        if offset.saturating_add(size) > length {
            return Err(format!(
                "is truncated: a segment needs bytes {offset}..{} but the file has {length}",
                offset + size
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_itself_passes_and_cut_or_garbage_copies_fail() {
        let exe = std::env::current_exe().unwrap();
        assert_eq!(check_library_file(&exe), Ok(()));
        let dir = std::env::temp_dir().join(format!("flowgym-integrity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        let cut = dir.join("cut.so");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = check_library_file(&cut).unwrap_err();
        // The section headers sit at the end of the file, so a cut shows there first.
        assert!(
            err.starts_with("is not a complete dynamic library (its headers do not parse"),
            "{err}"
        );
        let garbage = dir.join("garbage.so");
        std::fs::write(&garbage, b"not a library").unwrap();
        let err = check_library_file(&garbage).unwrap_err();
        assert!(
            err.starts_with("is not a complete dynamic library (its headers do not parse: "),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
