//! `cargo xtask bench dataplane`, part (b): how long programming services
//! takes. shoal: the agent's service sync (`shoal_agent::services::State`)
//! writing the eBPF maps of a lab host, from the moment it holds the
//! Services and EndpointSlices until the maps hold them. Reference:
//! `iptables-legacy-restore` of the kube-proxy-shaped nat rules for the same
//! Services (KUBE-SERVICES → KUBE-SVC → KUBE-SEP with statistic/DNAT, 8
//! rules per Service with 2 endpoints), inside the lab host's network
//! namespace only. Cases: a full sync, and one endpoint change (kube-proxy's
//! partial sync: `--noflush` with the changed chains only).
//!
//! Part (a), traffic through a ClusterIP, is [`super::dataplane_traffic`];
//! [`run`] runs both.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::runtime::watcher::Event;
use serde_json::json;
use shoal_agent::{
    Dataplane, DataplaneConfig,
    services::{NodeView, State},
};

use super::Row;
use crate::lab::{Host, Lab};

/// Service counts measured.
const COUNTS: [usize; 3] = [1, 1_000, 10_000];
/// Runs per figure; the median is reported with the spread.
const RUNS: usize = 5;
/// The reference, as named in the JSON.
const REFERENCE: &str = "iptables-legacy-restore, kube-proxy-shaped nat rules (lab netns)";
/// The restore binary (TOOLCHAIN.md: nft is superlinear at 10k services).
const RESTORE: &str = "iptables-legacy-restore";

/// Runs both parts: (b) here in a 1-host lab of its own, then (a).
pub fn run() -> Result<Vec<Row>> {
    let mut rows = programming().context("part (b), programming time")?;
    rows.extend(super::dataplane_traffic::run().context("part (a), traffic through a ClusterIP")?);
    Ok(rows)
}

/// Part (b): programming time.
fn programming() -> Result<Vec<Row>> {
    let lab = Lab::create(&Lab::unique_prefix(), 1).context("creating the lab")?;
    let host = lab.host(1);
    let mut rows = Vec::new();
    let mut details = String::new();
    for n in COUNTS {
        let services: Vec<Service> = (0..n).map(service).collect();
        let slices: Vec<EndpointSlice> = (0..n).map(|i| slice(i, 0)).collect();

        // shoal: a full sync into empty maps, then single endpoint changes.
        let mut full = Vec::new();
        let mut change = Vec::new();
        for run in 0..RUNS {
            let pin_dir = host.pin_dir().join(format!("bench-{n}-{run}"));
            let mut dataplane = Dataplane::load(DataplaneConfig {
                pin_dir: pin_dir.clone(),
                cgroup: host.cgroup().to_path_buf(),
                ebpf_debug_logs: false,
            })
            .context("loading the dataplane in the lab host")?;
            let mut state = State::new(NodeView::default(), &dataplane);
            let started = Instant::now();
            state.service_event(Event::Init);
            for s in &services {
                state.service_event(Event::InitApply(s.clone()));
            }
            state.service_event(Event::InitDone);
            state.slice_event(Event::Init);
            for s in &slices {
                state.slice_event(Event::InitApply(s.clone()));
            }
            state.slice_event(Event::InitDone);
            state.flush(&mut dataplane);
            full.push(started.elapsed());
            ensure!(
                state.live().len() == n,
                "{n} services: the maps hold {} frontends",
                state.live().len()
            );
            // One endpoint of the last Service moves.
            let changed = slice(n - 1, run + 1);
            let started = Instant::now();
            state.slice_event(Event::Apply(changed));
            state.flush(&mut dataplane);
            change.push(started.elapsed());
            drop(dataplane);
            remove_pins(&pin_dir);
        }

        // Reference: the same Services as iptables rules.
        let rules = kube_proxy_rules(n, |i| endpoints(i, 0));
        let mut ref_full = Vec::new();
        let mut ref_change = Vec::new();
        for run in 0..RUNS {
            restore(host, "*nat\nCOMMIT\n", false).context("emptying the nat table")?;
            ref_full.push(restore(host, &rules, false)?);
            ref_change.push(restore(host, &kube_proxy_change(n - 1, 0, run + 1), true)?);
        }
        restore(host, "*nat\nCOMMIT\n", false).context("emptying the nat table")?;

        for (case, shoal, reference) in [
            (format!("full sync, {n} services"), &mut full, &mut ref_full),
            (
                format!("one endpoint change, {n} services"),
                &mut change,
                &mut ref_change,
            ),
        ] {
            let (s, r) = (median_ms(shoal), median_ms(reference));
            let _ = writeln!(
                details,
                "  {case}: shoal {s:.3} ms ({}), iptables {r:.3} ms ({})",
                spread(shoal),
                spread(reference)
            );
            rows.push(
                Row::lower(&case, "program", "ms", s, r, REFERENCE)
                    .with_spread(spread_ms(shoal), spread_ms(reference)),
            );
        }
    }
    println!("median of {RUNS} runs (min-max):\n{details}");
    Ok(rows)
}

/// Service `i`: single-stack IPv4 (the reference is IPv4 iptables), one
/// TCP port.
pub(super) fn service(i: usize) -> Service {
    let value = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {
            "clusterIP": vip(i).to_string(),
            "clusterIPs": [vip(i).to_string()],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    });
    serde_json::from_value(value).unwrap_or_default()
}

/// Service `i`'s slice with its 2 endpoints; `version` moves the second.
fn slice(i: usize, version: usize) -> EndpointSlice {
    slice_to(i, endpoints(i, version))
}

/// Service `i`'s slice with the endpoints `[a, b]` (port 8080).
pub(super) fn slice_to(i: usize, [a, b]: [Ipv4Addr; 2]) -> EndpointSlice {
    let value = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("svc-{i}-abcde"), "namespace": "bench",
            "labels": {"kubernetes.io/service-name": format!("svc-{i}")},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [a.to_string()], "conditions": {"ready": true}},
            {"addresses": [b.to_string()], "conditions": {"ready": true}},
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    });
    serde_json::from_value(value).unwrap_or_default()
}

/// `10.96.(i / 250).(i % 250 + 2)`: distinct for the counts measured.
pub(super) fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 2) as u8)
}

fn endpoints(i: usize, version: usize) -> [Ipv4Addr; 2] {
    let base = |k: usize| Ipv4Addr::new(10, 244, (k / 250) as u8, (k % 250 + 2) as u8);
    [base(2 * i), base((2 * i + 1 + 2 * version * 7919) % 60_000)]
}

fn chain_id(kind: &str, i: usize, endpoint: Ipv4Addr) -> String {
    // kube-proxy hashes names into 16 characters; any unique name of that
    // length costs the same.
    let tag = format!("{kind}{i:x}{}", u32::from(endpoint));
    format!("KUBE-{kind}-{:0>16}", &tag[tag.len().saturating_sub(16)..])
}

/// The rules of Service `i` with endpoints `eps`: its KUBE-SERVICES jump,
/// its KUBE-SVC chain and its two KUBE-SEP chains (8 rules).
fn service_rules(i: usize, eps: [Ipv4Addr; 2], chains: &mut String, rules: &mut String) {
    let vip = vip(i);
    let svc = chain_id("SVC", i, vip);
    let _ = writeln!(chains, ":{svc} - [0:0]");
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"bench/svc-{i}:http cluster IP\" -m tcp --dport 80 -j {svc}"
    );
    let _ = writeln!(
        rules,
        "-A {svc} ! -s 10.244.0.0/16 -d {vip}/32 -p tcp -m comment --comment \"bench/svc-{i}:http cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ"
    );
    for (k, ep) in eps.iter().enumerate() {
        let sep = chain_id("SEP", i, *ep);
        let _ = writeln!(chains, ":{sep} - [0:0]");
        if k == 0 {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"bench/svc-{i}:http -> {ep}:8080\" -m statistic --mode random --probability 0.50000000000 -j {sep}"
            );
        } else {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"bench/svc-{i}:http -> {ep}:8080\" -j {sep}"
            );
        }
        let _ = writeln!(
            rules,
            "-A {sep} -s {ep}/32 -m comment --comment \"bench/svc-{i}:http\" -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(
            rules,
            "-A {sep} -p tcp -m comment --comment \"bench/svc-{i}:http\" -m tcp -j DNAT --to-destination {ep}:8080"
        );
    }
}

/// A full kube-proxy nat table for `n` Services, Service `i` with the
/// endpoints `endpoints(i)`; with kube-proxy's masquerading of marked
/// traffic in POSTROUTING.
pub(super) fn kube_proxy_rules(n: usize, endpoints: impl Fn(usize) -> [Ipv4Addr; 2]) -> String {
    let mut chains = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    for i in 0..n {
        service_rules(i, endpoints(i), &mut chains, &mut rules);
    }
    chains.push_str(&rules);
    chains.push_str("COMMIT\n");
    chains
}

/// kube-proxy's partial sync after Service `i`'s second endpoint moved
/// from version `from` to `to`: the Service's chains rewritten, the old
/// endpoint's chain deleted.
fn kube_proxy_change(i: usize, from: usize, to: usize) -> String {
    let mut chains = String::from("*nat\n");
    let mut rules = String::new();
    // Declaring a chain under --noflush flushes it.
    service_rules(i, endpoints(i, to), &mut chains, &mut rules);
    // The KUBE-SERVICES jump is already there; only the service's own
    // chains are rewritten.
    let rules: String = rules
        .lines()
        .filter(|l| !l.starts_with("-A KUBE-SERVICES "))
        .map(|l| format!("{l}\n"))
        .collect();
    let old = endpoints(i, from)[1];
    let old_sep = chain_id("SEP", i, old);
    // As kube-proxy does: flush the stale chain (declaring it), then delete it.
    let _ = writeln!(chains, ":{old_sep} - [0:0]");
    chains.push_str(&rules);
    let _ = writeln!(chains, "-X {old_sep}");
    chains.push_str("COMMIT\n");
    chains
}

/// Runs `iptables-legacy-restore [--noflush]` with `input` inside `host`'s
/// network namespace and returns how long it took.
pub(super) fn restore(host: &Host, input: &str, noflush: bool) -> Result<Duration> {
    let mut command = host
        .command(RESTORE)
        .with_context(|| format!("{RESTORE} in {}", host.name()))?;
    if noflush {
        command.arg("--noflush");
    }
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {RESTORE} (install Debian's iptables package)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("feeding {RESTORE}"))?;
    }
    let out = child.wait_with_output()?;
    let took = started.elapsed();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // It names the failing line by number; show that line.
        let line = stderr
            .split("line")
            .nth(1)
            .and_then(|rest| {
                rest.trim_start_matches(':')
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .and_then(|n| input.lines().nth(n.saturating_sub(1)))
            .unwrap_or_default();
        bail!(
            "{RESTORE} in {} failed: {stderr} (input line: {line:?})",
            host.name()
        );
    }
    Ok(took)
}

fn remove_pins(dir: &Path) {
    // The lab removes the host's pin directory at teardown; removing each
    // run's maps now keeps the kernel's memory flat across runs.
    let _ = std::fs::remove_dir_all(dir);
}

fn median_ms(runs: &mut [Duration]) -> f64 {
    runs.sort_unstable();
    runs.get(runs.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// Lowest and highest of sorted runs, in ms.
fn spread_ms(runs: &[Duration]) -> [f64; 2] {
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    [ms(runs.first()), ms(runs.last())]
}

fn spread(runs: &[Duration]) -> String {
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    format!("{:.3}-{:.3}", ms(runs.first()), ms(runs.last()))
}
