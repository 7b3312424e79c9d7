//! Paths inside a container root filesystem, resolved the way the
//! container would see them: symlinks are followed, but absolute targets and
//! `..` stay inside the root, so the host is never touched by mistake.

use std::{
    collections::VecDeque,
    ffi::OsString,
    fs, io,
    path::{Component, Path, PathBuf},
};

/// Symlinks followed before giving up, as the kernel does (ELOOP).
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` (absolute or relative, both taken from `root`) inside
/// `root`, following every symlink including the last component.
pub(crate) fn resolve(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = components(path).collect();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate: PathBuf = root.join(resolved.iter().collect::<PathBuf>()).join(&c);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("too many levels of symlinks at {}", candidate.display()),
                    ));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for t in components(&target).collect::<Vec<_>>().into_iter().rev() {
                    pending.push_front(t);
                }
            }
            _ => resolved.push(c),
        }
    }
    Ok(root.join(resolved.iter().collect::<PathBuf>()))
}

/// Resolves the parent of `path` inside `root` and appends its last
/// component unresolved: where to create, replace or remove `path` itself.
pub(crate) fn resolve_parent(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut parts: Vec<OsString> = components(path).collect();
    let Some(last) = parts.pop() else {
        return Ok(root.to_path_buf());
    };
    let parent = resolve(root, &parts.iter().collect::<PathBuf>())?;
    if last == ".." {
        return Ok(parent
            .parent()
            .filter(|p| p.starts_with(root))
            .unwrap_or(root)
            .to_path_buf());
    }
    Ok(parent.join(last))
}

/// Normal and `..` components; root and `.` are dropped.
fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(p) => Some(p.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib"))?;
        symlink("usr/lib", root.join("lib"))?;
        symlink("/etc", root.join("usr/lib/escape"))?;
        symlink("../../../../..", root.join("usr/up"))?;
        assert_eq!(resolve(root, Path::new("/lib/x"))?, root.join("usr/lib/x"));
        assert_eq!(
            resolve(root, Path::new("lib/escape/passwd"))?,
            root.join("etc/passwd")
        );
        assert_eq!(resolve(root, Path::new("usr/up/etc"))?, root.join("etc"));
        assert_eq!(resolve(root, Path::new("../../etc"))?, root.join("etc"));
        assert_eq!(
            resolve_parent(root, Path::new("lib/escape"))?,
            root.join("usr/lib/escape")
        );
        symlink("loop", root.join("loop"))?;
        assert!(resolve(root, Path::new("loop")).is_err());
        Ok(())
    }
}
