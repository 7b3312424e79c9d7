//! Flow observability on each pod's host-side veth (Cilium's
//! `from_container` / `to_container`): every TCP/UDP packet, IPv4 and IPv6,
//! is counted into its flow in `FLOWS_V1`, and the first packet of a flow
//! and the packet that ends it (TCP: FIN both ways, or RST) send an event
//! through the `FLOW_EVENTS_V1` ring buffer.
//!
//! These programs only observe: they always return `TC_ACT_UNSPEC` (the
//! next program or the kernel decides), never drop and never write the
//! packet. Everything that goes wrong (cut-short headers, a full ring
//! buffer, a refused table insert) has a per-CPU counter in
//! `FLOW_STATS_V1`.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use shoal_ebpf_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    flow::{
        FLOW_DIR_FROM_POD, FLOW_ENTRIES, FLOW_EVENT_END, FLOW_EVENT_START, FLOW_FAMILY_V4,
        FLOW_FAMILY_V6, FLOW_INIT_PEER, FLOW_INIT_POD, FLOW_RING_BYTES, FLOW_STAT_COUNT,
        FLOW_STAT_EVENTS, FLOW_STAT_FLOWS_ENDED, FLOW_STAT_FLOWS_STARTED, FLOW_STAT_PACKETS,
        FLOW_STAT_RING_FULL, FLOW_STAT_TABLE_INSERT_FAILED, FLOW_STAT_TRUNCATED, FLOW_STATE_ENDED,
        FLOW_STATE_FIN_IN, FLOW_STATE_FIN_OUT, FLOW_STATE_MIDSTREAM, FLOW_STATE_RST,
        FLOW_VERDICT_FORWARDED, FlowEvent, FlowKey, FlowValue,
    },
};

#[map(name = "FLOWS_V1")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(FLOW_ENTRIES, 0);

#[map(name = "FLOW_EVENTS_V1")]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_RING_BYTES, 0);

#[map(name = "FLOW_STATS_V1")]
pub static FLOW_STATS: PerCpuArray<u64> = PerCpuArray::pinned(FLOW_STAT_COUNT, 0);

/// Observe only: the next program or the kernel decides.
const PASS: i32 = TC_ACT_UNSPEC;

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
fn emit(key: &FlowKey, value: &FlowValue, kind: u8, dir: u8) {
    match FLOW_EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            entry.write(FlowEvent {
                key: *key,
                value: *value,
                kind,
                dir,
                verdict: FLOW_VERDICT_FORWARDED,
                drop_reason: 0,
                pad: [0; 4],
            });
            entry.submit(0);
            stat(FLOW_STAT_EVENTS);
        }
        None => stat(FLOW_STAT_RING_FULL),
    }
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
    let syn_only = p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    stat(FLOW_STAT_PACKETS);

    if let Some(v) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a pointer into the map's value, valid for this program run.
        let v = unsafe { &mut *v };
        if v.state & FLOW_STATE_ENDED != 0 && syn_only {
            // The tuple is reused by a new connection after the old one ended.
            *v = new_value(ctx, &p, from_pod, now, len);
            emit(&key, v, FLOW_EVENT_START, dir);
            stat(FLOW_STAT_FLOWS_STARTED);
            return PASS;
        }
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
                emit(&key, v, FLOW_EVENT_END, dir);
                stat(FLOW_STAT_FLOWS_ENDED);
            }
        }
        return PASS;
    }

    let value = new_value(ctx, &p, from_pod, now, len);
    if FLOWS.insert(key, value, u64::from(BPF_NOEXIST)).is_err() {
        // Lost a race with another CPU's first packet of the same flow, or
        // the table refused: the other CPU sent the start event.
        stat(FLOW_STAT_TABLE_INSERT_FAILED);
        return PASS;
    }
    emit(&key, &value, FLOW_EVENT_START, dir);
    stat(FLOW_STAT_FLOWS_STARTED);
    if value.state & FLOW_STATE_RST != 0 {
        // A lone RST opens and ends its flow at once.
        end_first(&key, dir);
    }
    PASS
}

/// Ends a flow whose first packet also ended it.
#[inline(always)]
fn end_first(key: &FlowKey, dir: u8) {
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a pointer into the map's value, valid for this program run.
        let v = unsafe { &mut *v };
        v.state |= FLOW_STATE_ENDED;
        emit(key, v, FLOW_EVENT_END, dir);
        stat(FLOW_STAT_FLOWS_ENDED);
    }
}

#[inline(always)]
fn new_value(ctx: &TcContext, p: &Packet, from_pod: bool, now: u64, len: u64) -> FlowValue {
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
        // SAFETY: reading a field of the context the kernel handed us.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
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
