//! Socket-level service load balancing with real traffic: the dataplane's
//! cgroup programs attached to host-1's cgroup send connects and datagrams
//! for service VIPs to backend servers on host-2, and the client only ever
//! sees the VIP.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_agent::{Dataplane, DataplaneConfig, Frontend, Protocol, Verdict};
use shoal_e2e::lab::{Host, Lab, Probe, ProbeServer};

const TIMEOUT: Duration = Duration::from_secs(3);
const VIP4: &str = "10.96.0.1";
const VIP6: &str = "fd00:10:96::1";
const SERVICE_PORT: u16 = 80;

fn probe() -> Probe {
    Probe::new(env!("CARGO_BIN_EXE_probe"))
}

fn vip(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("VIP literal"), SERVICE_PORT)
}

fn frontend(ip: &str, protocol: Protocol) -> Frontend {
    Frontend {
        address: ip.parse().expect("VIP literal"),
        port: SERVICE_PORT,
        protocol,
    }
}

/// Collects `log` records (aya-log forwards eBPF logs through `log`).
struct Collector(Mutex<Vec<String>>);

impl log::Log for Collector {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut v) = self.0.lock() {
            v.push(format!("{} {}", record.level(), record.args()));
        }
    }
    fn flush(&self) {}
}

fn collector() -> &'static Collector {
    static C: OnceLock<&'static Collector> = OnceLock::new();
    C.get_or_init(|| {
        let c: &'static Collector = Box::leak(Box::new(Collector(Mutex::new(Vec::new()))));
        // Only this module installs a logger in the e2e binary.
        let _ = log::set_logger(c);
        log::set_max_level(log::LevelFilter::Debug);
        c
    })
}

/// A 2-host lab, the dataplane attached to host-1's cgroup, and backend
/// servers on host-2 named `b<port>` listening on both families, TCP and UDP.
struct Setup {
    lab: Lab,
    dataplane: Dataplane,
    _servers: Vec<ProbeServer>,
}

impl Setup {
    fn new(ports: &[u16], ebpf_debug_logs: bool) -> Result<Self> {
        let lab = Lab::create(&Lab::unique_prefix(), 2).context("creating the lab")?;
        let server_host = lab.host(2);
        let mut servers = Vec::new();
        for port in ports {
            let addrs = [server_host.v4(*port), server_host.v6(*port)];
            servers.push(
                probe()
                    .serve(server_host, &format!("b{port}"), &addrs, &addrs)
                    .with_context(|| format!("backend b{port} on host-2"))?,
            );
        }
        let client = lab.host(1);
        let dataplane = Dataplane::load(DataplaneConfig {
            pin_dir: client.pin_dir().to_path_buf(),
            cgroup: client.cgroup().to_path_buf(),
            ebpf_debug_logs,
        })
        .context("loading the dataplane on host-1")?;
        Ok(Self {
            lab,
            dataplane,
            _servers: servers,
        })
    }

    fn client(&self) -> &Host {
        self.lab.host(1)
    }

    fn backend_host(&self) -> &Host {
        self.lab.host(2)
    }

    fn backends(&self, ip_family_v6: bool, ports: &[u16]) -> Vec<SocketAddr> {
        let h = self.backend_host();
        ports
            .iter()
            .map(|p| if ip_family_v6 { h.v6(*p) } else { h.v4(*p) })
            .collect()
    }

    /// Programs the TCP and UDP services on both VIPs with `ports` on host-2.
    fn program(&mut self, ports: &[u16]) -> Result<()> {
        let v4 = self.backends(false, ports);
        let v6 = self.backends(true, ports);
        for proto in [Protocol::Tcp, Protocol::Udp] {
            self.dataplane.lb4.upsert(frontend(VIP4, proto), &v4)?;
            self.dataplane.lb6.upsert(frontend(VIP6, proto), &v6)?;
        }
        Ok(())
    }

    fn verdict(&self, v: Verdict) -> Result<u64> {
        let all = self.dataplane.verdicts()?;
        Ok(all.iter().find(|(k, _)| *k == v).map_or(0, |(_, n)| *n))
    }
}

fn str_field<'a>(v: &'a Value, field: &str) -> Result<&'a str> {
    v[field]
        .as_str()
        .with_context(|| format!("probe output has no string {field:?}: {v}"))
}

/// Asserts one reply came through the service: ok, from the VIP as the
/// application sees it, answered by a backend on host-2 that saw host-1's
/// address. Returns the backend's name.
fn assert_served(reply: &Value, seen_as: &str, vip: SocketAddr, s: &Setup) -> Result<String> {
    ensure!(reply["ok"] == true, "request to {vip} failed: {reply}");
    let shown: SocketAddr = str_field(reply, seen_as)?.parse()?;
    ensure!(
        shown == vip,
        "{seen_as} shows {shown}, the application must see the VIP {vip}: {reply}"
    );
    let body = str_field(reply, "body")?;
    let name = body
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let (server_ip, client_ip): (IpAddr, IpAddr) = if vip.is_ipv4() {
        (s.backend_host().ipv4().into(), s.client().ipv4().into())
    } else {
        (s.backend_host().ipv6().into(), s.client().ipv6().into())
    };
    let local = field_of(body, "local=")?;
    let peer = field_of(body, "peer=")?;
    ensure!(
        local.ip() == server_ip && format!("b{}", local.port()) == name,
        "reply {body:?} must come from backend {name} on host-2 ({server_ip})"
    );
    ensure!(
        peer.ip() == client_ip,
        "backend saw peer {peer}, expected host-1 ({client_ip}): {body:?}"
    );
    Ok(name)
}

fn field_of(body: &str, key: &str) -> Result<SocketAddr> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .with_context(|| format!("no {key} in reply {body:?}"))?
        .parse()
        .with_context(|| format!("{key} in reply {body:?}"))
}

#[test]
fn service_vips_reach_backends_on_another_host_tcp_and_udp_both_families() -> Result<()> {
    let logs = collector();
    let mut s = Setup::new(&[8080, 8081], true)?;
    // A worker thread of its own drives the log forwarder while the test
    // blocks on probes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let _forwarder = runtime.block_on(async { s.dataplane.spawn_log_forwarder() })?;
    s.program(&[8080, 8081])?;
    let p = probe();

    for vip in [vip(VIP4), vip(VIP6)] {
        // TCP: random choice among both backends; getpeername shows the VIP.
        let mut names = BTreeMap::new();
        for _ in 0..24 {
            let reply = p.tcp(s.client(), vip, TIMEOUT)?;
            *names
                .entry(assert_served(&reply, "peer", vip, &s)?)
                .or_insert(0) += 1;
        }
        ensure!(
            names.len() == 2,
            "TCP to {vip}: 24 connections all went to {names:?}; expected both backends"
        );
        // UDP, unconnected: the reply's source (recvmsg) is the VIP.
        let mut names = BTreeMap::new();
        for _ in 0..24 {
            let reply = p.udp(s.client(), vip, TIMEOUT)?;
            *names
                .entry(assert_served(&reply, "from", vip, &s)?)
                .or_insert(0) += 1;
        }
        ensure!(names.len() == 2, "UDP to {vip}: only {names:?}");
        // UDP, connected: getpeername shows the VIP too.
        let addr = vip.to_string();
        let ms = TIMEOUT.as_millis().to_string();
        let reply = p.run(
            s.client(),
            &["udp", &addr, "--connected", "--timeout-ms", &ms],
            TIMEOUT,
        )?;
        assert_served(&reply, "peer", vip, &s)?;
    }

    // 2 families x (24 TCP + 24 UDP + 1 connected UDP) requests, each
    // translated once and shown as the VIP at least once.
    let requests = 2 * (24 + 24 + 1);
    let translated = s.verdict(Verdict::LbTranslated)?;
    let restored = s.verdict(Verdict::RevnatRestored)?;
    ensure!(
        translated >= requests,
        "{translated} translations counted for {requests} requests"
    );
    ensure!(
        restored >= requests,
        "{restored} reverse translations counted for {requests} requests"
    );

    // eBPF-side debug logs reach the agent's log output.
    let deadline = Instant::now() + Duration::from_secs(5);
    let wanted = format!(
        "sock4: {VIP4}:{SERVICE_PORT} -> {}:",
        s.backend_host().ipv4()
    );
    loop {
        let found = logs
            .0
            .lock()
            .map(|v| {
                v.iter()
                    .any(|l| l.starts_with("DEBUG") && l.contains(&wanted))
            })
            .unwrap_or(false);
        if found {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no eBPF debug log containing {wanted:?} arrived; got {:?}",
            logs.0
                .lock()
                .map(|v| v.iter().take(5).cloned().collect::<Vec<_>>())
        );
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn a_service_without_backends_refuses_at_once_and_other_vips_stay_unreachable() -> Result<()> {
    let mut s = Setup::new(&[8080], false)?;
    s.program(&[])?;
    let p = probe();
    for vip in [vip(VIP4), vip(VIP6)] {
        let started = Instant::now();
        let reply = p.tcp(s.client(), vip, TIMEOUT)?;
        ensure!(
            reply["ok"] == false,
            "connect to {vip} without backends succeeded: {reply}"
        );
        ensure!(
            reply["raw_os_error"] == libc::ECONNREFUSED,
            "connect to {vip} without backends must fail with ECONNREFUSED: {reply}"
        );
        ensure!(
            started.elapsed() < Duration::from_secs(1),
            "refusal took {:?}",
            started.elapsed()
        );
    }
    ensure!(
        s.verdict(Verdict::DropNoBackend)? >= 2,
        "refusals not counted"
    );

    // A VIP the dataplane does not know is passed through untouched and hits
    // the lab's unreachable route: nothing leaves the lab.
    for other in ["10.96.0.99", "fd00:10:96::99"] {
        let addr = SocketAddr::new(other.parse()?, SERVICE_PORT);
        let reply = p.tcp(s.client(), addr, TIMEOUT)?;
        let errno = reply["raw_os_error"].as_i64().unwrap_or_default();
        ensure!(
            reply["ok"] == false
                && [libc::EHOSTUNREACH, libc::ENETUNREACH].contains(&(errno as i32)),
            "connect to unknown service {addr} must fail as unreachable: {reply}"
        );
    }
    Ok(())
}

#[test]
fn switching_backend_sets_under_traffic_fails_no_connection() -> Result<()> {
    let mut s = Setup::new(&[8080, 8081, 8082], false)?;
    s.program(&[8080, 8081])?;
    let duration = Duration::from_secs(3);
    let ms = duration.as_millis().to_string();
    let clients: Vec<_> = [vip(VIP4), vip(VIP6)]
        .into_iter()
        .map(|vip| {
            let host = s.client().clone();
            let ms = ms.clone();
            thread::spawn(move || {
                let addr = vip.to_string();
                probe().run(&host, &["tcp-loop", &addr, "--duration-ms", &ms], duration)
            })
        })
        .collect();
    let sets: [&[u16]; 4] = [&[8082], &[8080, 8082], &[8081], &[8080, 8081, 8082]];
    let started = Instant::now();
    let mut switches = 0u32;
    while started.elapsed() < duration {
        s.program(sets[switches as usize % sets.len()])?;
        switches += 1;
        thread::sleep(Duration::from_millis(5));
    }
    for (client, vip) in clients.into_iter().zip([vip(VIP4), vip(VIP6)]) {
        let summary = client
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        let attempts = summary["attempts"].as_u64().unwrap_or(0);
        let failures = summary["failures"].as_u64().unwrap_or(u64::MAX);
        ensure!(
            attempts >= 100,
            "{vip}: only {attempts} connections in {duration:?}: {summary}"
        );
        ensure!(
            failures == 0,
            "{vip}: {failures} of {attempts} connections failed across {switches} backend switches: {summary}"
        );
        let bodies = summary["bodies"].as_object().map(|o| o.len()).unwrap_or(0);
        ensure!(
            bodies == 3,
            "{vip}: traffic must follow the switches to all 3 backends: {summary}"
        );
    }
    ensure!(switches >= 100, "only {switches} switches happened");
    Ok(())
}

#[test]
fn a_restarted_agent_takes_over_the_pinned_maps() -> Result<()> {
    let mut s = Setup::new(&[8080, 8081], false)?;
    s.program(&[8080])?;
    let config = s.dataplane.config().clone();
    ensure!(
        config
            .pin_dir
            .join(shoal_agent::map_names::LB4_SERVICES)
            .exists(),
        "maps are not pinned under {}",
        config.pin_dir.display()
    );
    // Restart: the old programs go with the old process; the maps stay.
    drop(std::mem::replace(
        &mut s.dataplane,
        Dataplane::load(config).context("reloading the dataplane")?,
    ));
    let p = probe();
    let reply = p.tcp(s.client(), vip(VIP4), TIMEOUT)?;
    ensure!(
        assert_served(&reply, "peer", vip(VIP4), &s)? == "b8080",
        "after the restart the service must still go to b8080: {reply}"
    );
    // A new service after the restart does not disturb the old one.
    let other = Frontend {
        address: VIP4.parse()?,
        port: 81,
        protocol: Protocol::Tcp,
    };
    let b8081 = s.backend_host().v4(8081);
    s.dataplane.lb4.upsert(other, &[b8081])?;
    for _ in 0..10 {
        let reply = p.tcp(s.client(), vip(VIP4), TIMEOUT)?;
        ensure!(
            assert_served(&reply, "peer", vip(VIP4), &s)? == "b8080",
            "{reply}"
        );
        let addr = SocketAddr::new(VIP4.parse()?, 81);
        let reply = p.tcp(s.client(), addr, TIMEOUT)?;
        ensure!(
            assert_served(&reply, "peer", addr, &s)? == "b8081",
            "{reply}"
        );
    }
    Ok(())
}

/// One run of `probe tcp-loop|udp-loop` from host-1: the backends that
/// answered, by name, after checking that every request succeeded and at
/// least `min` were made.
fn loop_bodies(
    s: &Setup,
    proto: Protocol,
    addr: SocketAddr,
    duration: Duration,
    min: u64,
) -> Result<BTreeMap<String, u64>> {
    let verb = match proto {
        Protocol::Tcp => "tcp-loop",
        Protocol::Udp => "udp-loop",
    };
    let ms = duration.as_millis().to_string();
    let summary = probe().run(
        s.client(),
        &[verb, &addr.to_string(), "--duration-ms", &ms],
        duration + TIMEOUT,
    )?;
    let attempts = summary["attempts"].as_u64().unwrap_or(0);
    ensure!(
        summary["failures"] == 0 && attempts >= min,
        "{verb} {addr}: {attempts} requests (at least {min} wanted), all must succeed: {summary}"
    );
    let bodies = summary["bodies"]
        .as_object()
        .with_context(|| format!("{verb} {addr}: no bodies in {summary}"))?;
    Ok(bodies
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect())
}

/// Programs the service at (ip, port, proto) with `backends` on host-2 and
/// a ClientIP affinity timeout (0 = none).
fn program_affinity(
    s: &mut Setup,
    ip: IpAddr,
    protocol: Protocol,
    port: u16,
    backends: &[u16],
    timeout: u32,
) -> Result<()> {
    let fe = Frontend {
        address: ip,
        port,
        protocol,
    };
    let b = s.backends(ip.is_ipv6(), backends);
    if ip.is_ipv4() {
        s.dataplane.lb4.upsert_with_affinity(fe, &b, timeout)?;
    } else {
        s.dataplane.lb6.upsert_with_affinity(fe, &b, timeout)?;
    }
    Ok(())
}

/// The only backend that answered, or an error naming the spread.
fn single(bodies: &BTreeMap<String, u64>, what: &str) -> Result<String> {
    ensure!(
        bodies.len() == 1,
        "{what}: ClientIP affinity must keep one client on one backend, got {bodies:?}"
    );
    Ok(bodies.keys().next().cloned().unwrap_or_default())
}

#[test]
fn client_ip_affinity_holds_follows_backend_removal_survives_a_restart_and_expires_tcp_and_udp_both_families()
-> Result<()> {
    const AFFINE_PORT: u16 = 80;
    const PLAIN_PORT: u16 = 81;
    const EXPIRING_PORT: u16 = 82;
    /// Long enough that no pause of this test under load expires it.
    const LONG_TIMEOUT_S: u32 = 600;
    const TIMEOUT_S: u32 = 1;
    let ports = [8080, 8081, 8082, 8083];
    let mut s = Setup::new(&ports, false)?;
    let combos: Vec<(IpAddr, Protocol)> = [VIP4, VIP6]
        .into_iter()
        .flat_map(|ip| [Protocol::Tcp, Protocol::Udp].map(|p| (ip.parse().expect("VIP"), p)))
        .collect();
    for (ip, proto) in &combos {
        program_affinity(&mut s, *ip, *proto, AFFINE_PORT, &ports, LONG_TIMEOUT_S)?;
        program_affinity(&mut s, *ip, *proto, PLAIN_PORT, &ports, 0)?;
        program_affinity(&mut s, *ip, *proto, EXPIRING_PORT, &ports, TIMEOUT_S)?;
    }
    let burst = Duration::from_millis(400);

    let mut affine_to = Vec::new();
    for (ip, proto) in &combos {
        let affine = SocketAddr::new(*ip, AFFINE_PORT);
        let plain = SocketAddr::new(*ip, PLAIN_PORT);
        // Without affinity, the same client's requests spread.
        let spread = loop_bodies(&s, *proto, plain, burst, 20)?;
        ensure!(
            spread.len() >= 2,
            "{proto} {plain} (no affinity): every request went to {spread:?}"
        );
        // With it, they all land on one backend.
        let what = format!("{proto} {affine}");
        let first = single(&loop_bodies(&s, *proto, affine, burst, 20)?, &what)?;

        // The backend leaves the service: its affine client moves at once,
        // and sticks to the new pick.
        let rest: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| format!("b{p}") != first)
            .collect();
        program_affinity(&mut s, *ip, *proto, AFFINE_PORT, &rest, LONG_TIMEOUT_S)?;
        let second = single(&loop_bodies(&s, *proto, affine, burst, 10)?, &what)?;
        ensure!(
            second != first,
            "{what}: {first} left the service but still receives its affine client"
        );
        // It comes back: affinity to the new pick is not disturbed.
        program_affinity(&mut s, *ip, *proto, AFFINE_PORT, &ports, LONG_TIMEOUT_S)?;
        let third = single(&loop_bodies(&s, *proto, affine, burst, 10)?, &what)?;
        ensure!(
            third == second,
            "{what}: an unrelated endpoint change moved the client from {second} to {third}"
        );
        affine_to.push(third);
    }

    // The agent restarts: the pinned affinity state carries on.
    let config = s.dataplane.config().clone();
    drop(std::mem::replace(
        &mut s.dataplane,
        Dataplane::load(config).context("reloading the dataplane")?,
    ));
    for ((ip, proto), before) in combos.iter().zip(&affine_to) {
        let affine = SocketAddr::new(*ip, AFFINE_PORT);
        let what = format!("{proto} {affine} after an agent restart");
        let after = single(&loop_bodies(&s, *proto, affine, burst, 10)?, &what)?;
        ensure!(
            &after == before,
            "{what}: the client moved from {before} to {after}"
        );
    }

    // A short timeout holds while the client keeps using it...
    for (ip, proto) in &combos {
        let expiring = SocketAddr::new(*ip, EXPIRING_PORT);
        single(
            &loop_bodies(&s, *proto, expiring, burst, 20)?,
            &format!("{proto} {expiring}"),
        )?;
    }
    // ...and after it passes without traffic, each new pick is random again.
    let mut picks: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    for _ in 0..8 {
        thread::sleep(Duration::from_millis(u64::from(TIMEOUT_S) * 1000 + 300));
        for (ip, proto) in &combos {
            let expiring = SocketAddr::new(*ip, EXPIRING_PORT);
            let reply = match proto {
                Protocol::Tcp => probe().tcp(s.client(), expiring, TIMEOUT)?,
                Protocol::Udp => probe().udp(s.client(), expiring, TIMEOUT)?,
            };
            let seen_as = if *proto == Protocol::Tcp {
                "peer"
            } else {
                "from"
            };
            let name = assert_served(&reply, seen_as, expiring, &s)?;
            *picks
                .entry(format!("{proto} {expiring}"))
                .or_default()
                .entry(name)
                .or_default() += 1;
        }
    }
    for (what, names) in &picks {
        ensure!(
            names.len() >= 2,
            "{what}: 8 picks, each after the {TIMEOUT_S} s affinity timeout, all went to {names:?}"
        );
    }
    ensure!(picks.len() == combos.len(), "picks: {picks:?}");
    Ok(())
}
