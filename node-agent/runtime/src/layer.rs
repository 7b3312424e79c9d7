//! Unpacking image layers into a root filesystem: digests checked while
//! reading, OCI whiteouts applied, nothing written outside the target.

use std::{
    collections::HashSet,
    fs,
    io::{self, BufRead, BufReader, Read},
    path::{Component, Path, PathBuf},
};

use flate2::read::MultiGzDecoder;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use sha2::{Digest, Sha256};

use crate::root_path;

/// The prefix marking a deleted file in a layer.
const WHITEOUT_PREFIX: &str = ".wh.";
/// The marker that hides everything lower layers put in its directory.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading or writing failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The blob's content does not match its digest.
    #[error(
        "{which} digest mismatch: expected {expected}, found sha256:{found}; the blob is corrupt, import the image again"
    )]
    Digest {
        /// `layer` or `uncompressed layer (diff_id)`.
        which: &'static str,
        /// The digest the manifest or config names.
        expected: String,
        /// The digest of what was read.
        found: String,
    },
    /// A compression this store does not read.
    #[error(
        "unsupported layer compression ({0}); only gzip and uncompressed tar layers are supported"
    )]
    Compression(&'static str),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LayerError {
    let path = path.to_path_buf();
    move |source| LayerError::Io { what, path, source }
}

/// A reader that hashes what passes through it.
struct Hashing<'h, R> {
    inner: R,
    hasher: &'h mut Sha256,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn hex(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies the layer in `blob` (a tar, gzip-compressed or not) on top of
/// `dest`, checking the blob against `digest` and the uncompressed tar
/// against `diff_id` (both `sha256:<hex>`).
pub(crate) fn unpack(
    blob: &Path,
    digest: &str,
    diff_id: &str,
    dest: &Path,
) -> Result<(), LayerError> {
    let file = fs::File::open(blob).map_err(io_err("opening layer", blob))?;
    let mut compressed = Sha256::new();
    let mut uncompressed = Sha256::new();
    {
        let mut buffered = BufReader::with_capacity(
            1 << 16,
            Hashing {
                inner: file,
                hasher: &mut compressed,
            },
        );
        let magic = buffered.fill_buf().map_err(io_err("reading layer", blob))?;
        let decoded: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(MultiGzDecoder::new(buffered))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(LayerError::Compression("zstd"));
        } else if magic.starts_with(b"BZh") {
            return Err(LayerError::Compression("bzip2"));
        } else {
            Box::new(buffered)
        };
        let mut tar_reader = Hashing {
            inner: decoded,
            hasher: &mut uncompressed,
        };
        apply(&mut tar_reader, dest).map_err(|e| match e {
            LayerError::Io { what, path, source } if path.as_os_str().is_empty() => {
                LayerError::Io {
                    what,
                    path: blob.to_path_buf(),
                    source,
                }
            }
            other => other,
        })?;
        // A tar ends before its padding; hash all of it.
        io::copy(&mut tar_reader, &mut io::sink()).map_err(io_err("reading layer", blob))?;
    }
    let found = hex(compressed);
    if digest.strip_prefix("sha256:") != Some(found.as_str()) {
        return Err(LayerError::Digest {
            which: "layer",
            expected: digest.to_owned(),
            found,
        });
    }
    let found = hex(uncompressed);
    if diff_id.strip_prefix("sha256:") != Some(found.as_str()) {
        return Err(LayerError::Digest {
            which: "uncompressed layer (diff_id)",
            expected: diff_id.to_owned(),
            found,
        });
    }
    Ok(())
}

/// Writes the entries of one layer tar into `dest`.
fn apply(reader: &mut dyn Read, dest: &Path) -> Result<(), LayerError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    // Paths this layer wrote: an opaque whiteout hides only what lower
    // layers put in its directory.
    let mut created: HashSet<PathBuf> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(io_err("reading layer entries of", Path::new("")))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading a layer entry of", Path::new("")))?;
        let raw = entry
            .path()
            .map_err(io_err("reading an entry path in", Path::new("")))?
            .into_owned();
        let rel = clean(&raw);
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == OPAQUE_WHITEOUT {
            let dir = root_path::resolve(dest, &parent).map_err(io_err("resolving", &parent))?;
            let Ok(children) = fs::read_dir(&dir) else {
                continue;
            };
            for child in children.flatten() {
                if !created.contains(&parent.join(child.file_name())) {
                    remove(&child.path())?;
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let target = root_path::resolve_parent(dest, &parent.join(hidden))
                .map_err(io_err("resolving", &rel))?;
            remove(&target)?;
            continue;
        }
        let target = root_path::resolve_parent(dest, &rel).map_err(io_err("resolving", &rel))?;
        let kind = entry.header().entry_type();
        // Replace what a lower layer left unless both are directories; never
        // write through an existing symlink.
        if let Ok(meta) = fs::symlink_metadata(&target)
            && !(meta.is_dir() && kind.is_dir())
        {
            remove(&target)?;
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        match kind {
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                make_node(&entry, kind, &target)?;
            }
            tar::EntryType::Link => {
                let source = entry
                    .link_name()
                    .map_err(io_err("reading the hard link target of", &target))?
                    .map(|l| clean(&l))
                    .unwrap_or_default();
                let source = root_path::resolve_parent(dest, &source)
                    .map_err(io_err("resolving the hard link target of", &target))?;
                fs::hard_link(&source, &target).map_err(io_err("hard linking", &target))?;
            }
            _ => {
                entry
                    .unpack(&target)
                    .map_err(io_err("unpacking", &target))?;
            }
        }
        let mut p = rel.as_path();
        while !p.as_os_str().is_empty() && created.insert(p.to_path_buf()) {
            p = p.parent().unwrap_or(Path::new(""));
        }
    }
    Ok(())
}

/// The entry path relative to the root, `..` kept for [`root_path`] to
/// clamp.
fn clean(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
        .collect()
}

fn remove(path: &Path) -> Result<(), LayerError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(io_err("removing", path))
}

fn make_node<R: Read>(
    entry: &tar::Entry<'_, R>,
    kind: tar::EntryType,
    target: &Path,
) -> Result<(), LayerError> {
    let header = entry.header();
    let mode = header
        .mode()
        .map_err(io_err("reading the mode of", target))?;
    let (sflag, dev) = match kind {
        tar::EntryType::Fifo => (SFlag::S_IFIFO, 0),
        _ => {
            let major = header.device_major().ok().flatten().unwrap_or_default();
            let minor = header.device_minor().ok().flatten().unwrap_or_default();
            let flag = if kind == tar::EntryType::Char {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            (flag, makedev(u64::from(major), u64::from(minor)))
        }
    };
    mknod(target, sflag, Mode::from_bits_truncate(mode), dev)
        .map_err(|e| io_err("creating the device node", target)(e.into()))?;
    let uid = header.uid().unwrap_or_default();
    let gid = header.gid().unwrap_or_default();
    std::os::unix::fs::lchown(target, Some(uid as u32), Some(gid as u32))
        .map_err(io_err("changing the owner of", target))
}

#[cfg(test)]
mod tests;
