//! A flow as users see it: who talked to whom (pods, namespaces, nodes,
//! services resolved), over what, with what verdict and how much, plus the
//! filters of `shoal flows` and its one-line format.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use shoal_ebpf_common::flow::{
    FLOW_EVENT_START, FLOW_FAMILY_V4, FLOW_INIT_POD, FLOW_VERDICT_DROPPED,
    FLOW_VERDICT_DROPPED_POLICY, FlowEvent, FlowKey, FlowValue,
};

/// Why a record was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The flow's first packet.
    Start,
    /// TCP FIN both ways.
    EndFin,
    /// A TCP RST.
    EndRst,
    /// No packet for the idle timeout (UDP, or TCP that never closed).
    EndIdle,
}

impl Kind {
    /// Whether this record closes its flow (what is exported).
    pub fn is_end(self) -> bool {
        self != Kind::Start
    }

    /// The short word `shoal flows` prints.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Start => "start",
            Kind::EndFin => "end",
            Kind::EndRst => "reset",
            Kind::EndIdle => "idle-end",
        }
    }
}

/// One end of a flow, resolved as far as the agent knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Address.
    pub ip: Option<IpAddr>,
    /// Port.
    pub port: u16,
    /// The pod holding the address, if one does.
    pub pod: Option<String>,
    /// Its namespace.
    pub namespace: Option<String>,
    /// The node it runs on.
    pub node: Option<String>,
    /// Services (`namespace/name`) whose endpoints include this address and
    /// port. The datapath sees backends (services are translated at
    /// connect()), so this says which services the backend serves, not
    /// that the client dialed the service.
    pub services: Vec<String>,
}

impl Endpoint {
    fn label(&self) -> String {
        let ip = self.ip.map_or_else(|| "?".to_owned(), |ip| ip.to_string());
        let addr = match self.ip {
            Some(IpAddr::V6(_)) => format!("[{ip}]:{}", self.port),
            _ => format!("{ip}:{}", self.port),
        };
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod} ({addr})"),
            _ => addr,
        }
    }
}

/// One flow record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Wall-clock time of the event, ns since the Unix epoch.
    pub time_ns: u64,
    /// Why it was made.
    pub kind: Kind,
    /// `tcp` or `udp`.
    pub transport: String,
    /// `ipv4` or `ipv6`.
    pub network_type: String,
    /// The side that opened the flow.
    pub source: Endpoint,
    /// The other side.
    pub destination: Endpoint,
    /// `forwarded`, `dropped_policy` or `dropped`.
    pub verdict: String,
    /// Why a dropped flow was dropped.
    pub drop_reason: Option<String>,
    /// Bytes from source to destination (L2 headers included).
    pub bytes_sent: u64,
    /// Bytes from destination to source.
    pub bytes_received: u64,
    /// Packets from source to destination.
    pub packets_sent: u64,
    /// Packets back.
    pub packets_received: u64,
    /// TCP flags seen from the source (OR of all packets).
    pub tcp_flags_sent: u8,
    /// TCP flags seen from the destination.
    pub tcp_flags_received: u8,
    /// First packet, ns since the Unix epoch.
    pub start_ns: u64,
    /// Last packet, ns since the Unix epoch.
    pub end_ns: u64,
    /// The pod interface (host-side veth) it was seen on.
    pub ifindex: u32,
    /// Whether the observed pod opened the flow (the flow left the pod).
    pub egress: bool,
}

/// The verdict word of a `FLOW_VERDICT_*` code.
pub fn verdict_name(code: u8) -> &'static str {
    match code {
        FLOW_VERDICT_DROPPED_POLICY => "dropped_policy",
        FLOW_VERDICT_DROPPED => "dropped",
        _ => "forwarded",
    }
}

fn addr(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == FLOW_FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// Turns kernel times (`CLOCK_BOOTTIME` ns) into Unix ns.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Unix ns minus boot ns, measured once.
    pub offset: i128,
}

impl Clock {
    /// Unix ns of a boot-time stamp.
    pub fn unix(self, boot_ns: u64) -> u64 {
        u64::try_from(i128::from(boot_ns) + self.offset).unwrap_or(0)
    }
}

/// Builds the record of a flow table entry as seen by the datapath (before
/// resolution): the initiator is the source.
pub fn from_entry(
    key: &FlowKey,
    value: &FlowValue,
    kind: Kind,
    verdict: u8,
    clock: Clock,
    now_ns: u64,
) -> FlowRecord {
    let pod = Endpoint {
        ip: Some(addr(key.family, key.pod_addr)),
        port: u16::from_be(key.pod_port),
        ..Endpoint::default()
    };
    let peer = Endpoint {
        ip: Some(addr(key.family, key.peer_addr)),
        port: u16::from_be(key.peer_port),
        ..Endpoint::default()
    };
    let egress = value.initiator == FLOW_INIT_POD;
    let (source, destination) = if egress { (pod, peer) } else { (peer, pod) };
    let (bytes_sent, bytes_received, packets_sent, packets_received, fs, fr) = if egress {
        (
            value.bytes_out,
            value.bytes_in,
            value.packets_out,
            value.packets_in,
            value.flags_out,
            value.flags_in,
        )
    } else {
        (
            value.bytes_in,
            value.bytes_out,
            value.packets_in,
            value.packets_out,
            value.flags_in,
            value.flags_out,
        )
    };
    FlowRecord {
        time_ns: now_ns,
        kind,
        transport: if key.proto == shoal_ebpf_common::IPPROTO_TCP {
            "tcp".to_owned()
        } else {
            "udp".to_owned()
        },
        network_type: if key.family == FLOW_FAMILY_V4 {
            "ipv4".to_owned()
        } else {
            "ipv6".to_owned()
        },
        source,
        destination,
        verdict: verdict_name(verdict).to_owned(),
        drop_reason: None,
        bytes_sent,
        bytes_received,
        packets_sent,
        packets_received,
        tcp_flags_sent: fs,
        tcp_flags_received: fr,
        start_ns: clock.unix(value.first_ns),
        end_ns: clock.unix(value.last_ns),
        ifindex: value.ifindex,
        egress,
    }
}

/// A ring-buffer item as a [`FlowEvent`] (`None` if it is too short),
/// decoded field by field in the layout the common crate asserts.
pub fn decode(b: &[u8]) -> Option<FlowEvent> {
    if b.len() < size_of::<FlowEvent>() {
        return None;
    }
    let u16_at = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[o..o + 8]);
        u64::from_ne_bytes(x)
    };
    let mut pod_addr = [0u8; 16];
    let mut peer_addr = [0u8; 16];
    pod_addr.copy_from_slice(&b[0..16]);
    peer_addr.copy_from_slice(&b[16..32]);
    let v = 40;
    Some(FlowEvent {
        key: FlowKey {
            pod_addr,
            peer_addr,
            pod_port: u16_at(32),
            peer_port: u16_at(34),
            proto: b[36],
            family: b[37],
            pad: [0; 2],
        },
        value: FlowValue {
            first_ns: u64_at(v),
            last_ns: u64_at(v + 8),
            packets_out: u64_at(v + 16),
            bytes_out: u64_at(v + 24),
            packets_in: u64_at(v + 32),
            bytes_in: u64_at(v + 40),
            ifindex: u32_at(v + 48),
            flags_out: b[v + 52],
            flags_in: b[v + 53],
            initiator: b[v + 54],
            state: b[v + 55],
        },
        kind: b[96],
        dir: b[97],
        verdict: b[98],
        drop_reason: b[99],
        pad: [0; 4],
    })
}

/// The record of a ring-buffer event.
pub fn from_event(event: &FlowEvent, clock: Clock) -> FlowRecord {
    let kind = if event.kind == FLOW_EVENT_START {
        Kind::Start
    } else if event.value.state & shoal_ebpf_common::flow::FLOW_STATE_RST != 0 {
        Kind::EndRst
    } else {
        Kind::EndFin
    };
    let time = if kind == Kind::Start {
        event.value.first_ns
    } else {
        event.value.last_ns
    };
    from_entry(
        &event.key,
        &event.value,
        kind,
        event.verdict,
        clock,
        clock.unix(time),
    )
}

/// What `shoal flows` asks for: every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// A pod name at either end.
    pub pod: Option<String>,
    /// A namespace at either end.
    pub namespace: Option<String>,
    /// A node at either end.
    pub node: Option<String>,
    /// The verdict.
    pub verdict: Option<String>,
    /// A port at either end.
    pub port: Option<u16>,
}

impl Filter {
    /// Whether `r` passes.
    pub fn matches(&self, r: &FlowRecord) -> bool {
        let ends = [&r.source, &r.destination];
        let any = |f: &dyn Fn(&Endpoint) -> bool| ends.iter().any(|e| f(e));
        self.pod
            .as_ref()
            .is_none_or(|p| any(&|e| e.pod.as_deref() == Some(p.as_str())))
            && self
                .namespace
                .as_ref()
                .is_none_or(|n| any(&|e| e.namespace.as_deref() == Some(n.as_str())))
            && self
                .node
                .as_ref()
                .is_none_or(|n| any(&|e| e.node.as_deref() == Some(n.as_str())))
            && self.verdict.as_ref().is_none_or(|v| r.verdict == *v)
            && self.port.is_none_or(|p| any(&|e| e.port == p))
    }
}

/// One line like `hubble observe`: time, source → destination, protocol,
/// verdict, event, bytes.
pub fn format_line(r: &FlowRecord) -> String {
    let secs = i64::try_from(r.time_ns / 1_000_000_000).unwrap_or(0);
    let nanos = i32::try_from(r.time_ns % 1_000_000_000).unwrap_or(0);
    let time = jiff::Timestamp::new(secs, nanos)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|_| r.time_ns.to_string());
    let service = match r.destination.services.first() {
        Some(s) => format!(" svc={s}"),
        None => String::new(),
    };
    format!(
        "{time} {} -> {} {} {} {} sent={}B/{}p recv={}B/{}p{service}",
        r.source.label(),
        r.destination.label(),
        r.transport.to_uppercase(),
        r.verdict.to_uppercase(),
        r.kind.word(),
        r.bytes_sent,
        r.packets_sent,
        r.bytes_received,
        r.packets_received,
    )
}
