//! Answers for LoadBalancer IPs on the fabric: an ARP request or an ICMPv6
//! neighbour solicitation whose target this node announces
//! (`L2_ANNOUNCE4_V1` / `L2_ANNOUNCE6_V1`) is rewritten in place into its
//! reply and sent back out of the device it came in on. Anything else is
//! left to the caller.

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_redirect},
    programs::TcContext,
};
use shoal_ebpf_common::Verdict;

use crate::maps::{L2_ANNOUNCE4, L2_ANNOUNCE6, L2_DEVICE, count};

/// Returned by [`arp4_reply`] / [`nd6_reply`] for a packet that is not a
/// question about an announced address: the caller goes on with it. (An
/// `Option` return from a non-inlined function would be a stack pointer,
/// which the verifier refuses.)
pub const NOT_OURS: i32 = i32::MIN + 1;

const ETH_HLEN: usize = 14;
/// ARP over Ethernet for IPv4: htype 1, ptype 0x0800, hlen 6, plen 4.
const ARP_ETH_IP4: [u8; 6] = [0, 1, 8, 0, 6, 4];
const ARP_REQUEST: [u8; 2] = [0, 1];
const ARP_REPLY: [u8; 2] = [0, 2];
const IPPROTO_ICMPV6: u8 = 58;
const ND_SOLICIT: u8 = 135;
const ND_ADVERT: u8 = 136;
/// Solicited | Override.
const ND_FLAGS: [u8; 4] = [0x60, 0, 0, 0];
const ND_OPT_SOURCE_LL: u8 = 1;
const ND_OPT_TARGET_LL: u8 = 2;
/// A solicitation with exactly one source link-layer address option (what
/// every solicitation from an address other than `::` carries): 24 + 8.
const ND_LEN: u16 = 32;

/// An ARP packet behind its Ethernet header. Bytes only: no padding.
#[repr(C)]
struct Arp {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    eth_proto: [u8; 2],
    kind: [u8; 6],
    op: [u8; 2],
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

/// A neighbour solicitation / advertisement with one link-layer option.
#[repr(C)]
#[derive(Clone, Copy)]
struct Nd {
    kind: u8,
    code: u8,
    csum: [u8; 2],
    flags: [u8; 4],
    target: [u8; 16],
    opt_type: u8,
    opt_len: u8,
    opt_mac: [u8; 6],
}

/// Ethernet, IPv6 header and `Nd`, as on the wire.
#[repr(C)]
struct Nd6Packet {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    eth_proto: [u8; 2],
    vtcfl: [u8; 4],
    plen: [u8; 2],
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
    nd: Nd,
}

/// What the ICMPv6 checksum covers: the pseudo-header, then the message.
#[repr(C, align(4))]
struct Nd6Csum {
    saddr: [u8; 16],
    daddr: [u8; 16],
    len: [u8; 4],
    zero: [u8; 3],
    nexthdr: u8,
    nd: Nd,
}

const _: () = {
    assert!(size_of::<Arp>() == ETH_HLEN + 28);
    assert!(size_of::<Nd>() == ND_LEN as usize);
    assert!(size_of::<Nd6Packet>() == ETH_HLEN + 40 + ND_LEN as usize);
    assert!(size_of::<Nd6Csum>() == 40 + ND_LEN as usize);
};

#[inline(always)]
fn device_mac() -> Option<[u8; 6]> {
    let dev = L2_DEVICE.get(0)?;
    (dev.mac != [0; 6]).then_some(dev.mac)
}

/// Sends the rewritten packet back out of the device it arrived on.
#[inline(always)]
fn bounce(ctx: &TcContext, verdict: Verdict) -> i32 {
    // SAFETY: the context is a valid skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    count(verdict);
    // SAFETY: a plain helper call; it returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// An ARP request for an announced IPv4 address: the reply (op 2, this
/// device as the sender), sent back; [`NOT_OURS`]: untouched.
#[inline(never)]
pub fn arp4_reply(ctx: &TcContext) -> i32 {
    arp4(ctx).unwrap_or(NOT_OURS)
}

#[inline(always)]
fn arp4(ctx: &TcContext) -> Option<i32> {
    let req = ctx.load::<Arp>(0).ok()?;
    if req.kind != ARP_ETH_IP4 || req.op != ARP_REQUEST {
        return None;
    }
    // Probes (sender 0.0.0.0) and gratuitous ARP are not questions.
    if req.spa == [0; 4] || req.spa == req.tpa {
        return None;
    }
    let target = u32::from_ne_bytes(req.tpa);
    // SAFETY: the value is read, never kept.
    unsafe { L2_ANNOUNCE4.get(target) }?;
    let mac = device_mac()?;
    let reply = Arp {
        eth_dst: req.sha,
        eth_src: mac,
        eth_proto: req.eth_proto,
        kind: ARP_ETH_IP4,
        op: ARP_REPLY,
        sha: mac,
        spa: req.tpa,
        tha: req.sha,
        tpa: req.spa,
    };
    if ctx.store(0, &reply, 0).is_err() {
        count(Verdict::L2DropRewrite);
        return Some(crate::nodeport::DROP);
    }
    Some(bounce(ctx, Verdict::L2ArpReplied))
}

/// A neighbour solicitation for an announced IPv6 address: the
/// advertisement (Solicited, Override, this device's address as the target
/// link-layer option), from the target to the asker, sent back;
/// [`NOT_OURS`]: untouched.
#[inline(never)]
pub fn nd6_reply(ctx: &TcContext) -> i32 {
    nd6(ctx).unwrap_or(NOT_OURS)
}

#[inline(always)]
fn nd6(ctx: &TcContext) -> Option<i32> {
    // Cheap checks first: every IPv6 packet comes through here.
    let (nexthdr, kind) = (
        ctx.load::<u8>(ETH_HLEN + 6).ok()?,
        ctx.load::<u8>(ETH_HLEN + 40).ok()?,
    );
    if nexthdr != IPPROTO_ICMPV6 || kind != ND_SOLICIT {
        return None;
    }
    let req = ctx.load::<Nd6Packet>(0).ok()?;
    // RFC 4861 7.1.1: hop limit 255, code 0; one source link-layer option.
    if req.hop_limit != 255
        || req.nd.code != 0
        || u16::from_be_bytes(req.plen) != ND_LEN
        || req.nd.opt_type != ND_OPT_SOURCE_LL
        || req.nd.opt_len != 1
        || req.saddr == [0; 16]
    {
        return None;
    }
    // SAFETY: the value is read, never kept.
    unsafe { L2_ANNOUNCE6.get(req.nd.target) }?;
    let mac = device_mac()?;
    let mut nd = Nd {
        kind: ND_ADVERT,
        code: 0,
        csum: [0; 2],
        flags: ND_FLAGS,
        target: req.nd.target,
        opt_type: ND_OPT_TARGET_LL,
        opt_len: 1,
        opt_mac: mac,
    };
    let mut sum = Nd6Csum {
        saddr: req.nd.target,
        daddr: req.saddr,
        len: (u32::from(ND_LEN)).to_be_bytes(),
        zero: [0; 3],
        nexthdr: IPPROTO_ICMPV6,
        nd,
    };
    // SAFETY: `sum` is an initialised, 4-aligned stack buffer of 72 bytes.
    let partial = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            (&raw mut sum).cast::<u32>(),
            size_of::<Nd6Csum>() as u32,
            0,
        )
    };
    if partial < 0 {
        count(Verdict::L2DropRewrite);
        return Some(crate::nodeport::DROP);
    }
    let mut folded = partial as u64 & 0xffff_ffff;
    folded = (folded & 0xffff) + (folded >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    // The sum was taken over the bytes as they lie in memory, so its
    // complement goes back the same way.
    nd.csum = (!(folded as u16)).to_ne_bytes();
    let reply = Nd6Packet {
        eth_dst: req.eth_src,
        eth_src: mac,
        eth_proto: req.eth_proto,
        vtcfl: req.vtcfl,
        plen: req.plen,
        nexthdr: IPPROTO_ICMPV6,
        hop_limit: 255,
        saddr: req.nd.target,
        daddr: req.saddr,
        nd,
    };
    if ctx.store(0, &reply, 0).is_err() {
        count(Verdict::L2DropRewrite);
        return Some(crate::nodeport::DROP);
    }
    Some(bounce(ctx, Verdict::L2NdReplied))
}
