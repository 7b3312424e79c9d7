//! The NodePort tc program fed hand-built packets with `BPF_PROG_TEST_RUN`:
//! parsing edge cases (truncated headers, fragments, IPv6 extension
//! headers, ICMP errors), a ClusterIP reached from outside (passed
//! untouched), NodePort TCP SYNs of both families (translated, the
//! checksums of the output verified) and ICMP/ICMPv6 errors about those
//! flows (their quoted packet and outer addresses translated back). Each case asserts the program's
//! return code, the verdict it counted and the bytes it handed back.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result, bail, ensure};
use shoal_agent::{
    Dataplane, DataplaneConfig, Frontend, NodeportSetup, PinnedMaps, Protocol, SVC_FLAG_EXTERNAL,
    Verdict,
};
use shoal_e2e::{lab::Lab, test_run::test_run_output as test_run};

/// What the program returns for "not translated here / let it go on".
const TC_ACT_UNSPEC: u32 = u32::MAX;

const NODE4: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 11);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x172, 0x20, 0, 0, 0, 0, 0xb);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 13);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x172, 0x20, 0, 0, 0, 0, 0xd);
const BACKEND4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 5);
const CLUSTER_IP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const NODE_PORT: u16 = 30080;
const BACKEND_PORT: u16 = 8080;

fn eth(ethertype: u16) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

/// The ones'-complement sum of `data` folded to 16 bits.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

fn csum(data: &[u8], acc: u32) -> u16 {
    !(sum16(data, acc) as u16)
}

fn pseudo4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    sum16(&p, 0)
}

fn pseudo6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    sum16(&p, 0)
}

/// A 20-byte TCP SYN with its checksum over `pseudo`.
fn tcp_syn(sport: u16, dport: u16, pseudo: u32) -> Vec<u8> {
    tcp_segment(sport, dport, 0x02, pseudo)
}

/// A 20-byte TCP segment with `flags` and its checksum over `pseudo`.
fn tcp_segment(sport: u16, dport: u16, flags: u8, pseudo: u32) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes()); // seq
    t.extend_from_slice(&0u32.to_be_bytes()); // ack
    t.extend_from_slice(&[0x50, flags]); // data offset 5
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    let c = csum(&t, pseudo);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    let mut p = eth(0x0800);
    p.extend_from_slice(&h);
    p.extend_from_slice(payload);
    p
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = eth(0x86dd);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// An 8-byte IPv6 options header (hop-by-hop or destination options)
/// followed by `next`, padded with a PadN option.
fn ext_options(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

struct Bench {
    _lab: Lab,
    dataplane: Dataplane,
}

impl Bench {
    fn new() -> Result<Self> {
        let lab = Lab::create(&Lab::unique_prefix(), 1).context("creating the lab")?;
        let host = lab.host(1);
        let mut dataplane = Dataplane::load(DataplaneConfig {
            pin_dir: host.pin_dir().to_path_buf(),
            cgroup: host.cgroup().to_path_buf(),
            ebpf_debug_logs: false,
        })
        .context("loading the dataplane")?;
        dataplane.configure_nodeport(&NodeportSetup {
            device: "lo".into(),
            node_ip4: Some(NODE4),
            node_ip6: Some(NODE6),
            pod_cidr4: Some("10.244.1.0/24".parse()?),
            pod_cidr6: Some("fd00:10:244:1::/64".parse()?),
            snat_ports: (61_000, 65_535),
        })?;
        let tcp = |address, port| Frontend {
            address,
            port,
            protocol: Protocol::Tcp,
        };
        let b4 = [SocketAddr::new(BACKEND4.into(), BACKEND_PORT)];
        let b6 = [SocketAddr::new(BACKEND6.into(), BACKEND_PORT)];
        dataplane
            .lb4
            .upsert_with_flags(tcp(NODE4.into(), NODE_PORT), &b4, 0, SVC_FLAG_EXTERNAL)?;
        dataplane
            .lb6
            .upsert_with_flags(tcp(NODE6.into(), NODE_PORT), &b6, 0, SVC_FLAG_EXTERNAL)?;
        // A ClusterIP: no external flag.
        dataplane
            .lb4
            .upsert_with_flags(tcp(CLUSTER_IP4.into(), 80), &b4, 0, 0)?;
        Ok(Self {
            _lab: lab,
            dataplane,
        })
    }

    fn verdict(&self, v: Verdict) -> Result<u64> {
        let all = self.dataplane.verdicts()?;
        Ok(all.iter().find(|(k, _)| *k == v).map_or(0, |(_, n)| *n))
    }

    /// Runs `packet` through `nodeport_ingress`; asserts it counted
    /// `verdict` once and returned `retval`; the output bytes.
    fn run(&self, what: &str, packet: &[u8], retval: u32, verdict: Verdict) -> Result<Vec<u8>> {
        self.run_on("nodeport_ingress", what, packet, retval, verdict)
    }

    /// [`run`](Self::run) through program `program`.
    fn run_on(
        &self,
        program: &str,
        what: &str,
        packet: &[u8],
        retval: u32,
        verdict: Verdict,
    ) -> Result<Vec<u8>> {
        let fd = self
            .dataplane
            .program_fd(program)
            .with_context(|| format!("{program} is not loaded"))?;
        let before = self.verdict(verdict)?;
        let (rc, out) = test_run(fd, packet).with_context(|| format!("{what}: test run"))?;
        let after = self.verdict(verdict)?;
        ensure!(
            rc == retval,
            "{what}: returned {rc:#x}, expected {retval:#x}"
        );
        ensure!(
            after == before + 1,
            "{what}: verdict {} went {before} -> {after}, expected one more",
            verdict.name()
        );
        Ok(out)
    }

    /// [`run`](Self::run) for a packet that must come back untouched.
    fn run_untouched(&self, what: &str, packet: &[u8], verdict: Verdict) -> Result<()> {
        let out = self.run(what, packet, TC_ACT_UNSPEC, verdict)?;
        ensure!(out == packet, "{what}: the packet was changed");
        Ok(())
    }
}

#[test]
fn nodeport_program_on_hand_built_packets() -> Result<()> {
    let b = Bench::new()?;
    let fd = b
        .dataplane
        .program_fd("nodeport_ingress")
        .context("nodeport_ingress is not loaded")?;

    // Shorter than an Ethernet header: the kernel refuses to run the
    // program at all (EINVAL), so no program sees such a frame.
    match test_run(fd, &[0u8; 13]) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        other => bail!("a 13-byte frame: expected EINVAL from the kernel, got {other:?}"),
    }

    // Shorter than the claimed protocol's fixed header (IPv4: 20 bytes,
    // IPv6: 40): the kernel's test runner refuses those too, so the cut
    // headers below are cut after those fixed parts.
    let full = ipv4(CLIENT4, NODE4, 6, 0, &tcp_syn(40000, NODE_PORT, 0));
    for (what, frame) in [
        ("an Ethernet header alone", &eth(0x0800)[..]),
        ("a 12-byte IPv4 header", &full[..14 + 12]),
    ] {
        match test_run(fd, frame) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            other => bail!("{what}: expected EINVAL from the kernel, got {other:?}"),
        }
    }
    // An IPv4 header claiming TCP with no TCP header after it.
    b.run_untouched(
        "IPv4 header without its TCP header",
        &full[..14 + 20],
        Verdict::NodeportPassTruncated,
    )?;
    // An IPv4 header claiming 40 bytes of options that are not there.
    let mut long_ihl = full.clone();
    long_ihl[14] = 0x4f;
    b.run_untouched(
        "IPv4 header longer than the packet",
        &long_ihl[..14 + 40],
        Verdict::NodeportPassTruncated,
    )?;
    // TCP header cut before its checksum.
    b.run_untouched(
        "truncated TCP header",
        &full[..14 + 20 + 10],
        Verdict::NodeportPassTruncated,
    )?;
    // A non-first fragment (offset 1480 bytes) to the NodePort: no ports.
    let frag = ipv4(CLIENT4, NODE4, 17, 185, &[0u8; 64]);
    b.run_untouched(
        "IPv4 non-first fragment",
        &frag,
        Verdict::NodeportPassFragment,
    )?;
    // ICMP destination unreachable about an earlier packet.
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&full[14..14 + 28]);
    let c = csum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    b.run_untouched(
        "ICMP error",
        &ipv4(NODE4, CLIENT4, 1, 0, &icmp),
        Verdict::NodeportPassIcmpError,
    )?;
    // A ClusterIP from outside: not ours to translate.
    let seg = tcp_syn(40001, 80, pseudo4(CLIENT4, CLUSTER_IP4, 6, 20));
    b.run_untouched(
        "ClusterIP from outside",
        &ipv4(CLIENT4, CLUSTER_IP4, 6, 0, &seg),
        Verdict::NodeportPassInternal,
    )?;

    // NodePort TCP SYN, IPv4: translated to the local backend.
    let seg = tcp_syn(40002, NODE_PORT, pseudo4(CLIENT4, NODE4, 6, 20));
    let out = b.run(
        "IPv4 NodePort SYN",
        &ipv4(CLIENT4, NODE4, 6, 0, &seg),
        TC_ACT_UNSPEC,
        Verdict::NodeportNewFlow,
    )?;
    ensure!(
        out.len() == 14 + 40,
        "IPv4 SYN: {} bytes came back",
        out.len()
    );
    let ip = &out[14..34];
    ensure!(ip[12..16] == CLIENT4.octets(), "IPv4 SYN: source changed");
    ensure!(
        ip[16..20] == BACKEND4.octets(),
        "IPv4 SYN: destination {:?}, expected {BACKEND4}",
        &ip[16..20]
    );
    ensure!(csum(ip, 0) == 0, "IPv4 SYN: IP header checksum is wrong");
    let tcp = &out[34..54];
    ensure!(
        tcp[2..4] == BACKEND_PORT.to_be_bytes(),
        "IPv4 SYN: destination port {:?}",
        &tcp[2..4]
    );
    ensure!(
        csum(tcp, pseudo4(CLIENT4, BACKEND4, 6, 20)) == 0,
        "IPv4 SYN: TCP checksum is wrong after translation"
    );
    // The same flow again: the conntrack entry translates it.
    b.run(
        "IPv4 NodePort, second packet",
        &ipv4(CLIENT4, NODE4, 6, 0, &seg),
        TC_ACT_UNSPEC,
        Verdict::NodeportForwarded,
    )?;

    // A FIN of that flow marks its entry closing (the GC's short timeout);
    // a bare SYN on the same 5-tuple (a reused port) opens it again.
    for (what, flags, closing, verdict) in [
        ("FIN", 0x11, true, Verdict::NodeportForwarded),
        ("SYN again", 0x02, false, Verdict::NodeportForwarded),
    ] {
        let seg = tcp_segment(40002, NODE_PORT, flags, pseudo4(CLIENT4, NODE4, 6, 20));
        b.run(
            &format!("IPv4 NodePort {what}"),
            &ipv4(CLIENT4, NODE4, 6, 0, &seg),
            TC_ACT_UNSPEC,
            verdict,
        )?;
        let rows = PinnedMaps::new(b.dataplane.config().pin_dir.clone()).conntrack()?;
        let row = rows
            .iter()
            .find(|r| r.original && r.source == SocketAddr::new(CLIENT4.into(), 40002))
            .context("no conntrack entry of the IPv4 flow")?;
        ensure!(
            row.closing == closing,
            "after a {what} the entry's closing mark is {}, expected {closing}",
            row.closing
        );
    }

    // ICMP fragmentation needed from the local backend about that flow (as
    // the backend got it: client → backend), leaving through the device:
    // the client gets it from the frontend, about its own packet to it.
    let quoted = {
        let seg = tcp_syn(40002, BACKEND_PORT, pseudo4(CLIENT4, BACKEND4, 6, 20));
        ipv4(CLIENT4, BACKEND4, 6, 0, &seg)[14..].to_vec()
    };
    let mut frag_needed = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc]; // next-hop MTU 1500
    frag_needed.extend_from_slice(&quoted);
    let c = csum(&frag_needed, 0);
    frag_needed[2..4].copy_from_slice(&c.to_be_bytes());
    let out = b.run_on(
        "nodeport_egress",
        "ICMP fragmentation needed about a NodePort flow",
        &ipv4(BACKEND4, CLIENT4, 1, 0, &frag_needed),
        TC_ACT_UNSPEC,
        Verdict::NodeportIcmpErrorRevnat,
    )?;
    let ip = &out[14..34];
    ensure!(
        ip[12..16] == NODE4.octets() && ip[16..20] == CLIENT4.octets(),
        "ICMP error: outer {:?} -> {:?}, expected {NODE4} -> {CLIENT4}",
        &ip[12..16],
        &ip[16..20]
    );
    ensure!(csum(ip, 0) == 0, "ICMP error: outer IP checksum is wrong");
    let icmp = &out[34..];
    let inner = &icmp[8..28];
    ensure!(
        inner[12..16] == CLIENT4.octets() && inner[16..20] == NODE4.octets(),
        "ICMP error: the quoted packet is {:?} -> {:?}, not client -> frontend",
        &inner[12..16],
        &inner[16..20]
    );
    ensure!(
        csum(inner, 0) == 0,
        "ICMP error: quoted IP checksum is wrong"
    );
    ensure!(
        icmp[28..30] == 40002u16.to_be_bytes() && icmp[30..32] == NODE_PORT.to_be_bytes(),
        "ICMP error: quoted ports {:?}",
        &icmp[28..32]
    );
    ensure!(csum(icmp, 0) == 0, "ICMP error: ICMP checksum is wrong");

    // NodePort TCP SYN, IPv6, behind hop-by-hop and destination options.
    let seg = tcp_syn(40003, NODE_PORT, pseudo6(CLIENT6, NODE6, 6, 20));
    let mut payload = ext_options(60); // hop-by-hop → destination options
    payload.extend(ext_options(6)); // destination options → TCP
    payload.extend_from_slice(&seg);
    let out = b.run(
        "IPv6 NodePort SYN after extension headers",
        &ipv6(CLIENT6, NODE6, 0, &payload),
        TC_ACT_UNSPEC,
        Verdict::NodeportNewFlow,
    )?;
    ensure!(
        out[14 + 24..14 + 40] == BACKEND6.octets(),
        "IPv6 SYN: destination not the backend"
    );
    let tcp = &out[14 + 40 + 16..];
    ensure!(
        tcp[2..4] == BACKEND_PORT.to_be_bytes(),
        "IPv6 SYN: destination port {:?}",
        &tcp[2..4]
    );
    ensure!(
        csum(tcp, pseudo6(CLIENT6, BACKEND6, 6, 20)) == 0,
        "IPv6 SYN: TCP checksum is wrong after translation"
    );

    // A hop-by-hop header claiming 24 bytes, cut after 8.
    let mut cut = vec![6, 2, 1, 4, 0, 0, 0, 0];
    cut.extend_from_slice(&[0u8; 4]);
    b.run_untouched(
        "IPv6 extension header cut short",
        &ipv6(CLIENT6, NODE6, 0, &cut),
        Verdict::NodeportPassTruncated,
    )?;

    // ICMPv6 packet too big from the backend about the IPv6 flow above (as
    // the backend got it: client → backend), leaving through the device:
    // the client gets it from the frontend, about its own packet to it.
    let quoted6 = {
        let seg = tcp_syn(40003, BACKEND_PORT, pseudo6(CLIENT6, BACKEND6, 6, 20));
        ipv6(CLIENT6, BACKEND6, 6, &seg)[14..].to_vec()
    };
    let mut ptb = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00]; // MTU 1280
    ptb.extend_from_slice(&quoted6);
    let c = csum(&ptb, pseudo6(BACKEND6, CLIENT6, 58, ptb.len()));
    ptb[2..4].copy_from_slice(&c.to_be_bytes());
    let out = b.run_on(
        "nodeport_egress",
        "ICMPv6 packet too big about a NodePort flow",
        &ipv6(BACKEND6, CLIENT6, 58, &ptb),
        TC_ACT_UNSPEC,
        Verdict::NodeportIcmpErrorRevnat,
    )?;
    let ip = &out[14..54];
    ensure!(
        ip[8..24] == NODE6.octets() && ip[24..40] == CLIENT6.octets(),
        "ICMPv6 error: outer {:?} -> {:?}, expected {NODE6} -> {CLIENT6}",
        &ip[8..24],
        &ip[24..40]
    );
    let icmp = &out[54..];
    let inner = &icmp[8..48];
    ensure!(
        inner[8..24] == CLIENT6.octets() && inner[24..40] == NODE6.octets(),
        "ICMPv6 error: the quoted packet is not client -> frontend"
    );
    ensure!(
        icmp[48..50] == 40003u16.to_be_bytes() && icmp[50..52] == NODE_PORT.to_be_bytes(),
        "ICMPv6 error: quoted ports {:?}",
        &icmp[48..52]
    );
    ensure!(
        csum(icmp, pseudo6(NODE6, CLIENT6, 58, icmp.len())) == 0,
        "ICMPv6 error: checksum wrong after translation"
    );

    // IPv6 non-first fragment of a UDP datagram to the NodePort.
    let mut frag6 = vec![17, 0, 0x05, 0xc8, 0, 0, 0, 1]; // offset 185*8
    frag6.extend_from_slice(&[0u8; 32]);
    b.run_untouched(
        "IPv6 non-first fragment",
        &ipv6(CLIENT6, NODE6, 44, &frag6),
        Verdict::NodeportPassFragment,
    )?;

    // First fragments carry the ports: translated like whole packets.
    // IPv4: more-fragments set, offset 0.
    let seg = tcp_syn(40004, NODE_PORT, pseudo4(CLIENT4, NODE4, 6, 20));
    let out = b.run(
        "IPv4 first fragment",
        &ipv4(CLIENT4, NODE4, 6, 0x2000, &seg),
        TC_ACT_UNSPEC,
        Verdict::NodeportNewFlow,
    )?;
    ensure!(
        out[14 + 16..14 + 20] == BACKEND4.octets()
            && out[34 + 2..34 + 4] == BACKEND_PORT.to_be_bytes(),
        "IPv4 first fragment: not translated to the backend"
    );
    // IPv6: a fragment header with offset 0 and more-fragments set.
    let seg = tcp_syn(40005, NODE_PORT, pseudo6(CLIENT6, NODE6, 6, 20));
    let mut first6 = vec![6, 0, 0, 1, 0, 0, 0, 2];
    first6.extend_from_slice(&seg);
    let out = b.run(
        "IPv6 first fragment",
        &ipv6(CLIENT6, NODE6, 44, &first6),
        TC_ACT_UNSPEC,
        Verdict::NodeportNewFlow,
    )?;
    ensure!(
        out[14 + 24..14 + 40] == BACKEND6.octets()
            && out[14 + 48 + 2..14 + 48 + 4] == BACKEND_PORT.to_be_bytes(),
        "IPv6 first fragment: not translated to the backend"
    );

    // An ICMP error about a translated flow whose quote stops after the IP
    // header (no ports to find the flow by): passed untouched.
    let mut cut_quote = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
    cut_quote.extend_from_slice(&quoted[..20]);
    let c = csum(&cut_quote, 0);
    cut_quote[2..4].copy_from_slice(&c.to_be_bytes());
    let packet = ipv4(BACKEND4, CLIENT4, 1, 0, &cut_quote);
    let out = b.run_on(
        "nodeport_egress",
        "ICMP error quoting no ports",
        &packet,
        TC_ACT_UNSPEC,
        Verdict::NodeportPassIcmpError,
    )?;
    ensure!(
        out == packet,
        "ICMP error quoting no ports: the packet was changed"
    );
    Ok(())
}
