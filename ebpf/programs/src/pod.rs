//! The pod interfaces (Cilium's `from_container` / `to_container` on each
//! pod's host-side veth): NetworkPolicy enforcement and flow observability,
//! IPv4 and IPv6, in one pass over the packet.
//!
//! Flows: every TCP/UDP packet is counted into its flow in `FLOWS_V1`, and
//! the first packet of a flow and the packet that ends it (TCP: FIN both
//! ways, or RST) send an event through the `FLOW_EVENTS_V1` ring buffer.
//!
//! Policy: the flow table is also the connection tracking. Only the first
//! packet of a flow (no entry, a SYN reusing an ended tuple, or a retry of
//! a refused one) is checked against the pod's policy: the pod's endpoint
//! in `ENDPOINTS_V1` (by the veth's ifindex), the remote address's identity
//! in `IPCACHE4_V1`/`IPCACHE6_V1`, then `POLICY_V1` for (endpoint, that
//! identity, direction, protocol, destination port) and again for any
//! identity; a SYN-less TCP packet without entry (its connection's entry
//! was evicted or swept) passes if either direction is admitted. Every later packet of an admitted flow passes, both ways: the
//! replies of allowed flows, and established connections after a policy
//! change, until they end (FIN/RST, or the agent's idle sweep), as
//! Kubernetes expects. A refused first packet is dropped (`TC_ACT_SHOT`),
//! counted (`policy_drop_ingress` / `policy_drop_egress` in
//! `SHOAL_VERDICTS`) and reported once per flow with verdict
//! `dropped_policy`. A pod without an endpoint entry, or whose entry does
//! not enforce that direction, is not policed (no policy selects it). Only
//! TCP and UDP are policed; ICMP, neighbour discovery and other protocols
//! pass.
//!
//! Everything that goes wrong (cut-short headers, a full ring buffer, a
//! refused table insert) has a per-CPU counter in `FLOW_STATS_V1`; a packet
//! whose headers cannot be read is passed (no policy can be applied to
//! what has no ports) and counted as truncated.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TcContext,
};
use shoal_ebpf_common::{
    IPPROTO_TCP, IPPROTO_UDP, Verdict,
    flow::{
        FLOW_DIR_FROM_POD, FLOW_ENTRIES, FLOW_EVENT_END, FLOW_EVENT_START, FLOW_FAMILY_V4,
        FLOW_FAMILY_V6, FLOW_INIT_PEER, FLOW_INIT_POD, FLOW_RING_BYTES, FLOW_STAT_COUNT,
        FLOW_STAT_EVENTS, FLOW_STAT_FLOWS_ENDED, FLOW_STAT_FLOWS_STARTED, FLOW_STAT_PACKETS,
        FLOW_STAT_RING_FULL, FLOW_STAT_TABLE_INSERT_FAILED, FLOW_STAT_TRUNCATED, FLOW_STATE_DENIED,
        FLOW_STATE_ENDED, FLOW_STATE_FIN_IN, FLOW_STATE_FIN_OUT, FLOW_STATE_MIDSTREAM,
        FLOW_STATE_RST, FLOW_VERDICT_DROPPED_POLICY, FLOW_VERDICT_FORWARDED, FlowEvent, FlowKey,
        FlowValue,
    },
    policy::{
        ENDPOINT_ENFORCE_EGRESS, ENDPOINT_ENFORCE_INGRESS, ENDPOINTS_ENTRIES, EndpointInfo,
        IDENTITY_ANY, IDENTITY_WORLD, IPCACHE_ENTRIES, Ipcache4Key, Ipcache6Key, IpcacheValue,
        POLICY_EGRESS, POLICY_ENTRIES, POLICY_FLAG_ALLOW, POLICY_INGRESS, POLICY_PREFIX_FULL,
        PolicyKey, PolicyValue,
    },
};

use crate::maps::count;

#[map(name = "FLOWS_V1")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(FLOW_ENTRIES, 0);

#[map(name = "FLOW_EVENTS_V1")]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_RING_BYTES, 0);

#[map(name = "FLOW_STATS_V1")]
pub static FLOW_STATS: PerCpuArray<u64> = PerCpuArray::pinned(FLOW_STAT_COUNT, 0);

// The policy maps: the agent's policy writer creates and fills them (the
// LPM tries take `BPF_F_NO_PREALLOC`, which `LpmTrie` adds); whichever of
// the two comes first pins them, the other opens the pin.
#[map(name = "POLICY_V1")]
pub static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(POLICY_ENTRIES, 0);

#[map(name = "ENDPOINTS_V1")]
pub static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(ENDPOINTS_ENTRIES, 0);

#[map(name = "IPCACHE4_V1")]
pub static IPCACHE4: LpmTrie<Ipcache4Key, IpcacheValue> = LpmTrie::pinned(IPCACHE_ENTRIES, 0);

#[map(name = "IPCACHE6_V1")]
pub static IPCACHE6: LpmTrie<Ipcache6Key, IpcacheValue> = LpmTrie::pinned(IPCACHE_ENTRIES, 0);

/// Not ours to decide: the next program or the kernel does.
const PASS: i32 = TC_ACT_UNSPEC;
/// Refused by network policy.
const DROP: i32 = TC_ACT_SHOT;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
const MAX_EXT_HEADERS: usize = 8;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Counts one event of `stat` on this CPU.
#[inline(always)]
fn stat(index: u32) {
    if let Some(counter) = FLOW_STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, written only by this CPU with preemption off.
        unsafe { *counter += 1 };
    }
}

/// What a packet is, seen from its source and destination.
struct Packet {
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    proto: u8,
    family: u8,
    tcp_flags: u8,
}

/// Not a packet we count, or one whose headers are cut short.
enum Skip {
    /// Not IP, not TCP/UDP, or a later fragment: nothing to count.
    Ignore,
    /// Headers shorter than they claim: counted as truncated.
    Truncated,
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Packet, Skip> {
    let proto = ctx
        .load::<u16>(12)
        .map(u16::from_be)
        .map_err(|_| Skip::Truncated)?;
    match proto {
        ETH_P_IP => parse4(ctx),
        ETH_P_IPV6 => parse6(ctx),
        _ => Err(Skip::Ignore),
    }
}

#[inline(always)]
fn parse4(ctx: &TcContext) -> Result<Packet, Skip> {
    let l3 = ETH_HLEN;
    let vihl = ctx.load::<u8>(l3).map_err(|_| Skip::Truncated)?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Skip::Truncated);
    }
    let (Ok(frag), Ok(proto), Ok(saddr), Ok(daddr)) = (
        ctx.load::<u16>(l3 + 6),
        ctx.load::<u8>(l3 + 9),
        ctx.load::<[u8; 4]>(l3 + 12),
        ctx.load::<[u8; 4]>(l3 + 16),
    ) else {
        return Err(Skip::Truncated);
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Skip::Ignore);
    }
    // Only the first fragment carries the ports.
    if u16::from_be(frag) & 0x1fff != 0 {
        return Err(Skip::Ignore);
    }
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    s[..4].copy_from_slice(&saddr);
    d[..4].copy_from_slice(&daddr);
    l4(ctx, l3 + ihl, s, d, proto, FLOW_FAMILY_V4)
}

#[inline(always)]
fn parse6(ctx: &TcContext) -> Result<Packet, Skip> {
    let l3 = ETH_HLEN;
    let (Ok(v), Ok(mut next), Ok(saddr), Ok(daddr)) = (
        ctx.load::<u8>(l3),
        ctx.load::<u8>(l3 + 6),
        ctx.load::<[u8; 16]>(l3 + 8),
        ctx.load::<[u8; 16]>(l3 + 24),
    ) else {
        return Err(Skip::Truncated);
    };
    if v >> 4 != 6 {
        return Err(Skip::Truncated);
    }
    let mut off = l3 + 40;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        i += 1;
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let (Ok(nh), Ok(len)) = (ctx.load::<u8>(off), ctx.load::<u8>(off + 1)) else {
                    return Err(Skip::Truncated);
                };
                next = nh;
                off += (usize::from(len) + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let (Ok(nh), Ok(len)) = (ctx.load::<u8>(off), ctx.load::<u8>(off + 1)) else {
                    return Err(Skip::Truncated);
                };
                next = nh;
                off += (usize::from(len) + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let (Ok(nh), Ok(frag)) = (ctx.load::<u8>(off), ctx.load::<u16>(off + 2)) else {
                    return Err(Skip::Truncated);
                };
                if u16::from_be(frag) & 0xfff8 != 0 {
                    return Err(Skip::Ignore);
                }
                next = nh;
                off += 8;
            }
            _ => break,
        }
        // Bounded for the verifier; no real packet comes near this.
        if off > 512 {
            return Err(Skip::Truncated);
        }
    }
    if next != IPPROTO_TCP && next != IPPROTO_UDP {
        return Err(Skip::Ignore);
    }
    l4(ctx, off, saddr, daddr, next, FLOW_FAMILY_V6)
}

#[inline(always)]
fn l4(
    ctx: &TcContext,
    off: usize,
    saddr: [u8; 16],
    daddr: [u8; 16],
    proto: u8,
    family: u8,
) -> Result<Packet, Skip> {
    let (Ok(sport), Ok(dport)) = (ctx.load::<u16>(off), ctx.load::<u16>(off + 2)) else {
        return Err(Skip::Truncated);
    };
    let tcp_flags = if proto == IPPROTO_TCP {
        ctx.load::<u8>(off + 13).map_err(|_| Skip::Truncated)?
    } else {
        0
    };
    Ok(Packet {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        family,
        tcp_flags,
    })
}

/// Sends one event; a full ring buffer is counted, never waited on.
#[inline(always)]
fn emit(key: &FlowKey, value: &FlowValue, kind: u8, dir: u8, verdict: u8) {
    match FLOW_EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            entry.write(FlowEvent {
                key: *key,
                value: *value,
                kind,
                dir,
                verdict,
                drop_reason: 0,
                pad: [0; 4],
            });
            entry.submit(0);
            stat(FLOW_STAT_EVENTS);
        }
        None => stat(FLOW_STAT_RING_FULL),
    }
}

/// The security identity of `addr` from the ipcache; an address it does
/// not know at all (no default route written yet) is the world.
#[inline(always)]
fn remote_identity(addr: &[u8; 16], family: u8) -> u32 {
    let hit = if family == FLOW_FAMILY_V4 {
        let key = Key::new(
            32,
            Ipcache4Key {
                addr: [addr[0], addr[1], addr[2], addr[3]],
            },
        );
        IPCACHE4.get(&key).map(|v| v.identity)
    } else {
        let key = Key::new(128, Ipcache6Key { addr: *addr });
        IPCACHE6.get(&key).map(|v| v.identity)
    };
    hit.unwrap_or(IDENTITY_WORLD)
}

/// Whether `POLICY_V1` admits (endpoint, identity, direction, proto, port).
#[inline(always)]
fn policy_hit(endpoint: u32, identity: u32, direction: u8, proto: u8, dport: u16) -> bool {
    let key = Key::new(
        POLICY_PREFIX_FULL,
        PolicyKey {
            endpoint,
            identity,
            direction,
            protocol: proto,
            dport,
        },
    );
    POLICY
        .get(&key)
        .is_some_and(|v| v.flags & POLICY_FLAG_ALLOW != 0)
}

/// Whether the pod's policy for one direction admits `remote` on
/// (`proto`, `port`): not enforced, its identity, or any identity.
#[inline(always)]
fn direction_allows(
    ep: &EndpointInfo,
    ifindex: u32,
    egress: bool,
    remote: &[u8; 16],
    p: &Packet,
    port: u16,
) -> bool {
    let (enforce, direction) = if egress {
        (ENDPOINT_ENFORCE_EGRESS, POLICY_EGRESS)
    } else {
        (ENDPOINT_ENFORCE_INGRESS, POLICY_INGRESS)
    };
    if ep.flags & enforce == 0 {
        return true;
    }
    let identity = remote_identity(remote, p.family);
    policy_hit(ifindex, identity, direction, p.proto, port)
        || policy_hit(ifindex, IDENTITY_ANY, direction, p.proto, port)
}

/// Whether the policy of the pod behind this veth admits a new flow of
/// `p` in the direction it goes. Not an endpoint the agent knows, or a
/// direction no policy selects it for: admitted (Kubernetes: default
/// allow).
///
/// A TCP packet without SYN opening a flow belongs to a connection the
/// table no longer knows (its entry was evicted or swept while idle, or
/// it predates the programs); whichever side speaks first, it passes if
/// the current policy admits the connection either way, so an idle
/// connection does not die because its reply direction spoke first. (A
/// SYN on such an entry is checked again: see `observe`.)
#[inline(always)]
fn policy_allows(ifindex: u32, p: &Packet, from_pod: bool) -> bool {
    // SAFETY: a plain-data value read while the program runs.
    let Some(ep) = (unsafe { ENDPOINTS.get(ifindex) }) else {
        return true;
    };
    let remote = if from_pod { &p.daddr } else { &p.saddr };
    if direction_allows(ep, ifindex, from_pod, remote, p, p.dport) {
        return true;
    }
    p.proto == IPPROTO_TCP
        && p.tcp_flags & TCP_SYN == 0
        && direction_allows(ep, ifindex, !from_pod, remote, p, p.sport)
}

/// Counts a refused first packet by direction.
#[inline(always)]
fn count_drop(from_pod: bool) {
    count(if from_pod {
        Verdict::PolicyDropEgress
    } else {
        Verdict::PolicyDropIngress
    });
}

/// A packet on the host-side veth; `dir` says whether it left the pod
/// (`FLOW_DIR_FROM_POD`, the veth's tc ingress) or enters it.
#[inline(always)]
pub fn observe(ctx: &TcContext, dir: u8) -> i32 {
    let p = match parse(ctx) {
        Ok(p) => p,
        Err(Skip::Ignore) => return PASS,
        Err(Skip::Truncated) => {
            stat(FLOW_STAT_TRUNCATED);
            return PASS;
        }
    };
    let from_pod = dir == FLOW_DIR_FROM_POD;
    let key = if from_pod {
        FlowKey {
            pod_addr: p.saddr,
            peer_addr: p.daddr,
            pod_port: p.sport,
            peer_port: p.dport,
            proto: p.proto,
            family: p.family,
            pad: [0; 2],
        }
    } else {
        FlowKey {
            pod_addr: p.daddr,
            peer_addr: p.saddr,
            pod_port: p.dport,
            peer_port: p.sport,
            proto: p.proto,
            family: p.family,
            pad: [0; 2],
        }
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let len = u64::from(ctx.len());
    // SAFETY: reading a field of the context the kernel handed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let syn_only = p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    stat(FLOW_STAT_PACKETS);

    if let Some(v) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a pointer into the map's value, valid for this program run.
        let v = unsafe { &mut *v };
        let denied = v.state & FLOW_STATE_DENIED != 0;
        let renew = FLOW_STATE_ENDED | FLOW_STATE_MIDSTREAM;
        if denied || (v.state & renew != 0 && syn_only) {
            // A new connection on this tuple (after the old one ended, or
            // over an entry a SYN-less packet made, which no SYN belongs
            // to), or a retry of a refused one: the policy decides again.
            if policy_allows(ifindex, &p, from_pod) {
                *v = new_value(ifindex, &p, from_pod, now, len);
                emit(&key, v, FLOW_EVENT_START, dir, FLOW_VERDICT_FORWARDED);
                stat(FLOW_STAT_FLOWS_STARTED);
                return PASS;
            }
            count_drop(from_pod);
            if denied {
                // Reported already; keep it alive while it is retried.
                count_packet(v, &p, from_pod, now, len);
            } else {
                *v = new_value(ifindex, &p, from_pod, now, len);
                v.state |= FLOW_STATE_DENIED | FLOW_STATE_ENDED;
                emit(&key, v, FLOW_EVENT_END, dir, FLOW_VERDICT_DROPPED_POLICY);
            }
            return DROP;
        }
        // An admitted flow: established, a reply, or its tail after it
        // ended. Policy changes do not touch it.
        count_packet(v, &p, from_pod, now, len);
        if p.proto == IPPROTO_TCP && v.state & FLOW_STATE_ENDED == 0 {
            if p.tcp_flags & TCP_RST != 0 {
                v.state |= FLOW_STATE_RST;
            }
            if p.tcp_flags & TCP_FIN != 0 {
                v.state |= if from_pod {
                    FLOW_STATE_FIN_OUT
                } else {
                    FLOW_STATE_FIN_IN
                };
            }
            let fins = FLOW_STATE_FIN_OUT | FLOW_STATE_FIN_IN;
            if v.state & FLOW_STATE_RST != 0 || v.state & fins == fins {
                v.state |= FLOW_STATE_ENDED;
                emit(&key, v, FLOW_EVENT_END, dir, FLOW_VERDICT_FORWARDED);
                stat(FLOW_STAT_FLOWS_ENDED);
            }
        }
        return PASS;
    }

    let allowed = policy_allows(ifindex, &p, from_pod);
    let mut value = new_value(ifindex, &p, from_pod, now, len);
    if !allowed {
        count_drop(from_pod);
        value.state |= FLOW_STATE_DENIED | FLOW_STATE_ENDED;
    }
    if FLOWS.insert(key, value, u64::from(BPF_NOEXIST)).is_err() {
        // Lost a race with another CPU's first packet of the same flow, or
        // the table refused: the other CPU sent the event.
        stat(FLOW_STAT_TABLE_INSERT_FAILED);
        return if allowed { PASS } else { DROP };
    }
    if !allowed {
        emit(
            &key,
            &value,
            FLOW_EVENT_END,
            dir,
            FLOW_VERDICT_DROPPED_POLICY,
        );
        return DROP;
    }
    emit(&key, &value, FLOW_EVENT_START, dir, FLOW_VERDICT_FORWARDED);
    stat(FLOW_STAT_FLOWS_STARTED);
    if value.state & FLOW_STATE_RST != 0 {
        // A lone RST opens and ends its flow at once.
        end_first(&key, dir);
    }
    PASS
}

/// Adds one packet to its flow's counters.
#[inline(always)]
fn count_packet(v: &mut FlowValue, p: &Packet, from_pod: bool, now: u64, len: u64) {
    v.last_ns = now;
    if from_pod {
        v.packets_out += 1;
        v.bytes_out += len;
        v.flags_out |= p.tcp_flags;
    } else {
        v.packets_in += 1;
        v.bytes_in += len;
        v.flags_in |= p.tcp_flags;
    }
}

/// Ends a flow whose first packet also ended it.
#[inline(always)]
fn end_first(key: &FlowKey, dir: u8) {
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a pointer into the map's value, valid for this program run.
        let v = unsafe { &mut *v };
        v.state |= FLOW_STATE_ENDED;
        emit(key, v, FLOW_EVENT_END, dir, FLOW_VERDICT_FORWARDED);
        stat(FLOW_STAT_FLOWS_ENDED);
    }
}

#[inline(always)]
fn new_value(ifindex: u32, p: &Packet, from_pod: bool, now: u64, len: u64) -> FlowValue {
    // A SYN's sender opened the flow; a SYN-ACK's receiver did. Anything
    // else means the flow predates the programs: guess the sender.
    let syn = p.tcp_flags & TCP_SYN != 0;
    let synack = syn && p.tcp_flags & TCP_ACK != 0;
    let sender_opened = !synack;
    let initiator = if sender_opened == from_pod {
        FLOW_INIT_POD
    } else {
        FLOW_INIT_PEER
    };
    let midstream = p.proto == IPPROTO_TCP && !syn;
    let mut v = FlowValue {
        first_ns: now,
        last_ns: now,
        ifindex,
        initiator,
        state: if midstream { FLOW_STATE_MIDSTREAM } else { 0 },
        ..FlowValue::default()
    };
    if from_pod {
        v.packets_out = 1;
        v.bytes_out = len;
        v.flags_out = p.tcp_flags;
    } else {
        v.packets_in = 1;
        v.bytes_in = len;
        v.flags_in = p.tcp_flags;
    }
    // A single RST (a refused connection) both opens and ends the flow; the
    // next packet of the tuple, if any, sees it ended.
    if p.tcp_flags & TCP_RST != 0 {
        v.state |= FLOW_STATE_RST;
    }
    v
}
