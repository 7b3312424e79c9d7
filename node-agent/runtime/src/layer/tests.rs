use std::{fs, io::Write, os::unix::fs::MetadataExt, path::Path};

use flate2::{Compression, write::GzEncoder};
use sha2::{Digest, Sha256};

use super::{LayerError, unpack};

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Link(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    /// A file whose path the tar builder would refuse (`..`).
    Raw(&'a str, &'a str),
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        let r = match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty())
            }
            E::File(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o640);
                h.set_uid(1000);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, data.as_bytes())
            }
            E::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target)
            }
            E::Raw(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                let name = &mut h.as_old_mut().name;
                name[..p.len()].copy_from_slice(p.as_bytes());
                h.set_cksum();
                b.append(&h, data.as_bytes())
            }
            E::HardLink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, target)
            }
        };
        r.expect("in-memory tar");
    }
    b.into_inner().expect("in-memory tar")
}

fn digest(data: &[u8]) -> String {
    let h = Sha256::digest(data);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Writes the layer gzipped into `dir` and applies it to `dest`.
fn apply(dir: &Path, dest: &Path, tar: &[u8]) -> Result<(), LayerError> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(tar).expect("gzip");
    let blob = gz.finish().expect("gzip");
    let path = dir.join(digest(&blob));
    fs::write(&path, &blob).expect("write blob");
    unpack(&path, &digest(&blob), &digest(tar), dest)
}

#[test]
fn whiteouts_remove_lower_files_and_opaque_dirs_hide_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("rootfs");
    fs::create_dir(&dest).expect("mkdir");
    let lower = layer(&[
        E::Dir("a/"),
        E::File("a/x", "x"),
        E::File("a/y", "y"),
        E::File("b", "b"),
        E::Dir("c/"),
        E::File("c/old", "old"),
        E::Dir("etc/"),
        E::Link("lib", "/etc"),
        E::HardLink("a/z", "a/y"),
    ]);
    apply(tmp.path(), &dest, &lower).expect("lower layer");
    assert_eq!(
        fs::read_to_string(dest.join("a/x")).ok().as_deref(),
        Some("x")
    );
    let meta = fs::metadata(dest.join("a/y")).expect("a/y");
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777, meta.nlink()),
        (1000, 0o640, 2)
    );

    let upper = layer(&[
        E::File("a/.wh.x", ""),
        E::File(".wh.b", ""),
        E::Dir("c/"),
        E::File("c/new", "new"),
        E::File("c/.wh..wh..opq", ""),
        // Through an absolute symlink: must land in the root's /etc.
        E::File("lib/passwd", "root:x:0:0::/:/bin/sh\n"),
        E::Raw("../../escape", "no"),
    ]);
    apply(tmp.path(), &dest, &upper).expect("upper layer");
    assert!(!dest.join("a/x").exists(), "a/x was whited out");
    assert!(dest.join("a/y").exists());
    assert!(!dest.join("b").exists(), "b was whited out");
    assert!(!dest.join("c/old").exists(), "opaque c hides c/old");
    assert_eq!(
        fs::read_to_string(dest.join("c/new")).ok().as_deref(),
        Some("new")
    );
    assert!(dest.join("etc/passwd").exists(), "written inside the root");
    assert!(dest.join("escape").exists(), "`..` is clamped to the root");
    assert!(!tmp.path().join("escape").exists());
}

#[test]
fn a_corrupt_blob_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("rootfs");
    fs::create_dir(&dest).expect("mkdir");
    let tar = layer(&[E::File("f", "data")]);
    let blob = tmp.path().join("blob");
    fs::write(&blob, &tar).expect("write");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = unpack(&blob, &wrong, &digest(&tar), &dest).expect_err("digest mismatch");
    assert!(err.to_string().contains("import the image again"), "{err}");
    // An uncompressed layer with the right digests is fine.
    unpack(&blob, &digest(&tar), &digest(&tar), &dest).expect("plain tar layer");
}
