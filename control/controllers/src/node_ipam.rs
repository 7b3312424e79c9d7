//! Node IPAM: every Node gets one IPv4 and one IPv6 pod CIDR (a /24 and a
//! /64 by default) carved from the cluster CIDRs, written to
//! `spec.podCIDR` and `spec.podCIDRs` (IPv4 first), as Kubernetes'
//! node-ipam controller does with `--allocate-node-cidrs`.
//!
//! The state is the Nodes themselves: on every (re)list the allocator is
//! rebuilt from the CIDRs the Nodes carry, so a deletion the watch missed
//! is still released, and a controller restart never hands out a CIDR
//! twice. A Node created with its own podCIDRs keeps them (those inside the
//! cluster CIDRs are marked used). The lowest free range is handed out, so a
//! deleted Node's range is the next one reused.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::StreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use serde_json::json;
use tracing::{info, warn};

/// The default IPv4 cluster CIDR (DESIGN.md).
pub const DEFAULT_CLUSTER_CIDR_V4: &str = "10.244.0.0/16";
/// The default IPv6 cluster CIDR (DESIGN.md).
pub const DEFAULT_CLUSTER_CIDR_V6: &str = "fd00:10:244::/56";
/// The default size of a node's IPv4 pod CIDR.
pub const DEFAULT_NODE_MASK_V4: u8 = 24;
/// The default size of a node's IPv6 pod CIDR.
pub const DEFAULT_NODE_MASK_V6: u8 = 64;
/// Most ranges one cluster CIDR is cut into (Kubernetes caps the
/// difference between the two masks at 16 bits as well).
const MAX_RANGES_BITS: u8 = 16;

/// What the node IPAM controller hands out.
#[derive(Clone, Debug)]
pub struct Config {
    /// The IPv4 cluster CIDR, or none for an IPv6-only cluster.
    pub cluster_cidr_v4: Option<Ipv4Net>,
    /// The IPv6 cluster CIDR, or none for an IPv4-only cluster.
    pub cluster_cidr_v6: Option<Ipv6Net>,
    /// Prefix length of each node's IPv4 range.
    pub node_mask_v4: u8,
    /// Prefix length of each node's IPv6 range.
    pub node_mask_v6: u8,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cluster_cidr_v4: DEFAULT_CLUSTER_CIDR_V4.parse().ok(),
            cluster_cidr_v6: DEFAULT_CLUSTER_CIDR_V6.parse().ok(),
            node_mask_v4: DEFAULT_NODE_MASK_V4,
            node_mask_v6: DEFAULT_NODE_MASK_V6,
        }
    }
}

/// A configuration the controller cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The node mask does not fit the cluster CIDR.
    #[error(
        "node IPAM: a /{mask} per node does not fit the cluster CIDR {cidr}: the node mask must be longer than the CIDR's prefix and at most {max} bits longer"
    )]
    Mask {
        /// The cluster CIDR.
        cidr: IpNet,
        /// The node mask.
        mask: u8,
        /// The largest difference allowed.
        max: u8,
    },
    /// Neither family is configured.
    #[error("node IPAM: no cluster CIDR configured (give an IPv4 and/or an IPv6 one)")]
    NoCidr,
}

/// One family's ranges: which of the cluster CIDR's slices are taken.
#[derive(Debug)]
struct CidrSet {
    cidr: IpNet,
    mask: u8,
    count: u128,
    used: BTreeSet<u128>,
}

impl CidrSet {
    fn new(cidr: IpNet, mask: u8) -> Result<Self, ConfigError> {
        let bits = mask.saturating_sub(cidr.prefix_len());
        if mask <= cidr.prefix_len() || mask > cidr.max_prefix_len() || bits > MAX_RANGES_BITS {
            return Err(ConfigError::Mask {
                cidr,
                mask,
                max: MAX_RANGES_BITS,
            });
        }
        Ok(Self {
            cidr: cidr.trunc(),
            mask,
            count: 1u128 << bits,
            used: BTreeSet::new(),
        })
    }

    /// The slice number of `net` if it is exactly one of this set's slices.
    fn index_of(&self, net: &IpNet) -> Option<u128> {
        if net.prefix_len() != self.mask || !self.cidr.contains(net) {
            return None;
        }
        let shift = u32::from(net.max_prefix_len() - self.mask);
        let offset = addr_bits(net.network()).checked_sub(addr_bits(self.cidr.network()))?;
        Some(offset >> shift)
    }

    fn slice(&self, index: u128) -> Option<IpNet> {
        let shift = u32::from(self.cidr.max_prefix_len() - self.mask);
        let addr = addr_bits(self.cidr.network()) + (index << shift);
        let ip = match self.cidr {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(addr).ok()?)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(addr)),
        };
        IpNet::new(ip, self.mask).ok()
    }

    /// Takes the lowest free slice.
    fn allocate(&mut self) -> Option<IpNet> {
        let index = (0..self.count).find(|i| !self.used.contains(i))?;
        self.used.insert(index);
        self.slice(index)
    }
}

fn addr_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The allocator: both families and which node holds what.
#[derive(Debug)]
pub struct Allocator {
    sets: Vec<CidrSet>,
    /// Node name → the slices it holds, per set.
    held: BTreeMap<String, Vec<Option<u128>>>,
}

impl Allocator {
    /// An empty allocator over the configured cluster CIDRs.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let mut sets = Vec::new();
        if let Some(v4) = config.cluster_cidr_v4 {
            sets.push(CidrSet::new(IpNet::V4(v4), config.node_mask_v4)?);
        }
        if let Some(v6) = config.cluster_cidr_v6 {
            sets.push(CidrSet::new(IpNet::V6(v6), config.node_mask_v6)?);
        }
        if sets.is_empty() {
            return Err(ConfigError::NoCidr);
        }
        Ok(Self {
            sets,
            held: BTreeMap::new(),
        })
    }

    /// Forgets every node (before a relist rebuilds the state).
    fn clear(&mut self) {
        for set in &mut self.sets {
            set.used.clear();
        }
        self.held.clear();
    }

    /// Records the ranges a node already carries; returns whether it has
    /// one for every configured family.
    pub fn observe(&mut self, node: &str, cidrs: &[IpNet]) -> bool {
        // A range this allocator gave the node stays the node's even when an
        // event from before its write (e.g. the agent's status update racing
        // the assignment) shows none: `assign` writes it again.
        let previous = self.held.remove(node);
        let mut held = vec![None; self.sets.len()];
        let mut complete = true;
        for (i, (slot, set)) in held.iter_mut().zip(self.sets.iter_mut()).enumerate() {
            let same_family: Vec<&IpNet> = cidrs
                .iter()
                .filter(|c| c.max_prefix_len() == set.cidr.max_prefix_len())
                .collect();
            if same_family.is_empty() {
                complete = false;
                *slot = previous.as_ref().and_then(|p| p.get(i).copied().flatten());
                continue;
            }
            if let Some(index) = same_family.iter().find_map(|c| set.index_of(c)) {
                set.used.insert(index);
                *slot = Some(index);
            }
        }
        self.held.insert(node.to_string(), held);
        complete
    }

    /// Gives a node a range in every family it lacks; returns its full
    /// list (IPv4 first), or the family that ran out.
    pub fn assign(&mut self, node: &str, existing: &[IpNet]) -> Result<Vec<IpNet>, Exhausted> {
        let mut out = Vec::new();
        let mut taken = Vec::new();
        for (i, set) in self.sets.iter_mut().enumerate() {
            if let Some(have) = existing
                .iter()
                .find(|c| c.max_prefix_len() == set.cidr.max_prefix_len())
            {
                out.push(*have);
                continue;
            }
            let held = self
                .held
                .get(node)
                .and_then(|h| h.get(i).copied().flatten())
                .and_then(|index| set.slice(index));
            if let Some(net) = held {
                out.push(net);
                continue;
            }
            match set.allocate() {
                Some(net) => {
                    taken.push((i, set.index_of(&net)));
                    out.push(net);
                }
                None => {
                    // Give back what this call took in the other family.
                    for (j, index) in taken {
                        if let Some(index) = index {
                            self.sets[j].used.remove(&index);
                        }
                    }
                    let set = &self.sets[i];
                    return Err(Exhausted {
                        node: node.to_string(),
                        cidr: set.cidr,
                        mask: set.mask,
                        in_use: set.used.len(),
                    });
                }
            }
        }
        let held = self
            .held
            .entry(node.to_string())
            .or_insert_with(|| vec![None; self.sets.len()]);
        for (i, index) in taken {
            if let Some(slot) = held.get_mut(i) {
                *slot = index;
            }
        }
        Ok(out)
    }

    /// Frees a deleted node's ranges.
    pub fn release(&mut self, node: &str) {
        if let Some(held) = self.held.remove(node) {
            for (set, index) in self.sets.iter_mut().zip(held) {
                if let Some(index) = index {
                    set.used.remove(&index);
                }
            }
        }
    }
}

/// A family has no free range left.
#[derive(Debug, thiserror::Error)]
#[error(
    "node {node}: no free /{mask} left in the cluster CIDR {cidr} ({in_use} in use); delete unused Nodes or widen the cluster CIDR"
)]
pub struct Exhausted {
    /// The node that asked.
    pub node: String,
    /// The cluster CIDR.
    pub cidr: IpNet,
    /// The node mask.
    pub mask: u8,
    /// Ranges in use.
    pub in_use: usize,
}

/// The pod CIDRs a Node carries (unparseable ones are ignored with a warning).
fn node_cidrs(node: &Node) -> Vec<IpNet> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let mut raw: Vec<&String> = spec.pod_cidrs.iter().flatten().collect();
    if raw.is_empty() {
        raw.extend(spec.pod_cidr.as_ref());
    }
    raw.into_iter()
        .filter_map(|s| match s.parse::<IpNet>() {
            Ok(net) => Some(net),
            Err(e) => {
                warn!(node = %node.name_any(), cidr = %s, "node IPAM: ignoring an unparseable pod CIDR: {e}");
                None
            }
        })
        .collect()
}

/// Runs the controller until the watch stream ends (it retries with
/// back-off on errors, so in practice until the task is dropped).
pub async fn run(client: Client, config: Config) -> anyhow::Result<()> {
    let mut alloc = Allocator::new(&config)?;
    let nodes: Api<Node> = Api::all(client);
    let mut stream = watcher::watcher(nodes.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: Vec<Node> = Vec::new();
    // Nodes already told there is no range for them: said once, not on
    // each of their updates.
    let mut exhausted: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                warn!("node IPAM: watching Nodes: {e}");
                continue;
            }
        };
        match event {
            Event::Init => listing.clear(),
            Event::InitApply(node) => listing.push(node),
            Event::InitDone => {
                // Everything listed holds its ranges before anyone gets one.
                alloc.clear();
                let mut missing = Vec::new();
                for node in listing.drain(..) {
                    if !alloc.observe(&node.name_any(), &node_cidrs(&node)) {
                        missing.push(node);
                    }
                }
                for node in missing {
                    assign(&nodes, &mut alloc, &mut exhausted, &node).await;
                }
            }
            Event::Apply(node) => {
                let name = node.name_any();
                if node.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                if !alloc.observe(&name, &node_cidrs(&node)) {
                    assign(&nodes, &mut alloc, &mut exhausted, &node).await;
                }
            }
            Event::Delete(node) => {
                let name = node.name_any();
                alloc.release(&name);
                exhausted.remove(&name);
                info!(node = %name, "node IPAM: released the pod CIDRs of a deleted node");
            }
        }
    }
    Ok(())
}

async fn assign(
    nodes: &Api<Node>,
    alloc: &mut Allocator,
    exhausted: &mut HashSet<String>,
    node: &Node,
) {
    let name = node.name_any();
    let existing = node_cidrs(node);
    let cidrs = match alloc.assign(&name, &existing) {
        Ok(cidrs) => cidrs,
        Err(e) => {
            if exhausted.insert(name) {
                warn!("{e}");
            }
            return;
        }
    };
    exhausted.remove(&name);
    let strings: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    let patch = json!({"spec": {"podCIDR": strings.first(), "podCIDRs": strings}});
    match nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => info!(node = %name, cidrs = ?strings, "node IPAM: assigned pod CIDRs"),
        Err(e) => {
            // The node may have gone; the next event for it retries.
            warn!(node = %name, "node IPAM: writing podCIDRs {strings:?}: {e}");
            alloc.release(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn nodes_get_distinct_ranges_and_a_freed_one_is_reused() -> anyhow::Result<()> {
        let mut alloc = Allocator::new(&Config::default())?;
        let a = alloc.assign("a", &[])?;
        let b = alloc.assign("b", &[])?;
        assert_eq!(a, vec![net("10.244.0.0/24"), net("fd00:10:244::/64")]);
        assert_eq!(b, vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")]);
        alloc.release("a");
        let c = alloc.assign("c", &[])?;
        assert_eq!(c, a, "the lowest free range is reused");
        Ok(())
    }

    #[test]
    fn a_stale_event_without_ranges_keeps_the_nodes_assignment() -> anyhow::Result<()> {
        let mut alloc = Allocator::new(&Config::default())?;
        let a = alloc.assign("a", &[])?;
        // The agent's status update, written before the assignment landed,
        // arrives without podCIDRs: the node must keep what it was given.
        assert!(!alloc.observe("a", &[]));
        assert_eq!(alloc.assign("a", &[])?, a);
        let b = alloc.assign("b", &[])?;
        assert_ne!(a, b, "a's ranges were handed out again");
        Ok(())
    }

    #[test]
    fn observed_ranges_are_never_handed_out() -> anyhow::Result<()> {
        let mut alloc = Allocator::new(&Config::default())?;
        assert!(alloc.observe("x", &[net("10.244.0.0/24"), net("fd00:10:244::/64")]));
        assert!(!alloc.observe("y", &[net("10.244.2.0/24")]));
        let y = alloc.assign("y", &[net("10.244.2.0/24")])?;
        assert_eq!(y, vec![net("10.244.2.0/24"), net("fd00:10:244:1::/64")]);
        let z = alloc.assign("z", &[])?;
        assert_eq!(z, vec![net("10.244.1.0/24"), net("fd00:10:244:2::/64")]);
        Ok(())
    }

    #[test]
    fn exhaustion_names_the_node_and_cidr_and_takes_nothing() -> anyhow::Result<()> {
        let config = Config {
            cluster_cidr_v4: Some("10.0.0.0/23".parse()?),
            cluster_cidr_v6: Some("fd00::/63".parse()?),
            node_mask_v4: 24,
            node_mask_v6: 64,
        };
        let mut alloc = Allocator::new(&config)?;
        alloc.assign("a", &[])?;
        // Two /24s in a /23: a third node finds no IPv4 range.
        alloc.assign("b", &[])?;
        let err = alloc
            .assign("c", &[])
            .err()
            .ok_or_else(|| anyhow::anyhow!("a third node fits in a /23"))?;
        assert_eq!(
            err.to_string(),
            "node c: no free /24 left in the cluster CIDR 10.0.0.0/23 (2 in use); delete unused Nodes or widen the cluster CIDR"
        );
        alloc.release("b");
        assert_eq!(
            alloc.assign("c", &[])?,
            vec![net("10.0.1.0/24"), net("fd00:0:0:1::/64")]
        );
        Ok(())
    }

    #[test]
    fn a_mask_that_does_not_fit_is_refused() {
        let config = Config {
            cluster_cidr_v4: "10.244.0.0/16".parse().ok(),
            cluster_cidr_v6: None,
            node_mask_v4: 8,
            node_mask_v6: 64,
        };
        let err = Allocator::new(&config).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "node IPAM: a /8 per node does not fit the cluster CIDR 10.244.0.0/16: the node mask must be longer than the CIDR's prefix and at most 16 bits longer"
            )
        );
    }
}
