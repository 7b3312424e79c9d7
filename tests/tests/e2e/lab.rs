//! The lab itself: hosts get their addresses and reach each other, nothing
//! leaves the lab, teardown leaves nothing behind, labs run side by side.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use shoal_e2e::lab::{self, Host, Lab, Probe};

const PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(3);

fn probe() -> Probe {
    Probe::new(env!("CARGO_BIN_EXE_probe"))
}

/// A fresh lab with a prefix of its own, timed.
fn new_lab(hosts: usize) -> Result<Lab> {
    new_lab_named(&Lab::unique_prefix(), hosts)
}

fn new_lab_named(prefix: &str, hosts: usize) -> Result<Lab> {
    let start = Instant::now();
    let lab = Lab::create(prefix, hosts)
        .with_context(|| format!("creating lab {prefix:?} with {hosts} hosts"))?;
    eprintln!(
        "lab {prefix}: {hosts} hosts created in {} ms",
        start.elapsed().as_millis()
    );
    Ok(lab)
}

/// Runs `command`, which must succeed, and returns its stdout.
fn stdout_of(mut command: Command) -> Result<String> {
    let line = format!("{command:?}");
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .output()
        .with_context(|| format!("running {line}"))?;
    ensure!(
        status.success(),
        "{line} failed ({status}): {}",
        String::from_utf8_lossy(&stderr)
    );
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

fn on_host(host: &Host, program: &str, args: &[&str]) -> Result<String> {
    let mut command = host.command(program)?;
    command.args(args);
    stdout_of(command)
}

/// `ip ARGS` in the fabric namespace (which has no `Host`).
fn on_fabric(lab: &Lab, args: &[&str]) -> Result<String> {
    let mut command = Command::new("ip");
    command.args(["-n", &lab.fabric_netns()]).args(args);
    stdout_of(command)
}

/// Network namespaces of the lab `prefix`, from `ip netns list`.
fn netns_of(prefix: &str) -> Result<Vec<String>> {
    let mut command = Command::new("ip");
    command.args(["netns", "list"]);
    let listed = stdout_of(command)?;
    let ours = format!("shoal-{prefix}-");
    let mut names: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&ours))
        .map(str::to_owned)
        .collect();
    names.sort();
    Ok(names)
}

fn spawn_sleep(host: &Host) -> Result<Child> {
    host.command("sleep")?
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting sleep on {}", host.name()))
}

fn wait_exit(child: &mut Child, limit: Duration) -> Result<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("pid {} still running after {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts a probe reached `server` on `server_addr` from `client`, and
/// that the server saw the client's own address as the peer.
fn assert_reply(
    report: &Value,
    server: &str,
    server_addr: SocketAddr,
    client: &Host,
    what: &str,
) -> Result<()> {
    ensure!(report["ok"] == true, "{what}: {report}");
    let local: SocketAddr = report["local"]
        .as_str()
        .context("no local address in the report")?
        .parse()?;
    // The UDP client socket is bound to the unspecified address; the server
    // names the client's real address, which must be the client host's.
    let body = report["body"].as_str().context("no body in the report")?;
    let expected_peer = SocketAddr::new(
        if server_addr.is_ipv4() {
            client.ipv4().into()
        } else {
            client.ipv6().into()
        },
        local.port(),
    );
    let expected = format!("{server} local={server_addr} peer={expected_peer}\n");
    ensure!(
        body == expected,
        "{what}: got body {body:?}, expected {expected:?} ({report})"
    );
    Ok(())
}

#[test]
fn hosts_get_addresses_reach_each_other_and_run_in_their_cgroup() -> Result<()> {
    let lab = new_lab(3)?;
    let prefix = lab.prefix().to_owned();

    for host in lab.hosts() {
        let addrs = on_host(host, "ip", &["-br", "addr"])?;
        let eth0 = addrs
            .lines()
            .find(|l| l.starts_with("eth0"))
            .with_context(|| format!("{}: no eth0 in `ip -br addr`:\n{addrs}", host.name()))?;
        for want in [format!("{}/24", host.ipv4()), format!("{}/64", host.ipv6())] {
            ensure!(
                eth0.split_whitespace().any(|w| w == want),
                "{}: eth0 lacks {want}: {eth0}",
                host.name()
            );
        }
        ensure!(
            eth0.contains(" UP "),
            "{}: eth0 is not up: {eth0}",
            host.name()
        );
        let lo = addrs
            .lines()
            .find(|l| l.starts_with("lo "))
            .context("no lo")?;
        ensure!(!lo.contains("DOWN"), "{}: lo is down: {lo}", host.name());
    }

    // Nothing of the lab appears in the root namespace.
    let root_links = stdout_of({
        let mut c = Command::new("ip");
        c.args(["-o", "link", "show"]);
        c
    })?;
    for host in lab.hosts() {
        let port = format!(": {}@", host.name());
        ensure!(
            !root_links.contains(&port),
            "{} appeared in the root netns:\n{root_links}",
            host.name()
        );
    }

    let (client, server) = (lab.host(1), lab.host(2));
    let probe = probe();
    let any4: SocketAddr = ([0, 0, 0, 0], PORT).into();
    let any6: SocketAddr = ([0u16; 8], PORT).into();
    let _srv = probe.serve(server, "srv-host-2", &[any4, any6], &[any4, any6])?;
    for target in [server.v4(PORT), server.v6(PORT)] {
        let report = probe.tcp(client, target, TIMEOUT)?;
        assert_reply(
            &report,
            "srv-host-2",
            target,
            client,
            &format!("tcp host-1 -> {target}"),
        )?;
        ensure!(report["peer"] == target.to_string(), "tcp peer: {report}");

        let report = probe.udp(client, target, TIMEOUT)?;
        assert_reply(
            &report,
            "srv-host-2",
            target,
            client,
            &format!("udp host-1 -> {target}"),
        )?;
        // The reply comes from the address the request went to.
        ensure!(
            report["from"] == target.to_string(),
            "udp reply source: {report}"
        );
    }

    // A command runs in the host's cgroup and netns.
    for host in lab.hosts() {
        let cgroups = on_host(host, "cat", &["/proc/self/cgroup"])?;
        let want = format!("0::/shoal-{prefix}/{}", host.name());
        ensure!(
            cgroups.lines().any(|l| l == want),
            "{}: /proc/self/cgroup lacks {want:?}:\n{cgroups}",
            host.name()
        );
    }
    let host = lab.host(3);
    let mut sleep = spawn_sleep(host)?;
    let pid = sleep.id();
    let procs = std::fs::read_to_string(host.cgroup().join("cgroup.procs"))?;
    let in_cgroup = procs.lines().any(|l| l.trim() == pid.to_string());
    let ns_of_child = std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino();
    let ns_of_host = std::fs::metadata(host.netns_path())?.ino();
    sleep.kill()?;
    sleep.wait()?;
    ensure!(
        in_cgroup,
        "pid {pid} is not in {}: {procs:?}",
        host.cgroup().display()
    );
    ensure!(
        ns_of_child == ns_of_host,
        "pid {pid} is not in netns {}",
        host.netns()
    );
    Ok(())
}

#[test]
fn nothing_in_the_lab_reaches_service_cidrs_or_outside() -> Result<()> {
    let lab = new_lab(1)?;
    let host = lab.host(1);

    // Every lab namespace: unreachable routes for the service CIDRs and the
    // LoadBalancer pools, and no default route.
    let mut tables = Vec::new();
    for family in ["-4", "-6"] {
        tables.push((
            host.name().to_owned(),
            on_host(host, "ip", &[family, "route", "show"])?,
        ));
        tables.push((
            "fabric".to_owned(),
            on_fabric(&lab, &[family, "route", "show"])?,
        ));
    }
    for cidr in lab::UNREACHABLE_CIDRS {
        for ns in [host.name(), "fabric"] {
            let found = tables.iter().filter(|(n, _)| n == ns).any(|(_, t)| {
                t.lines()
                    .any(|l| l.starts_with(&format!("unreachable {cidr} ")))
            });
            ensure!(found, "{ns}: no `unreachable {cidr}` route in {tables:?}");
        }
    }
    for (ns, table) in &tables {
        ensure!(
            !table.lines().any(|l| l.starts_with("default")),
            "{ns} has a default route:\n{table}"
        );
    }
    // A route lookup (no packet) for an address outside the lab finds nothing.
    for outside in ["192.0.2.1", "2001:db8::1"] {
        let output = host
            .command("ip")?
            .args(["route", "get", outside])
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            !output.status.success() && stderr.contains("Network is unreachable"),
            "route lookup for {outside} on {}: {} {stderr}",
            host.name(),
            String::from_utf8_lossy(&output.stdout)
        );
    }

    // Real sockets to service addresses fail at once with EHOSTUNREACH (the
    // kernel's error for an `unreachable` route, in both families): no
    // timeout, no reply, nothing sent.
    let probe = probe();
    for target in ["10.96.0.1:80", "[fd00:10:96::1]:80"] {
        let target: SocketAddr = target.parse()?;
        for protocol in ["tcp", "udp"] {
            let start = Instant::now();
            let report = match protocol {
                "tcp" => probe.tcp(host, target, TIMEOUT)?,
                _ => probe.udp(host, target, TIMEOUT)?,
            };
            let took = start.elapsed();
            let what = format!("{protocol} to {target}");
            ensure!(report["ok"] == false, "{what} succeeded: {report}");
            ensure!(
                report["errno"] == "EHOSTUNREACH",
                "{what}: wrong error: {report}"
            );
            ensure!(
                report["raw_os_error"] == libc::EHOSTUNREACH,
                "{what}: wrong error: {report}"
            );
            ensure!(
                report["kind"] == "HostUnreachable",
                "{what}: wrong error kind: {report}"
            );
            ensure!(
                took < Duration::from_millis(500),
                "{what} took {took:?} to fail: it should fail at the route lookup"
            );
        }
    }
    Ok(())
}

#[test]
fn teardown_leaves_nothing_and_create_replaces_a_stale_lab() -> Result<()> {
    let prefix = Lab::unique_prefix();
    let pins = lab::bpffs_mounted();

    // A lab left behind, as by a crashed run: a process still in a host, pins.
    let mut stale = new_lab_named(&prefix, 3)?;
    let mut stale_sleep = spawn_sleep(stale.host(1))?;
    if pins {
        for host in stale.hosts() {
            std::fs::create_dir_all(host.pin_dir().join("maps"))?;
        }
    }
    let stale_cgroup = stale.cgroup().to_owned();
    stale.persist();
    drop(stale);
    ensure!(
        netns_of(&prefix)?.len() == 4,
        "persist did not keep the lab: {:?}",
        netns_of(&prefix)?
    );

    let lab = new_lab_named(&prefix, 2)?;
    let status =
        wait_exit(&mut stale_sleep, Duration::from_secs(5)).context("stale lab's process")?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "stale lab's sleep ended with {status}"
    );
    let expected = vec![
        format!("shoal-{prefix}-fabric"),
        format!("shoal-{prefix}-host-1"),
        format!("shoal-{prefix}-host-2"),
    ];
    ensure!(
        netns_of(&prefix)? == expected,
        "after re-create: {:?}",
        netns_of(&prefix)?
    );
    ensure!(
        !Path::new(lab::PIN_ROOT)
            .join(format!("{prefix}-host-3"))
            .exists(),
        "stale pin dir left"
    );
    on_host(lab.host(2), "ip", &["-br", "addr"])?;

    let mut sleep = spawn_sleep(lab.host(2))?;
    if pins {
        std::fs::create_dir_all(lab.host(1).pin_dir())?;
    }
    let hosts: Vec<Host> = lab.hosts().to_vec();
    let start = Instant::now();
    drop(lab);
    eprintln!(
        "lab {prefix}: torn down in {} ms",
        start.elapsed().as_millis()
    );

    let status =
        wait_exit(&mut sleep, Duration::from_secs(5)).context("process in a dropped lab")?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "sleep ended with {status}"
    );
    ensure!(
        netns_of(&prefix)?.is_empty(),
        "netns left: {:?}",
        netns_of(&prefix)?
    );
    ensure!(
        !stale_cgroup.exists(),
        "cgroup left: {}",
        stale_cgroup.display()
    );
    for host in &hosts {
        ensure!(
            !host.cgroup().exists(),
            "cgroup left: {}",
            host.cgroup().display()
        );
        ensure!(
            !host.pin_dir().exists(),
            "pin dir left: {}",
            host.pin_dir().display()
        );
        ensure!(
            !host.netns_path().exists(),
            "netns file left: {}",
            host.netns_path().display()
        );
    }
    Ok(())
}

#[test]
fn labs_with_different_prefixes_run_side_by_side() -> Result<()> {
    let a = new_lab(2)?;
    let b = new_lab(2)?;
    ensure!(a.prefix() != b.prefix());
    let probe = probe();
    let any4: SocketAddr = ([0, 0, 0, 0], PORT).into();
    // The same addresses in both labs, each answered by its own server.
    let srv_a = probe.serve(a.host(2), "srv-a", &[any4], &[])?;
    let _srv_b = probe.serve(b.host(2), "srv-b", &[any4], &[])?;
    let target = a.host(2).v4(PORT);
    ensure!(target == b.host(2).v4(PORT));
    assert_reply(
        &probe.tcp(a.host(1), target, TIMEOUT)?,
        "srv-a",
        target,
        a.host(1),
        "lab a",
    )?;
    assert_reply(
        &probe.tcp(b.host(1), target, TIMEOUT)?,
        "srv-b",
        target,
        b.host(1),
        "lab b",
    )?;

    let a_prefix = a.prefix().to_owned();
    drop(srv_a);
    drop(a);
    ensure!(
        netns_of(&a_prefix)?.is_empty(),
        "lab a left {:?}",
        netns_of(&a_prefix)?
    );
    ensure!(
        netns_of(b.prefix())?.len() == 3,
        "lab b lost namespaces: {:?}",
        netns_of(b.prefix())?
    );
    assert_reply(
        &probe.tcp(b.host(1), target, TIMEOUT)?,
        "srv-b",
        target,
        b.host(1),
        "lab b after a went",
    )?;
    Ok(())
}
