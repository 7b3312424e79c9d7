//! Pulling images from an OCI distribution registry into the local store,
//! and the kubelet's `imagePullPolicy` rules around it.
//!
//! Pulled blobs land in the same `blobs/sha256/` and `index.json` that
//! `shoal image import` fills, so a pulled image resolves like an imported
//! one. The agent only talks to registries it was told about (and loopback
//! ones): on machines without a reachable registry, the local store stays
//! the source of every other image.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use oci_client::{
    Client,
    client::{ClientConfig, ClientProtocol},
    errors::OciDistributionError,
    manifest::{
        IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
        OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
    },
    secrets::RegistryAuth,
};
use oci_spec::image::{ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};

use crate::{
    image::{Image, ImageError, ImageRef, ImageStore, oci_arch},
    reference::{Reference, ReferenceError},
};

/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a registry may stay silent mid-response.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Image indexes nest at most this deep.
const MAX_INDEX_DEPTH: usize = 4;
/// Manifests are small; refuse absurd ones.
const MAX_MANIFEST: usize = 4 << 20;

/// Which registries the agent pulls from, and how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registries (`host` or `host:port`) reached over plain HTTP
    /// (`--insecure-registry`). Loopback registries always are.
    pub insecure: Vec<String>,
    /// Registries reached over HTTPS (`--registry`); `*` allows every
    /// registry.
    pub secure: Vec<String>,
}

impl RegistryConfig {
    /// Whether the agent may pull from `registry`, and over plain HTTP
    /// (`Some(true)`) or HTTPS (`Some(false)`).
    pub fn plain_http(&self, registry: &str) -> Option<bool> {
        if self.insecure.iter().any(|r| r == registry) || is_loopback(registry) {
            Some(true)
        } else if self.secure.iter().any(|r| r == registry || r == "*") {
            Some(false)
        } else {
            None
        }
    }
}

/// `localhost`, `127.0.0.0/8` or `[::1]`, with or without a port.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.split(':').next().unwrap_or(registry)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Credentials for a registry (from an `imagePullSecrets` Secret).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Kubernetes' `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Ask the registry every time a container starts.
    Always,
    /// Pull only when the store lacks the image.
    IfNotPresent,
    /// Never pull: a missing image is an error.
    Never,
}

impl PullPolicy {
    /// The policy a container asks for, with the API's default when it is
    /// unset: `Always` for `:latest` or no tag, `IfNotPresent` otherwise.
    pub fn of(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => match Reference::parse(image) {
                Ok(r) if r.digest().is_none() && r.tag() == Some("latest") => PullPolicy::Always,
                _ => PullPolicy::IfNotPresent,
            },
        }
    }
}

/// Why an image could not be pulled.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// `imagePullPolicy: Never` and the image is not in the store.
    #[error("Container image {reference:?} is not present with pull policy of Never")]
    NeverPull {
        /// The image as the pod names it.
        reference: String,
    },
    /// The image is missing and its registry is not one the agent pulls
    /// from.
    #[error(
        "image {reference:?} is not in the local image store and registry {registry} is not one this agent pulls from (start it with --registry {registry} or --insecure-registry {registry}, or import the image with `shoal image import <oci-archive>`)"
    )]
    RegistryNotAllowed {
        /// The image as the pod names it.
        reference: String,
        /// The image's registry.
        registry: String,
    },
    /// The registry refused or failed the pull.
    #[error("pulling image {reference:?} from {registry}: {message}")]
    Registry {
        /// The image as the pod names it.
        reference: String,
        /// The image's registry.
        registry: String,
        /// The registry's error, e.g. `manifest unknown`.
        message: String,
    },
    /// The reference is not a valid image name.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Storing the pulled image failed.
    #[error(transparent)]
    Store(#[from] ImageError),
}

impl PullError {
    /// The container's waiting reason the kubelet reports for it.
    pub fn reason(&self) -> &'static str {
        match self {
            PullError::NeverPull { .. } => "ErrImageNeverPull",
            PullError::Reference(_) => "InvalidImageName",
            _ => "ErrImagePull",
        }
    }
}

/// The registry's own words for a failed request: `manifest unknown`
/// rather than the client's wrapping of it.
fn registry_message(e: &OciDistributionError) -> String {
    match e {
        OciDistributionError::RegistryError { envelope, url } => {
            let errors: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| {
                    if e.message.is_empty() {
                        format!("{:?}", e.code)
                    } else {
                        e.message.clone()
                    }
                })
                .collect();
            format!("{} ({url})", errors.join("; "))
        }
        OciDistributionError::RequestError(r) => {
            // reqwest's Display hides the cause (connection refused, TLS).
            let mut message = r.to_string();
            let mut source = std::error::Error::source(r);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            message
        }
        other => other.to_string(),
    }
}

impl ImageStore {
    /// The image `reference` names, pulled first as `policy` says:
    /// `Never` only looks in the store, `IfNotPresent` pulls a missing
    /// image, `Always` asks the registry every time (fetching only the
    /// blobs the store lacks). Images of registries the agent does not pull
    /// from (see [`RegistryConfig`]) come from the store alone.
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
        registries: &RegistryConfig,
        credentials: Option<&Credentials>,
    ) -> Result<Image, PullError> {
        let local = match self.resolve(reference) {
            Ok(image) => Some(image),
            Err(ImageError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let parsed = Reference::parse(reference)?;
        let reachable = registries.plain_http(parsed.registry()).is_some();
        match (policy, local) {
            (PullPolicy::Never, Some(image)) | (PullPolicy::IfNotPresent, Some(image)) => Ok(image),
            (PullPolicy::Always, Some(image)) if !reachable => Ok(image),
            (PullPolicy::Never, None) => Err(PullError::NeverPull {
                reference: reference.to_owned(),
            }),
            _ => {
                self.pull(reference, registries, credentials).await?;
                Ok(self.resolve(reference)?)
            }
        }
    }

    /// Pulls `reference` from its registry into the store: the manifest
    /// for linux on this machine's architecture (following image indexes),
    /// its config and layers, each checked against its digest. The image
    /// then resolves by `reference` like an imported one.
    pub async fn pull(
        &self,
        reference: &str,
        registries: &RegistryConfig,
        credentials: Option<&Credentials>,
    ) -> Result<ImageRef, PullError> {
        let parsed = Reference::parse(reference)?;
        let registry = parsed.registry().to_owned();
        let fail = |message: String| PullError::Registry {
            reference: reference.to_owned(),
            registry: registry.clone(),
            message,
        };
        let plain_http =
            registries
                .plain_http(&registry)
                .ok_or_else(|| PullError::RegistryNotAllowed {
                    reference: reference.to_owned(),
                    registry: registry.clone(),
                })?;
        // reqwest is built without a provider of its own: use ring, as the
        // rest of the workspace does (an error means one is installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(ClientConfig {
            protocol: if plain_http {
                ClientProtocol::HttpsExcept(vec![registry.clone()])
            } else {
                ClientProtocol::Https
            },
            // Indexes are resolved here, against the store's own platform rule.
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..ClientConfig::default()
        });
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let remote: oci_client::Reference = match (parsed.tag(), parsed.digest()) {
            (_, Some(digest)) => oci_client::Reference::with_digest(
                registry.clone(),
                parsed.path().to_owned(),
                digest.to_owned(),
            ),
            (tag, None) => oci_client::Reference::with_tag(
                registry.clone(),
                parsed.path().to_owned(),
                tag.unwrap_or("latest").to_owned(),
            ),
        };
        let accepted = [
            OCI_IMAGE_MEDIA_TYPE,
            IMAGE_MANIFEST_MEDIA_TYPE,
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        ];
        let mut wanted = parsed.digest().map(str::to_owned);
        let mut target = remote.clone();
        let mut depth = 0;
        let (body, digest, manifest) = loop {
            let (body, digest) = client
                .pull_manifest_raw(&target, &auth, &accepted)
                .await
                .map_err(|e| fail(registry_message(&e)))?;
            if body.len() > MAX_MANIFEST {
                return Err(fail(format!(
                    "manifest {digest} is {} bytes, over the {MAX_MANIFEST} allowed",
                    body.len()
                )));
            }
            let found = format!("sha256:{}", hex(Sha256::digest(&body).as_slice()));
            if found != digest || wanted.as_ref().is_some_and(|w| *w != found) {
                return Err(fail(format!(
                    "manifest {} has content with digest {found}",
                    wanted.as_deref().unwrap_or(&digest)
                )));
            }
            let value: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| fail(format!("manifest {digest} does not parse: {e}")))?;
            let media = value["mediaType"].as_str().unwrap_or_default();
            let is_index = media == OCI_IMAGE_INDEX_MEDIA_TYPE
                || media == IMAGE_MANIFEST_LIST_MEDIA_TYPE
                || (media.is_empty() && value.get("manifests").is_some());
            if !is_index {
                let manifest: ImageManifest = serde_json::from_slice(&body)
                    .map_err(|e| fail(format!("manifest {digest} does not parse: {e}")))?;
                break (body, digest, manifest);
            }
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(fail(format!("image indexes nest too deep at {digest}")));
            }
            let index: ImageIndex = serde_json::from_slice(&body)
                .map_err(|e| fail(format!("image index {digest} does not parse: {e}")))?;
            let arch = oci_arch();
            let pick = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == arch
                    })
                })
                .ok_or_else(|| {
                    fail(format!(
                        "image index {digest} has no manifest for linux/{arch}"
                    ))
                })?;
            let next = pick.digest().to_string();
            target = oci_client::Reference::with_digest(
                registry.clone(),
                parsed.path().to_owned(),
                next.clone(),
            );
            wanted = Some(next);
        };

        for desc in std::iter::once(manifest.config()).chain(manifest.layers()) {
            let blob = desc.digest().to_string();
            if self.blob_path(&blob).exists() {
                continue;
            }
            let staging = self.staging_path("pull");
            let file = tokio::fs::File::create(&staging).await.map_err(|e| {
                PullError::Store(ImageError::Io {
                    what: "creating",
                    path: staging.clone(),
                    source: e,
                })
            })?;
            let remote_desc = OciDescriptor {
                media_type: desc.media_type().to_string(),
                digest: blob.clone(),
                size: i64::try_from(desc.size()).unwrap_or(i64::MAX),
                ..OciDescriptor::default()
            };
            if let Err(e) = client.pull_blob(&remote, &remote_desc, file).await {
                let _ = std::fs::remove_file(&staging);
                return Err(fail(format!("blob {blob}: {}", registry_message(&e))));
            }
            self.adopt_in_background(staging, blob).await?;
        }
        let staging = self.staging_path("manifest");
        std::fs::write(&staging, &body).map_err(|e| ImageError::Io {
            what: "writing",
            path: staging.clone(),
            source: e,
        })?;
        self.adopt_in_background(staging, digest.clone()).await?;
        let name = parsed.to_string();
        let size = body.len() as u64;
        let store = self.clone();
        let pulled = tokio::task::spawn_blocking(move || store.name_manifest(&name, &digest, size))
            .await
            .map_err(|e| fail(format!("storing the image: {e}")))??;
        tracing::info!(image = %reference, digest = %pulled.digest, "pulled image");
        Ok(pulled)
    }

    async fn adopt_in_background(
        &self,
        staging: PathBuf,
        digest: String,
    ) -> Result<(), ImageError> {
        let store = self.clone();
        let path = staging.clone();
        tokio::task::spawn_blocking(move || store.adopt_blob(&path, &digest))
            .await
            .map_err(|e| ImageError::Io {
                what: "storing",
                path: staging,
                source: std::io::Error::other(e),
            })?
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
