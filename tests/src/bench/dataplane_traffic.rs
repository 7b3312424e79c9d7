//! `cargo xtask bench dataplane`, part (a): traffic through a ClusterIP.
//!
//! A 5-host lab. host-4 and host-5 each run one backend server on port
//! 8080 (the 2 endpoints of every Service: two hosts, so both backends sit
//! one veth hop away from every client, as two pods on two nodes would).
//! Three client hosts run the same load generator (`bench dataplane-load`,
//! this binary) one after the other, each with only its own machinery in
//! the path:
//!
//! | host | mode | what it connects to |
//! |---|---|---|
//! | host-1 | shoal | a random ClusterIP of the N Services; the agent's socket programs on host-1's cgroup pick a backend |
//! | host-2 | direct | a random one of the 2 backend addresses (the physical limit: no programs, no netfilter) |
//! | host-3 | iptables | a random ClusterIP; kube-proxy-shaped nat rules for the same N Services (iptables-legacy, host-3's netns only) DNAT it |
//!
//! Every connection is connect + a short request + the response + close
//! (the server closes first, and its namespace keeps no TIME_WAIT sockets,
//! so one client address does not run out of 4-tuples). The rate counts
//! completed connections per second; the latency is one connection's, from
//! `connect()` to the end of the response, under the same closed-loop load.
//! Modes are interleaved run by run so the machine's load drifts over all
//! three alike.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use serde::{Deserialize, Serialize};
use shoal_agent::{
    Dataplane, DataplaneConfig,
    services::{NodeView, State},
};

use super::{Row, Summary, dataplane};
use crate::lab::{Host, Lab, SERVICE_CIDR_V4};

/// Service counts measured.
const COUNTS: [usize; 3] = [1, 1_000, 10_000];
/// Runs per figure; the median is reported with the spread. More than
/// the minimum of 5: the machine is shared, and each run is short.
const RUNS: usize = 7;
/// Length of one measured run.
const RUN: Duration = Duration::from_millis(1_200);
/// Traffic before a run's measurement starts (connections warm the
/// caches, the threads get going).
const WARMUP: Duration = Duration::from_millis(200);
/// Concurrent connections of the load generator (one thread each): enough
/// to keep 2 cores busy with the servers and the kernel, not so many that
/// they only queue.
const CONNECTIONS: usize = 4;
/// Threads of each backend server (each serves one connection at a time).
const SERVER_THREADS: usize = 4;
/// The backends' port (the Services' targetPort).
const BACKEND_PORT: u16 = 8080;
/// The Services' port.
const SERVICE_PORT: u16 = 80;
/// What the client sends.
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
/// How long one connection may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

const DIRECT: &str = "direct to the backend pod IP (physical limit), lab netns";
const IPTABLES: &str = "kube-proxy-shaped iptables-legacy nat rules (statistic + DNAT), lab netns";

/// Arguments of `bench dataplane-serve`: a backend server.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Where to listen.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The reply's text (names the backend).
    #[arg(long)]
    pub name: String,
}

/// Arguments of `bench dataplane-load`: the load generator.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Connect to the ClusterIPs of Services 0..N (port 80), as the bench
    /// generates them.
    #[arg(long, conflicts_with = "target")]
    pub services: Option<usize>,
    /// Connect to these addresses (repeatable).
    #[arg(long)]
    pub target: Vec<SocketAddr>,
    /// Measured time in milliseconds.
    #[arg(long)]
    pub duration_ms: u64,
    /// Unmeasured time before it, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub warmup_ms: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = CONNECTIONS)]
    pub connections: usize,
}

/// What one load run reports (one JSON line).
#[derive(Serialize, Deserialize, Debug)]
struct LoadReport {
    /// Completed connections per second.
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    ok: usize,
    errors: u64,
    /// Up to 5 distinct error texts.
    error_texts: Vec<String>,
    /// Replies by the backend that sent them.
    backends: BTreeMap<String, usize>,
}

/// Serves forever: every connection gets `name\n` after its request, then
/// the server closes it. Prints `{"ready":true}` once listening.
pub fn serve(args: &ServeArgs) -> Result<Infallible> {
    // The server closes first, so its side would hold TIME_WAIT; with one
    // client address, new connections then hit those and stall (TOOLCHAIN.md).
    // This is the server's own lab namespace.
    std::fs::write("/proc/sys/net/ipv4/tcp_max_tw_buckets", "0")
        .context("setting net.ipv4.tcp_max_tw_buckets=0 in the server's namespace")?;
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let reply = format!("{}\n", args.name);
    println!("{{\"ready\":true}}");
    std::io::stdout().flush()?;
    let threads: Vec<_> = (0..SERVER_THREADS)
        .map(|_| {
            let listener = listener.try_clone();
            let reply = reply.clone();
            std::thread::spawn(move || -> Result<()> {
                let listener = listener?;
                let mut buf = [0u8; 256];
                loop {
                    let Ok((mut stream, _)) = listener.accept() else {
                        continue;
                    };
                    let _ = stream.set_read_timeout(Some(ATTEMPT_TIMEOUT));
                    // The request is one small segment: one read has it.
                    if matches!(stream.read(&mut buf), Ok(n) if n > 0) {
                        let _ = stream.write_all(reply.as_bytes());
                    }
                }
            })
        })
        .collect();
    for t in threads {
        match t.join() {
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
            Err(_) => bail!("a server thread panicked"),
        }
    }
    bail!("every server thread stopped")
}

/// Runs the load and prints one JSON line ([`LoadReport`]).
pub fn load(args: &LoadArgs) -> Result<()> {
    let targets: Vec<SocketAddr> = match args.services {
        Some(n) => (0..n)
            .map(|i| SocketAddr::new(IpAddr::V4(dataplane::vip(i)), SERVICE_PORT))
            .collect(),
        None => args.target.clone(),
    };
    ensure!(!targets.is_empty(), "give --services N or --target ADDR");
    let warmup = Duration::from_millis(args.warmup_ms);
    let duration = Duration::from_millis(args.duration_ms);
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + duration);
    let threads: Vec<_> = (0..args.connections.max(1))
        .map(|t| {
            let targets = targets.clone();
            std::thread::spawn(move || client_loop(&targets, t as u64, from, until))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut error_texts: Vec<String> = Vec::new();
    let mut backends = BTreeMap::new();
    for t in threads {
        let Ok(one) = t.join() else {
            bail!("a load thread panicked");
        };
        latencies.extend(one.latencies);
        errors += one.errors;
        for e in one.error_texts {
            if error_texts.len() < 5 && !error_texts.contains(&e) {
                error_texts.push(e);
            }
        }
        for (b, n) in one.backends {
            *backends.entry(b).or_insert(0) += n;
        }
    }
    let ok = latencies.len();
    let summary = Summary::new(latencies, errors, duration);
    let report = LoadReport {
        rate: summary.rate(),
        p50_ms: summary.p50_ms(),
        p99_ms: summary.p99_ms(),
        ok,
        errors,
        error_texts,
        backends,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[derive(Default)]
struct ThreadResult {
    latencies: Vec<Duration>,
    errors: u64,
    error_texts: Vec<String>,
    backends: BTreeMap<String, usize>,
}

/// One closed-loop connection: connect to a random target, request, read
/// the reply to EOF, close; count those that start at or after `from` and
/// end by `until`.
fn client_loop(targets: &[SocketAddr], seed: u64, from: Instant, until: Instant) -> ThreadResult {
    let mut rng = XorShift::new(seed);
    let mut out = ThreadResult::default();
    let mut reply = Vec::with_capacity(64);
    loop {
        let started = Instant::now();
        if started >= until {
            return out;
        }
        let target = targets[rng.below(targets.len())];
        reply.clear();
        let result = connection(target, &mut reply);
        let ended = Instant::now();
        if started < from || ended > until {
            continue;
        }
        match result {
            Ok(()) => {
                out.latencies.push(ended - started);
                let name = String::from_utf8_lossy(&reply).trim().to_owned();
                *out.backends.entry(name).or_insert(0) += 1;
            }
            Err(e) => {
                out.errors += 1;
                let text = format!("{target}: {e}");
                if out.error_texts.len() < 5 && !out.error_texts.contains(&text) {
                    out.error_texts.push(text);
                }
                // An instant failure must not spin.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn connection(target: SocketAddr, reply: &mut Vec<u8>) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, ATTEMPT_TIMEOUT)?;
    stream.set_read_timeout(Some(ATTEMPT_TIMEOUT))?;
    stream.write_all(REQUEST)?;
    stream.read_to_end(reply)?;
    if reply.is_empty() {
        return Err(std::io::Error::other("closed without a reply"));
    }
    Ok(())
}

/// xorshift64*: enough randomness to spread connections over targets.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self((nanos ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (((r >> 32) * n as u64) >> 32) as usize
    }
}

/// A process in a lab host, killed when dropped.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Shoal,
    Direct,
    Iptables,
}

/// Runs part (a) in a 5-host lab of its own.
pub fn run() -> Result<Vec<Row>> {
    let exe = std::env::current_exe().context("finding the bench binary")?;
    let lab = Lab::create(&Lab::unique_prefix(), 5).context("creating the lab")?;
    let (shoal_host, direct_host, iptables_host) = (lab.host(1), lab.host(2), lab.host(3));
    let servers = [lab.host(4), lab.host(5)];
    let _servers = servers
        .iter()
        .map(|h| start_server(&exe, h))
        .collect::<Result<Vec<_>>>()?;
    let backends = servers.map(|h| h.ipv4());
    let backend_addrs: Vec<SocketAddr> = backends
        .iter()
        .map(|ip| SocketAddr::new(IpAddr::V4(*ip), BACKEND_PORT))
        .collect();
    // Without a route, connect() to a ClusterIP fails before the nat
    // OUTPUT chain sees it (the lab makes the service CIDR unreachable).
    // kube-proxy nodes have a default route; here it points at a server
    // host, which drops what the rules would not translate.
    ip(
        iptables_host,
        &[
            "route",
            "replace",
            SERVICE_CIDR_V4,
            "via",
            &backends[0].to_string(),
            "dev",
            "eth0",
        ],
    )?;

    let mut rows = Vec::new();
    let mut details = String::new();
    let mut shoal_rates = Vec::new();
    for n in COUNTS {
        // shoal: the agent's sync programs the N Services into host-1's maps.
        let pin_dir = shoal_host.pin_dir().join(format!("traffic-{n}"));
        let dataplane = program(shoal_host, &pin_dir, n, backends)?;
        // The reference: the same N Services as kube-proxy's rules, in host-3.
        let rules = dataplane::kube_proxy_rules(n, |_| backends);
        dataplane::restore(iptables_host, &rules, false)?;

        let mut results: BTreeMap<Mode, Vec<LoadReport>> = BTreeMap::new();
        for _ in 0..RUNS {
            for mode in [Mode::Shoal, Mode::Direct, Mode::Iptables] {
                let (host, target) = match mode {
                    Mode::Shoal => (shoal_host, Target::Services(n)),
                    Mode::Direct => (direct_host, Target::Addrs(&backend_addrs)),
                    Mode::Iptables => (iptables_host, Target::Services(n)),
                };
                let report = load_run(&exe, host, &target)
                    .with_context(|| format!("{mode:?} at {n} services"))?;
                check(&report, mode, n)?;
                results.entry(mode).or_default().push(report);
            }
        }
        drop(dataplane);
        let _ = std::fs::remove_dir_all(&pin_dir);
        dataplane::restore(iptables_host, "*nat\nCOMMIT\n", false)
            .context("emptying the nat table")?;

        let figure =
            |mode: Mode, f: Pick| Figure::of(results.get(&mode).map(|r| r.iter().map(f).collect()));
        let label = services_label(n);
        let _ = writeln!(details, "  {label}:");
        let metrics: [(&str, &str, Pick, bool); 3] = [
            ("rate", "conn/s", |r| r.rate, true),
            ("p50", "ms", |r| r.p50_ms, false),
            ("p99", "ms", |r| r.p99_ms, false),
        ];
        for (metric, unit, f, higher) in metrics {
            let s = figure(Mode::Shoal, f);
            let d = figure(Mode::Direct, f);
            let i = figure(Mode::Iptables, f);
            // Each run of one mode is next to a run of the others: the
            // median of per-run ratios is less exposed to the load of the
            // moment than the ratio of medians.
            let paired = |other: Mode| {
                let ratios = results
                    .get(&Mode::Shoal)
                    .zip(results.get(&other))
                    .map(|(a, b)| {
                        a.iter()
                            .zip(b)
                            .map(|(a, b)| if higher { f(a) / f(b) } else { f(b) / f(a) })
                            .collect()
                    });
                Figure::of(ratios)
            };
            let _ = writeln!(
                details,
                "    {metric:>4} ({unit}): shoal {s}, direct {d}, iptables {i}; per-run ratio vs direct {:.3} ({:.3}-{:.3}), vs iptables {:.3}",
                paired(Mode::Direct).median,
                paired(Mode::Direct).min,
                paired(Mode::Direct).max,
                paired(Mode::Iptables).median,
            );
            for (reference, name, short) in [(&d, DIRECT, "direct"), (&i, IPTABLES, "iptables")] {
                let case = format!("ClusterIP connect+request+close, {label}, vs {short}");
                let row = if higher {
                    Row::higher(&case, metric, unit, s.median, reference.median, name)
                } else {
                    Row::lower(&case, metric, unit, s.median, reference.median, name)
                };
                rows.push(row.with_spread(s.spread(), reference.spread()));
            }
            if metric == "rate" {
                shoal_rates.push((n, s));
            }
        }
    }
    // Flatness: the goal is within 3% from 1 to 10,000 Services.
    if let (Some((first_n, first)), Some((last_n, last))) =
        (shoal_rates.first(), shoal_rates.last())
    {
        rows.push(
            Row::higher(
                &format!(
                    "ClusterIP rate at {} vs {}",
                    services_label(*last_n),
                    services_label(*first_n)
                ),
                "rate",
                "conn/s",
                last.median,
                first.median,
                &format!("shoal itself at {first_n} service (goal: within 3%)"),
            )
            .with_spread(last.spread(), first.spread()),
        );
    }
    println!(
        "traffic: {CONNECTIONS} concurrent connections, {RUNS} runs of {} ms per figure, median (min-max):\n{details}",
        RUN.as_millis()
    );
    Ok(rows)
}

/// One figure of a load report.
type Pick = fn(&LoadReport) -> f64;

/// "1 service", "10000 services".
fn services_label(n: usize) -> String {
    if n == 1 {
        "1 service".to_owned()
    } else {
        format!("{n} services")
    }
}

enum Target<'a> {
    Services(usize),
    Addrs(&'a [SocketAddr]),
}

/// Median and spread of one figure over the runs.
struct Figure {
    median: f64,
    min: f64,
    max: f64,
}

impl Figure {
    fn of(values: Option<Vec<f64>>) -> Self {
        let mut v = values.unwrap_or_default();
        v.sort_by(f64::total_cmp);
        Self {
            median: v.get(v.len() / 2).copied().unwrap_or(f64::NAN),
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn spread(&self) -> [f64; 2] {
        [self.min, self.max]
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.median >= 100.0 {
            write!(f, "{:.0} ({:.0}-{:.0})", self.median, self.min, self.max)
        } else {
            write!(f, "{:.3} ({:.3}-{:.3})", self.median, self.min, self.max)
        }
    }
}

/// Loads the dataplane on `host` (socket programs on its cgroup) and has
/// the agent's service sync program Services 0..n, each with `backends`.
fn program(host: &Host, pin_dir: &Path, n: usize, backends: [Ipv4Addr; 2]) -> Result<Dataplane> {
    let _ = std::fs::remove_dir_all(pin_dir);
    let mut dataplane = Dataplane::load(DataplaneConfig {
        pin_dir: pin_dir.to_path_buf(),
        cgroup: host.cgroup().to_path_buf(),
        ebpf_debug_logs: false,
    })
    .with_context(|| format!("loading the dataplane in {}", host.name()))?;
    let mut state = State::new(NodeView::default(), &dataplane);
    state.service_event(Event::Init);
    for i in 0..n {
        state.service_event(Event::InitApply(dataplane::service(i)));
    }
    state.service_event(Event::InitDone);
    state.slice_event(Event::Init);
    for i in 0..n {
        let slice: EndpointSlice = dataplane::slice_to(i, backends);
        state.slice_event(Event::InitApply(slice));
    }
    state.slice_event(Event::InitDone);
    state.flush(&mut dataplane);
    ensure!(
        state.live().len() == n,
        "{n} services: the maps hold {} frontends",
        state.live().len()
    );
    Ok(dataplane)
}

fn start_server(exe: &Path, host: &Host) -> Result<Spawned> {
    let mut command = host.command(exe)?;
    command
        .arg("dataplane-serve")
        .arg("--listen")
        .arg(SocketAddr::new(IpAddr::V4(host.ipv4()), BACKEND_PORT).to_string())
        .arg("--name")
        .arg(host.name())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = Spawned(
        command
            .spawn()
            .with_context(|| format!("starting the backend server on {}", host.name()))?,
    );
    let Some(stdout) = child.0.stdout.take() else {
        bail!("backend server on {}: no stdout", host.name());
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Some(Ok(line))) if line.contains("\"ready\":true") => Ok(child),
        other => bail!(
            "backend server on {} did not get ready: {other:?}",
            host.name()
        ),
    }
}

/// One run of the load generator in `host` (its netns and cgroup).
fn load_run(exe: &Path, host: &Host, target: &Target<'_>) -> Result<LoadReport> {
    let mut command = host.command(exe)?;
    command
        .arg("dataplane-load")
        .arg("--duration-ms")
        .arg(RUN.as_millis().to_string())
        .arg("--warmup-ms")
        .arg(WARMUP.as_millis().to_string())
        .arg("--connections")
        .arg(CONNECTIONS.to_string());
    match target {
        Target::Services(n) => {
            command.arg("--services").arg(n.to_string());
        }
        Target::Addrs(addrs) => {
            for a in *addrs {
                command.arg("--target").arg(a.to_string());
            }
        }
    }
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running the load generator on {}", host.name()))?;
    ensure!(
        out.status.success(),
        "load generator on {} failed ({}): {}",
        host.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("reading the load generator's report {stdout:?}"))
}

/// A run counts only if (nearly) every connection worked and both backends
/// answered: a datapath that translated nothing would fail every connect.
fn check(report: &LoadReport, mode: Mode, n: usize) -> Result<()> {
    let total = report.ok as u64 + report.errors;
    ensure!(
        report.ok > 0 && report.errors * 1000 <= total,
        "{mode:?} at {n} services: {} of {total} connections failed: {:?}",
        report.errors,
        report.error_texts
    );
    ensure!(
        report.backends.len() == 2 && report.backends.values().all(|c| *c * 5 >= report.ok / 2),
        "{mode:?} at {n} services: replies by backend {:?} (expected both, about evenly)",
        report.backends
    );
    Ok(())
}

/// Runs `ip ARGS` inside `host`.
fn ip(host: &Host, args: &[&str]) -> Result<()> {
    let out = host
        .command("ip")?
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {} in {} failed: {}",
        args.join(" "),
        host.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
