//! Flow observability on pod interfaces: the flow table the tc programs on
//! each pod's host-side veth update per packet, and the events they send
//! through a ring buffer when a flow starts and when it ends.
//!
//! A flow is keyed from the pod's side of its veth: `pod_addr`/`pod_port`
//! are the pod's end, `peer_addr`/`peer_port` the other end, whichever way
//! the packet goes. So both directions of a connection share one entry per
//! pod interface, with no address comparison in the datapath. IPv4
//! addresses sit in the first four bytes of the 16-byte fields, the rest
//! zero.
//!
//! `out` counters are packets leaving the pod (the veth's ingress on the
//! node side, Cilium's `from_container`), `in` counters packets entering it
//! (the veth's egress, `to_container`).

/// Pinned name of the flow table (LRU hash, both families).
pub const FLOWS: &str = "FLOWS_V1";
/// Name of the ring buffer of flow events (not pinned: each agent reads
/// the buffer of the programs it loaded).
pub const FLOW_EVENTS: &str = "FLOW_EVENTS_V1";
/// Pinned name of the per-CPU flow counters (indexed by `FLOW_STAT_*`).
pub const FLOW_STATS: &str = "FLOW_STATS_V1";
/// Default size of the flow table (entries: one per flow and pod interface).
pub const FLOW_ENTRIES: u32 = 65_536;
/// Default size of the ring buffer in bytes (a power of two, a multiple of
/// the page size).
pub const FLOW_RING_BYTES: u32 = 1 << 20;

/// `FlowKey.family`: IPv4.
pub const FLOW_FAMILY_V4: u8 = 4;
/// `FlowKey.family`: IPv6.
pub const FLOW_FAMILY_V6: u8 = 6;

/// `FlowValue.initiator`: the pod opened the flow (its first packet left
/// the pod, or a SYN did).
pub const FLOW_INIT_POD: u8 = 1;
/// `FlowValue.initiator`: the peer opened the flow.
pub const FLOW_INIT_PEER: u8 = 2;

/// `FlowValue.state`: a FIN left the pod.
pub const FLOW_STATE_FIN_OUT: u8 = 1 << 0;
/// `FlowValue.state`: a FIN entered the pod.
pub const FLOW_STATE_FIN_IN: u8 = 1 << 1;
/// `FlowValue.state`: a RST went either way.
pub const FLOW_STATE_RST: u8 = 1 << 2;
/// `FlowValue.state`: the end event was sent; later packets of the tuple
/// update counters without events until a SYN starts a new flow.
pub const FLOW_STATE_ENDED: u8 = 1 << 3;
/// `FlowValue.state`: the first packet seen was not a SYN (the flow began
/// before the programs were attached); the initiator is a guess.
pub const FLOW_STATE_MIDSTREAM: u8 = 1 << 4;
/// `FlowValue.state`: network policy refused the flow's first packet. The
/// entry is also `FLOW_STATE_ENDED` (its one event, verdict
/// `FLOW_VERDICT_DROPPED_POLICY`, was sent), so the agent removes it once
/// the peer stops retrying; every later packet of the tuple is checked
/// against the policy again and, once allowed, starts a new flow.
pub const FLOW_STATE_DENIED: u8 = 1 << 5;

/// `FlowEvent.kind`: the first packet of a flow.
pub const FLOW_EVENT_START: u8 = 1;
/// `FlowEvent.kind`: the flow ended (TCP FIN both ways, or RST); UDP and
/// idle TCP flows are ended by the agent's sweep, not by an event.
pub const FLOW_EVENT_END: u8 = 2;

/// `FlowEvent.dir`: the packet that caused the event left the pod.
pub const FLOW_DIR_FROM_POD: u8 = 0;
/// `FlowEvent.dir`: the packet that caused the event entered the pod.
pub const FLOW_DIR_TO_POD: u8 = 1;

/// `FlowEvent.verdict`: the packet was forwarded.
pub const FLOW_VERDICT_FORWARDED: u8 = 0;
/// `FlowEvent.verdict`: dropped by network policy. Sent once per refused
/// flow, as an end event (kind `FLOW_EVENT_END`) whose counters are its
/// first packet; retries of the same tuple are counted, not sent again.
pub const FLOW_VERDICT_DROPPED_POLICY: u8 = 1;
/// `FlowEvent.verdict`: dropped for another reason (`drop_reason` says which).
pub const FLOW_VERDICT_DROPPED: u8 = 2;

/// `FLOW_STATS` index: events submitted to the ring buffer.
pub const FLOW_STAT_EVENTS: u32 = 0;
/// `FLOW_STATS` index: events lost because the ring buffer was full.
pub const FLOW_STAT_RING_FULL: u32 = 1;
/// `FLOW_STATS` index: new flows the table refused (insert failed).
pub const FLOW_STAT_TABLE_INSERT_FAILED: u32 = 2;
/// `FLOW_STATS` index: IP packets whose headers are cut short (not counted
/// in any flow).
pub const FLOW_STAT_TRUNCATED: u32 = 3;
/// `FLOW_STATS` index: flows started.
pub const FLOW_STAT_FLOWS_STARTED: u32 = 4;
/// `FLOW_STATS` index: flows ended by FIN/RST in the datapath.
pub const FLOW_STAT_FLOWS_ENDED: u32 = 5;
/// `FLOW_STATS` index: TCP/UDP packets counted into a flow.
pub const FLOW_STAT_PACKETS: u32 = 6;
/// How many `FLOW_STATS` slots exist.
pub const FLOW_STAT_COUNT: u32 = 7;
/// The metric label of each `FLOW_STATS` slot, in index order.
pub const FLOW_STAT_NAMES: [&str; FLOW_STAT_COUNT as usize] = [
    "events",
    "ring_full",
    "table_insert_failed",
    "truncated",
    "flows_started",
    "flows_ended",
    "packets",
];

/// Key of `FLOWS_V1`: the flow's tuple seen from the pod. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// The pod's address, network byte order (IPv4 in the first 4 bytes).
    pub pod_addr: [u8; 16],
    /// The other end's address, likewise.
    pub peer_addr: [u8; 16],
    /// The pod's port, network byte order.
    pub pod_port: u16,
    /// The other end's port, network byte order.
    pub peer_port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// `FLOW_FAMILY_V4` or `FLOW_FAMILY_V6`.
    pub family: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
}

/// Value of `FLOWS_V1`. Counters are updated without atomics (bpfel has
/// none here): each direction is written by one program, so only packets of
/// one flow and direction on two CPUs at once can lose an update. Do not
/// reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// First packet, `bpf_ktime_get_boot_ns`.
    pub first_ns: u64,
    /// Last packet, `bpf_ktime_get_boot_ns`.
    pub last_ns: u64,
    /// Packets that left the pod.
    pub packets_out: u64,
    /// Bytes that left the pod (the skb's length, L2 header included).
    pub bytes_out: u64,
    /// Packets that entered the pod.
    pub packets_in: u64,
    /// Bytes that entered the pod.
    pub bytes_in: u64,
    /// The host-side veth's ifindex.
    pub ifindex: u32,
    /// TCP flags (OR of every packet's) that left the pod.
    pub flags_out: u8,
    /// TCP flags that entered the pod.
    pub flags_in: u8,
    /// `FLOW_INIT_POD` or `FLOW_INIT_PEER`.
    pub initiator: u8,
    /// `FLOW_STATE_*` bits.
    pub state: u8,
}

/// One ring-buffer event. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// The flow.
    pub key: FlowKey,
    /// The flow's entry as it was after the packet that caused the event.
    pub value: FlowValue,
    /// `FLOW_EVENT_START` or `FLOW_EVENT_END`.
    pub kind: u8,
    /// `FLOW_DIR_FROM_POD` or `FLOW_DIR_TO_POD`.
    pub dir: u8,
    /// `FLOW_VERDICT_*`.
    pub verdict: u8,
    /// Why a dropped packet was dropped (0 when forwarded).
    pub drop_reason: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 4],
}

const _: () = {
    assert!(size_of::<FlowKey>() == 40);
    assert!(size_of::<FlowValue>() == 56);
    assert!(size_of::<FlowEvent>() == 104);
    assert!(core::mem::offset_of!(FlowKey, pod_port) == 32);
    assert!(core::mem::offset_of!(FlowKey, proto) == 36);
    assert!(core::mem::offset_of!(FlowValue, ifindex) == 48);
    assert!(core::mem::offset_of!(FlowEvent, value) == 40);
    assert!(core::mem::offset_of!(FlowEvent, kind) == 96);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers with explicit padding.
    #![expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    use super::*;
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FlowEvent {}
}
