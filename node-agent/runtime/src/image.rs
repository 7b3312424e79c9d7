//! The local image store: an OCI image layout on disk (`oci-layout`,
//! `index.json`, `blobs/sha256/`) whose index names each manifest with its
//! fully qualified reference, plus the unpacked root filesystems.
//!
//! ```text
//! <dir>/oci-layout
//! <dir>/index.json            manifests, each with org.opencontainers.image.ref.name
//! <dir>/blobs/sha256/<hex>    manifests, configs and layers, verified on import
//! <dir>/rootfs/<image id>/    layers unpacked once per image, shared read-only
//! <dir>/tmp/                  staging for imports and unpacking
//! <dir>/lock                  held while index.json is rewritten
//! ```
//!
//! The API is synchronous (file I/O only): call it from `spawn_blocking`.
//! index.json is replaced by rename and read afresh by every lookup, so an
//! `shoal image import` in another process is seen at once.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{self, BufRead, BufReader, Read},
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use flate2::read::MultiGzDecoder;
use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{
    Descriptor, Digest as OciDigest, ImageConfiguration, ImageIndex, ImageIndexBuilder,
    ImageManifest, MediaType,
};
use sha2::{Digest, Sha256};

use crate::{
    layer::{self, LayerError},
    reference::{Reference, ReferenceError},
};

/// Where `cargo xtask setup` writes the busybox image archive, relative to
/// `$CARGO_HOME` (xtask's `image::ARCHIVE_UNDER_CARGO_HOME`, kept equal by
/// this crate's integration test).
pub const BUSYBOX_ARCHIVE: &str = "shoal/images/busybox.oci.tar";

/// The reference the busybox archive provides (also tagged with BusyBox's
/// version, e.g. `busybox:1.35`).
pub const BUSYBOX_REFERENCE: &str = "docker.io/library/busybox:latest";

/// The busybox archive's path: `$CARGO_HOME/shoal/images/busybox.oci.tar`,
/// with `$HOME/.cargo` when `CARGO_HOME` is unset. None if neither is set.
pub fn busybox_archive() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    Some(cargo_home.join(BUSYBOX_ARCHIVE))
}

/// The annotation naming a manifest in an OCI index.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation with the full image name (`ctr export` writes it).
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// index.json and manifests are small; refuse absurd ones.
const MAX_JSON: u64 = 16 << 20;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image of that name is in the store.
    #[error(
        "image {reference:?} is not in the local image store at {store}: no registry is reachable; import it with `shoal image import <oci-archive>`"
    )]
    NotFound {
        /// The reference as the user wrote it.
        reference: String,
        /// The store's directory.
        store: PathBuf,
    },
    /// The reference is not a valid image name.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Reading or writing the store or an archive failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The archive is not a usable OCI image layout.
    #[error("{archive} is not a usable OCI image-layout archive: {reason}")]
    Archive {
        /// The archive being imported.
        archive: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A blob in the store does not parse or is missing.
    #[error("image store {store}: {reason}; import the image again")]
    Corrupt {
        /// The store's directory.
        store: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A layer could not be unpacked.
    #[error("unpacking image {reference}: {source}")]
    Unpack {
        /// The image's reference.
        reference: String,
        /// Why.
        source: LayerError,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { what, path, source }
}

/// A local OCI image store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    staging: AtomicU64,
}

/// A named image in the store, as [`ImageStore::list`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Fully qualified reference (`docker.io/library/busybox:latest`), or
    /// the manifest digest for an image imported without a name.
    pub reference: String,
    /// The manifest digest, `sha256:<hex>`.
    pub digest: String,
    /// The image id: the config digest, `sha256:<hex>`.
    pub id: String,
    /// The compressed size of its layers, in bytes.
    pub size: u64,
}

/// The parts of an image's config a container needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`, if set.
    pub working_dir: Option<String>,
    /// `User` (`name`, `uid`, `name:group` or `uid:gid`), if set.
    pub user: Option<String>,
    /// `StopSignal` (e.g. `SIGQUIT`), if set.
    pub stop_signal: Option<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
}

/// An image resolved from the store.
#[derive(Clone, Debug)]
pub struct Image {
    store: ImageStore,
    reference: String,
    digest: String,
    id: String,
    layers: Vec<(String, String)>,
    size: u64,
    config: ImageConfig,
}

/// One manifest entry of the store's index.
struct Entry {
    name: Option<String>,
    digest: String,
    size: u64,
}

impl ImageStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<ImageStore, ImageError> {
        for sub in ["blobs/sha256", "rootfs", "tmp"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        // Unpacked images may hold setuid binaries: keep other host users out.
        for sub in ["rootfs", "tmp"] {
            let d = dir.join(sub);
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700))
                .map_err(io_err("setting permissions of", &d))?;
        }
        let layout = dir.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        // Leftovers of an import or unpack that a crash interrupted.
        if let Ok(entries) = fs::read_dir(dir.join("tmp")) {
            for e in entries.flatten() {
                let _ = remove_all(&e.path());
            }
        }
        let store = ImageStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                staging: AtomicU64::new(0),
            }),
        };
        if !store.index_path().exists() {
            store.write_index(&[])?;
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Imports an OCI image-layout archive (a tar, optionally gzipped, as
    /// `skopeo copy ... oci-archive:` writes). Every blob is checked against
    /// its digest. Manifests are named by their `io.containerd.image.name`
    /// or `org.opencontainers.image.ref.name` annotation, normalised like
    /// Docker (`busybox` is `docker.io/library/busybox:latest`); a name
    /// already in the store is moved to the imported image. Returns the
    /// imported images.
    pub fn import(&self, archive: &Path) -> Result<Vec<ImageRef>, ImageError> {
        let bad = |reason: String| ImageError::Archive {
            archive: archive.to_path_buf(),
            reason,
        };
        let file = fs::File::open(archive).map_err(io_err("opening", archive))?;
        let mut buffered = BufReader::new(file);
        let gzipped = buffered
            .fill_buf()
            .map_err(io_err("reading", archive))?
            .starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn Read> = if gzipped {
            Box::new(MultiGzDecoder::new(buffered))
        } else {
            Box::new(buffered)
        };
        let mut tar = tar::Archive::new(reader);
        let mut index_json = None;
        let entries = tar.entries().map_err(io_err("reading", archive))?;
        for entry in entries {
            let mut entry = entry.map_err(io_err("reading", archive))?;
            let path = entry.path().map_err(io_err("reading", archive))?;
            let parts: Vec<String> = path
                .components()
                .filter_map(|c| match c {
                    Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect();
            match parts.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["index.json"] => {
                    let mut data = Vec::new();
                    (&mut entry)
                        .take(MAX_JSON)
                        .read_to_end(&mut data)
                        .map_err(io_err("reading index.json of", archive))?;
                    index_json = Some(data);
                }
                ["oci-layout"] => {
                    let mut data = Vec::new();
                    (&mut entry)
                        .take(MAX_JSON)
                        .read_to_end(&mut data)
                        .map_err(io_err("reading oci-layout of", archive))?;
                    let version = serde_json::from_slice::<serde_json::Value>(&data)
                        .ok()
                        .and_then(|v| v["imageLayoutVersion"].as_str().map(str::to_owned));
                    if version.as_deref() != Some("1.0.0") {
                        return Err(bad(format!(
                            "oci-layout says imageLayoutVersion {version:?}, want \"1.0.0\""
                        )));
                    }
                }
                ["blobs", "sha256", hex] if entry.header().entry_type().is_file() => {
                    if !is_sha256_hex(hex) {
                        return Err(bad(format!(
                            "blob name blobs/sha256/{hex} is not a sha256 digest"
                        )));
                    }
                    self.store_blob(&mut entry, hex).map_err(|e| match e {
                        ImageError::Corrupt { reason, .. } => bad(reason),
                        other => other,
                    })?;
                }
                ["blobs", alg, _] if entry.header().entry_type().is_file() => {
                    tracing::warn!(archive = %archive.display(), alg, "skipping a blob with an unsupported digest algorithm");
                }
                _ => {}
            }
        }
        let index_json = index_json
            .ok_or_else(|| bad("it has no index.json (is it a docker save archive?)".into()))?;
        let index: ImageIndex = serde_json::from_slice(&index_json)
            .map_err(|e| bad(format!("index.json does not parse: {e}")))?;

        let mut imported = Vec::new();
        let mut names = Vec::new();
        for desc in index.manifests() {
            let name = desc
                .annotations()
                .as_ref()
                .and_then(|a| a.get(CONTAINERD_NAME).or_else(|| a.get(REF_NAME)).cloned());
            let name = match name {
                Some(n) => Some(
                    Reference::parse(&n)
                        .map_err(|e| bad(format!("a manifest's name annotation: {e}")))?
                        .to_string(),
                ),
                None => None,
            };
            let manifest_desc = self
                .platform_manifest(desc)
                .map_err(|e| bad(e.to_string()))?;
            let digest = manifest_desc.digest().to_string();
            let image_ref = self
                .image_ref(name.as_deref(), &digest)
                .map_err(|e| bad(e.to_string()))?;
            names.push(Entry {
                name,
                digest,
                size: manifest_desc.size(),
            });
            imported.push(image_ref);
        }
        if imported.is_empty() {
            return Err(bad("its index.json lists no manifests".into()));
        }
        self.update_index(|entries| {
            for new in names {
                entries.retain(|e| match (&e.name, &new.name) {
                    (Some(old), Some(name)) => old != name,
                    (None, None) => e.digest != new.digest,
                    _ => true,
                });
                entries.push(new);
            }
        })?;
        Ok(imported)
    }

    /// Imports `archive` unless `reference` already resolves: how the agent
    /// seeds its store with the busybox image at start. Returns what was
    /// imported (nothing if the image was there).
    pub fn import_if_missing(
        &self,
        reference: &str,
        archive: &Path,
    ) -> Result<Vec<ImageRef>, ImageError> {
        match self.resolve(reference) {
            Ok(_) => Ok(Vec::new()),
            Err(ImageError::NotFound { .. }) => {
                let imported = self.import(archive)?;
                self.resolve(reference).map_err(|_| ImageError::Archive {
                    archive: archive.to_path_buf(),
                    reason: format!("it does not contain {reference:?}"),
                })?;
                Ok(imported)
            }
            Err(e) => Err(e),
        }
    }

    /// The named images in the store.
    pub fn list(&self) -> Result<Vec<ImageRef>, ImageError> {
        self.read_index()?
            .iter()
            .map(|e| self.image_ref(e.name.as_deref(), &e.digest))
            .collect()
    }

    /// Finds an image by reference (`busybox`, `busybox:1.35`,
    /// `docker.io/library/busybox:latest`, `busybox@sha256:<hex>`) or by
    /// manifest digest or image id (`sha256:<hex>`). A missing image is
    /// [`ImageError::NotFound`], naming the reference as written.
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let entries = self.read_index()?;
        let not_found = || ImageError::NotFound {
            reference: reference.to_owned(),
            store: self.dir().to_path_buf(),
        };
        if let Some(hex) = reference.strip_prefix("sha256:")
            && is_sha256_hex(hex)
        {
            for e in &entries {
                if e.digest == reference {
                    return self.load(e.name.as_deref(), &e.digest);
                }
                let image = self.load(e.name.as_deref(), &e.digest)?;
                if image.id == reference {
                    return Ok(image);
                }
            }
            return Err(not_found());
        }
        let parsed = Reference::parse(reference)?;
        let entry = match parsed.digest() {
            Some(digest) => entries.iter().find(|e| {
                e.digest == digest
                    && e.name.as_deref().is_none_or(|n| {
                        Reference::parse(n).is_ok_and(|r| r.repository() == parsed.repository())
                    })
            }),
            None => {
                let name = parsed.to_string();
                entries.iter().find(|e| e.name.as_deref() == Some(&name))
            }
        };
        match entry {
            Some(e) => self.load(Some(&parsed.to_string()), &e.digest),
            None => Err(not_found()),
        }
    }

    /// Gives the image `source` resolves to the name `target` too.
    pub fn tag(&self, source: &str, target: &str) -> Result<ImageRef, ImageError> {
        let image = self.resolve(source)?;
        let name = Reference::parse(target)?.to_string();
        let size = fs::metadata(self.blob_path(&image.digest))
            .map_err(io_err("reading", &self.blob_path(&image.digest)))?
            .len();
        let digest = image.digest.clone();
        self.update_index(|entries| {
            entries.retain(|e| e.name.as_deref() != Some(&name));
            entries.push(Entry {
                name: Some(name.clone()),
                digest,
                size,
            });
        })?;
        self.image_ref(Some(&name), &image.digest)
    }

    /// Removes a name from the store (blobs and unpacked layers stay until
    /// collected).
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let name = Reference::parse(reference)?.to_string();
        let mut found = false;
        self.update_index(|entries| {
            let before = entries.len();
            entries.retain(|e| e.name.as_deref() != Some(&name));
            found = entries.len() != before;
        })?;
        if !found {
            return Err(ImageError::NotFound {
                reference: reference.to_owned(),
                store: self.dir().to_path_buf(),
            });
        }
        Ok(())
    }

    fn index_path(&self) -> PathBuf {
        self.dir().join("index.json")
    }

    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir().join("blobs/sha256").join(hex)
    }

    pub(crate) fn staging_path(&self, what: &str) -> PathBuf {
        let n = self.inner.staging.fetch_add(1, Ordering::Relaxed);
        self.dir()
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    fn corrupt(&self, reason: String) -> ImageError {
        ImageError::Corrupt {
            store: self.dir().to_path_buf(),
            reason,
        }
    }

    /// Copies a blob into the store, checking its digest on the way.
    fn store_blob(&self, reader: &mut dyn Read, hex: &str) -> Result<(), ImageError> {
        let target = self.dir().join("blobs/sha256").join(hex);
        let staging = self.staging_path("blob");
        let result = (|| {
            let mut out = fs::File::create(&staging).map_err(io_err("creating", &staging))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = reader
                    .read(&mut buf)
                    .map_err(io_err("reading blob", &target))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                io::Write::write_all(&mut out, &buf[..n]).map_err(io_err("writing", &staging))?;
            }
            let found = hex_digest(hasher);
            if found != hex {
                return Err(self.corrupt(format!(
                    "blob sha256:{hex} has content with digest sha256:{found}"
                )));
            }
            out.sync_all().map_err(io_err("syncing", &staging))?;
            fs::rename(&staging, &target).map_err(io_err("storing", &target))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&staging);
        }
        result
    }

    /// Moves a downloaded blob at `staging` into the store after checking
    /// its content against `digest` (`sha256:<hex>`).
    pub(crate) fn adopt_blob(&self, staging: &Path, digest: &str) -> Result<(), ImageError> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        if !is_sha256_hex(hex) {
            let _ = fs::remove_file(staging);
            return Err(self.corrupt(format!("{digest:?} is not a sha256 digest")));
        }
        let result = (|| {
            let mut file = fs::File::open(staging).map_err(io_err("opening", staging))?;
            let mut hasher = Sha256::new();
            io::copy(&mut file, &mut hasher).map_err(io_err("reading", staging))?;
            let found = hex_digest(hasher);
            if found != hex {
                return Err(self.corrupt(format!(
                    "blob {digest} has content with digest sha256:{found}"
                )));
            }
            fs::rename(staging, self.blob_path(digest))
                .map_err(io_err("storing", &self.blob_path(digest)))
        })();
        if result.is_err() {
            let _ = fs::remove_file(staging);
        }
        result
    }

    /// Names the manifest `digest` (already in the store) `name`, replacing
    /// whatever the name pointed at.
    pub(crate) fn name_manifest(
        &self,
        name: &str,
        digest: &str,
        size: u64,
    ) -> Result<ImageRef, ImageError> {
        let image_ref = self.image_ref(Some(name), digest)?;
        self.update_index(|entries| {
            entries.retain(|e| e.name.as_deref() != Some(name));
            entries.push(Entry {
                name: Some(name.to_owned()),
                digest: digest.to_owned(),
                size,
            });
        })?;
        Ok(image_ref)
    }

    fn read_blob(&self, digest: &str, what: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest);
        let file = fs::File::open(&path)
            .map_err(|e| self.corrupt(format!("{what} {digest} is missing ({e})")))?;
        let mut data = Vec::new();
        file.take(MAX_JSON)
            .read_to_end(&mut data)
            .map_err(io_err("reading", &path))?;
        Ok(data)
    }

    /// The manifest for this machine's platform behind `desc`, following
    /// image indexes (multi-platform images).
    fn platform_manifest(&self, desc: &Descriptor) -> Result<Descriptor, ImageError> {
        let mut desc = desc.clone();
        for _ in 0..4 {
            let media = desc.media_type().to_string();
            if !(desc.media_type() == &MediaType::ImageIndex || media == DOCKER_MANIFEST_LIST) {
                return Ok(desc);
            }
            let data = self.read_blob(desc.digest().as_ref(), "image index")?;
            let index: ImageIndex = serde_json::from_slice(&data).map_err(|e| {
                self.corrupt(format!("image index {} does not parse: {e}", desc.digest()))
            })?;
            let arch = oci_arch();
            let pick = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == arch
                    })
                })
                .or_else(|| index.manifests().iter().find(|m| m.platform().is_none()))
                .ok_or_else(|| {
                    self.corrupt(format!(
                        "image index {} has no manifest for linux/{arch}",
                        desc.digest()
                    ))
                })?;
            desc = pick.clone();
        }
        Err(self.corrupt(format!("image indexes nest too deep at {}", desc.digest())))
    }

    fn manifest(&self, digest: &str) -> Result<ImageManifest, ImageError> {
        let data = self.read_blob(digest, "manifest")?;
        let manifest: ImageManifest = serde_json::from_slice(&data)
            .map_err(|e| self.corrupt(format!("manifest {digest} does not parse: {e}")))?;
        if let Some(m) = manifest.media_type() {
            let m = m.to_string();
            if m != MediaType::ImageManifest.to_string() && m != DOCKER_MANIFEST {
                return Err(self.corrupt(format!("{digest} is a {m}, not an image manifest")));
            }
        }
        Ok(manifest)
    }

    fn image_ref(&self, name: Option<&str>, digest: &str) -> Result<ImageRef, ImageError> {
        let image = self.load(name, digest)?;
        Ok(ImageRef {
            reference: image.reference,
            digest: image.digest,
            id: image.id,
            size: image.size,
        })
    }

    fn load(&self, name: Option<&str>, digest: &str) -> Result<Image, ImageError> {
        let manifest = self.manifest(digest)?;
        let config_digest = manifest.config().digest().to_string();
        let data = self.read_blob(&config_digest, "image config")?;
        let config: ImageConfiguration = serde_json::from_slice(&data).map_err(|e| {
            self.corrupt(format!("image config {config_digest} does not parse: {e}"))
        })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(self.corrupt(format!(
                "image config {config_digest} lists {} layers, its manifest {digest} {}",
                diff_ids.len(),
                manifest.layers().len()
            )));
        }
        let mut layers = Vec::new();
        for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let d = layer.digest().to_string();
            if !self.blob_path(&d).exists() {
                return Err(self.corrupt(format!("layer {d} of manifest {digest} is missing")));
            }
            layers.push((d, diff_id.clone()));
        }
        let c = config.config().clone().unwrap_or_default();
        Ok(Image {
            store: self.clone(),
            reference: name.unwrap_or(digest).to_owned(),
            digest: digest.to_owned(),
            id: config_digest,
            size: manifest.layers().iter().map(|l| l.size()).sum(),
            layers,
            config: ImageConfig {
                entrypoint: c.entrypoint().clone().unwrap_or_default(),
                cmd: c.cmd().clone().unwrap_or_default(),
                env: c.env().clone().unwrap_or_default(),
                working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
                user: c.user().clone().filter(|u| !u.is_empty()),
                stop_signal: c.stop_signal().clone().filter(|s| !s.is_empty()),
                labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
            },
        })
    }

    fn read_index(&self) -> Result<Vec<Entry>, ImageError> {
        let path = self.index_path();
        let data = fs::read(&path).map_err(io_err("reading", &path))?;
        let index: ImageIndex = serde_json::from_slice(&data)
            .map_err(|e| self.corrupt(format!("index.json does not parse: {e}")))?;
        Ok(index
            .manifests()
            .iter()
            .map(|d| Entry {
                name: d
                    .annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME).cloned()),
                digest: d.digest().to_string(),
                size: d.size(),
            })
            .collect())
    }

    fn write_index(&self, entries: &[Entry]) -> Result<(), ImageError> {
        let mut manifests = Vec::new();
        for e in entries {
            let digest = OciDigest::from_str(&e.digest)
                .map_err(|err| self.corrupt(format!("digest {:?}: {err}", e.digest)))?;
            let mut d = Descriptor::new(MediaType::ImageManifest, e.size, digest);
            if let Some(name) = &e.name {
                d.set_annotations(Some(HashMap::from([(REF_NAME.to_owned(), name.clone())])));
            }
            manifests.push(d);
        }
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(manifests)
            .build()
            .map_err(|e| self.corrupt(format!("building index.json: {e}")))?;
        let data = serde_json::to_vec_pretty(&index)
            .map_err(|e| self.corrupt(format!("serialising index.json: {e}")))?;
        write_atomic(&self.index_path(), &data)
    }

    /// Read-modify-write of index.json under the store's lock.
    fn update_index(&self, f: impl FnOnce(&mut Vec<Entry>)) -> Result<(), ImageError> {
        let _lock = self.lock(&self.dir().join("lock"))?;
        let mut entries = self.read_index()?;
        f(&mut entries);
        self.write_index(&entries)
    }

    fn lock(&self, path: &Path) -> Result<Flock<fs::File>, ImageError> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err("opening the lock", path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err("locking", path)(errno.into()))
    }
}

impl Image {
    /// The reference it was resolved by, fully qualified.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The manifest digest, `sha256:<hex>` (Kubernetes' `imageID` uses it).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The image id: the config digest, `sha256:<hex>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The compressed size of its layers, in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The config's Entrypoint, Cmd, Env, WorkingDir, User and StopSignal.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// The image's root filesystem, unpacked on first use (once per image
    /// id, checking every layer's digest and diff_id) and shared by all
    /// containers: use it only as an overlay lower directory and never write
    /// to it.
    pub fn rootfs(&self) -> Result<PathBuf, ImageError> {
        let store = &self.store;
        let hex = self.id.strip_prefix("sha256:").unwrap_or(&self.id);
        let target = store.dir().join("rootfs").join(hex);
        if target.is_dir() {
            return Ok(target);
        }
        let _lock = store.lock(&store.dir().join("rootfs").join(format!("{hex}.lock")))?;
        if target.is_dir() {
            return Ok(target);
        }
        let staging = store.staging_path("rootfs");
        fs::create_dir(&staging).map_err(io_err("creating", &staging))?;
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))
            .map_err(io_err("setting permissions of", &staging))?;
        let started = std::time::Instant::now();
        let result = self.layers.iter().try_for_each(|(digest, diff_id)| {
            layer::unpack(&store.blob_path(digest), digest, diff_id, &staging).map_err(|source| {
                ImageError::Unpack {
                    reference: self.reference.clone(),
                    source,
                }
            })
        });
        if let Err(e) = result {
            let _ = remove_all(&staging);
            return Err(e);
        }
        fs::rename(&staging, &target).map_err(io_err("moving the unpacked image to", &target))?;
        tracing::debug!(image = %self.reference, took_ms = started.elapsed().as_millis() as u64, "unpacked image");
        Ok(target)
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let partial = path.with_extension("partial");
    fs::write(&partial, data).map_err(io_err("writing", &partial))?;
    fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing", &partial))?;
    fs::rename(&partial, path).map_err(io_err("replacing", path))
}

fn remove_all(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_digest(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This machine's architecture in OCI's words.
pub(crate) fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
