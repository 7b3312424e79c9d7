//! The `busybox` image, built from Debian's `busybox-static` as an OCI
//! image-layout archive (what `skopeo copy ... oci-archive:` writes), so
//! pods can say `image: busybox` on machines that reach no registry.
//!
//! The archive is reproducible: the same `/bin/busybox` gives the same
//! bytes (sorted entries, mtime 0, uid/gid 0, gzip without a name or
//! timestamp), so `cargo xtask setup` can tell whether the copy on disk is
//! current by building it again and comparing.
//!
//! shoal-runtime's integration test includes this file with `#[path]`, so
//! the image it runs containers from is the one setup writes. Keep it free
//! of other xtask modules.

use std::{io::Write, path::Path, process::Command};

use anyhow::{Context, Result, bail};
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

/// Where setup writes the archive, relative to `$CARGO_HOME` (next to the
/// Python client under `$CARGO_HOME/shoal/`). shoal-runtime exports the
/// same path as `shoal_runtime::BUSYBOX_ARCHIVE`.
pub const ARCHIVE_UNDER_CARGO_HOME: &str = "shoal/images/busybox.oci.tar";

/// The binary the image is built from (Debian's `busybox-static`).
pub const BUSYBOX_BINARY: &str = "/bin/busybox";

/// The reference the agent looks for; `busybox`, `busybox:latest` and
/// `library/busybox` all normalise to it.
pub const REFERENCE: &str = "docker.io/library/busybox:latest";

/// Docker's default search path, which the image sets because busybox's
/// applets live in /bin.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";

/// Directories of the root filesystem besides /bin, with their modes.
const DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("etc", 0o755),
    ("home", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("var", 0o755),
];

/// A built image: the archive's bytes and what they hold.
pub struct BusyboxImage {
    /// The OCI image-layout archive (an uncompressed tar).
    pub archive: Vec<u8>,
    /// BusyBox's version, e.g. `1.35.0`.
    pub version: String,
    /// The references the archive's index.json names, fully qualified.
    pub references: Vec<String>,
}

/// Builds the image from `busybox` (normally [`BUSYBOX_BINARY`]).
pub fn build_busybox(busybox: &Path) -> Result<BusyboxImage> {
    let binary = std::fs::read(busybox).with_context(|| {
        format!(
            "reading {} (install Debian's busybox-static: `cargo xtask setup`)",
            busybox.display()
        )
    })?;
    let version = busybox_version(busybox)?;
    let applets = busybox_applets(busybox)?;

    let layer = layer_tar(&binary, &applets)?;
    let diff_id = sha256(&layer);
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    gz.write_all(&layer)
        .context("compressing the busybox layer")?;
    let layer_gz = gz.finish().context("compressing the busybox layer")?;
    let layer_digest = sha256(&layer_gz);

    let created = "1970-01-01T00:00:00Z";
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "created": created,
        "config": { "Env": [PATH_ENV], "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        "history": [{
            "created": created,
            "created_by": format!("cargo xtask setup: BusyBox {version} from {}", busybox.display()),
        }],
    }))?;
    let config_digest = sha256(&config);

    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_gz.len(),
        }],
        "annotations": { "org.opencontainers.image.version": version },
    }))?;
    let manifest_digest = sha256(&manifest);

    let minor = version.split('.').take(2).collect::<Vec<_>>().join(".");
    let references = vec![
        REFERENCE.to_owned(),
        format!("docker.io/library/busybox:{minor}"),
    ];
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": references.iter().map(|r| serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": r },
        })).collect::<Vec<_>>(),
    }))?;

    let mut blobs = [
        (config_digest, config),
        (layer_digest, layer_gz),
        (manifest_digest, manifest),
    ];
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = tar::Builder::new(Vec::new());
    append_dir(&mut out, "blobs/", 0o755)?;
    append_dir(&mut out, "blobs/sha256/", 0o755)?;
    for (digest, data) in &blobs {
        append_file(&mut out, &format!("blobs/sha256/{digest}"), 0o644, data)?;
    }
    append_file(&mut out, "index.json", 0o644, &index)?;
    append_file(
        &mut out,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let archive = out.into_inner().context("finishing the image archive")?;
    Ok(BusyboxImage {
        archive,
        version,
        references,
    })
}

/// The root filesystem: /bin/busybox, a symlink per applet, the files in
/// /etc and empty directories, in name order.
fn layer_tar(binary: &[u8], applets: &[String]) -> Result<Vec<u8>> {
    enum Item<'a> {
        Dir(u32),
        File(u32, &'a [u8]),
        Link(&'a str),
    }
    let mut items: Vec<(String, Item)> = vec![
        ("bin/".into(), Item::Dir(0o755)),
        ("bin/busybox".into(), Item::File(0o755, binary)),
        ("etc/group".into(), Item::File(0o644, GROUP.as_bytes())),
        ("etc/passwd".into(), Item::File(0o644, PASSWD.as_bytes())),
    ];
    items.extend(
        DIRS.iter()
            .map(|(d, mode)| (format!("{d}/"), Item::Dir(*mode))),
    );
    for applet in applets {
        if applet == "busybox" {
            continue;
        }
        items.push((format!("bin/{applet}"), Item::Link("busybox")));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items.dedup_by(|a, b| a.0 == b.0);

    let mut out = tar::Builder::new(Vec::new());
    for (path, item) in items {
        match item {
            Item::Dir(mode) => append_dir(&mut out, &path, mode)?,
            Item::File(mode, data) => append_file(&mut out, &path, mode, data)?,
            Item::Link(target) => {
                let mut header = header(tar::EntryType::Symlink, 0o777, 0);
                out.append_link(&mut header, &path, target)
                    .with_context(|| format!("adding the symlink {path}"))?;
            }
        }
    }
    out.into_inner().context("finishing the busybox layer")
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_dir(out: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> Result<()> {
    let mut header = header(tar::EntryType::Directory, mode, 0);
    out.append_data(&mut header, path, std::io::empty())
        .with_context(|| format!("adding the directory {path}"))
}

fn append_file(out: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) -> Result<()> {
    let mut header = header(tar::EntryType::Regular, mode, data.len() as u64);
    out.append_data(&mut header, path, data)
        .with_context(|| format!("adding the file {path}"))
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// BusyBox's version from the first line of its help text:
/// `BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.`
fn busybox_version(busybox: &Path) -> Result<String> {
    let out = Command::new(busybox)
        .arg("--help")
        .output()
        .with_context(|| format!("running `{} --help`", busybox.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("BusyBox v"))
        .and_then(|l| l.split_whitespace().next())
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "`{} --help` does not start with `BusyBox v<version>`: is it BusyBox?",
                busybox.display()
            )
        })
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("running `{} --list`", busybox.display()))?;
    if !out.status.success() {
        bail!("`{} --list` failed with {}", busybox.display(), out.status);
    }
    let applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .map(str::to_owned)
        .collect();
    if !applets.iter().any(|a| a == "sh") {
        bail!(
            "`{} --list` has no `sh` applet; the image needs /bin/sh",
            busybox.display()
        );
    }
    Ok(applets)
}
