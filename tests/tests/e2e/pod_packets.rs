//! The pod-interface programs (`from_container`, `to_container`) fed
//! hand-built packets with `BPF_PROG_TEST_RUN`, with the policy maps
//! written by the agent's real compiler and writer from a NetworkPolicy:
//! the client pod may open TCP to `app=server` pods on port 8080 and
//! nothing else, and no ingress at all. For both families: a first SYN to
//! a denied pod is dropped (`TC_ACT_SHOT`), counted and reported once as
//! `dropped_policy`; a first SYN to the server passes and reports a start;
//! the server's SYN-ACK on that flow passes although ingress is denied; a
//! SYN from the server to the client is dropped by the ingress side; an
//! RST ends the allowed flow with an end event. A truncated packet passes
//! and is counted as truncated. Events are read from the real ring buffer
//! and decoded by the agent's reader.
//!
//! The test run's skb belongs to the loopback device of the test's
//! network namespace (ifindex 1), so the client pod's endpoint is ifindex 1.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use shoal_agent::{
    Dataplane, DataplaneConfig, Verdict,
    flows::{FlowRecord, Kind, decode_event, read_stats},
    policy::{Inputs, KernelPolicyMaps, LocalEndpoint, PodView, PolicyWriter, compile, desired},
};
use shoal_api::identity::security_labels;
use shoal_e2e::{lab::Lab, test_run::test_run};

const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;
/// The endpoint: the test run's device (loopback, ifindex 1 in every
/// network namespace).
const ENDPOINT: u32 = 1;

const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const SERVER4: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 20);
const OTHER4: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 30);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x10);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0x20);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0x30);

const POLICY: &str = r#"{
  "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
  "metadata": {"name": "client", "namespace": "default"},
  "spec": {
    "podSelector": {"matchLabels": {"app": "client"}},
    "policyTypes": ["Ingress", "Egress"],
    "egress": [{
      "to": [{"podSelector": {"matchLabels": {"app": "server"}}}],
      "ports": [{"protocol": "TCP", "port": 8080}]
    }]
  }
}"#;

/// A TCP segment from `src` to `dst` with `flags` in an Ethernet frame
/// (checksums zero: the programs do not read them).
fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Vec<u8> {
    let mut l4 = vec![0u8; 20];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4[12] = 5 << 4;
    l4[13] = flags;
    l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&0x0800u16.to_be_bytes());
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&0x86ddu16.to_be_bytes());
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(&[6, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => unreachable!("one family per packet"),
    }
    p.extend_from_slice(&l4);
    p
}

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const RST: u8 = 0x04;

fn pod(name: &str, app: &str, identity: u32, ips: [IpAddr; 2], local: bool) -> PodView {
    let labels = [("app".to_owned(), app.to_owned())].into_iter().collect();
    PodView {
        namespace: "default".into(),
        name: name.into(),
        labels,
        identity: Some(identity),
        ips: ips.to_vec(),
        ports: Vec::new(),
        local,
    }
}

/// A lab host (for its pin directory and cgroup) with the dataplane
/// loaded, the pod programs loaded and the policy maps written.
fn setup() -> Result<(Lab, Dataplane, PathBuf)> {
    let lab = Lab::create(&Lab::unique_prefix(), 1).context("creating the lab")?;
    let host = lab.host(1);
    let pin_dir = host.pin_dir().to_path_buf();
    let mut dataplane = Dataplane::load(DataplaneConfig {
        pin_dir: pin_dir.clone(),
        cgroup: host.cgroup().to_path_buf(),
        ebpf_debug_logs: false,
    })
    .context("loading the dataplane")?;
    dataplane
        .load_pod_programs()
        .context("loading the pod programs")?;

    let client = pod(
        "client",
        "client",
        1000,
        [CLIENT4.into(), CLIENT6.into()],
        true,
    );
    let server = pod(
        "server",
        "server",
        1001,
        [SERVER4.into(), SERVER6.into()],
        false,
    );
    let other = pod(
        "other",
        "other",
        1002,
        [OTHER4.into(), OTHER6.into()],
        false,
    );
    let no_ns_labels: [(&String, &String); 0] = [];
    let identities = [&client, &server, &other]
        .iter()
        .map(|p| {
            (
                p.identity.unwrap_or(0),
                security_labels(&p.labels, &p.namespace, no_ns_labels),
            )
        })
        .collect();
    let policy: NetworkPolicy = serde_json::from_str(POLICY).context("the policy")?;
    let inputs = Inputs {
        policies: vec![policy],
        identities,
        endpoints: vec![LocalEndpoint {
            endpoint: ENDPOINT,
            pod: client.clone(),
        }],
        pods: vec![client, server, other],
        ..Inputs::default()
    };
    let want = desired(&inputs, &compile(&inputs));
    let maps = KernelPolicyMaps::open_or_create(&pin_dir).context("opening the policy maps")?;
    let mut writer = PolicyWriter::restore(maps).context("reading the policy maps")?;
    let changes = writer.apply(&want).context("writing the policy maps")?;
    ensure!(
        changes.written > 0,
        "the policy writer wrote nothing for {want:?}"
    );
    Ok((lab, dataplane, pin_dir))
}

fn verdict(dataplane: &Dataplane, v: Verdict) -> Result<u64> {
    let all = dataplane.verdicts()?;
    Ok(all.iter().find(|(k, _)| *k == v).map_or(0, |(_, n)| *n))
}

fn flow_stat(pin_dir: &Path, name: &str) -> Result<u64> {
    let all = read_stats(pin_dir)?;
    Ok(all.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v))
}

/// Runs `packet` through `program`; asserts it returned `want`.
fn expect_rc(
    dataplane: &Dataplane,
    program: &str,
    what: &str,
    packet: &[u8],
    want: u32,
) -> Result<()> {
    let fd = dataplane
        .program_fd(program)
        .with_context(|| format!("{program} is not loaded"))?;
    let rc = test_run(fd, packet).with_context(|| format!("{what}: test run of {program}"))?;
    ensure!(
        rc == want,
        "{what}: {program} returned {rc:#x}, expected {want:#x}"
    );
    Ok(())
}

/// Asserts `event` is `kind` with `verdict` for the flow `src:sport ->
/// dst:dport`.
fn expect_event(
    what: &str,
    event: Option<FlowRecord>,
    kind: Kind,
    verdict: &str,
    (src, sport, dst, dport): (IpAddr, u16, IpAddr, u16),
) -> Result<()> {
    let Some(r) = event else {
        bail!("{what}: no flow event in the ring buffer");
    };
    ensure!(
        r.kind == kind && r.verdict == verdict,
        "{what}: event {:?} verdict {}, expected {kind:?} {verdict}: {r:?}",
        r.kind,
        r.verdict
    );
    ensure!(
        r.source.ip == Some(src)
            && r.source.port == sport
            && r.destination.ip == Some(dst)
            && r.destination.port == dport
            && r.transport == "tcp",
        "{what}: event for the wrong flow: {r:?}"
    );
    Ok(())
}

#[test]
fn pod_programs_enforce_policy_and_report_flows() -> Result<()> {
    let (_lab, mut dataplane, pin_dir) = setup()?;
    let mut ring = dataplane.take_flow_events()?;
    let mut next_event = move || ring.next().and_then(|item| decode_event(&item));

    for (family, client, server, other) in [
        (
            "IPv4",
            IpAddr::from(CLIENT4),
            IpAddr::from(SERVER4),
            IpAddr::from(OTHER4),
        ),
        (
            "IPv6",
            IpAddr::from(CLIENT6),
            IpAddr::from(SERVER6),
            IpAddr::from(OTHER6),
        ),
    ] {
        // A first SYN to a pod no egress rule admits.
        let what = format!("{family} SYN to a denied pod");
        let before = verdict(&dataplane, Verdict::PolicyDropEgress)?;
        let syn = tcp(client, 40000, other, 8080, SYN);
        expect_rc(&dataplane, "from_container", &what, &syn, TC_ACT_SHOT)?;
        ensure!(
            verdict(&dataplane, Verdict::PolicyDropEgress)? == before + 1,
            "{what}: policy_drop_egress not counted"
        );
        expect_event(
            &what,
            next_event(),
            Kind::EndFin,
            "dropped_policy",
            (client, 40000, other, 8080),
        )?;
        // Its retry is dropped again but reported once per flow.
        expect_rc(&dataplane, "from_container", &what, &syn, TC_ACT_SHOT)?;
        ensure!(next_event().is_none(), "{what}: a retry was reported again");

        // The server on the admitted port, but another port: denied.
        let what = format!("{family} SYN to the server on a port no rule admits");
        let syn = tcp(client, 40001, server, 9090, SYN);
        expect_rc(&dataplane, "from_container", &what, &syn, TC_ACT_SHOT)?;
        expect_event(
            &what,
            next_event(),
            Kind::EndFin,
            "dropped_policy",
            (client, 40001, server, 9090),
        )?;

        // The admitted flow: starts, its reply passes although no ingress
        // is admitted, and an RST ends it.
        let what = format!("{family} SYN to the server on 8080");
        let tuple = (client, 40002, server, 8080);
        expect_rc(
            &dataplane,
            "from_container",
            &what,
            &tcp(client, 40002, server, 8080, SYN),
            TC_ACT_UNSPEC,
        )?;
        expect_event(&what, next_event(), Kind::Start, "forwarded", tuple)?;
        let what = format!("{family} SYN-ACK of the admitted flow");
        expect_rc(
            &dataplane,
            "to_container",
            &what,
            &tcp(server, 8080, client, 40002, SYN_ACK),
            TC_ACT_UNSPEC,
        )?;
        ensure!(
            next_event().is_none(),
            "{what}: a reply started another flow"
        );
        let what = format!("{family} RST of the admitted flow");
        expect_rc(
            &dataplane,
            "from_container",
            &what,
            &tcp(client, 40002, server, 8080, RST),
            TC_ACT_UNSPEC,
        )?;
        expect_event(&what, next_event(), Kind::EndRst, "forwarded", tuple)?;

        // The server opening a connection to the client: ingress denies it.
        let what = format!("{family} SYN from the server to the client");
        let before = verdict(&dataplane, Verdict::PolicyDropIngress)?;
        expect_rc(
            &dataplane,
            "to_container",
            &what,
            &tcp(server, 5555, client, 80, SYN),
            TC_ACT_SHOT,
        )?;
        ensure!(
            verdict(&dataplane, Verdict::PolicyDropIngress)? == before + 1,
            "{what}: policy_drop_ingress not counted"
        );
        expect_event(
            &what,
            next_event(),
            Kind::EndFin,
            "dropped_policy",
            (server, 5555, client, 80),
        )?;
    }

    // An IPv4 header claiming TCP with the TCP header cut after 10 bytes.
    let full = tcp(CLIENT4.into(), 40003, OTHER4.into(), 8080, SYN);
    let before = flow_stat(&pin_dir, "truncated")?;
    expect_rc(
        &dataplane,
        "from_container",
        "truncated TCP header",
        &full[..14 + 20 + 10],
        TC_ACT_UNSPEC,
    )?;
    ensure!(
        flow_stat(&pin_dir, "truncated")? == before + 1,
        "a truncated TCP header was not counted as truncated"
    );
    ensure!(
        next_event().is_none(),
        "a truncated packet made a flow event"
    );
    Ok(())
}
