//! `cargo xtask bench footprint`: what shoal costs a machine. The release
//! binary's size; a `shoal up` cluster of one (server and agent in one
//! process) in a lab host: time to a Ready node, then RSS and CPU once it
//! has settled, idle and with `manifests/demo/` running; and `shoal store`
//! against Debian's etcd 3.4 idle, measured in the same run. k3s does not
//! run here, so the cluster rows compare with k3s's published figures,
//! named with their source. Writes `target/bench/footprint.json` in the
//! shape the other benchmarks use.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_e2e::{
    cluster::kubectl_in,
    lab::{self, Host, Lab},
};

use crate::setup::workspace_root;

/// The lab prefix the benchmark's host uses.
const PREFIX: &str = "footprint";
/// How long a process runs after it is ready before it is measured: long
/// enough for start-up allocations to be over and the first periodic work
/// (heartbeats, lease renewals, metrics housekeeping) to have run.
const SETTLE: Duration = Duration::from_secs(30);
/// CPU is measured over this many windows of [`WINDOW`]; the median is
/// reported with the spread.
const WINDOWS: usize = 3;
/// One CPU measuring window.
const WINDOW: Duration = Duration::from_secs(10);
/// Clock ticks per second in /proc/<pid>/stat (USER_HZ, 100 on every
/// Linux architecture shoal builds for).
const USER_HZ: f64 = 100.0;
/// The etcd binary Debian's etcd-server installs.
const ETCD: &str = "/usr/bin/etcd";

/// k3s's published figures. k3s docs, "Resource Profiling"
/// (docs.k3s.io/reference/resource-profiling), K3s 1.19 on a Xeon 8124M:
/// a server with a workload needs 768 MB (Kine/SQLite) and 10% of a core.
const K3S_SERVER_WITH_WORKLOAD_MB: f64 = 768.0;
/// The same page, same run: 10% of a core for a server with a workload.
const K3S_SERVER_CPU_PERCENT: f64 = 10.0;
/// k3s's README: "packaged as a single binary < 70MB".
const K3S_BINARY_MB: f64 = 70.0;
/// k3s docs, "Requirements" (docs.k3s.io/installation/requirements): the
/// minimum RAM of a server node.
const K3S_MIN_SERVER_RAM_MB: f64 = 512.0;
/// Issue 11's goals: server + agent with the demo ≤ 150 MB, a Ready node
/// ≤ 3 s after start.
const GOAL_RSS_MB: f64 = 150.0;
/// See [`GOAL_RSS_MB`].
const GOAL_READY_S: f64 = 3.0;

/// One row, in the JSON shape of `shoal_e2e::bench::Row`.
struct Row {
    case: String,
    metric: &'static str,
    unit: &'static str,
    shoal: f64,
    reference: f64,
    reference_name: String,
    shoal_spread: Option<[f64; 2]>,
    reference_spread: Option<[f64; 2]>,
}

impl Row {
    /// A lower-is-better row (everything here): ratio = reference / shoal.
    fn lower(
        case: &str,
        metric: &'static str,
        unit: &'static str,
        shoal: f64,
        reference: f64,
        name: &str,
    ) -> Self {
        Self {
            case: case.to_owned(),
            metric,
            unit,
            shoal,
            reference,
            reference_name: name.to_owned(),
            shoal_spread: None,
            reference_spread: None,
        }
    }

    fn ratio(&self) -> f64 {
        self.reference / self.shoal
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "case": self.case,
            "metric": self.metric,
            "unit": self.unit,
            "shoal": self.shoal,
            "reference": self.reference,
            "reference_name": self.reference_name,
            "ratio": self.ratio(),
            "better": "lower",
        });
        if let Some(s) = self.shoal_spread {
            v["shoal_spread"] = json!(s);
        }
        if let Some(s) = self.reference_spread {
            v["reference_spread"] = json!(s);
        }
        v
    }
}

/// What a settled process costs.
struct Usage {
    /// Median RSS over the windows, MiB.
    rss_mb: f64,
    /// Lowest and highest RSS sample.
    rss_spread: [f64; 2],
    /// Median CPU over the windows, % of one core.
    cpu: f64,
    /// Lowest and highest window.
    cpu_spread: [f64; 2],
}

/// Runs the footprint benchmark with the release binary `shoal`.
pub fn run(shoal: &Path) -> Result<()> {
    ensure!(
        nix_root(),
        "the footprint benchmark runs shoal in a lab network namespace: run it as root"
    );
    ensure!(
        Path::new(ETCD).is_file(),
        "{ETCD} is missing: `apt-get install etcd-server` (cargo xtask setup installs it)"
    );
    let root = workspace_root();
    let work = root.join("target").join("bench").join("footprint-work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _ = Lab::remove(PREFIX);
    let lab = Lab::create(PREFIX, 1).context("creating the benchmark's lab host")?;
    let host = lab.host(1).clone();
    let mut rows = Vec::new();

    // The binary.
    let size = file_mb(shoal)?;
    let stripped = work.join("shoal.stripped");
    let strip = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(shoal)
        .status()
        .context("running strip (binutils)")?;
    ensure!(strip.success(), "strip {} failed", shoal.display());
    let stripped_mb = file_mb(&stripped)?;
    let etcd_mb = file_mb(Path::new(ETCD))?;
    println!(
        "==> binary: {size:.1} MiB as built (debug line tables), {stripped_mb:.1} MiB stripped"
    );
    rows.push(Row::lower(
        "shoal binary, stripped (every role, eBPF objects embedded)",
        "size",
        "MiB",
        stripped_mb,
        K3S_BINARY_MB,
        "k3s binary, published (k3s README: < 70 MB)",
    ));
    rows.push(Row::lower(
        "shoal binary, stripped, vs etcd's alone",
        "size",
        "MiB",
        stripped_mb,
        etcd_mb,
        "etcd 3.4 binary (Debian), measured",
    ));

    // A cluster of one.
    let result = cluster_of_one(shoal, &host, &work, &root, &mut rows);
    let _ = lab.teardown();
    result?;

    // The store alone against etcd, both idle, on loopback in a fresh lab host.
    let lab = Lab::create(PREFIX, 1).context("creating the benchmark's lab host")?;
    let host = lab.host(1).clone();
    let result = store_vs_etcd(shoal, &host, &work, &mut rows);
    let _ = lab.teardown();
    result?;

    report(&rows, &root.join("target").join("bench"))
}

fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
            .unwrap_or(false)
    })
}

fn file_mb(path: &Path) -> Result<f64> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    Ok(len as f64 / (1024.0 * 1024.0))
}

/// A child process that is killed (and waited for) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pod cgroup parent below `host`'s cgroup, relative to the cgroup roots.
fn cgroup_parent(host: &Host) -> Result<String> {
    let root = lab::cgroup2_root()?;
    let rel = host.cgroup().strip_prefix(&root).with_context(|| {
        format!(
            "{} is not below {}",
            host.cgroup().display(),
            root.display()
        )
    })?;
    Ok(format!("/{}/pods", rel.display()))
}

fn spawn(host: &Host, program: &Path, args: &[String], log: &Path) -> Result<Guard> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = host
        .command(program)?
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {} {args:?}", program.display()))?;
    Ok(Guard(child))
}

fn cluster_of_one(
    shoal: &Path,
    host: &Host,
    work: &Path,
    root: &Path,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let data = work.join("up");
    let kubeconfig = data.join("kubeconfig");
    let cache = work.join("kubectl-cache");
    let args: Vec<String> = vec![
        "up".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--listen".into(),
        host.v4(6443).to_string(),
        "--tls-san".into(),
        format!("{},{}", host.ipv4(), host.ipv6()),
        "--node-name".into(),
        "solo".into(),
        "--node-ip".into(),
        format!("{},{}", host.ipv4(), host.ipv6()),
        "--cgroup-parent".into(),
        cgroup_parent(host)?,
        "--bpf-pin-dir".into(),
        host.pin_dir().display().to_string(),
        // Nothing in the lab may leave it.
        "--dns-upstreams".into(),
        "none".into(),
    ];
    println!(
        "==> shoal up in lab host {} (server + agent, one process)",
        host.name()
    );
    let started = Instant::now();
    let mut up = spawn(host, shoal, &args, &work.join("up.log"))?;
    let pid = up.0.id();
    let kubectl = |args: &[&str], stdin: Option<&str>| -> Result<String> {
        let out = kubectl_in(host, &kubeconfig, &cache, args, stdin)?;
        ensure!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let result = (|| -> Result<()> {
        let ready = poll(&mut up, "node solo Ready", Duration::from_secs(60), || {
            if !kubeconfig.is_file() {
                return Ok(false);
            }
            let out = kubectl(
                &[
                    "get",
                    "node",
                    "solo",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ],
                None,
            )?;
            Ok(out.trim() == "True")
        })?;
        let ready_s = ready.duration_since(started).as_secs_f64();
        println!(
            "    node Ready {ready_s:.2} s after start; settling {} s",
            SETTLE.as_secs()
        );
        rows.push(Row::lower(
            "shoal up: start → node Ready (seen by kubectl)",
            "time",
            "s",
            ready_s,
            GOAL_READY_S,
            "goal (issue 11)",
        ));
        std::thread::sleep(SETTLE);
        let idle = measure(pid, shoal)?;
        println!(
            "    idle: RSS {:.1} MiB, CPU {:.2}% of a core",
            idle.rss_mb, idle.cpu
        );

        let demo = root.join("manifests").join("demo");
        println!("==> applying {} and waiting for it", demo.display());
        kubectl(&["apply", "-f", &demo.display().to_string()], None)?;
        poll(&mut up, "the demo Ready", Duration::from_secs(240), || {
            let out = kubectl(
                &[
                    "get",
                    "pods",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.labels.app} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
                ],
                None,
            )?;
            let ready: Vec<&str> = out.lines().filter(|l| l.ends_with(" True")).collect();
            let web = ready.iter().filter(|l| l.starts_with("web ")).count();
            let db = ready.iter().filter(|l| l.starts_with("db ")).count();
            Ok(web == 2 && db == 2)
        })?;
        println!("    demo Ready; settling {} s", SETTLE.as_secs());
        std::thread::sleep(SETTLE);
        let busy = measure(pid, shoal)?;
        println!(
            "    with the demo: RSS {:.1} MiB, CPU {:.2}% of a core",
            busy.rss_mb, busy.cpu
        );

        let k3s = "k3s server with a workload, published (docs.k3s.io resource profiling, K3s 1.19, Kine/SQLite)";
        for (case, u) in [
            ("shoal up, idle, settled", &idle),
            ("shoal up with the demo, settled", &busy),
        ] {
            rows.push(
                Row::lower(
                    case,
                    "RSS",
                    "MiB",
                    u.rss_mb,
                    K3S_SERVER_WITH_WORKLOAD_MB,
                    k3s,
                )
                .spread(u.rss_spread),
            );
        }
        rows.push(
            Row::lower(
                "shoal up with the demo, settled",
                "RSS",
                "MiB",
                busy.rss_mb,
                K3S_MIN_SERVER_RAM_MB,
                "k3s server minimum RAM, published (docs.k3s.io requirements)",
            )
            .spread(busy.rss_spread),
        );
        rows.push(
            Row::lower(
                "shoal up with the demo, settled",
                "RSS",
                "MiB",
                busy.rss_mb,
                GOAL_RSS_MB,
                "goal (issue 11)",
            )
            .spread(busy.rss_spread),
        );
        for (case, u) in [
            ("shoal up, idle, settled", &idle),
            ("shoal up with the demo, settled", &busy),
        ] {
            rows.push(
                Row::lower(case, "CPU", "% core", u.cpu, K3S_SERVER_CPU_PERCENT, k3s)
                    .spread(u.cpu_spread),
            );
        }
        Ok(())
    })();
    // Stop it gracefully (SIGTERM), then remove what the pods left.
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && up.0.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(up);
    let reset = host
        .command(shoal)?
        .args(["reset", "--data-dir"])
        .arg(data.join("agent"))
        .args(["--cgroup-parent", &cgroup_parent(host)?])
        .output();
    if let Ok(o) = reset
        && !o.status.success()
    {
        eprintln!("shoal reset: {}", String::from_utf8_lossy(&o.stderr));
    }
    result.map_err(|e| anyhow::anyhow!("{e:#}\nsee {}", work.join("up.log").display()))
}

/// Polls `check` every 50 ms until it says yes; the moment it did.
fn poll(
    proc: &mut Guard,
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<Instant> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match check() {
            Ok(true) => return Ok(Instant::now()),
            Ok(false) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if let Some(status) = proc.0.try_wait()? {
            bail!("the process exited ({status}) while waiting for {what}");
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: not within {limit:?} (last error: {last})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn store_vs_etcd(shoal: &Path, host: &Host, work: &Path, rows: &mut Vec<Row>) -> Result<()> {
    println!(
        "==> shoal store and etcd 3.4, one member each, idle, on {}'s loopback",
        host.name()
    );
    let store_args: Vec<String> = [
        "store",
        "--data-dir",
        &work.join("store").display().to_string(),
        "--listen",
        "127.0.0.1:12379",
        "--peer-listen",
        "127.0.0.1:12380",
    ]
    .map(str::to_owned)
    .to_vec();
    let etcd_dir = work.join("etcd");
    let etcd_args: Vec<String> = [
        "--name",
        "bench",
        "--data-dir",
        &etcd_dir.display().to_string(),
        "--listen-client-urls",
        "http://127.0.0.1:22379",
        "--advertise-client-urls",
        "http://127.0.0.1:22379",
        "--listen-peer-urls",
        "http://127.0.0.1:22380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:22380",
        "--initial-cluster",
        "bench=http://127.0.0.1:22380",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut store = spawn(host, shoal, &store_args, &work.join("store.log"))?;
    let mut etcd = spawn(host, Path::new(ETCD), &etcd_args, &work.join("etcd.log"))?;
    for (proc, port, what) in [
        (&mut store, 12379, "shoal store"),
        (&mut etcd, 22379, "etcd"),
    ] {
        poll(
            proc,
            &format!("{what} answering etcdctl"),
            Duration::from_secs(30),
            || {
                let out = host
                    .command("etcdctl")?
                    .env("ETCDCTL_API", "3")
                    .args([
                        "--endpoints",
                        &format!("127.0.0.1:{port}"),
                        "put",
                        "footprint",
                        "ready",
                    ])
                    .stdin(Stdio::null())
                    .output()
                    .context("running etcdctl (etcd-client)")?;
                Ok(out.status.success())
            },
        )?;
    }
    println!("    both answer; settling {} s", SETTLE.as_secs());
    std::thread::sleep(SETTLE);
    // Measured one after the other, each while the other idles too.
    let s = measure(store.0.id(), shoal)?;
    let e = measure(etcd.0.id(), Path::new(ETCD))?;
    println!(
        "    shoal store: RSS {:.1} MiB, CPU {:.2}%; etcd: RSS {:.1} MiB, CPU {:.2}%",
        s.rss_mb, s.cpu, e.rss_mb, e.cpu
    );
    rows.push(
        Row::lower(
            "store alone, 1 member, idle, settled",
            "RSS",
            "MiB",
            s.rss_mb,
            e.rss_mb,
            "etcd 3.4 (Debian), measured",
        )
        .spread(s.rss_spread)
        .ref_spread(e.rss_spread),
    );
    rows.push(
        Row::lower(
            "store alone, 1 member, idle, settled",
            "CPU",
            "% core",
            s.cpu,
            e.cpu,
            "etcd 3.4 (Debian), measured",
        )
        .spread(s.cpu_spread)
        .ref_spread(e.cpu_spread),
    );
    Ok(())
}

impl Row {
    fn spread(mut self, s: [f64; 2]) -> Self {
        self.shoal_spread = Some(s);
        self
    }

    fn ref_spread(mut self, s: [f64; 2]) -> Self {
        self.reference_spread = Some(s);
        self
    }
}

/// The processes of `exe` in the tree under `pid` (itself included): the
/// agent's helpers are shoal too, containers are not.
fn tree(pid: u32, exe: &Path) -> Result<Vec<u32>> {
    let exe = std::fs::canonicalize(exe).with_context(|| format!("resolving {}", exe.display()))?;
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for e in std::fs::read_dir("/proc")
        .context("reading /proc")?
        .flatten()
    {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The fields after the command name, which may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u32>().ok())
        {
            children.entry(ppid).or_default().push(p);
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if !seen.insert(p) {
            continue;
        }
        todo.extend(children.get(&p).into_iter().flatten());
    }
    Ok(seen
        .into_iter()
        .filter(|p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == exe))
        .collect())
}

/// RSS in MiB and CPU ticks (user + system) of `pids`, summed.
fn sample(pids: &[u32]) -> (f64, u64) {
    let (mut rss_kb, mut ticks) = (0u64, 0u64);
    for p in pids {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            rss_kb += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat"))
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            // utime and stime: fields 14 and 15, the 12th and 13th after ')'.
            let f: Vec<&str> = rest.split_whitespace().collect();
            ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            ticks += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    (rss_kb as f64 / 1024.0, ticks)
}

/// RSS sampled every second and CPU per window, over [`WINDOWS`] windows.
fn measure(pid: u32, exe: &Path) -> Result<Usage> {
    let pids = tree(pid, exe)?;
    ensure!(
        !pids.is_empty(),
        "process {pid} ({}) is gone",
        exe.display()
    );
    let mut rss = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..WINDOWS {
        let (_, t0) = sample(&pids);
        let start = Instant::now();
        while start.elapsed() < WINDOW {
            std::thread::sleep(Duration::from_secs(1));
            rss.push(sample(&pids).0);
        }
        let (_, t1) = sample(&pids);
        cpu.push((t1 - t0) as f64 / USER_HZ / start.elapsed().as_secs_f64() * 100.0);
    }
    Ok(Usage {
        rss_mb: median(&mut rss),
        rss_spread: spread(&rss),
        cpu: median(&mut cpu),
        cpu_spread: spread(&cpu),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn spread(v: &[f64]) -> [f64; 2] {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    [lo, hi]
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} cores, Linux {}", kernel.trim())
}

/// Prints the table and writes `<out>/footprint.json`.
fn report(rows: &[Row], out: &PathBuf) -> Result<()> {
    println!();
    println!(
        "{:<58} {:>6} {:>7} {:>9} {:>9} {:>8}  reference",
        "case", "metric", "unit", "shoal", "ref", "ratio"
    );
    for r in rows {
        println!(
            "{:<58} {:>6} {:>7} {:>9.2} {:>9.2} {:>7.2}x  {}",
            r.case,
            r.metric,
            r.unit,
            r.shoal,
            r.reference,
            r.ratio(),
            r.reference_name
        );
    }
    println!("ratio = reference / shoal: ≥ 1 means shoal is ahead (smaller or faster)");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("footprint.json");
    let doc = json!({
        "area": "footprint",
        "machine": machine(),
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    });
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
