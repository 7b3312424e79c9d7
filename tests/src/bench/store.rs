//! `cargo xtask bench store`: the same etcd v3 load against shoal's store
//! and a real etcd 3.4, single-member and 3-member, in one run.
//!
//! Both servers run on loopback with their own data directories under a
//! temporary directory, and are driven by the same load generator (the
//! `etcd-client` crate, the client the apiserver uses).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use etcd_client::{Client, GetOptions, WatchOptions};
use tokio::sync::Barrier;

use super::{Row, Summary};

/// The reference's name in the table and JSON.
const REFERENCE: &str = "etcd 3.4";
/// Value size of the put load (the figure).
const VALUE_BYTES: usize = 256;
/// How long each closed-loop case runs.
const CASE_DURATION: Duration = Duration::from_secs(4);
/// Concurrent clients of the put cases.
const PUT_CLIENTS: [usize; 4] = [1, 16, 64, 256];
/// Concurrent clients of the get cases.
const GET_CLIENTS: usize = 16;
/// Watchers of the watch-latency case.
const WATCHERS: usize = 100;
/// Puts observed by every watcher in the watch-latency case.
const WATCH_PUTS: usize = 300;
/// gRPC connections shared by the clients (as etcd's own benchmark tool
/// shares `--conns` among `--clients`).
const MAX_CONNS: usize = 16;

/// Which store a server process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// `shoal store`.
    Shoal,
    /// Debian's etcd 3.4.
    Etcd,
}

/// A running cluster of one system, killed on drop.
struct Cluster {
    children: Vec<Child>,
    endpoints: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(crate::ports::free_loopback_addr()
        .context("picking a free loopback port")?
        .port())
}

/// Starts `members` members of `system` with data under `dir`.
fn start(system: System, members: usize, dir: &Path, shoal_bin: &Path) -> Result<Cluster> {
    let mut client_ports = Vec::new();
    let mut peer_ports = Vec::new();
    for _ in 0..members {
        client_ports.push(free_port()?);
        peer_ports.push(free_port()?);
    }
    let initial: Vec<String> = (0..members)
        .map(|i| format!("n{}=http://127.0.0.1:{}", i + 1, peer_ports[i]))
        .collect();
    let initial = initial.join(",");
    let mut children = Vec::new();
    for i in 0..members {
        let data = dir.join(format!("{system:?}-{members}-n{}", i + 1));
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(data.with_extension("log"))?;
        let client = format!("http://127.0.0.1:{}", client_ports[i]);
        let peer = format!("http://127.0.0.1:{}", peer_ports[i]);
        let mut cmd = match system {
            System::Etcd => {
                let mut c = Command::new("etcd");
                c.args(["--name", &format!("n{}", i + 1)])
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--listen-client-urls", &client])
                    .args(["--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &peer])
                    .args(["--initial-advertise-peer-urls", &peer])
                    .args(["--initial-cluster", &initial])
                    .args(["--initial-cluster-state", "new"]);
                c
            }
            System::Shoal => {
                let mut c = Command::new(shoal_bin);
                c.arg("store")
                    .args(["--name", &format!("n{}", i + 1)])
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--listen", &format!("127.0.0.1:{}", client_ports[i])])
                    .args(["--peer-listen", &format!("127.0.0.1:{}", peer_ports[i])])
                    .args(["--initial-cluster", &initial]);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        children.push(
            cmd.spawn()
                .with_context(|| format!("starting {system:?} member {}", i + 1))?,
        );
    }
    let endpoints = client_ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    Ok(Cluster {
        children,
        endpoints,
    })
}

/// Waits until the cluster answers a linearizable get (it has a leader).
async fn wait_ready(cluster: &Cluster) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut c = Client::connect(&cluster.endpoints, None).await?;
            c.get("bench-ready", None).await?;
            Ok::<_, etcd_client::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if Instant::now() > deadline => bail!("cluster not ready after 30 s: {e}"),
            Err(_) if Instant::now() > deadline => bail!("cluster not ready after 30 s"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn connections(endpoints: &[String], n: usize) -> Result<Vec<Client>> {
    let mut out = Vec::new();
    for i in 0..n {
        // Spread connections over members like etcd's benchmark does.
        let ep = &endpoints[i % endpoints.len()];
        out.push(Client::connect([ep], None).await.context("connecting")?);
    }
    Ok(out)
}

/// Runs `clients` closed-loop tasks for [`CASE_DURATION`]; each iteration is
/// one request timed on its own.
async fn closed_loop<F, Fut>(endpoints: &[String], clients: usize, op: F) -> Result<Summary>
where
    F: Fn(Client, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), etcd_client::Error>> + Send,
{
    let conns = connections(endpoints, clients.clamp(1, MAX_CONNS)).await?;
    let op = Arc::new(op);
    let barrier = Arc::new(Barrier::new(clients));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let client = conns[i % conns.len()].clone();
        let op = op.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let started = Instant::now();
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            while started.elapsed() < CASE_DURATION {
                let t = Instant::now();
                match op(client.clone(), i, n).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
                n += 1;
            }
            (lat, errors, started.elapsed())
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut longest = Duration::ZERO;
    for t in tasks {
        let (lat, e, took) = t.await.context("load task panicked")?;
        all.extend(lat);
        errors += e;
        longest = longest.max(took);
    }
    Ok(Summary::new(all, errors, longest))
}

async fn puts(endpoints: &[String], clients: usize) -> Result<Summary> {
    let value = vec![b'v'; VALUE_BYTES];
    closed_loop(endpoints, clients, move |mut c, i, n| {
        let value = value.clone();
        async move {
            c.put(format!("bench/put/{i}/{}", n % 1000), value, None)
                .await
                .map(|_| ())
        }
    })
    .await
}

async fn gets(endpoints: &[String], serializable: bool) -> Result<Summary> {
    let mut c = Client::connect(endpoints, None).await?;
    for k in 0..1000 {
        c.put(format!("bench/get/{k}"), vec![b'v'; VALUE_BYTES], None)
            .await?;
    }
    closed_loop(endpoints, GET_CLIENTS, move |mut c, _, n| async move {
        let opts = serializable.then(|| GetOptions::new().with_serializable());
        c.get(format!("bench/get/{}", n % 1000), opts)
            .await
            .map(|_| ())
    })
    .await
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Put → event latency seen by [`WATCHERS`] watchers on the put key's
/// prefix, each on its own watch stream. The put carries its send time.
async fn watch_latency(endpoints: &[String]) -> Result<Summary> {
    let conns = connections(endpoints, MAX_CONNS).await?;
    let mut watchers = Vec::new();
    for i in 0..WATCHERS {
        let mut c = conns[i % conns.len()].clone();
        let stream = c
            .watch("bench/watch/", Some(WatchOptions::new().with_prefix()))
            .await
            .context("creating a watcher")?;
        watchers.push(tokio::spawn(async move {
            let mut stream = stream;
            let mut lat = Vec::new();
            while lat.len() < WATCH_PUTS {
                let msg = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
                let Ok(Ok(Some(resp))) = msg else { break };
                let now = now_micros();
                for ev in resp.events() {
                    if let Some(kv) = ev.kv() {
                        let sent = std::str::from_utf8(kv.value())
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                            .unwrap_or(now);
                        lat.push(Duration::from_micros(now.saturating_sub(sent)));
                    }
                }
            }
            lat
        }));
    }
    // Let every watch be established before the first put.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut putter = conns[0].clone();
    let started = Instant::now();
    for n in 0..WATCH_PUTS {
        putter
            .put(format!("bench/watch/{n}"), now_micros().to_string(), None)
            .await?;
        // About 1,000 puts/s, the rate etcd's published watch figures use.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut all = Vec::new();
    let mut missing = 0u64;
    for w in watchers {
        let lat = w.await.context("watcher panicked")?;
        missing += (WATCH_PUTS - lat.len().min(WATCH_PUTS)) as u64;
        all.extend(lat);
    }
    Ok(Summary::new(all, missing, started.elapsed()))
}

/// One system's figures for one topology.
struct Figures {
    cases: Vec<(String, Summary)>,
}

async fn measure(endpoints: &[String]) -> Result<Figures> {
    let mut cases = Vec::new();
    for c in PUT_CLIENTS {
        cases.push((format!("put 256 B, {c} clients"), puts(endpoints, c).await?));
    }
    cases.push((
        format!("get linearizable, {GET_CLIENTS} clients"),
        gets(endpoints, false).await?,
    ));
    cases.push((
        format!("get serializable, {GET_CLIENTS} clients"),
        gets(endpoints, true).await?,
    ));
    cases.push((
        format!("watch put->event, {WATCHERS} watchers"),
        watch_latency(endpoints).await?,
    ));
    Ok(Figures { cases })
}

/// Runs the whole store benchmark and returns its rows. Without a shoal
/// binary only the reference is measured (shoal's column is NaN).
pub async fn run(shoal_bin: Option<&Path>, work: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let systems: &[System] = match shoal_bin {
        Some(_) => &[System::Shoal, System::Etcd],
        None => &[System::Etcd],
    };
    let shoal_bin = shoal_bin.unwrap_or(Path::new("shoal"));
    for members in [1usize, 3] {
        let mut figures = Vec::new();
        for system in systems {
            let system = *system;
            let dir: PathBuf = work.join(format!("{system:?}-{members}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            eprintln!("bench store: {system:?}, {members} member(s)");
            let cluster = start(system, members, &dir, shoal_bin)?;
            wait_ready(&cluster).await.with_context(|| {
                format!(
                    "{system:?} with {members} member(s); logs in {}",
                    dir.display()
                )
            })?;
            figures.push(measure(&cluster.endpoints).await?);
        }
        let etcd = figures.pop().context("no reference figures")?;
        let nan = || Summary::new(Vec::new(), 0, Duration::from_secs(1));
        let shoal = figures.pop().unwrap_or_else(|| Figures {
            cases: etcd.cases.iter().map(|(c, _)| (c.clone(), nan())).collect(),
        });
        for ((case, s), (_, e)) in shoal.cases.iter().zip(&etcd.cases) {
            let case = format!("{members} member(s): {case}");
            // Watches are judged by their median latency, the rest by
            // throughput; every case also by its p99.
            rows.push(if case.contains("watch") {
                Row::lower(&case, "p50", "ms", s.p50_ms(), e.p50_ms(), REFERENCE)
            } else {
                Row::higher(&case, "throughput", "ops/s", s.rate(), e.rate(), REFERENCE)
            });
            rows.push(Row::lower(
                &case,
                "p99",
                "ms",
                s.p99_ms(),
                e.p99_ms(),
                REFERENCE,
            ));
            if s.errors > 0 || e.errors > 0 {
                eprintln!("  {case}: errors shoal {} etcd {}", s.errors, e.errors);
            }
        }
    }
    Ok(rows)
}
