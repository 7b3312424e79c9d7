//! The Kubernetes API as users drive it: real `kubectl` 1.32 against
//! `shoal server`'s API (in process, over shoal's own store on loopback),
//! RBAC as a restricted user meets it, and many watchers on one store
//! watch per resource.

mod bootstrap;
mod compaction;
mod cronjob;
mod daemonset;
mod dataplane;
mod deployment;
mod disruption;
mod dns;
mod endpointslice;
mod explain;
mod external_etcd;
mod gc;
mod generators;
mod hpa;
mod identities;
mod job;
mod kube_rs;
mod kubectl;
mod lb_ipam;
mod leader_election;
mod mesh_injection;
mod namespace;
mod node_agent;
mod node_ipam;
mod node_lifecycle;
mod python;
mod rbac;
mod replicaset;
mod scheduler;
mod secrets;
mod service_accounts;
mod service_allocation;
mod statefulset;
mod storage;
mod streaming;
mod watchers;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use shoal_store::{Store, StoreConfig};
use tokio::{io::AsyncWriteExt, sync::oneshot, task::JoinHandle};

/// kubectl of the version the tests target (see TOOLCHAIN.md: the
/// `kubectl` on PATH is a dispatcher).
const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";
const WAIT: Duration = Duration::from_secs(30);

fn free_addr() -> Result<SocketAddr> {
    Ok(shoal_e2e::ports::free_loopback_addr()?)
}

/// A store and an API server on loopback, with the admin kubeconfig.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    /// The admin kubeconfig the API server wrote.
    pub kubeconfig: PathBuf,
    /// The API's address.
    pub addr: SocketAddr,
    /// The store's etcd v3 address (for tests that compact it).
    pub store_addr: SocketAddr,
    stop: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<Result<()>>>,
    controllers: JoinHandle<()>,
    caches: AtomicUsize,
}

impl ControlPlane {
    async fn start() -> Result<Self> {
        Self::start_with(shoal_controllers::Config::default()).await
    }

    /// Starts with the controllers configured (short grace periods).
    async fn start_with(controllers: shoal_controllers::Config) -> Result<Self> {
        Self::start_configured(controllers, |_| {}).await
    }

    /// Starts with the controllers and the apiserver configured.
    async fn start_configured(
        mut controllers: shoal_controllers::Config,
        api: impl FnOnce(&mut shoal_apiserver::Config),
    ) -> Result<Self> {
        if !Path::new(KUBECTL).exists() {
            bail!(
                "{KUBECTL} is missing: these tests drive the real kubectl 1.32 (see TOOLCHAIN.md)"
            );
        }
        let dir = tempfile::tempdir()?;
        let store = Store::start(StoreConfig::single(
            dir.path().join("store"),
            "127.0.0.1:0".parse()?,
            free_addr()?,
        ))
        .await
        .context("starting the store")?;
        let store_addr = store.client_addr().context("the store has no address")?;
        let (stop_store, rx) = oneshot::channel::<()>();
        let store_task = tokio::spawn(async move {
            store
                .serve(async {
                    let _ = rx.await;
                })
                .await?;
            Ok(())
        });
        let mut config =
            shoal_apiserver::Config::new(dir.path(), vec![format!("http://{store_addr}")]);
        config.listen = "127.0.0.1:0".parse()?;
        api(&mut config);
        let api = shoal_apiserver::Apiserver::start(config)
            .await
            .context("starting the apiserver")?;
        let addr = api.local_addr().context("the apiserver has no address")?;
        let kubeconfig = api.kubeconfig().to_path_buf();
        let (stop_api, rx) = oneshot::channel::<()>();
        let api_task = tokio::spawn(async move {
            api.serve(async {
                let _ = rx.await;
            })
            .await?;
            Ok(())
        });
        // The key `shoal server` hands its controllers for token Secrets.
        if controllers.service_account_signer.is_none() {
            controllers.service_account_signer = Some(std::sync::Arc::new(
                shoal_ca::TokenSigner::load_or_create(&dir.path().join("pki"))?,
            ));
        }
        // The controllers sign node certificates with the API's CA, as
        // `shoal server` runs them.
        controllers
            .signing_ca_dir
            .get_or_insert_with(|| dir.path().join("pki"));
        let controllers = shoal_controllers::start_with(&kubeconfig, controllers);
        let cp = Self {
            dir,
            kubeconfig,
            addr,
            store_addr,
            stop: vec![stop_api, stop_store],
            tasks: vec![api_task, store_task],
            controllers,
            caches: AtomicUsize::new(0),
        };
        cp.wait_ready().await?;
        Ok(cp)
    }

    /// Waits for `/readyz` (the watch cache loaded).
    async fn wait_ready(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"], None).await?;
            if out.status.success() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the apiserver was not ready in {WAIT:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The data directory (CA under `pki/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubeconfig that signs in with `token` alone, trusting the cluster
    /// CA, with `namespace` as its default.
    pub fn token_kubeconfig(&self, name: &str, token: &str, namespace: &str) -> Result<PathBuf> {
        let path = self.dir().join(format!("{name}.kubeconfig"));
        let ca = self.dir().join("pki").join(shoal_ca::CA_CERT_FILE);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: shoal\n  cluster:\n    server: https://{}\n    certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: {name}\n  context: {{cluster: shoal, user: {name}, namespace: {namespace}}}\ncurrent-context: {name}\n",
                self.addr,
                ca.display()
            ),
        )?;
        Ok(path)
    }

    /// Runs kubectl as the admin.
    pub async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        self.kubectl_as(&self.kubeconfig, args, stdin).await
    }

    /// Runs kubectl with a kubeconfig and a fresh cache directory.
    pub async fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output> {
        let n = self.caches.fetch_add(1, Ordering::Relaxed);
        let mut cmd = tokio::process::Command::new(KUBECTL);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join(format!("cache-{n}")).display()
            ))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("running {KUBECTL}"))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await?;
        }
        Ok(tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .with_context(|| format!("kubectl {args:?} did not finish in {WAIT:?}"))??)
    }

    /// Runs kubectl as the admin and returns stdout; fails with stderr.
    pub async fn ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.kubectl(args, stdin).await?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn stop(mut self) -> Result<()> {
        self.controllers.abort();
        for tx in self.stop.drain(..) {
            let _ = tx.send(());
        }
        for t in self.tasks.drain(..) {
            tokio::time::timeout(WAIT, t)
                .await
                .context("a server did not stop")???;
        }
        Ok(())
    }
}
