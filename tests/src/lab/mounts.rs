//! The mount table, as `/proc/self/mountinfo` shows it.

use std::path::{Path, PathBuf};

/// One mount: where and what file system type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mount {
    pub(super) point: PathBuf,
    pub(super) fstype: String,
}

/// Every mount of this process's mount namespace, in mount order (empty if
/// the table cannot be read).
pub(super) fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse(&text))
        .unwrap_or_default()
}

/// Parses mountinfo: `id parent major:minor root point options [optional...] - fstype source super-options`.
pub(super) fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some(Mount {
                point: PathBuf::from(unescape(point)),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| {
                u8::try_from(d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'))).ok()
            });
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether something is mounted at `path`.
pub(super) fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|m| m.point == path)
}

/// Whether the file system last mounted at `path` is of type `fstype`.
pub(super) fn is_mounted(path: &Path, fstype: &str) -> bool {
    mounts()
        .iter()
        .rev()
        .find(|m| m.point == path)
        .is_some_and(|m| m.fstype == fstype)
}
