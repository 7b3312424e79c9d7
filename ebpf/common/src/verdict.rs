//! Verdict codes: every outcome of a program, good or bad, has a reason and
//! a per-CPU counter in `SHOAL_VERDICTS`, indexed by the code.

/// Pinned name of the per-CPU verdict counter array.
pub const VERDICTS: &str = "SHOAL_VERDICTS";

/// Why a program returned what it returned. The discriminant is the index
/// into `SHOAL_VERDICTS`. Append only; never renumber.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A service address was translated to a backend.
    LbTranslated = 0,
    /// The service has no backend: the connect or send is refused.
    DropNoBackend = 1,
    /// The frontend named a backend slot that is missing.
    DropSlotMissing = 2,
    /// A backend slot named a backend id that is missing.
    DropBackendMissing = 3,
    /// The reverse-NAT entry could not be stored; the socket still goes to
    /// the backend but getpeername/recvmsg show the backend address.
    RevnatStoreFailed = 4,
    /// recvmsg/getpeername restored the service address.
    RevnatRestored = 5,
    /// A packet from outside opened a flow to an external frontend (NodePort, LoadBalancer IP, externalIP) and was translated to a backend.
    NodeportNewFlow = 6,
    /// A packet of a known external flow was translated as its first one was.
    NodeportForwarded = 7,
    /// A backend's reply to an external flow got the frontend back as its source (and the client as its destination after SNAT).
    NodeportReplyRevnat = 8,
    /// A packet from outside to a frontend that is not external-scope (a ClusterIP) was passed untouched.
    NodeportPassInternal = 9,
    /// A non-first IP fragment (no ports to look up) was passed untouched.
    NodeportPassFragment = 10,
    /// A packet whose Ethernet, IP or TCP/UDP header is cut short was passed untouched.
    NodeportPassTruncated = 11,
    /// An ICMP/ICMPv6 error about no translated flow was passed untouched.
    NodeportPassIcmpError = 12,
    /// externalTrafficPolicy Local and no backend on this node: dropped.
    NodeportDropNoLocalBackend = 13,
    /// No free SNAT port (or no node address of the family) for a flow to a backend on another node: dropped.
    NodeportDropNoSnatPort = 14,
    /// A conntrack entry could not be stored: dropped.
    NodeportDropCtInsert = 15,
    /// No route to a translated packet's new destination: dropped.
    NodeportDropFib = 16,
    /// Rewriting a packet's addresses, ports or checksums failed: dropped.
    NodeportDropRewrite = 17,
    /// An ARP request for a LoadBalancer IP this node announces was answered.
    L2ArpReplied = 18,
    /// An ICMPv6 neighbour solicitation for a LoadBalancer IP this node announces was answered.
    L2NdReplied = 19,
    /// Rewriting an ARP request or neighbour solicitation into its answer failed: dropped.
    L2DropRewrite = 20,
    /// A pod interface refused a new flow into its pod: no NetworkPolicy
    /// rule of the pod admits the source's identity, protocol and port.
    PolicyDropIngress = 21,
    /// A pod interface refused a new flow out of its pod: no NetworkPolicy
    /// rule of the pod admits the destination's identity, protocol and port.
    PolicyDropEgress = 22,
    /// An ICMP/ICMPv6 error about a translated NodePort flow got its inner
    /// header (and its outer addresses) translated back, so the client sees
    /// it for the address it used.
    NodeportIcmpErrorRevnat = 23,
}

impl Verdict {
    /// How many verdict codes exist (the counter array's size).
    pub const COUNT: u32 = 24;

    /// Every verdict, in index order.
    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Verdict::LbTranslated,
        Verdict::DropNoBackend,
        Verdict::DropSlotMissing,
        Verdict::DropBackendMissing,
        Verdict::RevnatStoreFailed,
        Verdict::RevnatRestored,
        Verdict::NodeportNewFlow,
        Verdict::NodeportForwarded,
        Verdict::NodeportReplyRevnat,
        Verdict::NodeportPassInternal,
        Verdict::NodeportPassFragment,
        Verdict::NodeportPassTruncated,
        Verdict::NodeportPassIcmpError,
        Verdict::NodeportDropNoLocalBackend,
        Verdict::NodeportDropNoSnatPort,
        Verdict::NodeportDropCtInsert,
        Verdict::NodeportDropFib,
        Verdict::NodeportDropRewrite,
        Verdict::L2ArpReplied,
        Verdict::L2NdReplied,
        Verdict::L2DropRewrite,
        Verdict::PolicyDropIngress,
        Verdict::PolicyDropEgress,
        Verdict::NodeportIcmpErrorRevnat,
    ];

    /// The metric label for this verdict.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::LbTranslated => "lb_translated",
            Verdict::DropNoBackend => "drop_no_backend",
            Verdict::DropSlotMissing => "drop_slot_missing",
            Verdict::DropBackendMissing => "drop_backend_missing",
            Verdict::RevnatStoreFailed => "revnat_store_failed",
            Verdict::RevnatRestored => "revnat_restored",
            Verdict::NodeportNewFlow => "nodeport_new_flow",
            Verdict::NodeportForwarded => "nodeport_forwarded",
            Verdict::NodeportReplyRevnat => "nodeport_reply_revnat",
            Verdict::NodeportPassInternal => "nodeport_pass_internal",
            Verdict::NodeportPassFragment => "nodeport_pass_fragment",
            Verdict::NodeportPassTruncated => "nodeport_pass_truncated",
            Verdict::NodeportPassIcmpError => "nodeport_pass_icmp_error",
            Verdict::NodeportDropNoLocalBackend => "nodeport_drop_no_local_backend",
            Verdict::NodeportDropNoSnatPort => "nodeport_drop_no_snat_port",
            Verdict::NodeportDropCtInsert => "nodeport_drop_ct_insert",
            Verdict::NodeportDropFib => "nodeport_drop_fib",
            Verdict::NodeportDropRewrite => "nodeport_drop_rewrite",
            Verdict::L2ArpReplied => "l2_arp_replied",
            Verdict::L2NdReplied => "l2_nd_replied",
            Verdict::L2DropRewrite => "l2_drop_rewrite",
            Verdict::PolicyDropIngress => "policy_drop_ingress",
            Verdict::PolicyDropEgress => "policy_drop_egress",
            Verdict::NodeportIcmpErrorRevnat => "nodeport_icmp_error_revnat",
        }
    }
}

const _: () = {
    let mut i = 0;
    while i < Verdict::ALL.len() {
        assert!(Verdict::ALL[i] as u32 == i as u32);
        i += 1;
    }
};
