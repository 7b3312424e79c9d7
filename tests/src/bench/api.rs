//! `cargo xtask bench api`: issue 4's load on a release `shoal server`
//! over its bundled store. 200 watchers open on a namespace, then 10k pod
//! creates at 64 concurrency, then lists of the 10k pods as JSON and as a
//! Table, from the store and from the watch cache.
//!
//! No kube-apiserver runs on the build machines, so the reference column
//! holds issue 4's goals and the Kubernetes SLOs instead of a measurement.
//! The client is HTTP/2 over TLS with the admin certificate of the server's
//! kubeconfig, as kubectl and client-go talk to an apiserver.

pub(super) mod client;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use serde::{Deserialize, de::IgnoredAny};
use serde_json::json;
use tokio::sync::watch;

use self::client::{ApiClient, Conn, Kubeconfig};
use super::{Row, Summary};

/// Pods created.
const PODS: usize = 10_000;
/// Creates in flight at once.
const CREATE_CONCURRENCY: usize = 64;
/// HTTP/2 connections the creates share.
const CREATE_CONNS: usize = 2;
/// Watchers on the namespace, open before the first create.
const WATCHERS: usize = 200;
/// HTTP/2 connections the watchers share (the server allows 200 streams
/// per connection, as Kubernetes' default).
const WATCH_CONNS: usize = 2;
/// Runs of each list case (interleaved, so noise spreads over all cases).
const LIST_RUNS: usize = 10;
/// How long the watchers may lag behind the last create.
const WATCH_DRAIN: Duration = Duration::from_secs(90);
/// How long the server may take to answer /readyz.
const READY_WAIT: Duration = Duration::from_secs(60);
/// The namespace the pods live in.
const NAMESPACE: &str = "bench";
/// Every benchmark pod's name starts with this.
const POD_PREFIX: &str = "bench-";
/// Linux reports process CPU time in USER_HZ, 100 on every architecture.
const USER_HZ: f64 = 100.0;

const JSON: &str = "application/json";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

const GOAL: &str = "goal (issue 4)";
const SLO_MUTATING: &str = "Kubernetes SLO: mutating calls p99 <= 1 s";
const SLO_LIST: &str = "Kubernetes SLO: namespace-scoped LIST p99 <= 30 s";
const INFORMATIONAL: &str = "none (informational)";

/// Issue 4's goals.
const GOAL_CREATES_PER_S: f64 = 3000.0;
const GOAL_CREATE_P99_MS: f64 = 50.0;
const GOAL_LIST_MS: f64 = 150.0;
/// The Kubernetes SLOs (sig-scalability, api_call_latency.md).
const SLO_MUTATING_P99_MS: f64 = 1000.0;
const SLO_LIST_P99_MS: f64 = 30_000.0;

/// A `shoal server` on loopback, killed on drop (the scheduler bench
/// starts its server the same way).
pub(super) struct Server {
    child: Child,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(crate::ports::free_loopback_addr()
        .context("picking a free loopback port")?
        .port())
}

impl Server {
    pub(super) fn start(shoal_bin: &Path, dir: &Path) -> Result<Self> {
        Self::start_with(shoal_bin, dir, &[])
    }

    /// [`Server::start`] with more `shoal server` flags.
    pub(super) fn start_with(shoal_bin: &Path, dir: &Path, extra: &[&str]) -> Result<Self> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = Command::new(shoal_bin)
            .arg("server")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--store-listen", &format!("127.0.0.1:{}", free_port()?)])
            .args([
                "--store-peer-listen",
                &format!("127.0.0.1:{}", free_port()?),
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", shoal_bin.display()))?;
        Ok(Self {
            child,
            dir: dir.to_owned(),
        })
    }

    /// Waits for the kubeconfig and a 200 from /readyz.
    pub(super) async fn wait_ready(&mut self) -> Result<ApiClient> {
        let kubeconfig = self.dir.join("data/kubeconfig");
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "shoal server exited ({status}); its log is {}",
                    self.dir.join("server.log").display()
                );
            }
            let attempt = async {
                let client = ApiClient::new(&Kubeconfig::load(&kubeconfig)?)?;
                let (status, body) = client
                    .connect()
                    .await?
                    .call(Method::GET, "/readyz", "*/*", None)
                    .await?;
                ensure!(
                    status == StatusCode::OK,
                    "/readyz: {status} {}",
                    String::from_utf8_lossy(&body)
                );
                Ok(client)
            };
            match attempt.await {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "shoal server not ready after {READY_WAIT:?}; its log is {}",
                        self.dir.join("server.log").display()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// User plus system CPU seconds of a process so far.
pub(super) fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after "(comm) ": state is the first, utime the 12th, stime
    // the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => (u + s) / USER_HZ,
        _ => f64::NAN,
    }
}

/// A `/proc/<pid>/status` memory figure (such as `VmRSS`) in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn pod_name(i: usize) -> String {
    format!("{POD_PREFIX}{i:05}")
}

/// A pod as a deployment would stamp it: an app container with ports,
/// resources, env and a probe, and a log-shipping sidecar.
fn pod(i: usize) -> Bytes {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(i),
            "labels": {"app": "bench", "tier": "web", "shard": format!("s{}", i % 16)},
            "annotations": {"bench.shoal.io/run": "api"},
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "busybox:1.36",
                    "command": ["sleep", "3600"],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": "POD_INDEX", "value": i.to_string()}],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "64Mi"},
                        "limits": {"memory": "128Mi"},
                    },
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                },
                {
                    "name": "log-shipper",
                    "image": "busybox:1.36",
                    "args": ["tail", "-F", "/var/log/app.log"],
                    "volumeMounts": [{"name": "logs", "mountPath": "/var/log"}],
                },
            ],
            "volumes": [{"name": "logs", "emptyDir": {}}],
        },
    });
    Bytes::from(pod.to_string())
}

/// Creates the namespace and returns its resourceVersion.
async fn create_namespace(conn: &Conn) -> Result<String> {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    let (status, body) = conn
        .call(
            Method::POST,
            "/api/v1/namespaces",
            JSON,
            Some(Bytes::from(ns.to_string())),
        )
        .await?;
    ensure!(
        status == StatusCode::CREATED,
        "creating namespace {NAMESPACE}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v.pointer("/metadata/resourceVersion")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .context("the created namespace has no resourceVersion")
}

/// The value of the first `"<field>":"..."` in a JSON line.
fn string_field<'a>(line: &'a [u8], field: &[u8]) -> Option<&'a [u8]> {
    let at = memchr::memmem::find(line, field)? + field.len();
    let rest = &line[at..];
    Some(&rest[..memchr::memchr(b'"', rest)?])
}

/// What one watcher saw.
#[derive(Default)]
struct Watched {
    /// (pod index, arrival in µs since the run's epoch) per ADDED event.
    arrivals: Vec<(u32, u64)>,
    /// ADDED events for a pod already seen.
    duplicates: u64,
    /// Times the stream ended early and was resumed from the last
    /// resourceVersion seen, as a reflector does.
    restarts: u64,
    /// ERROR events and refused watches.
    errors: Vec<String>,
}

/// One watcher: counts the bench pods' ADDED events until it has seen
/// `PODS` distinct pods or `stop` fires.
async fn watcher(
    conn: Conn,
    from_rv: String,
    epoch: Instant,
    progress: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> Watched {
    let mut out = Watched::default();
    let mut seen = vec![false; PODS];
    let mut count = 0usize;
    let mut rv = from_rv;
    let mut buf = BytesMut::new();
    'watch: while count < PODS && !*stop.borrow() {
        let path = format!("/api/v1/namespaces/{NAMESPACE}/pods?watch=1&resourceVersion={rv}");
        let opened = tokio::select! {
            _ = stop.changed() => break 'watch,
            o = conn.open(Method::GET, &path, JSON, None) => o,
        };
        let mut body = match opened {
            Ok((StatusCode::OK, body)) => body,
            Ok((status, _)) => {
                out.errors.push(format!("watch refused: {status}"));
                out.restarts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                out.errors.push(format!("watch failed: {e:#}"));
                out.restarts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        buf.clear();
        loop {
            let frame = tokio::select! {
                biased;
                _ = stop.changed() => break 'watch,
                f = body.frame() => f,
            };
            let data = match frame {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    out.errors.push(format!("watch stream failed: {e}"));
                    break;
                }
                None => break,
            };
            let now = epoch.elapsed().as_micros() as u64;
            buf.extend_from_slice(&data);
            let mut start = 0;
            while let Some(nl) = memchr::memchr(b'\n', &buf[start..]) {
                let line = &buf[start..start + nl];
                start += nl + 1;
                if let Some(v) = string_field(line, b"\"resourceVersion\":\"") {
                    rv = String::from_utf8_lossy(v).into_owned();
                }
                if line.starts_with(b"{\"type\":\"ERROR\"") {
                    out.errors
                        .push(String::from_utf8_lossy(line).chars().take(300).collect());
                    continue;
                }
                if !line.starts_with(b"{\"type\":\"ADDED\"") {
                    continue;
                }
                let Some(idx) = string_field(line, b"\"name\":\"bench-")
                    .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
                    .filter(|i| *i < PODS)
                else {
                    continue;
                };
                if seen[idx] {
                    out.duplicates += 1;
                    continue;
                }
                seen[idx] = true;
                count += 1;
                out.arrivals.push((idx as u32, now));
            }
            let _ = buf.split_to(start);
            progress.store(count, Ordering::Relaxed);
            if count == PODS {
                break 'watch;
            }
        }
        // The stream ended before every event: resume after the last one.
        out.restarts += 1;
    }
    out
}

/// The create phase's figures.
struct Creates {
    summary: Summary,
    /// Pods created.
    ok: usize,
    /// Wall time of the phase.
    elapsed: Duration,
    /// Create response arrival per pod, µs since the epoch (0: failed).
    done_at: Vec<u64>,
    /// When the last create answered, µs since the epoch.
    ended_at: u64,
}

async fn create_pods(conns: &[Conn], epoch: Instant) -> Result<Creates> {
    let next = Arc::new(AtomicUsize::new(0));
    let done_at: Arc<Vec<AtomicU64>> = Arc::new((0..PODS).map(|_| AtomicU64::new(0)).collect());
    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..CREATE_CONCURRENCY {
        let conn = conns[t % conns.len()].clone();
        let (next, done_at, path) = (next.clone(), done_at.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= PODS {
                    break;
                }
                let body = pod(i);
                let sent = Instant::now();
                match conn.call(Method::POST, &path, JSON, Some(body)).await {
                    Ok((StatusCode::CREATED, _)) => {
                        lat.push(sent.elapsed());
                        done_at[i].store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                    Ok((status, body)) => errors.push(format!(
                        "{status} {}",
                        String::from_utf8_lossy(&body)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    )),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::with_capacity(PODS);
    let mut errors = Vec::new();
    for t in tasks {
        let (lat, e) = t.await.context("a create task panicked")?;
        all.extend(lat);
        errors.extend(e);
    }
    let elapsed = started.elapsed();
    let ended_at = epoch.elapsed().as_micros() as u64;
    if !errors.is_empty() {
        eprintln!("  {} creates failed; first: {}", errors.len(), errors[0]);
    }
    let done_at = done_at.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    Ok(Creates {
        ok: all.len(),
        elapsed,
        summary: Summary::new(all, errors.len() as u64, elapsed),
        done_at,
        ended_at,
    })
}

#[derive(Deserialize)]
struct ListBody {
    items: Vec<IgnoredAny>,
}

#[derive(Deserialize)]
struct TableBody {
    rows: Vec<IgnoredAny>,
}

/// A list case: its name, query, Accept header and whether it pages.
struct ListCase {
    case: &'static str,
    query: &'static str,
    accept: &'static str,
    /// Pages of this many, following `continue` tokens, as kubectl and
    /// client-go's reflectors list from the store.
    limit: Option<usize>,
}

const LISTS: [ListCase; 5] = [
    ListCase {
        case: "list 10k pods JSON, consistent, one response",
        query: "",
        accept: JSON,
        limit: None,
    },
    ListCase {
        case: "list 10k pods JSON, consistent, pages of 500",
        query: "",
        accept: JSON,
        limit: Some(500),
    },
    ListCase {
        case: "list 10k pods JSON, rv=0 (watch cache)",
        query: "?resourceVersion=0",
        accept: JSON,
        limit: None,
    },
    ListCase {
        case: "list 10k pods Table, pages of 500 (kubectl get)",
        query: "",
        accept: TABLE,
        limit: Some(500),
    },
    ListCase {
        case: "list 10k pods Table, rv=0 (watch cache)",
        query: "?resourceVersion=0",
        accept: TABLE,
        limit: None,
    },
];

/// The objects in one list response (items, or rows of a Table).
fn objects_in(body: &[u8], accept: &str) -> Option<usize> {
    if accept == JSON {
        serde_json::from_slice::<ListBody>(body)
            .ok()
            .map(|b| b.items.len())
    } else {
        serde_json::from_slice::<TableBody>(body)
            .ok()
            .map(|b| b.rows.len())
    }
}

/// `raw` percent-encoded for a query value.
fn query_escape(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for &b in raw {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One list, every page of it; the responses are checked after the clock
/// stops.
async fn list_once(conn: &Conn, l: &ListCase) -> Result<(Duration, Vec<Bytes>)> {
    let base = format!("/api/v1/namespaces/{NAMESPACE}/pods{}", l.query);
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    let t = Instant::now();
    loop {
        let path = match (l.limit, &token) {
            (None, _) => base.clone(),
            (Some(n), None) => format!("{base}?limit={n}"),
            (Some(n), Some(c)) => format!("{base}?limit={n}&continue={c}"),
        };
        let (status, body) = conn.call(Method::GET, &path, l.accept, None).await?;
        if status != StatusCode::OK {
            bail!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        token = l
            .limit
            .and(string_field(&body, b"\"continue\":\""))
            .filter(|c| !c.is_empty())
            .map(query_escape);
        pages.push(body);
        if token.is_none() {
            return Ok((t.elapsed(), pages));
        }
    }
}

/// Times [`LIST_RUNS`] runs of every list case, checking each returned
/// `expected` objects. Returns one summary per case and the bytes of one
/// run.
async fn lists(conn: &Conn, expected: usize) -> Result<Vec<(Summary, usize)>> {
    let mut lat = vec![Vec::new(); LISTS.len()];
    let mut errors = vec![0u64; LISTS.len()];
    let mut size = vec![0usize; LISTS.len()];
    let mut busy = vec![Duration::ZERO; LISTS.len()];
    for _ in 0..LIST_RUNS {
        for (c, l) in LISTS.iter().enumerate() {
            let result = list_once(conn, l).await.and_then(|(took, pages)| {
                let n = pages
                    .iter()
                    .map(|p| objects_in(p, l.accept))
                    .sum::<Option<usize>>();
                ensure!(n == Some(expected), "{n:?} objects, want {expected}");
                Ok((took, pages.iter().map(Bytes::len).sum::<usize>()))
            });
            match result {
                Ok((took, bytes)) => {
                    lat[c].push(took);
                    busy[c] += took;
                    size[c] = bytes;
                }
                Err(e) => {
                    if errors[c] == 0 {
                        eprintln!("  {}: {e:#}", l.case);
                    }
                    errors[c] += 1;
                }
            }
        }
    }
    Ok(lat
        .into_iter()
        .zip(errors)
        .zip(busy)
        .zip(size)
        .map(|(((l, e), b), s)| (Summary::new(l, e, b.max(Duration::from_nanos(1))), s))
        .collect())
}

/// Runs issue 4's load on a release `shoal server` and returns the rows.
pub async fn run(shoal_bin: Option<&Path>, work: &Path) -> Result<Vec<Row>> {
    let shoal_bin = shoal_bin.context("bench api measures shoal itself: pass --shoal")?;
    let dir = work.join("api");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "bench api: starting shoal server (data in {})",
        dir.display()
    );
    let mut server = Server::start(shoal_bin, &dir)?;
    let client = server.wait_ready().await?;
    let pid = server.pid();

    let admin = client.connect().await?;
    let from_rv = create_namespace(&admin).await?;

    eprintln!("bench api: {WATCHERS} watchers from resourceVersion {from_rv}");
    let epoch = Instant::now();
    let mut watch_conns = Vec::new();
    for _ in 0..WATCH_CONNS {
        watch_conns.push(client.connect().await?);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut watchers = Vec::new();
    let mut progress = Vec::new();
    for w in 0..WATCHERS {
        let p = Arc::new(AtomicUsize::new(0));
        progress.push(p.clone());
        watchers.push(tokio::spawn(watcher(
            watch_conns[w % WATCH_CONNS].clone(),
            from_rv.clone(),
            epoch,
            p,
            stop_rx.clone(),
        )));
    }
    // Let every watch stream open before the first create (a late one
    // would still see every event, from its resourceVersion).
    tokio::time::sleep(Duration::from_millis(500)).await;

    eprintln!("bench api: {PODS} pod creates at {CREATE_CONCURRENCY} concurrency");
    let mut create_conns = Vec::new();
    for _ in 0..CREATE_CONNS {
        create_conns.push(client.connect().await?);
    }
    let me = std::process::id();
    let (cpu_before, client_before) = (cpu_seconds(pid), cpu_seconds(me));
    let creates = create_pods(&create_conns, epoch).await?;
    let cpu_creates = cpu_seconds(pid) - cpu_before;
    let created = creates.ok;
    eprintln!(
        "  {created} created in {:.2} s; server CPU {:.1} s ({:.2} ms per create, fan-out included), client CPU {:.1} s",
        creates.elapsed.as_secs_f64(),
        cpu_creates,
        cpu_creates * 1e3 / created.max(1) as f64,
        cpu_seconds(me) - client_before,
    );

    // Wait for the watchers to see every created pod.
    let deadline = Instant::now() + WATCH_DRAIN;
    while Instant::now() < deadline && progress.iter().any(|p| p.load(Ordering::Relaxed) < created)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let cpu_drained = cpu_seconds(pid) - cpu_before;
    let mut seen_total = 0u64;
    let mut event_lat = Vec::with_capacity(WATCHERS * PODS);
    let mut last_arrival = 0u64;
    let (mut duplicates, mut restarts, mut watch_errors) = (0u64, 0u64, Vec::new());
    let mut short_watchers = 0usize;
    for w in watchers {
        let w = w.await.context("a watcher panicked")?;
        if w.arrivals.len() < created {
            short_watchers += 1;
        }
        seen_total += w.arrivals.len() as u64;
        for (idx, at) in &w.arrivals {
            let done = creates.done_at[*idx as usize];
            if done > 0 {
                // The event may beat the create's own response: that is 0.
                event_lat.push(Duration::from_micros(at.saturating_sub(done)));
            }
            last_arrival = last_arrival.max(*at);
        }
        duplicates += w.duplicates;
        restarts += w.restarts;
        watch_errors.extend(w.errors);
    }
    let expected = (created * WATCHERS) as u64;
    let missing = expected.saturating_sub(seen_total);
    eprintln!(
        "  watchers: {seen_total}/{expected} events ({missing} missing, {short_watchers} watchers short), {duplicates} duplicates, {restarts} restarts; last event {:.2} s after the last create; server CPU {:.1} s from the first create to the last event, RSS {:.0} MiB before the lists",
        last_arrival.saturating_sub(creates.ended_at) as f64 / 1e6,
        cpu_drained,
        status_mib(pid, "VmRSS"),
    );
    if let Some(e) = watch_errors.first() {
        eprintln!("  {} watch errors; first: {e}", watch_errors.len());
    }
    let events = Summary::new(event_lat, missing, Duration::from_secs(1));

    eprintln!(
        "bench api: lists ({LIST_RUNS} runs of {} cases)",
        LISTS.len()
    );
    let lists = lists(&admin, created).await?;
    for ((s, size), l) in lists.iter().zip(&LISTS) {
        eprintln!(
            "  {}: {:.1} MiB per list, {} of {LIST_RUNS} failed",
            l.case,
            *size as f64 / (1 << 20) as f64,
            s.errors
        );
    }
    let rss = status_mib(pid, "VmRSS");
    let peak = status_mib(pid, "VmHWM");
    drop(server);

    let c = &creates.summary;
    let case = format!("create pod, {CREATE_CONCURRENCY} concurrent, {WATCHERS} watchers");
    let mut rows = vec![
        Row::higher(
            &case,
            "throughput",
            "pods/s",
            c.rate(),
            GOAL_CREATES_PER_S,
            GOAL,
        ),
        Row::lower(&case, "p50", "ms", c.p50_ms(), f64::NAN, INFORMATIONAL),
        Row::lower(&case, "p99", "ms", c.p99_ms(), GOAL_CREATE_P99_MS, GOAL),
        Row::lower(
            &case,
            "p99",
            "ms",
            c.p99_ms(),
            SLO_MUTATING_P99_MS,
            SLO_MUTATING,
        ),
    ];
    let case = format!("watch, {WATCHERS} watchers x {PODS} creates");
    rows.push(Row::higher(
        &case,
        "delivered",
        "%",
        100.0 * seen_total as f64 / expected as f64,
        100.0,
        GOAL,
    ));
    let case = "watch event latency, from the create response";
    rows.push(Row::lower(
        case,
        "p50",
        "ms",
        events.p50_ms(),
        f64::NAN,
        INFORMATIONAL,
    ));
    rows.push(Row::lower(
        case,
        "p99",
        "ms",
        events.p99_ms(),
        f64::NAN,
        INFORMATIONAL,
    ));
    for ((s, _), l) in lists.iter().zip(&LISTS) {
        rows.push(Row::lower(
            l.case,
            "p50",
            "ms",
            s.p50_ms(),
            GOAL_LIST_MS,
            GOAL,
        ));
        rows.push(Row::lower(
            l.case,
            "p99",
            "ms",
            s.p99_ms(),
            SLO_LIST_P99_MS,
            SLO_LIST,
        ));
    }
    let case = "shoal server (API + bundled store), at the end";
    rows.push(Row::lower(case, "RSS", "MiB", rss, f64::NAN, INFORMATIONAL));
    rows.push(Row::lower(
        case,
        "peak RSS",
        "MiB",
        peak,
        f64::NAN,
        INFORMATIONAL,
    ));
    println!(
        "references: {GOAL} = {GOAL_CREATES_PER_S} creates/s, create p99 {GOAL_CREATE_P99_MS} ms, list {GOAL_LIST_MS} ms (judged on the median), every event delivered;"
    );
    println!("  {SLO_MUTATING}; {SLO_LIST}; NaN reference = {INFORMATIONAL}");
    println!(
        "  lists: median and p99 of {LIST_RUNS} runs (p99 of {LIST_RUNS} is their slowest); a NaN figure is a case that failed (see above)"
    );
    println!(
        "  client, server and store share this machine's cores (and other builds may run): figures are noisy"
    );
    Ok(rows)
}
