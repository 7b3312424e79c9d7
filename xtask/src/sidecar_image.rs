//! The sidecar's image, `shoal.io/sidecar:dev`: the `shoal-sidecar` binary
//! of this tree, the shared libraries `ldd` lists for it and the dynamic
//! loader, as an OCI image-layout archive that `shoal image import` takes
//! (no registry is reachable, so nodes get it imported, not pulled).
//!
//! The archive is reproducible, as busybox's (`image.rs`): the same binary
//! and libraries give the same bytes (sorted entries, mtime 0, uid/gid 0,
//! gzip without a name or timestamp).
//!
//! The lab fixture (shoal-e2e's `cluster.rs`) includes this file with
//! `#[path]`, so `cargo xtask up`, the end-to-end tests and
//! `cargo xtask sidecar-image` build the same image. Keep it free of other
//! xtask modules.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

/// The reference the injected sidecar container names (the apiserver's
/// injection template, `shoal_sidecar::inject::IMAGE`): built from the
/// local tree, so it is `dev`, never a release tag.
pub const REFERENCE: &str = "shoal.io/sidecar:dev";

/// The binary's name, next to `shoal` in `target/<profile>/`.
pub const BINARY_NAME: &str = "shoal-sidecar";

/// Where the binary lives inside the image (its entrypoint).
pub const ENTRYPOINT: &str = "/usr/local/bin/shoal-sidecar";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Directories every image root has (runc mounts /proc, /sys and /dev
/// there; /tmp for the proxy's own use).
const DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("etc", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("var", 0o755),
];

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\n";

/// Builds the image archive (an uncompressed tar holding the OCI layout)
/// from `binary`.
pub fn build_sidecar(binary: &Path) -> Result<Vec<u8>> {
    let program = std::fs::read(binary).with_context(|| {
        format!(
            "reading {} (build it with `cargo build --bin shoal-sidecar`)",
            binary.display()
        )
    })?;
    let libraries = shared_libraries(binary)?;

    let layer = layer_tar(&program, &libraries)?;
    let diff_id = sha256(&layer);
    // Fast compression: the lab builds this at every cluster start when the
    // binary changed; the level does not change reproducibility.
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::fast());
    gz.write_all(&layer)
        .context("compressing the sidecar layer")?;
    let layer_gz = gz.finish().context("compressing the sidecar layer")?;
    let layer_digest = sha256(&layer_gz);

    let created = "1970-01-01T00:00:00Z";
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "created": created,
        "config": {
            "Env": [PATH_ENV],
            "Entrypoint": [ENTRYPOINT],
            "ExposedPorts": {"15001/tcp": {}, "15006/tcp": {}, "15020/tcp": {}},
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        "history": [{
            "created": created,
            "created_by": format!(
                "cargo xtask: {BINARY_NAME} with {}",
                libraries.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
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
    }))?;
    let manifest_digest = sha256(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": REFERENCE },
        }],
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
    out.into_inner()
        .context("finishing the sidecar image archive")
}

/// Writes the archive of `binary` to `out` unless `out` is newer than the
/// binary (through a temporary file and a rename, so concurrent writers
/// never leave half an archive). Returns `out`.
pub fn write_if_stale(binary: &Path, out: &Path) -> Result<PathBuf> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(source)) = (modified(out), modified(binary))
        && built >= source
    {
        return Ok(out.to_path_buf());
    }
    let archive = build_sidecar(binary)?;
    let tmp = out.with_extension(format!(
        "tmp.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&tmp, &archive).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    Ok(out.to_path_buf())
}

/// The libraries the binary loads, by the absolute path `ldd` names (the
/// dynamic loader included), with their contents (symlinks followed).
fn shared_libraries(binary: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running `ldd {}`", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libraries = BTreeMap::new();
    if !out.status.success() {
        // A static binary: ldd says "not a dynamic executable" and fails.
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable") {
            return Ok(libraries);
        }
        bail!(
            "`ldd {}` failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for line in text.lines().map(str::trim) {
        if line.contains("=> not found") {
            bail!("`ldd {}`: {line}: install the library", binary.display());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or the
        // loader as `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has
        // no file.
        let path = line
            .split_once("=>")
            .map_or(line, |(_, p)| p)
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'));
        let Some(path) = path else { continue };
        let data = std::fs::read(path)
            .with_context(|| format!("reading {path}, which {} loads", binary.display()))?;
        libraries.insert(path.to_owned(), data);
    }
    Ok(libraries)
}

/// The root filesystem: the binary, its libraries at the paths the loader
/// looks in, /etc/passwd and /etc/group, in name order.
fn layer_tar(program: &[u8], libraries: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>> {
    let mut files: BTreeMap<String, (u32, &[u8])> = BTreeMap::new();
    let entry = ENTRYPOINT.trim_start_matches('/');
    files.insert(entry.to_owned(), (0o755, program));
    files.insert("etc/passwd".to_owned(), (0o644, PASSWD.as_bytes()));
    files.insert("etc/group".to_owned(), (0o644, GROUP.as_bytes()));
    for (path, data) in libraries {
        files.insert(path.trim_start_matches('/').to_owned(), (0o755, data));
    }
    let mut dirs: BTreeMap<String, u32> = DIRS
        .iter()
        .map(|(d, mode)| (format!("{d}/"), *mode))
        .collect();
    for path in files.keys() {
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.entry(format!("{}/", dir.display())).or_insert(0o755);
            parent = dir.parent();
        }
    }
    let mut items: Vec<(String, u32, Option<&[u8]>)> = dirs
        .into_iter()
        .map(|(d, mode)| (d, mode, None))
        .chain(
            files
                .into_iter()
                .map(|(f, (mode, data))| (f, mode, Some(data))),
        )
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = tar::Builder::new(Vec::new());
    for (path, mode, data) in items {
        match data {
            Some(data) => append_file(&mut out, &path, mode, data)?,
            None => append_dir(&mut out, &path, mode)?,
        }
    }
    out.into_inner().context("finishing the sidecar layer")
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

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// The files of a tar archive, by path.
    fn entries(tar_bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut out = BTreeMap::new();
        for entry in tar::Archive::new(tar_bytes).entries()? {
            let mut entry = entry?;
            let path = entry.path()?.display().to_string();
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            out.insert(path, data);
        }
        Ok(out)
    }

    /// `/bin/true` stands for the sidecar: a small dynamic binary every
    /// Debian machine has.
    #[test]
    fn the_image_holds_the_binary_its_libraries_and_is_reproducible() -> Result<()> {
        let binary = Path::new("/bin/true");
        let first = build_sidecar(binary)?;
        assert!(first == build_sidecar(binary)?, "two builds differ");
        let layout = entries(&first)?;
        let index: serde_json::Value = serde_json::from_slice(&layout["index.json"])?;
        let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap_or("");
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            REFERENCE
        );
        let blob = |digest: &str| {
            layout
                .get(&format!(
                    "blobs/sha256/{}",
                    digest.trim_start_matches("sha256:")
                ))
                .cloned()
                .unwrap_or_default()
        };
        let manifest: serde_json::Value = serde_json::from_slice(&blob(manifest_digest))?;
        let config: serde_json::Value =
            serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap_or("")))?;
        assert_eq!(config["config"]["Entrypoint"][0], ENTRYPOINT);
        let mut layer = Vec::new();
        flate2::read::GzDecoder::new(
            &blob(
                manifest["layers"][0]["digest"]
                    .as_str()
                    .unwrap_or("no layer"),
            )[..],
        )
        .read_to_end(&mut layer)?;
        let root = entries(&layer)?;
        assert!(root["usr/local/bin/shoal-sidecar"] == std::fs::read(binary)?);
        let libraries = shared_libraries(binary)?;
        assert!(
            libraries.keys().any(|l| l.contains("ld-linux")),
            "ldd names the loader: {:?}",
            libraries.keys()
        );
        for (path, data) in &libraries {
            let inside = root.get(path.trim_start_matches('/'));
            assert!(
                inside == Some(data),
                "{path} is missing from the layer or differs"
            );
        }
        Ok(())
    }
}
