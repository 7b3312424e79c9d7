//! One pod's life on the node: sandbox, files, init containers in order,
//! app containers with restarts and back-off, probes, status, and the
//! graceful stop when the pod is deleted.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use shoal_runtime::{Bundle, ExecRequest, ExitEvent, ExitStatus, Runtime, RuntimeError};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{
    Ctx, files,
    probe::{self, ProbeEvent},
    spec::{self, Placement, Sources},
    status::{self, State, Terminated},
};

/// A container that ran longer than this resets its back-off (the
/// kubelet's rule).
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often ConfigMap/Secret volumes are refreshed in a running pod.
const VOLUME_RESYNC: Duration = Duration::from_secs(5);
/// Retry interval after an error talking to the API or the kernel.
const RETRY: Duration = Duration::from_secs(1);

/// What a previous agent left in the runtime, by pod uid.
#[derive(Default)]
pub(crate) struct Adopted {
    by_pod: HashMap<String, Vec<AdoptedContainer>>,
}

/// A container found at start.
#[derive(Clone, Debug)]
pub(crate) struct AdoptedContainer {
    pub id: String,
    pub name: String,
    pub attempt: u32,
    pub handler: Option<String>,
    /// `None`: still running (now watched).
    pub exit: Option<ExitEvent>,
}

/// `<uid>.<container>.<attempt>`.
fn container_id(uid: &str, name: &str, attempt: u32) -> String {
    format!("{uid}.{name}.{attempt}")
}

fn parse_id(id: &str) -> Option<(String, String, u32)> {
    let mut parts = id.rsplitn(3, '.');
    let attempt = parts.next()?.parse().ok()?;
    let name = parts.next()?.to_owned();
    let uid = parts.next()?.to_owned();
    Some((uid, name, attempt))
}

impl Adopted {
    /// Asks every runtime what it holds; running containers get watched.
    pub async fn recover(ctx: &Ctx) -> Adopted {
        let mut out = Adopted::default();
        let mut runtimes: Vec<(Option<String>, &Runtime)> = vec![(None, &*ctx.default_runtime)];
        runtimes.extend(ctx.runtimes.iter().map(|(h, r)| (Some(h.clone()), &**r)));
        for (handler, runtime) in runtimes {
            let found = match ctx.exits.recover(runtime).await {
                Ok(found) => found,
                Err(e) => {
                    warn!(
                        "listing the containers of {}: {e}",
                        runtime.root().display()
                    );
                    continue;
                }
            };
            let running = found.running.into_iter().map(|s| (s.id, None));
            let exited = found.exited.into_iter().map(|e| (e.id.clone(), Some(e)));
            for (id, exit) in running.chain(exited) {
                let Some((uid, name, attempt)) = parse_id(&id) else {
                    continue;
                };
                out.by_pod.entry(uid).or_default().push(AdoptedContainer {
                    id,
                    name,
                    attempt,
                    handler: handler.clone(),
                    exit,
                });
            }
        }
        let n: usize = out.by_pod.values().map(Vec::len).sum();
        if n > 0 {
            info!(
                containers = n,
                pods = out.by_pod.len(),
                "found containers of a previous agent"
            );
        }
        out
    }

    /// The containers of pod `uid`, handed to its worker.
    pub fn take(&mut self, uid: &str) -> Vec<AdoptedContainer> {
        self.by_pod.remove(uid).unwrap_or_default()
    }

    /// Removes containers and sandboxes of pods that are not in `live`.
    pub async fn clean_up_orphans(self, ctx: &Ctx, live: &std::collections::HashSet<String>) {
        for (uid, containers) in self.by_pod {
            if live.contains(&uid) {
                continue;
            }
            info!(pod = %uid, "removing the containers of a pod that no longer exists");
            for c in containers {
                let runtime = ctx.runtime_for(c.handler.as_deref());
                let _ = runtime.delete(&c.id, true).await;
            }
            remove_pod_leftovers(ctx, &uid).await;
        }
        match ctx.network.sandboxes().await {
            Ok(sandboxes) => {
                for s in sandboxes {
                    if !live.contains(&s.pod_uid) {
                        remove_pod_leftovers(ctx, &s.pod_uid).await;
                    }
                }
            }
            Err(e) => warn!("listing sandboxes: {e}"),
        }
    }
}

async fn remove_pod_leftovers(ctx: &Ctx, uid: &str) {
    if let Err(e) = ctx.network.remove_sandbox(uid).await {
        warn!(pod = %uid, "removing the sandbox: {e}");
    }
    let cgroup = format!("{}/pod-{uid}", ctx.cfg.cgroup_parent);
    let _ = ctx.default_runtime.cgroups().remove(&cgroup);
    let dir = ctx.pod_dir(uid);
    if let Ok(entries) = std::fs::read_dir(dir.join("bundles")) {
        for e in entries.flatten() {
            let _ = Bundle::open(&e.path()).remove();
        }
    }
    super::tmpfs::unmount_under(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A running container.
#[derive(Clone, Debug)]
struct Running {
    id: String,
    started_at: Timestamp,
    started_instant: Instant,
    handler: Option<String>,
    probes: Option<Arc<tokio::task::AbortHandle>>,
}

/// One container of the pod, init or app.
#[derive(Debug)]
struct Ctr {
    name: String,
    init: bool,
    /// An init container with `restartPolicy: Always` (a sidecar).
    sidecar: bool,
    /// An ephemeral container (`kubectl debug`): started once the pod
    /// runs, never restarted, no part of the pod's phase or readiness.
    ephemeral: bool,
    attempt: u32,
    restart_count: i32,
    running: Option<Running>,
    last: Option<Terminated>,
    waiting: Option<(String, Option<String>)>,
    backoff: Duration,
    next_start: Option<Instant>,
    ready: bool,
    started: bool,
    image_id: String,
    /// Why the next stop happens (a failed liveness probe).
    kill_reason: Option<String>,
}

impl Ctr {
    fn new(c: &Container, init: bool) -> Self {
        Self {
            name: c.name.clone(),
            init,
            sidecar: init && c.restart_policy.as_deref() == Some("Always"),
            ephemeral: false,
            attempt: 0,
            restart_count: 0,
            running: None,
            last: None,
            waiting: None,
            backoff: Duration::ZERO,
            next_start: None,
            ready: false,
            started: false,
            image_id: String::new(),
            kill_reason: None,
        }
    }

    /// An app container: neither init (sidecars included) nor ephemeral.
    fn app(&self) -> bool {
        !self.init && !self.ephemeral
    }

    fn succeeded(&self) -> bool {
        self.running.is_none() && self.last.as_ref().is_some_and(|t| t.exit_code == 0)
    }
}

/// One pod's worker.
pub(crate) struct PodWorker {
    ctx: Arc<Ctx>,
    uid: String,
    containers: Vec<Ctr>,
    adopted: Vec<AdoptedContainer>,
    pod_ips: Vec<IpAddr>,
    netns: Option<PathBuf>,
    etc_mounts: Vec<shoal_runtime::Mount>,
    volumes: std::collections::BTreeMap<String, PathBuf>,
    volumes_at: Option<Instant>,
    phase: Option<&'static str>,
    start_time: Option<Timestamp>,
    posted: Option<Value>,
    pod_error: Option<(String, String)>,
    wake: Option<Instant>,
    probe_tx: mpsc::UnboundedSender<ProbeEvent>,
    probe_rx: Option<mpsc::UnboundedReceiver<ProbeEvent>>,
}

impl PodWorker {
    pub fn new(ctx: Arc<Ctx>, uid: String, adopted: Vec<AdoptedContainer>) -> Self {
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        Self {
            ctx,
            uid,
            containers: Vec::new(),
            adopted,
            pod_ips: Vec::new(),
            netns: None,
            etc_mounts: Vec::new(),
            volumes: Default::default(),
            volumes_at: None,
            phase: None,
            start_time: None,
            posted: None,
            pod_error: None,
            wake: None,
            probe_tx,
            probe_rx: Some(probe_rx),
        }
    }

    /// Drives the pod until it is gone from the node.
    pub async fn run(
        mut self,
        mut pod_rx: watch::Receiver<Option<Arc<Pod>>>,
        mut exit_rx: mpsc::UnboundedReceiver<ExitEvent>,
    ) {
        let Some(mut probe_rx) = self.probe_rx.take() else {
            return;
        };
        loop {
            let pod = pod_rx.borrow_and_update().clone();
            match pod {
                None => {
                    self.stop(None, &mut exit_rx).await;
                    return;
                }
                Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                    self.stop(Some(&pod), &mut exit_rx).await;
                    self.finish(&pod).await;
                    return;
                }
                Some(pod) => {
                    self.wake = None;
                    self.sync(&pod).await;
                    self.post(&pod).await;
                }
            }
            let wake = self
                .wake
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                changed = pod_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                Some(exit) = exit_rx.recv() => self.on_exit(exit).await,
                Some(event) = probe_rx.recv() => self.on_probe(event).await,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn wake_at(&mut self, at: Instant) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }

    fn name(pod: &Pod) -> String {
        format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// Brings the node in line with the pod: one step of the kubelet's
    /// syncPod.
    async fn sync(&mut self, pod: &Pod) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        if self.containers.is_empty() {
            self.containers = spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| Ctr::new(c, true))
                .chain(spec.containers.iter().map(|c| Ctr::new(c, false)))
                .collect();
            self.start_time = Some(Timestamp::now());
        }
        // Ephemeral containers are only ever added to a pod.
        for e in spec.ephemeral_containers.iter().flatten() {
            if !self.containers.iter().any(|c| c.name == e.name) {
                let mut c = Ctr::new(&ephemeral_as_container(e), false);
                c.ephemeral = true;
                self.containers.push(c);
            }
        }
        if matches!(self.phase, Some("Succeeded" | "Failed")) {
            return;
        }
        if !self.ensure_sandbox(pod).await {
            self.wake_at(Instant::now() + RETRY);
            return;
        }
        // After the sandbox: adopted containers' probes need the pod's IP.
        if !self.adopted.is_empty() {
            self.adopt(pod);
        }
        if !self.ensure_volumes(pod).await {
            self.wake_at(Instant::now() + RETRY);
            return;
        }
        self.wake_at(Instant::now() + VOLUME_RESYNC);

        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".to_owned());
        // Init containers, in order; sidecars keep running once started.
        let inits: Vec<usize> = (0..self.containers.len())
            .filter(|&i| self.containers[i].init)
            .collect();
        for i in inits {
            let c = &self.containers[i];
            if c.sidecar {
                if c.running.is_some() {
                    if c.started {
                        continue;
                    }
                    return;
                }
            } else if c.succeeded() {
                continue;
            } else if c.running.is_some() {
                return;
            } else if c.last.is_some() && policy == "Never" {
                self.phase = Some("Failed");
                return;
            }
            self.maybe_start(pod, i).await;
            return;
        }
        // App containers.
        let apps: Vec<usize> = (0..self.containers.len())
            .filter(|&i| self.containers[i].app())
            .collect();
        // Ephemeral containers: started once, in a running pod.
        let ephemerals: Vec<usize> = (0..self.containers.len())
            .filter(|&i| {
                let c = &self.containers[i];
                c.ephemeral && c.running.is_none() && c.last.is_none()
            })
            .collect();
        for i in ephemerals {
            self.maybe_start(pod, i).await;
        }
        let mut done = 0;
        for &i in &apps {
            let c = &self.containers[i];
            if c.running.is_some() {
                continue;
            }
            let restart = match (&c.last, policy.as_str()) {
                (None, _) => true,
                (Some(_), "Always") => true,
                (Some(t), "OnFailure") => t.exit_code != 0,
                _ => false,
            };
            if restart {
                self.maybe_start(pod, i).await;
            } else {
                done += 1;
            }
        }
        if done == apps.len() && !apps.is_empty() {
            let failed = apps.iter().any(|&i| {
                self.containers[i]
                    .last
                    .as_ref()
                    .is_some_and(|t| t.exit_code != 0)
            });
            self.phase = Some(if failed { "Failed" } else { "Succeeded" });
            // Sidecars stop once the pod is done.
            self.stop_containers(pod, true).await;
        }
    }

    /// Takes over containers a previous agent started.
    fn adopt(&mut self, pod: &Pod) {
        let adopted = std::mem::take(&mut self.adopted);
        let mut probes = Vec::new();
        let mut terminals = Vec::new();
        for a in adopted {
            let Some(c) = self.containers.iter_mut().find(|c| c.name == a.name) else {
                continue;
            };
            if a.attempt < c.attempt && (c.running.is_some() || c.last.is_some()) {
                continue;
            }
            c.attempt = a.attempt + 1;
            c.restart_count = i32::try_from(a.attempt).unwrap_or(i32::MAX);
            match a.exit {
                None => {
                    info!(pod = %Self::name(pod), container = %a.name, "adopted a running container");
                    c.running = Some(Running {
                        id: a.id.clone(),
                        started_at: Timestamp::now(),
                        started_instant: Instant::now(),
                        handler: a.handler.clone(),
                        probes: None,
                    });
                    // Ready again once its probes say so.
                    let spec = pod.spec.as_ref();
                    let container = spec.and_then(|s| {
                        s.init_containers
                            .iter()
                            .flatten()
                            .chain(s.containers.iter())
                            .find(|x| x.name == a.name)
                    });
                    if let Some(container) = container.cloned() {
                        if container.tty == Some(true) {
                            terminals.push((container.clone(), a.id.clone(), a.attempt));
                        }
                        probes.push((container, a.handler.clone(), a.id.clone()));
                    }
                }
                Some(exit) => {
                    let (code, signal) = exit_code(&exit.status);
                    c.last = Some(Terminated {
                        id: a.id.clone(),
                        exit_code: code,
                        signal,
                        reason: if exit.oom_killed {
                            "OOMKilled".into()
                        } else if exit.status == ExitStatus::Unknown {
                            "Unknown".into()
                        } else if code == 0 {
                            "Completed".into()
                        } else {
                            "Error".into()
                        },
                        message: None,
                        started_at: None,
                        finished_at: exit.finished_at,
                    });
                    shoal_runtime::release_terminal(
                        &self.ctx.pod_dir(&self.uid).join("bundles").join(&a.id),
                    );
                    let runtime = self.ctx.runtime_for(a.handler.as_deref()).clone();
                    let id = a.id.clone();
                    tokio::spawn(async move {
                        let _ = runtime.delete(&id, true).await;
                    });
                }
            }
        }
        // A terminal's holder kept it open while no agent ran: take it
        // back, and its output goes to the log again.
        for (container, id, attempt) in terminals {
            let stdio = shoal_runtime::ContainerStdio {
                stdin: container.stdin.unwrap_or(false),
                stdin_once: container.stdin_once.unwrap_or(false),
                tty: true,
            };
            let bundle = self.ctx.pod_dir(&self.uid).join("bundles").join(&id);
            let log = self.log_path(pod, &container.name, attempt);
            if let Err(e) =
                shoal_runtime::adopt_terminal(&self.ctx.cfg.consoles, &id, &bundle, &log, stdio)
            {
                warn!(pod = %Self::name(pod), container = %container.name, "taking back the container's terminal: {e}");
            }
        }
        for (container, handler, id) in probes {
            if let Some(idx) = self
                .containers
                .iter()
                .position(|x| x.name == container.name)
            {
                self.spawn_probes(idx, container, handler.as_deref(), &id);
            }
        }
    }

    async fn ensure_sandbox(&mut self, pod: &Pod) -> bool {
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_network {
            self.pod_ips = self.ctx.cfg.node_ips.clone();
        } else if self.netns.is_none() {
            match self.ctx.network.create_sandbox(&self.uid).await {
                Ok(sandbox) => {
                    self.pod_ips = sandbox
                        .ipv4
                        .map(IpAddr::V4)
                        .into_iter()
                        .chain(sandbox.ipv6.map(IpAddr::V6))
                        .collect();
                    self.netns = Some(sandbox.netns_path);
                    debug!(pod = %Self::name(pod), ips = ?self.pod_ips, "sandbox ready");
                }
                Err(e) => {
                    warn!(pod = %Self::name(pod), "creating the pod sandbox: {e}");
                    self.pod_error = Some(("FailedCreatePodSandBox".into(), e.to_string()));
                    return false;
                }
            }
        }
        if self.etc_mounts.is_empty() {
            let dir = self.ctx.pod_dir(&self.uid).join("etc");
            match files::write_etc(&self.ctx, pod, &dir, &self.pod_ips) {
                Ok(m) => self.etc_mounts = m,
                Err(e) => {
                    self.pod_error = Some((
                        "FailedCreatePodSandBox".into(),
                        format!("writing {}: {e}", dir.display()),
                    ));
                    return false;
                }
            }
        }
        self.clear_pod_error("FailedCreatePodSandBox");
        true
    }

    /// Forgets the pod-level error `reason` once its cause is gone.
    fn clear_pod_error(&mut self, reason: &str) {
        if self.pod_error.as_ref().is_some_and(|(r, _)| r == reason) {
            self.pod_error = None;
        }
    }

    async fn ensure_volumes(&mut self, pod: &Pod) -> bool {
        if self
            .volumes_at
            .is_some_and(|at| at.elapsed() < VOLUME_RESYNC)
        {
            return true;
        }
        let dir = self.ctx.pod_dir(&self.uid).join("volumes");
        match files::volumes(&self.ctx, pod, &dir, &self.pod_ips).await {
            Ok(v) => {
                self.volumes = v;
                self.volumes_at = Some(Instant::now());
                self.clear_pod_error("FailedMount");
                true
            }
            Err(e) => {
                // A running pod keeps its last good volumes.
                if self.volumes_at.is_some() {
                    warn!(pod = %Self::name(pod), "refreshing volumes: {e}");
                    return true;
                }
                self.pod_error = Some(("FailedMount".into(), e.to_string()));
                false
            }
        }
    }

    fn container_spec(pod: &Pod, name: &str) -> Option<Container> {
        let spec = pod.spec.as_ref()?;
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .find(|c| c.name == name)
            .cloned()
            .or_else(|| {
                spec.ephemeral_containers
                    .iter()
                    .flatten()
                    .find(|c| c.name == name)
                    .map(ephemeral_as_container)
            })
    }

    /// Starts container `i` unless its back-off has not passed yet.
    async fn maybe_start(&mut self, pod: &Pod, i: usize) {
        if let Some(at) = self.containers[i].next_start
            && at > Instant::now()
        {
            let c = &mut self.containers[i];
            if c.waiting
                .as_ref()
                .is_none_or(|(r, _)| r == "ContainerCreating")
            {
                c.waiting = Some((
                    "CrashLoopBackOff".into(),
                    Some(format!(
                        "back-off {}s restarting failed container={} pod={}",
                        c.backoff.as_secs(),
                        c.name,
                        pod.metadata.name.as_deref().unwrap_or_default()
                    )),
                ));
            }
            self.wake_at(at);
            return;
        }
        let Some(container) = Self::container_spec(pod, &self.containers[i].name) else {
            return;
        };
        match self.start(pod, i, &container).await {
            Ok(()) => {}
            Err((reason, message)) => {
                warn!(pod = %Self::name(pod), container = %container.name, "{reason}: {message}");
                let c = &mut self.containers[i];
                c.waiting = Some((reason, Some(message)));
                self.back_off(i);
            }
        }
    }

    fn back_off(&mut self, i: usize) {
        let (initial, max) = (self.ctx.cfg.backoff_initial, self.ctx.cfg.backoff_max);
        let c = &mut self.containers[i];
        c.backoff = if c.backoff.is_zero() {
            initial
        } else {
            (c.backoff * 2).min(max)
        };
        let at = Instant::now() + c.backoff;
        c.next_start = Some(at);
        self.wake_at(at);
    }

    /// Basic-auth credentials for `image`'s registry from the pod's
    /// `imagePullSecrets` (`kubernetes.io/dockerconfigjson` Secrets), the
    /// first that names the registry.
    async fn pull_credentials(&self, pod: &Pod, image: &str) -> Option<shoal_runtime::Credentials> {
        use base64::Engine as _;
        let registry = shoal_runtime::Reference::parse(image)
            .ok()?
            .registry()
            .to_owned();
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let names = pod
            .spec
            .as_ref()?
            .image_pull_secrets
            .clone()
            .unwrap_or_default();
        for name in names.iter().map(|r| r.name.as_str()) {
            let Some(secret) = self.ctx.secrets.get(ns, name).await else {
                warn!(pod = %Self::name(pod), "imagePullSecrets: secret {ns}/{name} not found");
                continue;
            };
            if secret.type_.as_deref() != Some("kubernetes.io/dockerconfigjson") {
                continue;
            }
            let Some(data) = secret
                .data
                .as_ref()
                .and_then(|d| d.get(".dockerconfigjson"))
            else {
                continue;
            };
            let Ok(config) = serde_json::from_slice::<serde_json::Value>(&data.0) else {
                warn!(pod = %Self::name(pod), "imagePullSecrets: secret {ns}/{name}: .dockerconfigjson is not JSON");
                continue;
            };
            let Some(auths) = config["auths"].as_object() else {
                continue;
            };
            let entry = auths.iter().find_map(|(key, v)| {
                let host = key
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap_or_default();
                (host == registry || (registry == "docker.io" && host == "index.docker.io"))
                    .then_some(v)
            });
            let Some(entry) = entry else { continue };
            let (mut username, mut password) = (
                entry["username"].as_str().unwrap_or_default().to_owned(),
                entry["password"].as_str().unwrap_or_default().to_owned(),
            );
            if username.is_empty()
                && let Some(auth) = entry["auth"].as_str()
                && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(auth)
                && let Some((u, p)) = String::from_utf8_lossy(&decoded).split_once(':')
            {
                (username, password) = (u.to_owned(), p.to_owned());
            }
            if !username.is_empty() {
                return Some(shoal_runtime::Credentials { username, password });
            }
        }
        None
    }

    async fn start(&mut self, pod: &Pod, i: usize, c: &Container) -> Result<(), (String, String)> {
        let ctx = self.ctx.clone();
        let spec = pod.spec.as_ref();
        let handler = spec.and_then(|s| s.runtime_class_name.clone());
        let runtime = ctx.runtime_for(handler.as_deref()).clone();
        let image_name = c.image.clone().unwrap_or_default();
        let policy = shoal_runtime::PullPolicy::of(c.image_pull_policy.as_deref(), &image_name);
        let credentials = self.pull_credentials(pod, &image_name).await;
        let pulled = ctx
            .images
            .ensure(
                &image_name,
                policy,
                &ctx.cfg.registries,
                credentials.as_ref(),
            )
            .await;
        let image = match pulled {
            Ok(image) => image,
            Err(e @ shoal_runtime::PullError::NeverPull { .. }) => {
                return Err((e.reason().into(), e.to_string()));
            }
            Err(e) => {
                let reason = if self.containers[i]
                    .waiting
                    .as_ref()
                    .is_some_and(|(r, _)| r == "ErrImagePull" || r == "ImagePullBackOff")
                {
                    "ImagePullBackOff"
                } else {
                    e.reason()
                };
                return Err((
                    reason.into(),
                    format!("Failed to pull image \"{image_name}\": {e}"),
                ));
            }
        };
        let rootfs = {
            let _guard = ctx.unpack.lock().await;
            image.rootfs().map_err(|e| {
                (
                    "CreateContainerError".to_owned(),
                    format!("unpacking {image_name}: {e}"),
                )
            })?
        };
        let mut sources = Sources::default();
        let env = spec::environment(&ctx, pod, c, &self.pod_ips, &mut sources)
            .await
            .map_err(|e| ("CreateContainerConfigError".to_owned(), e.0))?;
        let mut mounts = self.etc_mounts.clone();
        mounts.extend(
            files::volume_mounts(c, &self.volumes)
                .map_err(|e| ("CreateContainerConfigError".to_owned(), e.0))?,
        );
        let attempt = self.containers[i].attempt;
        let id = container_id(&self.uid, &c.name, attempt);
        let hostname = files::hostname(pod);
        let container = spec::build(
            pod,
            c,
            &image,
            rootfs,
            &env,
            Placement {
                id: &id,
                netns: self.netns.as_deref(),
                hostname: &hostname,
                cgroups_path: format!("{}/pod-{}/{}", ctx.cfg.cgroup_parent, self.uid, c.name),
                mounts,
            },
        )
        .map_err(|e| ("CreateContainerConfigError".to_owned(), e.0))?;
        let mut container = container;
        container.terminal = c.tty.unwrap_or(false);
        if let Some(target) = self.debug_target(pod, &c.name) {
            // kubectl debug --target: the ephemeral container sees the
            // target's processes (it joins the PID namespace of the
            // target's init).
            let pid = match runtime.state(&target.1).await {
                Ok(state) if state.pid > 0 => state.pid,
                _ => {
                    return Err((
                        "CreateContainerConfigError".into(),
                        format!(
                            "targetContainerName {:?} of ephemeral container {:?}: that container is not running",
                            target.0, c.name
                        ),
                    ));
                }
            };
            container.namespaces.pid =
                shoal_runtime::Namespace::Join(PathBuf::from(format!("/proc/{pid}/ns/pid")));
        }
        let stdio = shoal_runtime::ContainerStdio {
            stdin: c.stdin.unwrap_or(false),
            stdin_once: c.stdin_once.unwrap_or(false),
            tty: container.terminal,
        };
        let bundle_dir = ctx.pod_dir(&self.uid).join("bundles").join(&id);
        // A leftover of this attempt (an agent crash between create and
        // start) is replaced.
        let _ = runtime.delete(&id, true).await;
        let bundle = Bundle::write(&bundle_dir, &container)
            .map_err(|e| ("CreateContainerError".to_owned(), e.to_string()))?;
        let log = self.log_path(pod, &c.name, attempt);
        let pid = match runtime
            .create_with_stdio(&id, &bundle, &log, stdio, &ctx.cfg.consoles)
            .await
        {
            Ok(pid) => pid,
            Err(e) => {
                let _ = bundle.remove();
                return Err(("CreateContainerError".into(), e.to_string()));
            }
        };
        ctx.exits.watch(&id, pid, container.cgroups_path.as_deref());
        if let Err(e) = runtime.start(&id).await {
            let _ = runtime.delete(&id, true).await;
            return Err(("RunContainerError".into(), e.to_string()));
        }
        info!(pod = %Self::name(pod), container = %c.name, attempt, pid, "container started");
        let ctr = &mut self.containers[i];
        if attempt > 0 || ctr.last.is_some() {
            ctr.restart_count += 1;
        }
        ctr.attempt = attempt + 1;
        ctr.image_id = format!("{}@{}", image.reference(), image.digest());
        ctr.waiting = None;
        ctr.ready = false;
        ctr.started = false;
        ctr.kill_reason = None;
        ctr.running = Some(Running {
            id: id.clone(),
            started_at: Timestamp::now(),
            started_instant: Instant::now(),
            handler: handler.clone(),
            probes: None,
        });
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref())
            && let Some(exec) = &hook.exec
        {
            let request = ExecRequest {
                args: exec.command.clone().unwrap_or_default(),
                env: Vec::new(),
                timeout: Some(Duration::from_secs(30)),
            };
            match runtime.exec(&id, &request).await {
                Ok(out) if out.exit_code == 0 => {}
                Ok(out) => {
                    let _ = runtime.kill(&id, Signal::SIGKILL).await;
                    self.containers[i].kill_reason =
                        Some(format!("PostStartHookError: exited with {}", out.exit_code));
                }
                Err(e) => {
                    let _ = runtime.kill(&id, Signal::SIGKILL).await;
                    self.containers[i].kill_reason = Some(format!("PostStartHookError: {e}"));
                }
            }
        }
        self.spawn_probes(i, c.clone(), handler.as_deref(), &id);
        Ok(())
    }

    /// The target (name, running container id) of ephemeral container
    /// `name`, when it names one with `targetContainerName`.
    fn debug_target(&self, pod: &Pod, name: &str) -> Option<(String, String)> {
        let target = pod
            .spec
            .as_ref()?
            .ephemeral_containers
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .target_container_name
            .clone()
            .filter(|t| !t.is_empty())?;
        let id = self
            .containers
            .iter()
            .find(|c| c.name == target)
            .and_then(|c| c.running.as_ref())
            .map(|r| r.id.clone())
            .unwrap_or_default();
        Some((target, id))
    }

    fn spawn_probes(&mut self, i: usize, c: Container, handler: Option<&str>, id: &str) {
        let target = probe::Target {
            id: id.to_owned(),
            runtime: self.ctx.runtime_for(handler).clone(),
            pod_ip: self.pod_ips.first().copied(),
        };
        let task = tokio::spawn(probe::run(c, target, self.probe_tx.clone()));
        if let Some(r) = self.containers[i].running.as_mut() {
            r.probes = Some(Arc::new(task.abort_handle()));
        }
    }

    fn log_path(&self, pod: &Pod, container: &str, attempt: u32) -> PathBuf {
        self.ctx
            .logs_dir()
            .join(format!(
                "{}_{}_{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default(),
                self.uid
            ))
            .join(container)
            .join(format!("{attempt}.log"))
    }

    async fn on_exit(&mut self, exit: ExitEvent) {
        let Some(i) = self
            .containers
            .iter()
            .position(|c| c.running.as_ref().is_some_and(|r| r.id == exit.id))
        else {
            return;
        };
        let c = &mut self.containers[i];
        let Some(running) = c.running.take() else {
            return;
        };
        self.ctx.cfg.consoles.remove(&exit.id);
        if let Some(p) = &running.probes {
            p.abort();
        }
        let (code, signal) = exit_code(&exit.status);
        let reason = if exit.oom_killed {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        info!(container = %c.name, id = %exit.id, code, reason, "container exited");
        c.last = Some(Terminated {
            id: exit.id.clone(),
            exit_code: code,
            signal,
            reason: reason.to_owned(),
            message: c.kill_reason.take(),
            started_at: Some(running.started_at),
            finished_at: exit.finished_at,
        });
        c.ready = false;
        c.started = false;
        if running.started_instant.elapsed() > BACKOFF_RESET {
            c.backoff = Duration::ZERO;
        }
        let runtime = self.ctx.runtime_for(running.handler.as_deref()).clone();
        if let Err(e) = runtime.delete(&exit.id, true).await
            && !matches!(e, RuntimeError::NotFound { .. })
        {
            warn!(id = %exit.id, "deleting the exited container: {e}");
        }
        let bundle = self.ctx.pod_dir(&self.uid).join("bundles").join(&exit.id);
        let _ = Bundle::open(&bundle).remove();
        // The next start waits for the back-off (the first restart too, as
        // the kubelet does for a container that exits).
        let is_app_restartable = !c.ephemeral && (!c.init || c.sidecar || code != 0);
        if is_app_restartable {
            self.back_off(i);
        }
    }

    async fn on_probe(&mut self, event: ProbeEvent) {
        match event {
            ProbeEvent::Started { id } => {
                if let Some(c) = self.by_id(&id) {
                    c.started = true;
                }
            }
            ProbeEvent::Ready { id, ready } => {
                if let Some(c) = self.by_id(&id) {
                    c.ready = ready;
                }
            }
            ProbeEvent::Failed { id, message } => {
                let Some(i) = self
                    .containers
                    .iter()
                    .position(|c| c.running.as_ref().is_some_and(|r| r.id == id))
                else {
                    return;
                };
                info!(id = %id, "{message}; the container will be restarted");
                let handler = self.containers[i]
                    .running
                    .as_ref()
                    .and_then(|r| r.handler.clone());
                self.containers[i].kill_reason = Some(message);
                let runtime = self.ctx.runtime_for(handler.as_deref()).clone();
                let _ = runtime.kill(&id, Signal::SIGTERM).await;
                // PID 1 ignores SIGTERM without a handler: escalate.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let _ = runtime.kill(&id, Signal::SIGKILL).await;
                });
            }
        }
    }

    fn by_id(&mut self, id: &str) -> Option<&mut Ctr> {
        self.containers
            .iter_mut()
            .find(|c| c.running.as_ref().is_some_and(|r| r.id == id))
    }

    /// Stops running containers: preStop hooks, SIGTERM, the grace period,
    /// SIGKILL. Sidecars (and ephemeral containers) stop after the app
    /// containers.
    async fn stop_containers(&mut self, pod: &Pod, only_sidecars: bool) {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0);
        let grace = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
        for sidecars in [false, true] {
            if only_sidecars && !sidecars {
                continue;
            }
            let targets: Vec<(String, Option<String>, String)> = self
                .containers
                .iter()
                // Ephemeral containers go with the sidecars, after the app.
                .filter(|c| {
                    if sidecars {
                        c.sidecar || c.ephemeral
                    } else {
                        !c.sidecar && !c.ephemeral
                    }
                })
                .filter_map(|c| {
                    c.running
                        .as_ref()
                        .map(|r| (r.id.clone(), r.handler.clone(), c.name.clone()))
                })
                .collect();
            let started = Instant::now();
            // Every container's preStop hook then its SIGTERM, side by side
            // (the kubelet stops a pod's containers in parallel).
            let stops = targets.iter().map(|(id, handler, name)| {
                let runtime = self.ctx.runtime_for(handler.as_deref()).clone();
                // No hook when there is no time for one (the kubelet's rule).
                let hook = Self::container_spec(pod, name)
                    .and_then(|c| c.lifecycle)
                    .and_then(|l| l.pre_stop)
                    .filter(|_| !grace.is_zero());
                async move {
                    let hooked = hook.is_some();
                    if let Some(hook) = hook {
                        if let Some(pause) = pre_stop_sleep(&hook, grace) {
                            tokio::time::sleep(pause).await;
                        } else if let Some(exec) = &hook.exec {
                            let request = ExecRequest {
                                args: exec.command.clone().unwrap_or_default(),
                                env: Vec::new(),
                                timeout: Some(grace),
                            };
                            let _ = runtime.exec(id, &request).await;
                        }
                    }
                    let _ = runtime.kill(id, Signal::SIGTERM).await;
                    hooked
                }
            });
            let hooked = futures_util::future::join_all(stops).await;
            // As the kubelet: what a hook took comes off the grace period,
            // but SIGTERM always gets at least MIN_GRACE_AFTER_HOOK.
            let mut deadline = started + grace;
            if hooked.contains(&true) {
                deadline = deadline.max(Instant::now() + MIN_GRACE_AFTER_HOOK);
            }
            for (id, handler, _) in &targets {
                let runtime = self.ctx.runtime_for(handler.as_deref()).clone();
                loop {
                    match runtime.state(id).await {
                        Ok(s) if s.status == shoal_runtime::Status::Running => {}
                        _ => break,
                    }
                    if Instant::now() >= deadline {
                        let _ = runtime.kill(id, Signal::SIGKILL).await;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The pod is deleted (or gone): stop it and remove everything it had.
    async fn stop(&mut self, pod: Option<&Pod>, exit_rx: &mut mpsc::UnboundedReceiver<ExitEvent>) {
        if let Some(pod) = pod {
            info!(pod = %Self::name(pod), "stopping");
            self.stop_containers(pod, false).await;
        }
        // Collect the exits so the final status carries them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.containers.iter().any(|c| c.running.is_some()) {
            match tokio::time::timeout_at(deadline, exit_rx.recv()).await {
                Ok(Some(exit)) => self.on_exit(exit).await,
                _ => break,
            }
        }
        for c in &mut self.containers {
            if let Some(r) = c.running.take() {
                if let Some(p) = &r.probes {
                    p.abort();
                }
                let runtime = self.ctx.runtime_for(r.handler.as_deref());
                let _ = runtime.delete(&r.id, true).await;
            }
        }
        for a in std::mem::take(&mut self.adopted) {
            shoal_runtime::release_terminal(
                &self.ctx.pod_dir(&self.uid).join("bundles").join(&a.id),
            );
            let _ = self
                .ctx
                .runtime_for(a.handler.as_deref())
                .delete(&a.id, true)
                .await;
        }
        remove_pod_leftovers(&self.ctx, &self.uid).await;
    }

    /// Removes the pod object once its containers are gone (the kubelet's
    /// final delete with grace period 0, pinned to the uid).
    async fn finish(&mut self, pod: &Pod) {
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let name = pod.metadata.name.clone().unwrap_or_default();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        for _ in 0..10 {
            match api.delete(&name, &params).await {
                Ok(_) => return,
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                Err(e) => {
                    warn!(pod = %Self::name(pod), "deleting the stopped pod: {e}");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Posts the status when it changed.
    async fn post(&mut self, pod: &Pod) {
        let status = self.status(pod);
        if self.posted.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let name = pod.metadata.name.clone().unwrap_or_default();
        let patch = json!({ "status": status });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.posted = Some(status),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                warn!(pod = %Self::name(pod), "posting the pod status: {e}");
                self.wake_at(Instant::now() + RETRY);
            }
        }
    }

    fn status(&self, pod: &Pod) -> Value {
        let now = Timestamp::now();
        let previous: Vec<Value> = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| serde_json::to_value(c).ok())
                    .collect()
            })
            .unwrap_or_default();
        let image_of = |name: &str| {
            Self::container_spec(pod, name)
                .and_then(|c| c.image.clone())
                .unwrap_or_default()
        };
        let ctr_status = |c: &Ctr| {
            let state = match (&c.running, &c.waiting, &c.last) {
                (Some(r), _, _) => State::Running {
                    id: r.id.clone(),
                    started_at: r.started_at,
                },
                (None, Some((reason, message)), _) => State::Waiting {
                    reason: reason.clone(),
                    message: message.clone(),
                },
                (None, None, Some(t)) if c.next_start.is_none() || self.phase.is_some() => {
                    State::Terminated(t.clone())
                }
                (None, None, Some(t)) => {
                    let restarting = c.next_start.is_some_and(|at| at > Instant::now());
                    if restarting {
                        State::Waiting {
                            reason: "CrashLoopBackOff".into(),
                            message: Some(format!(
                                "back-off {}s restarting failed container={} pod={}",
                                c.backoff.as_secs(),
                                c.name,
                                pod.metadata.name.as_deref().unwrap_or_default()
                            )),
                        }
                    } else {
                        State::Terminated(t.clone())
                    }
                }
                (None, None, None) => State::Waiting {
                    reason: if c.init || self.inits_done() {
                        "ContainerCreating".into()
                    } else {
                        "PodInitializing".into()
                    },
                    message: None,
                },
            };
            let last = match &state {
                State::Terminated(_) => None,
                _ => c.last.as_ref(),
            };
            let ready = c.running.is_some() && c.ready && c.started;
            status::container(
                &c.name,
                &image_of(&c.name),
                &c.image_id,
                &state,
                last,
                ready,
                c.running.is_some() && c.started,
                c.restart_count,
            )
        };
        let inits: Vec<Value> = self
            .containers
            .iter()
            .filter(|c| c.init)
            .map(ctr_status)
            .collect();
        let apps: Vec<Value> = self
            .containers
            .iter()
            .filter(|c| c.app())
            .map(ctr_status)
            .collect();
        let ephemerals: Vec<Value> = self
            .containers
            .iter()
            .filter(|c| c.ephemeral)
            .map(ctr_status)
            .collect();
        let all_ready = self
            .containers
            .iter()
            .filter(|c| c.app() || c.sidecar)
            .all(|c| c.running.is_some() && c.ready && c.started);
        let initialized = self.inits_done();
        // Like the kubelet, the pod turns terminal only once every container
        // (sidecars included) has stopped.
        let stopping = self.containers.iter().any(|c| c.running.is_some());
        let phase = match self.phase {
            Some("Succeeded" | "Failed") if stopping => None,
            p => p,
        };
        let phase = phase.unwrap_or({
            if self
                .containers
                .iter()
                .filter(|c| c.app())
                .any(|c| c.running.is_some() || c.last.is_some())
            {
                "Running"
            } else {
                "Pending"
            }
        });
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let sandbox_ready = !self.pod_ips.is_empty() && !terminal;
        let mut conditions = vec![
            status::condition(
                "PodReadyToStartContainers",
                sandbox_ready,
                None,
                &previous,
                now,
            ),
            status::condition(
                "Initialized",
                initialized,
                (!initialized).then_some("ContainersNotInitialized"),
                &previous,
                now,
            ),
            status::condition(
                "Ready",
                all_ready && !terminal,
                (terminal)
                    .then_some("PodCompleted")
                    .or((!all_ready).then_some("ContainersNotReady")),
                &previous,
                now,
            ),
            status::condition(
                "ContainersReady",
                all_ready && !terminal,
                (terminal)
                    .then_some("PodCompleted")
                    .or((!all_ready).then_some("ContainersNotReady")),
                &previous,
                now,
            ),
        ];
        if let Some(scheduled) = previous.iter().find(|c| c["type"] == "PodScheduled") {
            conditions.push(scheduled.clone());
        } else {
            conditions.push(status::condition(
                "PodScheduled",
                true,
                None,
                &previous,
                now,
            ));
        }
        let mut s = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.ctx.cfg.node_ips.first().map(ToString::to_string),
            "hostIPs": status::ips(&self.ctx.cfg.node_ips),
            "containerStatuses": apps,
            "startTime": self.start_time.map(status::time),
        });
        if !inits.is_empty() {
            s["initContainerStatuses"] = Value::Array(inits);
        }
        if !ephemerals.is_empty() {
            s["ephemeralContainerStatuses"] = Value::Array(ephemerals);
        }
        if !self.pod_ips.is_empty() {
            s["podIP"] = json!(self.pod_ips[0].to_string());
            s["podIPs"] = status::ips(&self.pod_ips);
        }
        if let Some((reason, message)) = &self.pod_error {
            s["reason"] = json!(reason);
            s["message"] = json!(message);
        }
        if let Some(q) = pod.status.as_ref().and_then(|s| s.qos_class.clone()) {
            s["qosClass"] = json!(q);
        }
        s
    }

    fn inits_done(&self) -> bool {
        self.containers.iter().filter(|c| c.init).all(|c| {
            if c.sidecar {
                c.running.is_some() && c.started
            } else {
                c.succeeded()
            }
        })
    }
}

/// Kubernetes' exit code for a status: the code, or 128 + signal.
fn exit_code(status: &ExitStatus) -> (i32, Option<i32>) {
    match status {
        ExitStatus::Exited(code) => (*code, None),
        ExitStatus::Signaled(sig) => (128 + *sig, Some(*sig)),
        ExitStatus::Unknown => (255, None),
    }
}

/// The least time a container gets between SIGTERM and SIGKILL after its
/// preStop hook ran (the kubelet's `minimumGracePeriodInSeconds`).
const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

/// How long a preStop `sleep` action pauses before SIGTERM: its seconds,
/// no longer than the grace period; `None` for other handlers.
pub(crate) fn pre_stop_sleep(
    hook: &k8s_openapi::api::core::v1::LifecycleHandler,
    grace: Duration,
) -> Option<Duration> {
    let seconds = hook.sleep.as_ref()?.seconds;
    Some(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)).min(grace))
}

/// An ephemeral container as the container it runs as: the same fields
/// (`targetContainerName` is read where the container starts: it joins
/// the target's PID namespace).
fn ephemeral_as_container(e: &k8s_openapi::api::core::v1::EphemeralContainer) -> Container {
    Container {
        name: e.name.clone(),
        image: e.image.clone(),
        command: e.command.clone(),
        args: e.args.clone(),
        env: e.env.clone(),
        env_from: e.env_from.clone(),
        image_pull_policy: e.image_pull_policy.clone(),
        security_context: e.security_context.clone(),
        stdin: e.stdin,
        stdin_once: e.stdin_once,
        tty: e.tty,
        termination_message_path: e.termination_message_path.clone(),
        termination_message_policy: e.termination_message_policy.clone(),
        volume_mounts: e.volume_mounts.clone(),
        working_dir: e.working_dir.clone(),
        ..Container::default()
    }
}
