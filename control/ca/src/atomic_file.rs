//! Files written whole or not at all: a temporary file in the same directory,
//! synced, then renamed over the target, so a crash never leaves half a key.

use std::fs::{self, DirBuilder, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of files only the cluster's own processes may read (keys, kubeconfigs).
pub(crate) const PRIVATE: u32 = 0o600;
/// Mode of files anyone on the host may read (certificates).
pub(crate) const PUBLIC: u32 = 0o644;

/// Writes `contents` to `path` with `mode`, replacing any file there atomically.
pub(crate) fn write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    ensure_dir(dir)?;
    // tempfile creates the file 0600, so a key is never readable by others,
    // not even for the moment before the mode is set.
    let mut tmp = tempfile::Builder::new()
        .prefix(".shoal-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename is durable only once the directory entry is on disk.
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and its parents) readable by the owner only, if missing.
pub(crate) fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Reads `path`, or `None` if there is no such file.
pub(crate) fn read_if_exists(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
