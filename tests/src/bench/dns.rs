//! `cargo xtask bench dns`: shoal-dns holding 10,000 Services (fed by a
//! release `shoal server` through its watchers) against nsd serving the
//! same 10,000 names from a zone file, both on loopback, driven by dnsperf
//! with the same query mix and duration; plus one-at-a-time latency and how
//! soon a new Service resolves after its create returns.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    api::PostParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use shoal_dns::{ClusterView, Config, Server};
use tokio::{net::UdpSocket, task::JoinSet};

use super::{Row, Summary};

/// Services (and names) each server holds.
const SERVICES: usize = 10_000;
/// One in this many queries asks a name that does not exist (a search-path
/// expansion, as ndots 5 makes clients send).
const NXDOMAIN_EVERY: usize = 10;
/// dnsperf runs per server, alternating between them.
const RUNS: usize = 3;
/// Seconds per dnsperf run.
const SECONDS: u32 = 10;
/// dnsperf clients (sockets), as in TOOLCHAIN.md's reference figures.
const CLIENTS: u32 = 10;
/// Queries in the one-at-a-time latency probe, per server.
const PROBE_QUERIES: usize = 20_000;
/// Services created one by one to time how soon each resolves.
const FRESHNESS_SAMPLES: usize = 50;
/// Creates in flight while loading the 10,000 Services.
const CREATE_CONCURRENCY: usize = 32;
const READY_WAIT: Duration = Duration::from_secs(60);
const DOMAIN_NS: &str = "default";

const NSD: &str = "/usr/sbin/nsd";
const DNSPERF: &str = "/usr/bin/dnsperf";
const NSD_NAME: &str = "nsd 4.6 (Debian), same names from a zone file";
const GOAL: &str = "goal (issue 9)";
const GOAL_QPS: f64 = 50_000.0;
const GOAL_P99_MS: f64 = 2.0;
const GOAL_FRESH_MS: f64 = 100.0;
const COREDNS: &str = "CoreDNS published: 33,669 QPS for cluster names on 2 vCPUs";
const COREDNS_QPS: f64 = 33_669.0;

/// A child process killed on drop.
pub(super) struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address whose port was free a moment ago (UDP and TCP).
fn free_addr() -> Result<SocketAddr> {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = tcp.local_addr()?;
        if std::net::UdpSocket::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no loopback port free for both UDP and TCP")
}

/// Starts a `shoal server` (API + bundled store on free loopback ports)
/// with its data dir under `dir`.
pub(super) fn start_server(shoal: &Path, dir: &Path) -> Result<Proc> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let log = std::fs::File::create(dir.join("server.log"))?;
    let child = Command::new(shoal)
        .arg("server")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &free_addr()?.to_string()])
        .args(["--store-listen", &free_addr()?.to_string()])
        .args(["--store-peer-listen", &free_addr()?.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", shoal.display()))?;
    Ok(Proc(child))
}

/// A client of the server once it answers and its admission is ready.
pub(super) async fn client(kubeconfig: &Path) -> Result<Client> {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let attempt = async {
            let kc = Kubeconfig::read_from(kubeconfig)?;
            let config =
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
            let client = Client::try_from(config)?;
            client.apiserver_version().await?;
            // Admission allocates ClusterIPs once the API is ready.
            let _: Vec<Service> = Api::<Service>::namespaced(client.clone(), DOMAIN_NS)
                .list(&Default::default())
                .await?
                .items;
            anyhow::Ok(client)
        };
        match attempt.await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("shoal server not ready in {READY_WAIT:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn service(name: &str) -> Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": DOMAIN_NS},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }))?)
}

fn name_of(i: usize) -> String {
    format!("svc-{i}")
}

/// Creates the Services; returns each one's IPv4 ClusterIP.
async fn create_services(client: &Client) -> Result<Vec<String>> {
    let api: Api<Service> = Api::namespaced(client.clone(), DOMAIN_NS);
    let mut ips = vec![String::new(); SERVICES];
    let mut tasks = JoinSet::new();
    let mut next = 0;
    let mut done = 0;
    while done < SERVICES {
        while next < SERVICES && tasks.len() < CREATE_CONCURRENCY {
            let api = api.clone();
            let i = next;
            tasks.spawn(async move {
                let svc = api
                    .create(&PostParams::default(), &service(&name_of(i))?)
                    .await?;
                let ip = svc
                    .spec
                    .and_then(|s| s.cluster_ip)
                    .with_context(|| format!("{} got no ClusterIP", name_of(i)))?;
                anyhow::Ok((i, ip))
            });
            next += 1;
        }
        if let Some(r) = tasks.join_next().await {
            let (i, ip) = r??;
            ips[i] = ip;
            done += 1;
        }
    }
    Ok(ips)
}

/// A DNS query for `name` (A) with id `id`.
fn query_packet(id: u16, name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

/// One query, waiting for its answer; `Some(rcode, answers)`.
async fn ask(sock: &UdpSocket, addr: SocketAddr, id: u16, name: &str) -> Result<Option<(u8, u16)>> {
    sock.send_to(&query_packet(id, name), addr).await?;
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_millis(500);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                return Ok(Some((buf[3] & 0x0f, u16::from_be_bytes([buf[6], buf[7]]))));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => break,
        }
    }
    Ok(None)
}

/// Sequential queries over the mix: the latency a lone client sees.
async fn probe(addr: SocketAddr, names: &[String]) -> Result<Summary> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let mut latencies = Vec::with_capacity(PROBE_QUERIES);
    let mut errors = 0;
    let start = Instant::now();
    for i in 0..PROBE_QUERIES {
        let name = &names[i % names.len()];
        let t = Instant::now();
        match ask(&sock, addr, i as u16, name).await? {
            Some(_) => latencies.push(t.elapsed()),
            None => errors += 1,
        }
    }
    Ok(Summary::new(latencies, errors, start.elapsed()))
}

/// One dnsperf run: (queries per second, average latency in ms, lost queries).
fn dnsperf(addr: SocketAddr, queries: &Path) -> Result<(f64, f64, u64)> {
    let out = Command::new(DNSPERF)
        .args(["-s", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("-d")
        .arg(queries)
        .args(["-l", &SECONDS.to_string(), "-c", &CLIENTS.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "dnsperf failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |label: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {label:?} in dnsperf's output: {text}"))
    };
    Ok((
        field("Queries per second:")?,
        field("Average Latency (s):")? * 1e3,
        field("Queries lost:")? as u64,
    ))
}

fn start_nsd(dir: &Path, zone: &str) -> Result<(Proc, SocketAddr)> {
    if !Path::new(NSD).exists() {
        bail!("{NSD} is missing: run `cargo xtask setup` (it installs nsd)");
    }
    let addr = free_addr()?;
    let d = dir.display();
    std::fs::write(dir.join("cluster.local.zone"), zone)?;
    let conf = format!(
        "server:\n  ip-address: {ip}@{port}\n  port: {port}\n  username: \"\"\n  chroot: \"\"\n  \
         zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  \
         xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  \
         logfile: \"{d}/nsd.log\"\n  verbosity: 0\n  \
         server-count: {cpus}\n  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n\
         remote-control:\n  control-enable: no\n\
         zone:\n  name: cluster.local\n  zonefile: \"{d}/cluster.local.zone\"\n",
        ip = addr.ip(),
        port = addr.port(),
        // One nsd process per core, and no response rate limiting (Debian's nsd
        // limits each source to 200 answers a second, which a benchmark trips).
        cpus = std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    std::fs::write(dir.join("nsd.conf"), conf)?;
    let child = Command::new(NSD)
        .arg("-d")
        .arg("-c")
        .arg(dir.join("nsd.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nsd")?;
    Ok((Proc(child), addr))
}

async fn wait_answers(addr: SocketAddr, name: &str, what: &str) -> Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let deadline = Instant::now() + READY_WAIT;
    let mut id = 0u16;
    loop {
        id = id.wrapping_add(1);
        if let Some((0, n)) = ask(&sock, addr, id, name).await?
            && n > 0
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{what} did not answer {name} in {READY_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark; `shoal` is the release binary (its `server` feeds the view).
pub async fn run(shoal: Option<&Path>, work: &Path) -> Result<Vec<Row>> {
    let shoal = shoal.context("the DNS benchmark needs the shoal binary for its API server")?;
    for tool in [NSD, DNSPERF] {
        ensure!(
            Path::new(tool).exists(),
            "{tool} is missing: run `cargo xtask setup` (it installs dnsperf and nsd)"
        );
    }
    let dir: PathBuf = work.join("dns");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let _server = start_server(shoal, &dir)?;
    let client = client(&dir.join("data/kubeconfig")).await?;

    let started = Instant::now();
    let ips = create_services(&client).await?;
    println!(
        "created {SERVICES} Services in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let view = ClusterView::new("cluster.local", shoal_dns::DEFAULT_TTL)?;
    tokio::spawn(shoal_dns::watch(client.clone(), view.clone()));
    view.wait_synced().await;
    let config = Config {
        listen: vec![free_addr()?],
        ..Config::default()
    };
    let server = Server::bind(config, view.clone()).await?;
    let dns_addr = server.local_addrs()[0];
    tokio::spawn(server.serve(std::future::pending()));
    let last = format!("{}.{DOMAIN_NS}.svc.cluster.local", name_of(SERVICES - 1));
    wait_answers(dns_addr, &last, "shoal-dns").await?;

    // Freshness: create, then ask until it resolves.
    let api: Api<Service> = Api::namespaced(client.clone(), DOMAIN_NS);
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let mut fresh = Vec::with_capacity(FRESHNESS_SAMPLES);
    let mut id = 0u16;
    for i in 0..FRESHNESS_SAMPLES {
        let name = format!("fresh-{i}");
        api.create(&PostParams::default(), &service(&name)?).await?;
        let t = Instant::now();
        let fqdn = format!("{name}.{DOMAIN_NS}.svc.cluster.local");
        loop {
            id = id.wrapping_add(1);
            if let Some((0, n)) = ask(&sock, dns_addr, id, &fqdn).await?
                && n > 0
            {
                fresh.push(t.elapsed());
                break;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(10),
                "{fqdn} did not resolve in 10 s"
            );
        }
    }
    let fresh = Summary::new(fresh, 0, Duration::from_secs(1));

    // The same names for nsd, and the query mix for both.
    let mut zone = String::from(
        "$ORIGIN cluster.local.\n$TTL 5\n\
         @ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n\
         @ IN NS ns.dns.cluster.local.\nns.dns IN A 127.0.0.1\n",
    );
    let mut queries = String::new();
    let mut mix = Vec::with_capacity(SERVICES + SERVICES / NXDOMAIN_EVERY);
    for (i, ip) in ips.iter().enumerate() {
        let fqdn = format!("{}.{DOMAIN_NS}.svc.cluster.local", name_of(i));
        let _ = writeln!(zone, "{fqdn}. IN A {ip}");
        let _ = writeln!(queries, "{fqdn} A");
        mix.push(fqdn.clone());
        if i % NXDOMAIN_EVERY == 0 {
            let nx = format!("{fqdn}.{DOMAIN_NS}.svc.cluster.local");
            let _ = writeln!(queries, "{nx} A");
            mix.push(nx);
        }
    }
    let queries_path = dir.join("queries.txt");
    std::fs::write(&queries_path, queries)?;
    let nsd_dir = dir.join("nsd");
    std::fs::create_dir_all(&nsd_dir)?;
    let (_nsd, nsd_addr) = start_nsd(&nsd_dir, &zone)?;
    wait_answers(nsd_addr, &last, "nsd").await?;

    let probe_shoal = probe(dns_addr, &mix).await?;
    let probe_nsd = probe(nsd_addr, &mix).await?;

    let (mut qs, mut ls, mut qn, mut ln) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut lost_s, mut lost_n) = (0, 0);
    for run in 0..RUNS {
        let (q, l, lost) = dnsperf(dns_addr, &queries_path)?;
        println!("run {run}: shoal-dns {q:.0} QPS, avg {l:.3} ms, lost {lost}");
        qs.push(q);
        ls.push(l);
        lost_s += lost;
        let (q, l, lost) = dnsperf(nsd_addr, &queries_path)?;
        println!("run {run}: nsd       {q:.0} QPS, avg {l:.3} ms, lost {lost}");
        qn.push(q);
        ln.push(l);
        lost_n += lost;
    }
    let spread = |v: &[f64]| {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    };
    let (smin, smax) = spread(&qs);
    let (nmin, nmax) = spread(&qn);
    println!(
        "QPS spread over {RUNS} runs: shoal-dns {smin:.0}..{smax:.0}, nsd {nmin:.0}..{nmax:.0}; lost: shoal-dns {lost_s}, nsd {lost_n}"
    );
    let q_shoal = median(&mut qs);
    let q_nsd = median(&mut qn);
    let case = format!(
        "dnsperf -c {CLIENTS}, {SERVICES} names + 10% NXDOMAIN, {SECONDS} s, median of {RUNS}"
    );
    let lone = format!("one query at a time, {PROBE_QUERIES} queries");
    Ok(vec![
        Row::higher(&case, "throughput", "QPS", q_shoal, q_nsd, NSD_NAME),
        Row::higher(
            &format!("{case}: slowest run"),
            "throughput",
            "QPS",
            smin,
            nmin,
            NSD_NAME,
        ),
        Row::higher(
            &format!("{case}: fastest run"),
            "throughput",
            "QPS",
            smax,
            nmax,
            NSD_NAME,
        ),
        Row::lower(
            &case,
            "avg latency",
            "ms",
            median(&mut ls),
            median(&mut ln),
            NSD_NAME,
        ),
        Row::lower(
            &lone,
            "p50",
            "ms",
            probe_shoal.p50_ms(),
            probe_nsd.p50_ms(),
            NSD_NAME,
        ),
        Row::lower(
            &lone,
            "p99",
            "ms",
            probe_shoal.p99_ms(),
            probe_nsd.p99_ms(),
            NSD_NAME,
        ),
        Row::higher(&case, "throughput", "QPS", q_shoal, GOAL_QPS, GOAL),
        Row::higher(&case, "throughput", "QPS", q_shoal, COREDNS_QPS, COREDNS),
        Row::lower(&lone, "p99", "ms", probe_shoal.p99_ms(), GOAL_P99_MS, GOAL),
        Row::lower(
            &format!("new Service resolves after its create returns, {FRESHNESS_SAMPLES} creates"),
            "p50",
            "ms",
            fresh.p50_ms(),
            GOAL_FRESH_MS,
            GOAL,
        ),
        Row::lower(
            &format!("new Service resolves after its create returns, {FRESHNESS_SAMPLES} creates"),
            "p99",
            "ms",
            fresh.p99_ms(),
            GOAL_FRESH_MS,
            GOAL,
        ),
    ])
}
