//! Registry pulls against a real registry: Debian's `docker-registry` (the
//! distribution registry v2, installed by `cargo xtask setup`) on a free
//! loopback port, filled with the busybox image by oci-client's push.
//! Uses no network beyond loopback.

#[path = "../../../xtask/src/image.rs"]
#[expect(
    dead_code,
    reason = "only the image builder of xtask's module is used here"
)]
mod busybox_image;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use oci_client::{
    Client,
    client::{ClientConfig, ClientProtocol},
    secrets::RegistryAuth,
};
use oci_spec::image::ImageManifest;
use shoal_runtime::{ImageStore, PullError, PullPolicy, RegistryConfig};

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// A `docker-registry serve` on loopback, killed on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    async fn start() -> Result<Registry> {
        ensure!(
            Path::new(REGISTRY_BINARY).exists(),
            "{REGISTRY_BINARY} is missing: run `cargo xtask setup` (it installs Debian's docker-registry)"
        );
        let dir = tempfile::tempdir()?;
        let addr = shoal_e2e::ports::free_loopback_addr()?.to_string();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )?;
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry")?;
        let registry = Registry {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&registry.addr)
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not listen on {} in 30 s",
                    registry.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(registry)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes the busybox image as `<registry>/test/busybox:plain` (a
/// manifest) and `:1.0` (an image index naming it for linux/amd64), blob
/// by blob so its digests stay as built. Returns the manifest digest.
async fn push_busybox(registry: &str, source: &ImageStore) -> Result<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let image = source.resolve("busybox")?;
    let blob = |d: &str| {
        std::fs::read(
            source
                .dir()
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
    };
    let manifest_bytes = blob(image.digest())?;
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)?;
    let plain: oci_client::Reference = format!("{registry}/test/busybox:plain").parse()?;
    client
        .auth(
            &plain,
            &RegistryAuth::Anonymous,
            oci_client::RegistryOperation::Push,
        )
        .await?;
    for d in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let digest = d.digest().to_string();
        client
            .push_blob(&plain, blob(&digest)?, &digest)
            .await
            .with_context(|| format!("pushing blob {digest}"))?;
    }
    client
        .push_manifest_raw(
            &plain,
            manifest_bytes.clone(),
            http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        )
        .await
        .context("pushing the manifest")?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": image.digest(),
            "size": manifest_bytes.len(),
            "platform": {"os": "linux", "architecture": "amd64"},
        }],
    });
    let tagged: oci_client::Reference = format!("{registry}/test/busybox:1.0").parse()?;
    client
        .push_manifest_raw(
            &tagged,
            serde_json::to_vec(&index)?,
            http::HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
        )
        .await
        .context("pushing the image index")?;
    Ok(image.digest().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_loopback_registry_with_kubernetes_pull_policies() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let built = busybox_image::build_busybox(Path::new(busybox_image::BUSYBOX_BINARY))
        .context("building the busybox image (run `cargo xtask setup`)")?;
    let archive = dir.path().join("busybox.oci.tar");
    std::fs::write(&archive, &built.archive)?;
    let source = ImageStore::open(&dir.path().join("source"))?;
    source.import(&archive)?;

    let registry = Registry::start().await?;
    let digest = push_busybox(&registry.addr, &source).await?;

    // A fresh agent store: the tag is a linux/amd64 index; the store keeps
    // the platform manifest under the name and runs it.
    let store = ImageStore::open(&dir.path().join("agent"))?;
    let none = RegistryConfig::default();
    let name = format!("{}/test/busybox:1.0", registry.addr);
    let image = store
        .ensure(&name, PullPolicy::IfNotPresent, &none, None)
        .await?;
    ensure!(
        image.digest() == digest,
        "pulled {} for {name}, pushed {digest}",
        image.digest()
    );
    ensure!(image.config().cmd == ["sh"], "config {:?}", image.config());
    let listed = store.list()?;
    ensure!(
        listed
            .iter()
            .any(|i| i.reference == name && i.digest == digest),
        "`shoal image ls` would show {listed:?}"
    );
    let rootfs = image.rootfs()?;
    let out = Command::new(rootfs.join("bin/busybox"))
        .args(["echo", "from the registry"])
        .output()?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "from the registry",
        "the pulled busybox printed {out:?}"
    );

    // A plain manifest tag, and Always re-checking an image already here.
    let plain = format!("{}/test/busybox:plain", registry.addr);
    let image = store
        .ensure(&plain, PullPolicy::Always, &none, None)
        .await?;
    ensure!(image.digest() == digest);
    let again = store
        .ensure(&plain, PullPolicy::Always, &none, None)
        .await?;
    ensure!(again.id() == image.id());

    // A tag the registry lacks: ErrImagePull naming the image and the
    // registry's `manifest unknown`.
    let missing = format!("{}/test/busybox:9.9", registry.addr);
    match store
        .ensure(&missing, PullPolicy::IfNotPresent, &none, None)
        .await
    {
        Err(e @ PullError::Registry { .. }) => {
            let message = e.to_string();
            ensure!(e.reason() == "ErrImagePull");
            ensure!(
                message.contains(&missing) && message.contains("manifest unknown"),
                "error {message:?}"
            );
        }
        other => bail!("pulling a missing tag gave {other:?}"),
    }

    // Never: a present image is used, a missing one is ErrImageNeverPull
    // without asking the registry.
    store.ensure(&name, PullPolicy::Never, &none, None).await?;
    match store.ensure(&missing, PullPolicy::Never, &none, None).await {
        Err(e @ PullError::NeverPull { .. }) => {
            ensure!(e.reason() == "ErrImageNeverPull");
            ensure!(
                e.to_string()
                    == format!(
                        "Container image \"{missing}\" is not present with pull policy of Never"
                    ),
                "error {e}"
            );
        }
        other => bail!("pull policy Never on a missing image gave {other:?}"),
    }

    // A registry the agent was not told about is never contacted; the
    // default policy of `:latest` (Always) uses the local busybox.
    match store
        .ensure(
            "example.invalid/app:1",
            PullPolicy::IfNotPresent,
            &none,
            None,
        )
        .await
    {
        Err(e @ PullError::RegistryNotAllowed { .. }) => ensure!(
            e.to_string()
                .contains("--insecure-registry example.invalid"),
            "error {e}"
        ),
        other => bail!("an unlisted registry gave {other:?}"),
    }
    ensure!(PullPolicy::of(None, "busybox") == PullPolicy::Always);
    ensure!(PullPolicy::of(None, &name) == PullPolicy::IfNotPresent);
    let local = ImageStore::open(&dir.path().join("source"))?;
    local
        .ensure("busybox", PullPolicy::Always, &none, None)
        .await?;
    Ok(())
}
