//! Who else could change a plugin: as ssh does for its keys, a plugin directory or file that
//! another user can write (group- or world-writable, or owned by someone other than the user
//! or root) is named, because whoever can write there can run code as the user.

use std::path::Path;

/// Why others could change `path` (a plugin directory or file), if they could.
#[cfg(unix)]
pub fn writable_by_others(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o7777;
    let me = current_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!(
            "is owned by another user (uid {}, you are {me})",
            meta.uid()
        ));
    }
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return None,
        (true, false) => "its group",
        (_, true) => "every user",
    };
    Some(format!(
        "is writable by {who} (mode {mode:04o}); run `chmod go-w {}`",
        path.display()
    ))
}

/// Without Unix permissions there is nothing to check.
#[cfg(not(unix))]
pub fn writable_by_others(_path: &Path) -> Option<String> {
    None
}

#[cfg(unix)]
fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_and_world_writable_paths_are_named() {
        let dir = std::env::temp_dir().join(format!("flowgym-perm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let set = |mode| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode));
        set(0o755).unwrap();
        assert_eq!(writable_by_others(&dir), None);
        set(0o775).unwrap();
        let why = writable_by_others(&dir).unwrap();
        assert!(
            why.starts_with("is writable by its group (mode 0775)"),
            "{why}"
        );
        set(0o1777).unwrap();
        let why = writable_by_others(&dir).unwrap();
        assert!(
            why.starts_with("is writable by every user (mode 1777)"),
            "{why}"
        );
        set(0o755).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
