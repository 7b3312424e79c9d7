//! Memory-backed volumes: a tmpfs per `emptyDir: {medium: Memory}` and, as
//! the kubelet does, per secret and projected volume, so their content
//! never reaches the node's disk; and the unmounting a pod's removal needs
//! before its directory can go.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use nix::mount::{MntFlags, MsFlags};

/// Mounts a tmpfs at `path` (made if missing) unless one is there already.
/// `size` caps it in bytes (an emptyDir's `sizeLimit`); without it the
/// kernel's default (half the node's memory) applies, as for the kubelet
/// without a pod memory limit.
pub(crate) fn ensure(path: &Path, size: Option<u64>) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    if is_mount_point(path)? {
        return Ok(());
    }
    let mut data = String::from("mode=0777");
    if let Some(size) = size {
        // tmpfs rounds up to whole pages; 0 would mean "unlimited".
        data.push_str(&format!(",size={}", size.max(1)));
    }
    nix::mount::mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(std::io::Error::from)
}

/// Whether `path` is the root of a mount: it sits on another device than
/// its parent.
fn is_mount_point(path: &Path) -> std::io::Result<bool> {
    let Some(parent) = path.parent() else {
        return Ok(true);
    };
    Ok(std::fs::metadata(path)?.dev() != std::fs::metadata(parent)?.dev())
}

/// Detaches every mount at or below `dir` (deepest first), so the
/// directory can be removed; the kernel frees a tmpfs's memory once no
/// container holds it either.
pub(crate) fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points = mount_points_under(&info, dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Err(e) = nix::mount::umount2(&p, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %p.display(), "unmounting: {e}");
        }
    }
}

/// The mount points in `mountinfo` (the format of `/proc/self/mountinfo`)
/// at or below `dir`.
pub(crate) fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = b.get(i + 1..i + 4)
            && oct.iter().all(|d| (b'0'..=b'7').contains(d))
            && let Ok(c) = u8::try_from(oct.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0')))
        {
            out.push(c);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
