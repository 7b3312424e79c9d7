//! shoal's eBPF programs: one thin entry per attach point, each calling a
//! `try_*`-style body that returns an explicit verdict.
//!
//! Attach points (all on the node's cgroup v2 directory):
//! `sock4_connect`/`sock6_connect` and `sock4_sendmsg`/`sock6_sendmsg`
//! rewrite a service address to a backend; `sock4_recvmsg`/`sock6_recvmsg`
//! and `sock4_getpeername`/`sock6_getpeername` show the service address
//! again to the application. On the node's external device (tc):
//! `nodeport_ingress`/`nodeport_egress` translate traffic from outside the
//! node to external frontends, with conntrack and reverse NAT.

#![no_std]
#![no_main]

mod affinity;
mod l2;
mod lb;
mod maps;
mod nodeport;
mod pod;
mod sock;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};

/// Verdicts of cgroup sock_addr programs.
const SOCK_ALLOW: i32 = 1;
const SOCK_REJECT: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn sock4_connect(ctx: SockAddrContext) -> i32 {
    sock::sock4_xlate_fwd(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock4_sendmsg(ctx: SockAddrContext) -> i32 {
    sock::sock4_xlate_fwd(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock4_recvmsg(ctx: SockAddrContext) -> i32 {
    sock::sock4_xlate_rev(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock4_getpeername(ctx: SockAddrContext) -> i32 {
    sock::sock4_xlate_rev(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn sock6_connect(ctx: SockAddrContext) -> i32 {
    sock::sock6_xlate_fwd(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock6_sendmsg(ctx: SockAddrContext) -> i32 {
    sock::sock6_xlate_fwd(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock6_recvmsg(ctx: SockAddrContext) -> i32 {
    sock::sock6_xlate_rev(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock6_getpeername(ctx: SockAddrContext) -> i32 {
    sock::sock6_xlate_rev(&ctx)
}

/// The node's external device, ingress: NodePort / LoadBalancer IP /
/// externalIP traffic from outside the node (see `nodeport`).
#[classifier]
pub fn nodeport_ingress(ctx: TcContext) -> i32 {
    nodeport::nodeport_ingress(&ctx)
}

/// The node's external device, egress: replies of local backends.
#[classifier]
pub fn nodeport_egress(ctx: TcContext) -> i32 {
    nodeport::nodeport_egress(&ctx)
}

/// A pod's host-side veth, tc ingress: packets leaving the pod (Cilium's
/// `from_container`), checked against the pod's egress policy and counted
/// into their flow (see `pod`).
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    pod::observe(&ctx, shoal_ebpf_common::flow::FLOW_DIR_FROM_POD)
}

/// A pod's host-side veth, tc egress: packets entering the pod
/// (`to_container`), checked against its ingress policy.
#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    pod::observe(&ctx, shoal_ebpf_common::flow::FLOW_DIR_TO_POD)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
