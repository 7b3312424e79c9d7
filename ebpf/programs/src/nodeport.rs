//! Per-packet service load balancing on the node's external device, for
//! traffic that no socket program saw: packets from outside the node to a
//! NodePort, a LoadBalancer IP or an externalIP.
//!
//! Ingress: a packet of a known flow (`CT*_V1`, original direction) is
//! rewritten as its first packet was; a reply from a backend on another
//! node (reply direction, after SNAT) is un-NATed and sent to the client; a
//! packet to an external-scope frontend opens a flow. Egress: replies of
//! local backends get the frontend back as their source.
//!
//! Headers are read with `bpf_skb_load_bytes` (through `TcContext::load`),
//! so a packet whose headers are shorter than they claim fails the load and
//! is passed with `NodeportPassTruncated` instead of being read past its end.

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_fib_lookup,
    },
    helpers::{
        bpf_csum_diff, bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_boot_ns,
        bpf_redirect_neigh,
    },
    programs::TcContext,
};
use shoal_ebpf_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_FLAG_CLOSING, CT_FLAG_LOCAL_BACKEND, CT_FLAG_SNAT, Ct4Key,
    Ct4Value, Ct6Key, Ct6Value, IPPROTO_TCP, IPPROTO_UDP, Lb4Key, Lb6Key, LbService,
    NODEPORT_ENABLED, NodeportConfig, SVC_FLAG_ETP_LOCAL, SVC_FLAG_EXTERNAL, Verdict,
};

use crate::maps::{
    CT4, CT6, LB4_BACKENDS, LB4_SERVICES, LB6_BACKENDS, LB6_SERVICES, NODEPORT, count,
};

/// Not ours, or done with: let the next program / the kernel have it.
pub const PASS: i32 = TC_ACT_UNSPEC;
/// Internal: "no conntrack entry, may open a flow" / "flow opened".
/// Never returned to the kernel.
const NEW_FLOW: i32 = i32::MIN;
/// Internal: "an ICMP error, its ICMP header at offset (value - this)",
/// handed back to the entry so the error's translation does not nest in the
/// caller's stack frame (the verifier limits a call chain to 512 bytes).
/// Never returned to the kernel.
const ICMP_ERROR: i32 = i32::MIN + 1;
/// Offsets [`ICMP_ERROR`] may carry.
const MAX_ICMP_OFFSET: i32 = 4096;
pub(crate) const DROP: i32 = TC_ACT_SHOT;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers walked before the transport header.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// How many IPv6 extension headers are walked at most.
const MAX_EXT_HEADERS: usize = 8;
/// Attempts at a free SNAT port before giving up on a new flow.
const SNAT_ATTEMPTS: u32 = 16;
/// ETP Local: how many backend slots are scanned for a local one.
const MAX_LOCAL_SCAN: u16 = 64;

/// Where the transport header and its checksum are.
#[derive(Clone, Copy)]
struct L4 {
    /// Offset of the IP header.
    l3: usize,
    /// Offset of the TCP/UDP header.
    l4: usize,
    proto: u8,
}

impl L4 {
    fn csum_off(&self) -> usize {
        match self.proto {
            IPPROTO_TCP => self.l4 + 16,
            IPPROTO_UDP => self.l4 + 6,
            // ICMP, ICMPv6.
            _ => self.l4 + 2,
        }
    }

    /// UDP: a zero checksum (none, IPv4) stays zero, and a computed zero is
    /// written as 0xffff.
    fn csum_flags(&self) -> u64 {
        if self.proto == IPPROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        }
    }
}

/// What the parser made of a packet.
enum Parsed<T> {
    /// A TCP/UDP packet we may translate.
    Flow(T, L4),
    /// Pass untouched, counting this verdict.
    Pass(Verdict),
    /// An ICMP/ICMPv6 error; its ICMP header is at this offset.
    IcmpError(usize),
    /// Pass untouched; nothing worth counting (not IP, not TCP/UDP).
    Ignore,
}

#[inline(always)]
fn now() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_boot_ns() } / 1_000_000_000) as u32
}

#[inline(always)]
fn config() -> Option<&'static NodeportConfig> {
    let cfg = NODEPORT.get(0)?;
    (cfg.flags & NODEPORT_ENABLED != 0).then_some(cfg)
}

#[inline(always)]
fn eth_proto(ctx: &TcContext) -> Result<u16, Verdict> {
    ctx.load::<u16>(12)
        .map(u16::from_be)
        .map_err(|_| Verdict::NodeportPassTruncated)
}

/// ICMP types that carry an error about another packet (v4: unreachable,
/// source quench, redirect, time exceeded, parameter problem).
#[inline(always)]
fn icmp4_is_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

/// What a packet says about its flow's lifetime, for the conntrack GC.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lifetime {
    /// Nothing new (UDP, or TCP without SYN/FIN/RST).
    Same,
    /// TCP FIN or RST: the flow is closing.
    Closing,
    /// A bare TCP SYN: the 5-tuple opens again (a reused source port).
    Opening,
}

#[inline(always)]
fn lifetime(ctx: &TcContext, m: &L4) -> Lifetime {
    if m.proto != IPPROTO_TCP {
        return Lifetime::Same;
    }
    match ctx.load::<u8>(m.l4 + 13) {
        // FIN or RST.
        Ok(f) if f & 0x05 != 0 => Lifetime::Closing,
        // SYN without ACK.
        Ok(f) if f & 0x12 == 0x02 => Lifetime::Opening,
        _ => Lifetime::Same,
    }
}

/// The IPv4 5-tuple as the key of the original direction.
#[inline(always)]
fn parse4(ctx: &TcContext) -> Parsed<Ct4Key> {
    let l3 = ETH_HLEN;
    let Ok(vihl) = ctx.load::<u8>(l3) else {
        return Parsed::Pass(Verdict::NodeportPassTruncated);
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Parsed::Pass(Verdict::NodeportPassTruncated);
    }
    let (Ok(frag), Ok(proto), Ok(saddr), Ok(daddr)) = (
        ctx.load::<u16>(l3 + 6),
        ctx.load::<u8>(l3 + 9),
        ctx.load::<u32>(l3 + 12),
        ctx.load::<u32>(l3 + 16),
    ) else {
        return Parsed::Pass(Verdict::NodeportPassTruncated);
    };
    let l4 = l3 + ihl;
    if proto == IPPROTO_ICMP {
        return match ctx.load::<u8>(l4) {
            Ok(t) if icmp4_is_error(t) => Parsed::IcmpError(l4),
            Ok(_) => Parsed::Ignore,
            Err(_) => Parsed::Pass(Verdict::NodeportPassTruncated),
        };
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Parsed::Ignore;
    }
    // Only the first fragment carries the ports.
    if u16::from_be(frag) & 0x1fff != 0 {
        return Parsed::Pass(Verdict::NodeportPassFragment);
    }
    let (Ok(sport), Ok(dport)) = (ctx.load::<u16>(l4), ctx.load::<u16>(l4 + 2)) else {
        return Parsed::Pass(Verdict::NodeportPassTruncated);
    };
    let meta = L4 { l3, l4, proto };
    // The checksum must be there to be updated.
    if ctx.load::<u16>(meta.csum_off()).is_err() {
        return Parsed::Pass(Verdict::NodeportPassTruncated);
    }
    Parsed::Flow(
        Ct4Key {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            dir: CT_DIR_ORIGINAL,
            pad: [0; 2],
        },
        meta,
    )
}

/// The IPv6 5-tuple, after walking hop-by-hop, routing, fragment,
/// destination-options and AH headers.
#[inline(always)]
fn parse6(ctx: &TcContext) -> Parsed<Ct6Key> {
    let l3 = ETH_HLEN;
    let (Ok(v), Ok(mut next), Ok(saddr), Ok(daddr)) = (
        ctx.load::<u8>(l3),
        ctx.load::<u8>(l3 + 6),
        ctx.load::<[u8; 16]>(l3 + 8),
        ctx.load::<[u8; 16]>(l3 + 24),
    ) else {
        return Parsed::Pass(Verdict::NodeportPassTruncated);
    };
    if v >> 4 != 6 {
        return Parsed::Pass(Verdict::NodeportPassTruncated);
    }
    let mut off = l3 + 40;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        i += 1;
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let (Ok(nh), Ok(len)) = (ctx.load::<u8>(off), ctx.load::<u8>(off + 1)) else {
                    return Parsed::Pass(Verdict::NodeportPassTruncated);
                };
                next = nh;
                off += (usize::from(len) + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let (Ok(nh), Ok(len)) = (ctx.load::<u8>(off), ctx.load::<u8>(off + 1)) else {
                    return Parsed::Pass(Verdict::NodeportPassTruncated);
                };
                next = nh;
                off += (usize::from(len) + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let (Ok(nh), Ok(frag)) = (ctx.load::<u8>(off), ctx.load::<u16>(off + 2)) else {
                    return Parsed::Pass(Verdict::NodeportPassTruncated);
                };
                if u16::from_be(frag) & 0xfff8 != 0 {
                    return Parsed::Pass(Verdict::NodeportPassFragment);
                }
                next = nh;
                off += 8;
            }
            _ => break,
        }
        // Bounded for the verifier; no real packet comes near this.
        if off > 512 {
            return Parsed::Pass(Verdict::NodeportPassTruncated);
        }
    }
    if next == IPPROTO_ICMPV6 {
        // Types below 128 are errors.
        return match ctx.load::<u8>(off) {
            Ok(t) if t < 128 => Parsed::IcmpError(off),
            Ok(_) => Parsed::Ignore,
            Err(_) => Parsed::Pass(Verdict::NodeportPassTruncated),
        };
    }
    if next != IPPROTO_TCP && next != IPPROTO_UDP {
        return Parsed::Ignore;
    }
    let (Ok(sport), Ok(dport)) = (ctx.load::<u16>(off), ctx.load::<u16>(off + 2)) else {
        return Parsed::Pass(Verdict::NodeportPassTruncated);
    };
    let meta = L4 {
        l3,
        l4: off,
        proto: next,
    };
    if ctx.load::<u16>(meta.csum_off()).is_err() {
        return Parsed::Pass(Verdict::NodeportPassTruncated);
    }
    Parsed::Flow(
        Ct6Key {
            saddr,
            daddr,
            sport,
            dport,
            proto: next,
            dir: CT_DIR_ORIGINAL,
            pad: [0; 2],
        },
        meta,
    )
}

// ---- rewriting ------------------------------------------------------------

#[inline(always)]
fn set_port(ctx: &TcContext, m: &L4, at: usize, old: u16, new: u16) -> Result<(), Verdict> {
    if new == 0 || new == old {
        return Ok(());
    }
    ctx.l4_csum_replace(
        m.csum_off(),
        u64::from(old),
        u64::from(new),
        2 | m.csum_flags(),
    )
    .map_err(|_| Verdict::NodeportDropRewrite)?;
    ctx.store(m.l4 + at, &new, 0)
        .map_err(|_| Verdict::NodeportDropRewrite)
}

#[inline(always)]
fn set_addr4(ctx: &TcContext, m: &L4, at: usize, old: u32, new: u32) -> Result<(), Verdict> {
    if new == 0 || new == old {
        return Ok(());
    }
    ctx.l4_csum_replace(
        m.csum_off(),
        u64::from(old),
        u64::from(new),
        u64::from(BPF_F_PSEUDO_HDR) | 4 | m.csum_flags(),
    )
    .map_err(|_| Verdict::NodeportDropRewrite)?;
    ctx.l3_csum_replace(m.l3 + 10, u64::from(old), u64::from(new), 4)
        .map_err(|_| Verdict::NodeportDropRewrite)?;
    ctx.store(m.l3 + at, &new, 0)
        .map_err(|_| Verdict::NodeportDropRewrite)
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

#[inline(always)]
fn set_addr6(
    ctx: &TcContext,
    m: &L4,
    at: usize,
    old: &[u8; 16],
    new: &[u8; 16],
) -> Result<(), Verdict> {
    if *new == [0; 16] || new == old {
        return Ok(());
    }
    let mut from = words(old);
    let mut to = words(new);
    // SAFETY: both buffers are 16 bytes on this stack frame.
    let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
    if diff < 0 {
        return Err(Verdict::NodeportDropRewrite);
    }
    // IPv6 has no header checksum: only the transport's pseudo-header.
    ctx.l4_csum_replace(
        m.csum_off(),
        0,
        diff as u64,
        u64::from(BPF_F_PSEUDO_HDR) | m.csum_flags(),
    )
    .map_err(|_| Verdict::NodeportDropRewrite)?;
    ctx.store(m.l3 + at, new, 0)
        .map_err(|_| Verdict::NodeportDropRewrite)
}

#[inline(never)]
fn rewrite4(ctx: &TcContext, m: &L4, k: &Ct4Key, v: &Ct4Value) -> Result<(), Verdict> {
    set_addr4(ctx, m, 12, k.saddr, v.to_saddr)?;
    set_addr4(ctx, m, 16, k.daddr, v.to_daddr)?;
    set_port(ctx, m, 0, k.sport, v.to_sport)?;
    set_port(ctx, m, 2, k.dport, v.to_dport)
}

#[inline(never)]
fn rewrite6(ctx: &TcContext, m: &L4, k: &Ct6Key, v: &Ct6Value) -> Result<(), Verdict> {
    set_addr6(ctx, m, 8, &k.saddr, &v.to_saddr)?;
    set_addr6(ctx, m, 24, &k.daddr, &v.to_daddr)?;
    set_port(ctx, m, 0, k.sport, v.to_sport)?;
    set_port(ctx, m, 2, k.dport, v.to_dport)
}

// ---- forwarding -------------------------------------------------------------

/// Sends a rewritten packet out of the device the FIB picks for its new
/// destination, with the neighbour resolved by the kernel. Forwarding
/// through the stack would drop it: its source is now a local address.
#[inline(always)]
fn redirect(ctx: &TcContext, p: &mut bpf_fib_lookup) -> i32 {
    // SAFETY: the context is a valid skb; `p` lives on this stack frame.
    let rc = unsafe {
        p.ifindex = (*ctx.skb.skb).ifindex;
        fib_lookup(
            ctx.skb.skb.cast(),
            p,
            size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        count(Verdict::NodeportDropFib);
        return DROP;
    }
    // SAFETY: NULL params: the kernel resolves the next hop itself.
    unsafe { bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

#[inline(never)]
fn redirect4(ctx: &TcContext, k: &Ct4Key, v: &Ct4Value) -> i32 {
    // SAFETY: a plain C struct; all zero is valid.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = k.proto;
    p.sport = if v.to_sport != 0 { v.to_sport } else { k.sport };
    p.dport = if v.to_dport != 0 { v.to_dport } else { k.dport };
    p.__bindgen_anon_3.ipv4_src = if v.to_saddr != 0 { v.to_saddr } else { k.saddr };
    p.__bindgen_anon_4.ipv4_dst = if v.to_daddr != 0 { v.to_daddr } else { k.daddr };
    redirect(ctx, &mut p)
}

#[inline(never)]
fn redirect6(ctx: &TcContext, k: &Ct6Key, v: &Ct6Value) -> i32 {
    // SAFETY: as above.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET6;
    p.l4_protocol = k.proto;
    p.sport = if v.to_sport != 0 { v.to_sport } else { k.sport };
    p.dport = if v.to_dport != 0 { v.to_dport } else { k.dport };
    let src = if v.to_saddr != [0; 16] {
        &v.to_saddr
    } else {
        &k.saddr
    };
    let dst = if v.to_daddr != [0; 16] {
        &v.to_daddr
    } else {
        &k.daddr
    };
    p.__bindgen_anon_3.ipv6_src = words(src);
    p.__bindgen_anon_4.ipv6_dst = words(dst);
    redirect(ctx, &mut p)
}

// ---- locality and selection ---------------------------------------------------

#[inline(always)]
fn local4(cfg: &NodeportConfig, addr: u32) -> bool {
    addr == cfg.node_ip4 || (addr & cfg.pod_mask4) == cfg.pod_net4
}

#[inline(always)]
fn local6(cfg: &NodeportConfig, addr: &[u8; 16]) -> bool {
    if *addr == cfg.node_ip6 {
        return true;
    }
    let a = words(addr);
    let m = words(&cfg.pod_mask6);
    let n = words(&cfg.pod_net6);
    (a[0] & m[0]) == n[0] && (a[1] & m[1]) == n[1] && (a[2] & m[2]) == n[2] && (a[3] & m[3]) == n[3]
}

#[inline(always)]
fn random() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_prandom_u32() }
}

#[inline(always)]
fn snat_port(cfg: &NodeportConfig) -> u16 {
    let span = u32::from(cfg.snat_port_max.saturating_sub(cfg.snat_port_min)) + 1;
    (cfg.snat_port_min as u32 + random() % span) as u16
}

/// A random backend of an external frontend, with its id (which the CT
/// entry keeps to notice the backend leaving): the first live slot from a
/// random one, like `lb4_select`; with `local_only` (ETP Local) the first
/// whose backend is on this node, scanning at most `MAX_LOCAL_SCAN` slots.
#[inline(always)]
fn lb4_select_external(
    cfg: &NodeportConfig,
    mut key: Lb4Key,
    frontend: &LbService,
    local_only: bool,
) -> Option<(u32, shoal_ebpf_common::Lb4Backend)> {
    let start = random() % u32::from(frontend.count);
    key.generation = frontend.generation;
    let mut i: u16 = 0;
    while i < MAX_LOCAL_SCAN && i < frontend.count {
        key.backend_slot = ((start + u32::from(i)) % u32::from(frontend.count)) as u16 + 1;
        i += 1;
        // SAFETY: values are copied out at once.
        let Some(slot) = (unsafe { LB4_SERVICES.get(key) }).copied() else {
            continue;
        };
        // SAFETY: as above.
        if let Some(b) = (unsafe { LB4_BACKENDS.get(slot.backend_id) }).copied()
            && (!local_only || local4(cfg, b.address))
        {
            return Some((slot.backend_id, b));
        }
    }
    None
}

#[inline(always)]
fn lb6_select_external(
    cfg: &NodeportConfig,
    mut key: Lb6Key,
    frontend: &LbService,
    local_only: bool,
) -> Option<(u32, shoal_ebpf_common::Lb6Backend)> {
    let start = random() % u32::from(frontend.count);
    key.generation = frontend.generation;
    let mut i: u16 = 0;
    while i < MAX_LOCAL_SCAN && i < frontend.count {
        key.backend_slot = ((start + u32::from(i)) % u32::from(frontend.count)) as u16 + 1;
        i += 1;
        // SAFETY: values are copied out at once.
        let Some(slot) = (unsafe { LB6_SERVICES.get(key) }).copied() else {
            continue;
        };
        // SAFETY: as above.
        if let Some(b) = (unsafe { LB6_BACKENDS.get(slot.backend_id) }).copied()
            && (!local_only || local6(cfg, &b.address))
        {
            return Some((slot.backend_id, b));
        }
    }
    None
}

/// Whether backend `id` is still `address:port` (ids are reused).
#[inline(always)]
fn backend4_alive(id: u32, address: u32, port: u16) -> bool {
    // SAFETY: copied out at once.
    match unsafe { LB4_BACKENDS.get(id) } {
        Some(b) => b.address == address && b.port == port,
        None => false,
    }
}

#[inline(always)]
fn backend6_alive(id: u32, address: &[u8; 16], port: u16) -> bool {
    // SAFETY: copied out at once.
    match unsafe { LB6_BACKENDS.get(id) } {
        Some(b) => b.address == *address && b.port == port,
        None => false,
    }
}

// ---- IPv4 -------------------------------------------------------------------

#[inline(always)]
fn touch4(key: &Ct4Key, life: Lifetime) -> Option<Ct4Value> {
    let ptr = CT4.get_ptr_mut(key)?;
    // SAFETY: a pointer into the map value; racing writers only lose counts.
    unsafe {
        (*ptr).last_seen = now();
        (*ptr).packets = (*ptr).packets.wrapping_add(1);
        match life {
            Lifetime::Closing => (*ptr).flags |= CT_FLAG_CLOSING,
            Lifetime::Opening => (*ptr).flags &= !CT_FLAG_CLOSING,
            Lifetime::Same => {}
        }
        Some(*ptr)
    }
}

/// tc ingress, IPv4: a known flow or a reply; [`NEW_FLOW`] when the
/// packet may open one (the entry then calls `new4` and this again, so
/// neither call nests in the other: the verifier limits the stack of a
/// call chain to 512 bytes). `hit` is what a conntrack hit counts.
#[inline(never)]
fn ingress4(ctx: &TcContext, hit: Verdict) -> i32 {
    let (mut key, m) = match parse4(ctx) {
        Parsed::Flow(k, m) => (k, m),
        Parsed::Pass(v) => {
            count(v);
            return PASS;
        }
        Parsed::IcmpError(l4) => return icmp_error_at(l4),
        Parsed::Ignore => return PASS,
    };
    let Some(cfg) = config() else {
        return PASS;
    };
    let life = lifetime(ctx, &m);
    // 1. A flow we translate already.
    if let Some(v) = touch4(&key, life) {
        let alive = if v.flags & CT_FLAG_SNAT != 0 || v.to_daddr != 0 {
            backend4_alive(v.backend_id, v.to_daddr, v.to_dport)
        } else {
            true
        };
        if alive {
            return forward4(ctx, &m, &key, &v, hit);
        }
        // Its backend is gone: balance it again.
        let _ = CT4.remove(key);
    }
    // 2. A reply from a backend on another node, to our SNAT address.
    key.dir = CT_DIR_REPLY;
    if key.daddr == cfg.node_ip4
        && let Some(v) = touch4(&key, life)
    {
        if let Err(e) = rewrite4(ctx, &m, &key, &v) {
            count(e);
            return DROP;
        }
        count(Verdict::NodeportReplyRevnat);
        return redirect4(ctx, &key, &v);
    }
    NEW_FLOW
}

/// A packet that may open a flow: if it is to an external frontend, picks
/// a backend and stores both conntrack entries ([`NEW_FLOW`] then: the
/// caller translates it through them); else a final action.
#[inline(never)]
fn new4(ctx: &TcContext) -> i32 {
    let Parsed::Flow(key, _) = parse4(ctx) else {
        return PASS;
    };
    let Some(cfg) = config() else {
        return PASS;
    };
    // 3. A new flow to an external frontend.
    let fkey = Lb4Key {
        address: key.daddr,
        dport: key.dport,
        backend_slot: 0,
        proto: key.proto,
        generation: 0,
        pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let Some(frontend) = (unsafe { LB4_SERVICES.get(fkey) }).copied() else {
        return PASS;
    };
    if frontend.flags & SVC_FLAG_EXTERNAL == 0 {
        // A ClusterIP: only reachable from inside the cluster.
        count(Verdict::NodeportPassInternal);
        return PASS;
    }
    if frontend.count == 0 {
        count(Verdict::DropNoBackend);
        return DROP;
    }
    let local_only = frontend.flags & SVC_FLAG_ETP_LOCAL != 0;
    let Some((backend_id, backend)) = lb4_select_external(cfg, fkey, &frontend, local_only) else {
        count(if local_only {
            Verdict::NodeportDropNoLocalBackend
        } else {
            Verdict::DropSlotMissing
        });
        return DROP;
    };
    let local = local4(cfg, backend.address);
    let mut fwd = Ct4Value {
        to_daddr: backend.address,
        to_dport: backend.port,
        backend_id,
        rev_nat_index: frontend.rev_nat_index,
        last_seen: now(),
        packets: 0,
        ..Ct4Value::default()
    };
    let mut rev = Ct4Value {
        to_saddr: key.daddr,
        to_sport: key.dport,
        backend_id,
        rev_nat_index: frontend.rev_nat_index,
        last_seen: now(),
        ..Ct4Value::default()
    };
    let mut rkey = Ct4Key {
        saddr: backend.address,
        daddr: key.saddr,
        sport: backend.port,
        dport: key.sport,
        proto: key.proto,
        dir: CT_DIR_REPLY,
        pad: [0; 2],
    };
    if local {
        fwd.flags = CT_FLAG_LOCAL_BACKEND;
        rev.flags = CT_FLAG_LOCAL_BACKEND;
        if CT4.insert(rkey, rev, 0).is_err() {
            count(Verdict::NodeportDropCtInsert);
            return DROP;
        }
    } else {
        if cfg.node_ip4 == 0 {
            count(Verdict::NodeportDropNoSnatPort);
            return DROP;
        }
        fwd.flags = CT_FLAG_SNAT;
        rev.flags = CT_FLAG_SNAT;
        rev.to_daddr = key.saddr;
        rev.to_dport = key.sport;
        rkey.daddr = cfg.node_ip4;
        let mut i = 0;
        let mut stored = false;
        while i < SNAT_ATTEMPTS {
            i += 1;
            rkey.dport = snat_port(cfg).to_be();
            if CT4.insert(rkey, rev, u64::from(BPF_NOEXIST)).is_ok() {
                stored = true;
                break;
            }
        }
        if !stored {
            count(Verdict::NodeportDropNoSnatPort);
            return DROP;
        }
        fwd.to_saddr = cfg.node_ip4;
        fwd.to_sport = rkey.dport;
    }
    if CT4.insert(key, fwd, 0).is_err() {
        let _ = CT4.remove(rkey);
        count(Verdict::NodeportDropCtInsert);
        return DROP;
    }
    NEW_FLOW
}

#[inline(never)]
fn forward4(ctx: &TcContext, m: &L4, key: &Ct4Key, v: &Ct4Value, verdict: Verdict) -> i32 {
    if let Err(e) = rewrite4(ctx, m, key, v) {
        count(e);
        return DROP;
    }
    count(verdict);
    if v.flags & CT_FLAG_SNAT != 0 {
        redirect4(ctx, key, v)
    } else {
        // A local backend: the kernel routes the packet to the pod.
        PASS
    }
}

/// tc egress, IPv4: replies of local backends.
#[inline(never)]
fn egress4(ctx: &TcContext) -> i32 {
    let (mut key, m) = match parse4(ctx) {
        Parsed::Flow(k, m) => (k, m),
        Parsed::IcmpError(l4) => return icmp_error_at(l4),
        _ => return PASS,
    };
    key.dir = CT_DIR_REPLY;
    let Some(v) = touch4(&key, lifetime(ctx, &m)) else {
        return PASS;
    };
    if v.flags & CT_FLAG_LOCAL_BACKEND == 0 {
        return PASS;
    }
    if let Err(e) = rewrite4(ctx, &m, &key, &v) {
        count(e);
        return DROP;
    }
    count(Verdict::NodeportReplyRevnat);
    PASS
}

// ---- IPv6 -------------------------------------------------------------------

#[inline(always)]
fn touch6(key: &Ct6Key, life: Lifetime) -> Option<Ct6Value> {
    let ptr = CT6.get_ptr_mut(key)?;
    // SAFETY: as in touch4.
    unsafe {
        (*ptr).last_seen = now();
        (*ptr).packets = (*ptr).packets.wrapping_add(1);
        match life {
            Lifetime::Closing => (*ptr).flags |= CT_FLAG_CLOSING,
            Lifetime::Opening => (*ptr).flags &= !CT_FLAG_CLOSING,
            Lifetime::Same => {}
        }
        Some(*ptr)
    }
}

/// tc ingress, IPv6: a known flow or a reply; [`NEW_FLOW`] when the
/// packet may open one (the entry then calls `new6` and this again, so
/// neither call nests in the other: the verifier limits the stack of a
/// call chain to 512 bytes). `hit` is what a conntrack hit counts.
#[inline(never)]
fn ingress6(ctx: &TcContext, hit: Verdict) -> i32 {
    let (mut key, m) = match parse6(ctx) {
        Parsed::Flow(k, m) => (k, m),
        Parsed::Pass(v) => {
            count(v);
            return PASS;
        }
        Parsed::IcmpError(l4) => return icmp_error_at(l4),
        Parsed::Ignore => return PASS,
    };
    let Some(cfg) = config() else {
        return PASS;
    };
    let life = lifetime(ctx, &m);
    if let Some(v) = touch6(&key, life) {
        let alive = if v.to_daddr != [0; 16] {
            backend6_alive(v.backend_id, &v.to_daddr, v.to_dport)
        } else {
            true
        };
        if alive {
            return forward6(ctx, &m, &key, &v, hit);
        }
        let _ = CT6.remove(key);
    }
    key.dir = CT_DIR_REPLY;
    if key.daddr == cfg.node_ip6
        && let Some(v) = touch6(&key, life)
    {
        if let Err(e) = rewrite6(ctx, &m, &key, &v) {
            count(e);
            return DROP;
        }
        count(Verdict::NodeportReplyRevnat);
        return redirect6(ctx, &key, &v);
    }
    NEW_FLOW
}

/// A packet that may open a flow: if it is to an external frontend, picks
/// a backend and stores both conntrack entries ([`NEW_FLOW`] then: the
/// caller translates it through them); else a final action.
#[inline(never)]
fn new6(ctx: &TcContext) -> i32 {
    let Parsed::Flow(key, _) = parse6(ctx) else {
        return PASS;
    };
    let Some(cfg) = config() else {
        return PASS;
    };
    let fkey = Lb6Key {
        address: key.daddr,
        dport: key.dport,
        backend_slot: 0,
        proto: key.proto,
        generation: 0,
        pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let Some(frontend) = (unsafe { LB6_SERVICES.get(fkey) }).copied() else {
        return PASS;
    };
    if frontend.flags & SVC_FLAG_EXTERNAL == 0 {
        count(Verdict::NodeportPassInternal);
        return PASS;
    }
    if frontend.count == 0 {
        count(Verdict::DropNoBackend);
        return DROP;
    }
    let local_only = frontend.flags & SVC_FLAG_ETP_LOCAL != 0;
    let Some((backend_id, backend)) = lb6_select_external(cfg, fkey, &frontend, local_only) else {
        count(if local_only {
            Verdict::NodeportDropNoLocalBackend
        } else {
            Verdict::DropSlotMissing
        });
        return DROP;
    };
    let local = local6(cfg, &backend.address);
    let mut fwd = Ct6Value {
        to_daddr: backend.address,
        to_dport: backend.port,
        backend_id,
        rev_nat_index: frontend.rev_nat_index,
        last_seen: now(),
        packets: 0,
        ..Ct6Value::default()
    };
    let mut rev = Ct6Value {
        to_saddr: key.daddr,
        to_sport: key.dport,
        backend_id,
        rev_nat_index: frontend.rev_nat_index,
        last_seen: now(),
        ..Ct6Value::default()
    };
    let mut rkey = Ct6Key {
        saddr: backend.address,
        daddr: key.saddr,
        sport: backend.port,
        dport: key.sport,
        proto: key.proto,
        dir: CT_DIR_REPLY,
        pad: [0; 2],
    };
    if local {
        fwd.flags = CT_FLAG_LOCAL_BACKEND;
        rev.flags = CT_FLAG_LOCAL_BACKEND;
        if CT6.insert(rkey, rev, 0).is_err() {
            count(Verdict::NodeportDropCtInsert);
            return DROP;
        }
    } else {
        if cfg.node_ip6 == [0; 16] {
            count(Verdict::NodeportDropNoSnatPort);
            return DROP;
        }
        fwd.flags = CT_FLAG_SNAT;
        rev.flags = CT_FLAG_SNAT;
        rev.to_daddr = key.saddr;
        rev.to_dport = key.sport;
        rkey.daddr = cfg.node_ip6;
        let mut i = 0;
        let mut stored = false;
        while i < SNAT_ATTEMPTS {
            i += 1;
            rkey.dport = snat_port(cfg).to_be();
            if CT6.insert(rkey, rev, u64::from(BPF_NOEXIST)).is_ok() {
                stored = true;
                break;
            }
        }
        if !stored {
            count(Verdict::NodeportDropNoSnatPort);
            return DROP;
        }
        fwd.to_saddr = cfg.node_ip6;
        fwd.to_sport = rkey.dport;
    }
    if CT6.insert(key, fwd, 0).is_err() {
        let _ = CT6.remove(rkey);
        count(Verdict::NodeportDropCtInsert);
        return DROP;
    }
    NEW_FLOW
}

#[inline(never)]
fn forward6(ctx: &TcContext, m: &L4, key: &Ct6Key, v: &Ct6Value, verdict: Verdict) -> i32 {
    if let Err(e) = rewrite6(ctx, m, key, v) {
        count(e);
        return DROP;
    }
    count(verdict);
    if v.flags & CT_FLAG_SNAT != 0 {
        redirect6(ctx, key, v)
    } else {
        PASS
    }
}

/// tc egress, IPv6: replies of local backends.
#[inline(never)]
fn egress6(ctx: &TcContext) -> i32 {
    let (mut key, m) = match parse6(ctx) {
        Parsed::Flow(k, m) => (k, m),
        Parsed::IcmpError(l4) => return icmp_error_at(l4),
        _ => return PASS,
    };
    key.dir = CT_DIR_REPLY;
    let Some(v) = touch6(&key, lifetime(ctx, &m)) else {
        return PASS;
    };
    if v.flags & CT_FLAG_LOCAL_BACKEND == 0 {
        return PASS;
    }
    if let Err(e) = rewrite6(ctx, &m, &key, &v) {
        count(e);
        return DROP;
    }
    count(Verdict::NodeportReplyRevnat);
    PASS
}

// ---- ICMP errors about translated flows ----------------------------------------
//
// An ICMP error about a packet of a translated flow quotes that packet as it
// went from this node to the backend: after DNAT (and SNAT to the node for
// a remote backend). The flow's reply entry, keyed by the quoted packet
// reversed, says how to take it back: the quoted source becomes the client
// again and the quoted destination the frontend; the outer destination
// becomes the client, and an outer source that is the backend itself the
// frontend (a router's address stays). Errors about nothing translated here
// pass untouched.

#[inline(always)]
fn icmp_error_at(l4: usize) -> i32 {
    ICMP_ERROR + l4 as i32
}

/// The ICMP header's offset of an [`ICMP_ERROR`] action.
#[inline(always)]
fn icmp_offset(action: i32) -> Option<usize> {
    (ICMP_ERROR..ICMP_ERROR + MAX_ICMP_OFFSET)
        .contains(&action)
        .then(|| (action - ICMP_ERROR) as usize)
}

/// An ICMP error about nothing we translated.
#[inline(always)]
fn icmp_pass() -> i32 {
    count(Verdict::NodeportPassIcmpError);
    PASS
}

/// What to do with a translated error: send it to the client (arriving
/// SNATed from another node's backend) or let it go on.
#[inline(always)]
fn icmp_done(ctx: &TcContext, ingress: bool, snat: bool, k: &Ct4Key) -> i32 {
    count(Verdict::NodeportIcmpErrorRevnat);
    if ingress && snat {
        redirect4(ctx, k, &Ct4Value::default())
    } else {
        PASS
    }
}

/// A quoted IPv4 address: the quoted header's checksum absorbs the change,
/// so the ICMP checksum over both stays right.
#[inline(always)]
fn icmp4_quoted_addr(
    ctx: &TcContext,
    inner: usize,
    at: usize,
    old: u32,
    new: u32,
) -> Result<(), Verdict> {
    if new == 0 || new == old {
        return Ok(());
    }
    ctx.l3_csum_replace(inner + 10, u64::from(old), u64::from(new), 4)
        .map_err(|_| Verdict::NodeportDropRewrite)?;
    ctx.store(inner + at, &new, 0)
        .map_err(|_| Verdict::NodeportDropRewrite)
}

/// A quoted port (ICMP or ICMPv6 checksum at `l4 + 2`; the quoted
/// transport checksum may be cut off and is left alone, as Linux NAT does).
#[inline(always)]
fn icmp_quoted_port(
    ctx: &TcContext,
    l4: usize,
    at: usize,
    old: u16,
    new: u16,
) -> Result<(), Verdict> {
    if new == 0 || new == old {
        return Ok(());
    }
    ctx.l4_csum_replace(l4 + 2, u64::from(old), u64::from(new), 2)
        .map_err(|_| Verdict::NodeportDropRewrite)?;
    ctx.store(at, &new, 0)
        .map_err(|_| Verdict::NodeportDropRewrite)
}

/// An outer IPv4 address (ICMP has no pseudo-header).
#[inline(always)]
fn icmp4_outer_addr(ctx: &TcContext, at: usize, old: u32, new: u32) -> Result<(), Verdict> {
    if new == 0 || new == old {
        return Ok(());
    }
    ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(old), u64::from(new), 4)
        .map_err(|_| Verdict::NodeportDropRewrite)?;
    ctx.store(ETH_HLEN + at, &new, 0)
        .map_err(|_| Verdict::NodeportDropRewrite)
}

/// IPv4: an ICMP error whose ICMP header is at `l4`.
#[inline(never)]
fn icmp4_error(ctx: &TcContext, l4: usize, ingress: bool) -> i32 {
    let inner = l4 + 8;
    let (Ok(vihl), Ok(proto), Ok(isaddr), Ok(idaddr), Ok(osaddr), Ok(odaddr)) = (
        ctx.load::<u8>(inner),
        ctx.load::<u8>(inner + 9),
        ctx.load::<u32>(inner + 12),
        ctx.load::<u32>(inner + 16),
        ctx.load::<u32>(ETH_HLEN + 12),
        ctx.load::<u32>(ETH_HLEN + 16),
    ) else {
        return icmp_pass();
    };
    if vihl >> 4 != 4 || vihl & 0x0f < 5 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return icmp_pass();
    }
    let il4 = inner + usize::from(vihl & 0x0f) * 4;
    let (Ok(isport), Ok(idport)) = (ctx.load::<u16>(il4), ctx.load::<u16>(il4 + 2)) else {
        return icmp_pass();
    };
    let rkey = Ct4Key {
        saddr: idaddr,
        daddr: isaddr,
        sport: idport,
        dport: isport,
        proto,
        dir: CT_DIR_REPLY,
        pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let Some(v) = (unsafe { CT4.get(rkey) }).copied() else {
        return icmp_pass();
    };
    let to_client = if v.to_daddr != 0 { v.to_daddr } else { odaddr };
    let from = if osaddr == idaddr { v.to_saddr } else { osaddr };
    let done = icmp4_quoted_addr(ctx, inner, 12, isaddr, v.to_daddr)
        .and_then(|()| icmp4_quoted_addr(ctx, inner, 16, idaddr, v.to_saddr))
        .and_then(|()| icmp_quoted_port(ctx, l4, il4, isport, v.to_dport))
        .and_then(|()| icmp_quoted_port(ctx, l4, il4 + 2, idport, v.to_sport))
        .and_then(|()| icmp4_outer_addr(ctx, 16, odaddr, to_client))
        .and_then(|()| icmp4_outer_addr(ctx, 12, osaddr, from));
    if let Err(e) = done {
        count(e);
        return DROP;
    }
    let k = Ct4Key {
        saddr: from,
        daddr: to_client,
        proto: IPPROTO_ICMP,
        ..Ct4Key::default()
    };
    icmp_done(ctx, ingress, v.flags & CT_FLAG_SNAT != 0, &k)
}

/// A quoted IPv6 address at `at` becomes `new`: no header checksum, so
/// the ICMPv6 checksum (no pseudo-header part) takes the difference.
#[inline(never)]
fn icmp6_quoted_addr(ctx: &TcContext, l4: usize, at: usize, new: &[u8; 16]) -> Result<(), Verdict> {
    let old = ctx
        .load::<[u8; 16]>(at)
        .map_err(|_| Verdict::NodeportDropRewrite)?;
    if *new == [0; 16] || *new == old {
        return Ok(());
    }
    let mut from = words(&old);
    let mut to = words(new);
    // SAFETY: both buffers are 16 bytes on this stack frame.
    let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
    if diff < 0 {
        return Err(Verdict::NodeportDropRewrite);
    }
    ctx.l4_csum_replace(l4 + 2, 0, diff as u64, 0)
        .map_err(|_| Verdict::NodeportDropRewrite)?;
    ctx.store(at, new, 0)
        .map_err(|_| Verdict::NodeportDropRewrite)
}

/// The quoted packet of an ICMPv6 error back to client → frontend.
#[inline(never)]
fn icmp6_inner(ctx: &TcContext, l4: usize, v: &Ct6Value) -> Result<(), Verdict> {
    let inner = l4 + 8;
    let il4 = inner + 40;
    icmp6_quoted_addr(ctx, l4, inner + 8, &v.to_daddr)?;
    icmp6_quoted_addr(ctx, l4, inner + 24, &v.to_saddr)?;
    let (Ok(isport), Ok(idport)) = (ctx.load::<u16>(il4), ctx.load::<u16>(il4 + 2)) else {
        return Err(Verdict::NodeportDropRewrite);
    };
    icmp_quoted_port(ctx, l4, il4, isport, v.to_dport)?;
    icmp_quoted_port(ctx, l4, il4 + 2, idport, v.to_sport)
}

/// IPv6: an ICMPv6 error whose ICMPv6 header is at `l4` (a quoted packet
/// with extension headers passes untouched).
#[inline(never)]
fn icmp6_error(ctx: &TcContext, l4: usize, ingress: bool) -> i32 {
    let inner = l4 + 8;
    let il4 = inner + 40;
    let (Ok(v), Ok(proto), Ok(isport), Ok(idport)) = (
        ctx.load::<u8>(inner),
        ctx.load::<u8>(inner + 6),
        ctx.load::<u16>(il4),
        ctx.load::<u16>(il4 + 2),
    ) else {
        return icmp_pass();
    };
    if v >> 4 != 6 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return icmp_pass();
    }
    let mut rkey = Ct6Key {
        sport: idport,
        dport: isport,
        proto,
        dir: CT_DIR_REPLY,
        ..Ct6Key::default()
    };
    match (
        ctx.load::<[u8; 16]>(inner + 24),
        ctx.load::<[u8; 16]>(inner + 8),
    ) {
        (Ok(backend), Ok(source)) => {
            rkey.saddr = backend;
            rkey.daddr = source;
        }
        _ => return icmp_pass(),
    }
    // SAFETY: a map value, read while this program runs.
    let Some(val) = (unsafe { CT6.get(rkey) }) else {
        return icmp_pass();
    };
    // Whether the backend itself sent the error (its address then becomes
    // the frontend's), folded with the direction: eBPF calls take at most
    // five register arguments, and an address takes two.
    let from_backend = ctx
        .load::<[u8; 16]>(ETH_HLEN + 8)
        .is_ok_and(|a| a == rkey.saddr);
    if let Err(e) = icmp6_inner(ctx, l4, val) {
        count(e);
        return DROP;
    }
    let how = u8::from(ingress) | (u8::from(from_backend) << 1);
    icmp6_outer(ctx, l4, how, val)
}

/// An outer IPv6 address at `at` becomes `new` (the ICMPv6 checksum's
/// pseudo-header part).
#[inline(never)]
fn icmp6_outer_addr(ctx: &TcContext, l4: usize, at: usize, new: &[u8; 16]) -> Result<(), Verdict> {
    let old = ctx
        .load::<[u8; 16]>(ETH_HLEN + at)
        .map_err(|_| Verdict::NodeportDropRewrite)?;
    let m = L4 {
        l3: ETH_HLEN,
        l4,
        proto: IPPROTO_ICMPV6,
    };
    set_addr6(ctx, &m, at, &old, new)
}

/// Sends a rewritten IPv6 packet toward the destination in its header.
#[inline(never)]
fn redirect6_header(ctx: &TcContext, proto: u8) -> i32 {
    let (Ok(src), Ok(dst)) = (
        ctx.load::<[u8; 16]>(ETH_HLEN + 8),
        ctx.load::<[u8; 16]>(ETH_HLEN + 24),
    ) else {
        count(Verdict::NodeportDropRewrite);
        return DROP;
    };
    // SAFETY: a plain C struct; all zero is valid.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET6;
    p.l4_protocol = proto;
    p.__bindgen_anon_3.ipv6_src = words(&src);
    p.__bindgen_anon_4.ipv6_dst = words(&dst);
    redirect(ctx, &mut p)
}

/// The outer addresses of a translated ICMPv6 error, and where it goes.
/// `how`: bit 0 ingress, bit 1 the backend sent it.
#[inline(never)]
fn icmp6_outer(ctx: &TcContext, l4: usize, how: u8, v: &Ct6Value) -> i32 {
    let mut done = icmp6_outer_addr(ctx, l4, 24, &v.to_daddr);
    if how & 2 != 0 {
        done = done.and_then(|()| icmp6_outer_addr(ctx, l4, 8, &v.to_saddr));
    }
    if let Err(e) = done {
        count(e);
        return DROP;
    }
    count(Verdict::NodeportIcmpErrorRevnat);
    if how & 1 != 0 && v.flags & CT_FLAG_SNAT != 0 {
        redirect6_header(ctx, IPPROTO_ICMPV6)
    } else {
        PASS
    }
}

// ---- entry bodies --------------------------------------------------------------

/// The external device's ingress: ARP / neighbour solicitations for
/// announced LoadBalancer IPs are answered (`l2`), IP traffic translated.
#[inline(always)]
pub fn nodeport_ingress(ctx: &TcContext) -> i32 {
    match eth_proto(ctx) {
        Ok(ETH_P_IP) => match ingress4(ctx, Verdict::NodeportForwarded) {
            NEW_FLOW => match new4(ctx) {
                NEW_FLOW => ingress4(ctx, Verdict::NodeportNewFlow),
                action => action,
            },
            action => match icmp_offset(action) {
                Some(l4) => icmp4_error(ctx, l4, true),
                None => action,
            },
        },
        Ok(ETH_P_IPV6) => match crate::l2::nd6_reply(ctx) {
            crate::l2::NOT_OURS => match ingress6(ctx, Verdict::NodeportForwarded) {
                NEW_FLOW => match new6(ctx) {
                    NEW_FLOW => ingress6(ctx, Verdict::NodeportNewFlow),
                    action => action,
                },
                action => match icmp_offset(action) {
                    Some(l4) => icmp6_error(ctx, l4, true),
                    None => action,
                },
            },
            action => action,
        },
        Ok(ETH_P_ARP) => match crate::l2::arp4_reply(ctx) {
            crate::l2::NOT_OURS => PASS,
            action => action,
        },
        Ok(_) => PASS,
        Err(v) => {
            count(v);
            PASS
        }
    }
}

/// The external device's egress.
#[inline(always)]
pub fn nodeport_egress(ctx: &TcContext) -> i32 {
    match eth_proto(ctx) {
        Ok(ETH_P_IP) => {
            let action = egress4(ctx);
            match icmp_offset(action) {
                Some(l4) => icmp4_error(ctx, l4, false),
                None => action,
            }
        }
        Ok(ETH_P_IPV6) => {
            let action = egress6(ctx);
            match icmp_offset(action) {
                Some(l4) => icmp6_error(ctx, l4, false),
                None => action,
            }
        }
        _ => PASS,
    }
}
