//! Socket-level load balancing: connect/sendmsg rewrite a service address
//! to a backend before the kernel routes anything, so no packet ever
//! carries the service address; recvmsg/getpeername put it back so the
//! application only ever sees the address it asked for.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, generated::bpf_set_retval},
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use shoal_ebpf_common::{
    Sock4RevnatKey, Sock4RevnatValue, Sock6RevnatKey, Sock6RevnatValue, Verdict,
};

use crate::{
    SOCK_ALLOW, SOCK_REJECT,
    lb::{lb4_select, lb6_select},
    maps::{SOCK4_REVNAT, SOCK6_REVNAT, count},
};

/// `ECONNREFUSED`: what a client of a service without backends sees, as
/// with kube-proxy's REJECT rule, instead of the default `EPERM`.
const ECONNREFUSED: i32 = 111;

/// Refuses the connect/send with `ECONNREFUSED`.
#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: a helper taking a plain integer; allowed in cgroup programs.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    SOCK_REJECT
}

#[inline(always)]
fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: a sock_addr context is a valid argument for this helper.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The client as session affinity sees it: the socket's network namespace
/// (a pod's own, or the node's for host processes), as Cilium does.
#[inline(always)]
fn netns_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: a sock_addr context is a valid argument for this helper.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// connect4/sendmsg4: service address → backend.
#[inline(always)]
pub fn sock4_xlate_fwd(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let (address, port, proto) =
        unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).protocol as u8) };
    let selected = match lb4_select(address, port, proto, Some(netns_cookie(ctx))) {
        Ok(Some(selected)) => selected,
        Ok(None) => return SOCK_ALLOW,
        Err(verdict) => {
            count(verdict);
            debug!(
                ctx,
                "sock4: service {:i}:{} refused (verdict {})",
                u32::from_be(address),
                u16::from_be(port),
                verdict as u32
            );
            return refuse();
        }
    };
    let backend = selected.backend;
    let key = Sock4RevnatKey {
        cookie: socket_cookie(ctx),
        address: backend.address,
        port: backend.port,
        pad: 0,
    };
    let value = Sock4RevnatValue {
        address,
        port,
        rev_nat_index: selected.rev_nat_index,
    };
    if SOCK4_REVNAT.insert(key, value, 0).is_err() {
        count(Verdict::RevnatStoreFailed);
    }
    // SAFETY: as above; the verifier allows these writes for these hooks.
    unsafe {
        (*sa).user_ip4 = backend.address;
        (*sa).user_port = u32::from(backend.port);
    }
    count(Verdict::LbTranslated);
    debug!(
        ctx,
        "sock4: {:i}:{} -> {:i}:{}",
        u32::from_be(address),
        u16::from_be(port),
        u32::from_be(backend.address),
        u16::from_be(backend.port)
    );
    SOCK_ALLOW
}

/// recvmsg4/getpeername4: backend → the service address the socket used.
#[inline(always)]
pub fn sock4_xlate_rev(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as above.
    let (address, port) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    let key = Sock4RevnatKey {
        cookie: socket_cookie(ctx),
        address,
        port,
        pad: 0,
    };
    // SAFETY: the value is copied out at once.
    if let Some(orig) = unsafe { SOCK4_REVNAT.get(key) }.copied() {
        // SAFETY: as above.
        unsafe {
            (*sa).user_ip4 = orig.address;
            (*sa).user_port = u32::from(orig.port);
        }
        count(Verdict::RevnatRestored);
    }
    // These hooks cannot refuse; they only rewrite.
    SOCK_ALLOW
}

#[inline(always)]
fn ip6_from_words(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[inline(always)]
fn ip6_word(address: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([
        address[i * 4],
        address[i * 4 + 1],
        address[i * 4 + 2],
        address[i * 4 + 3],
    ])
}

/// Writes an IPv6 address into `user_ip6`, one 32-bit word at a time as the
/// verifier requires.
#[inline(always)]
fn set_user_ip6(ctx: &SockAddrContext, address: &[u8; 16], port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: as above; word-sized writes to user_ip6 are allowed.
    unsafe {
        (*sa).user_ip6[0] = ip6_word(address, 0);
        (*sa).user_ip6[1] = ip6_word(address, 1);
        (*sa).user_ip6[2] = ip6_word(address, 2);
        (*sa).user_ip6[3] = ip6_word(address, 3);
        (*sa).user_port = u32::from(port);
    }
}

#[inline(always)]
fn user_ip6(ctx: &SockAddrContext) -> [u8; 16] {
    let sa = ctx.sock_addr;
    // SAFETY: as above; word-sized reads.
    let words = unsafe {
        [
            (*sa).user_ip6[0],
            (*sa).user_ip6[1],
            (*sa).user_ip6[2],
            (*sa).user_ip6[3],
        ]
    };
    ip6_from_words(words)
}

/// connect6/sendmsg6: service address → backend.
#[inline(always)]
pub fn sock6_xlate_fwd(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let address = user_ip6(ctx);
    // SAFETY: as above.
    let (port, proto) = unsafe { ((*sa).user_port as u16, (*sa).protocol as u8) };
    let selected = match lb6_select(address, port, proto, Some(netns_cookie(ctx))) {
        Ok(Some(selected)) => selected,
        Ok(None) => return SOCK_ALLOW,
        Err(verdict) => {
            count(verdict);
            debug!(
                ctx,
                "sock6: service {:i}:{} refused (verdict {})",
                address,
                u16::from_be(port),
                verdict as u32
            );
            return refuse();
        }
    };
    let backend = selected.backend;
    let key = Sock6RevnatKey {
        cookie: socket_cookie(ctx),
        address: backend.address,
        port: backend.port,
        pad: [0; 6],
    };
    let value = Sock6RevnatValue {
        address,
        port,
        rev_nat_index: selected.rev_nat_index,
    };
    if SOCK6_REVNAT.insert(key, value, 0).is_err() {
        count(Verdict::RevnatStoreFailed);
    }
    set_user_ip6(ctx, &backend.address, backend.port);
    count(Verdict::LbTranslated);
    debug!(
        ctx,
        "sock6: {:i}:{} -> {:i}:{}",
        address,
        u16::from_be(port),
        backend.address,
        u16::from_be(backend.port)
    );
    SOCK_ALLOW
}

/// recvmsg6/getpeername6: backend → the service address the socket used.
#[inline(always)]
pub fn sock6_xlate_rev(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let address = user_ip6(ctx);
    // SAFETY: as above.
    let port = unsafe { (*sa).user_port as u16 };
    let key = Sock6RevnatKey {
        cookie: socket_cookie(ctx),
        address,
        port,
        pad: [0; 6],
    };
    // SAFETY: the value is copied out at once.
    if let Some(orig) = unsafe { SOCK6_REVNAT.get(key) }.copied() {
        set_user_ip6(ctx, &orig.address, orig.port);
        count(Verdict::RevnatRestored);
    }
    SOCK_ALLOW
}
