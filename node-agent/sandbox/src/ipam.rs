//! Dual-stack address allocation from the node's pod CIDRs.
//!
//! The allocator is pure: [`Allocator`] computes, the caller persists
//! [`State`] with [`save`] before it uses an address, so an agent that
//! restarts never hands out an address twice. Addresses are handed out
//! round-robin from the last one given, like CNI's host-local plugin, so a
//! freed address is not reused at once while a stale ARP/NDP or conntrack
//! entry may still point at it.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Family};

/// The version written in the state file.
const STATE_VERSION: u32 = 1;

/// The addresses one pod holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Allocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

/// What is persisted: who holds what, and where round-robin resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub pods: BTreeMap<String, Allocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_v4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_v6: Option<Ipv6Addr>,
}

/// The allocatable range of one pod CIDR, as integers.
#[derive(Debug, Clone, Copy)]
struct Pool {
    family: Family,
    cidr: IpNet,
    first: u128,
    last: u128,
}

impl Pool {
    /// Skips the network address, the first address (the node's) and the
    /// broadcast address.
    fn v4(cidr: Ipv4Net) -> Result<Pool, Error> {
        let net = cidr.trunc();
        let base = u128::from(u32::from(net.network()));
        let broadcast = u128::from(u32::from(net.broadcast()));
        Pool::checked(
            Family::V4,
            IpNet::V4(cidr),
            base + 2,
            broadcast.saturating_sub(1),
        )
    }

    /// Skips the subnet-router anycast address (the network address) and the
    /// first address (the node's); IPv6 has no broadcast address.
    fn v6(cidr: Ipv6Net) -> Result<Pool, Error> {
        let net = cidr.trunc();
        let base = u128::from(net.network());
        let last = u128::from(net.broadcast());
        Pool::checked(Family::V6, IpNet::V6(cidr), base.saturating_add(2), last)
    }

    fn checked(family: Family, cidr: IpNet, first: u128, last: u128) -> Result<Pool, Error> {
        if first > last {
            return Err(Error::CidrTooSmall { family, cidr });
        }
        Ok(Pool {
            family,
            cidr,
            first,
            last,
        })
    }

    fn contains(&self, value: u128) -> bool {
        (self.first..=self.last).contains(&value)
    }

    fn size(&self) -> u128 {
        self.last - self.first + 1
    }

    /// The first free value after `last` (round-robin), or `None` when every
    /// value is in `in_use`.
    fn next_free(&self, last: Option<u128>, in_use: &HashSet<u128>) -> Option<u128> {
        let start = match last {
            Some(last) if self.contains(last) && last < self.last => last + 1,
            _ => self.first,
        };
        // Among in_use.len() + 1 distinct candidates at least one is free,
        // so a /64 is never walked end to end.
        let steps = self.size().min(in_use.len() as u128 + 1);
        let mut candidate = start;
        for _ in 0..steps {
            if !in_use.contains(&candidate) {
                return Some(candidate);
            }
            candidate = if candidate == self.last {
                self.first
            } else {
                candidate + 1
            };
        }
        None
    }
}

/// Hands out and takes back pod addresses; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Allocator {
    v4: Option<Pool>,
    v6: Option<Pool>,
    state: State,
}

impl Allocator {
    /// An allocator over the given CIDRs that starts from `state`. Pods in
    /// `state` keep their addresses even if they lie outside the CIDRs (the
    /// node's podCIDR changed under running pods).
    pub fn new(v4: Option<Ipv4Net>, v6: Option<Ipv6Net>, state: State) -> Result<Allocator, Error> {
        Ok(Allocator {
            v4: v4.map(Pool::v4).transpose()?,
            v6: v6.map(Pool::v6).transpose()?,
            state,
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn get(&self, pod: &str) -> Option<Allocation> {
        self.state.pods.get(pod).copied()
    }

    pub fn pods(&self) -> impl Iterator<Item = (&String, &Allocation)> {
        self.state.pods.iter()
    }

    /// The pod's addresses: the ones it holds, plus one from each configured
    /// family it holds none of. Returns whether the state changed (and must be
    /// persisted before the addresses are used). On error nothing changes.
    pub fn allocate(&mut self, pod: &str) -> Result<(Allocation, bool), Error> {
        let held = self.get(pod);
        let mut allocation = held.unwrap_or_default();
        let mut last_v4 = self.state.last_v4;
        let mut last_v6 = self.state.last_v6;
        if let (Some(pool), None) = (self.v4, allocation.ipv4) {
            let in_use: HashSet<u128> = self
                .state
                .pods
                .values()
                .filter_map(|a| a.ipv4)
                .map(|ip| u128::from(u32::from(ip)))
                .collect();
            let last = last_v4.map(|ip| u128::from(u32::from(ip)));
            // A v4 pool only holds values that fit in 32 bits.
            let ip = Ipv4Addr::from(self.take(pod, &pool, last, &in_use)? as u32);
            allocation.ipv4 = Some(ip);
            last_v4 = Some(ip);
        }
        if let (Some(pool), None) = (self.v6, allocation.ipv6) {
            let in_use: HashSet<u128> = self
                .state
                .pods
                .values()
                .filter_map(|a| a.ipv6)
                .map(u128::from)
                .collect();
            let last = last_v6.map(u128::from);
            let ip = Ipv6Addr::from(self.take(pod, &pool, last, &in_use)?);
            allocation.ipv6 = Some(ip);
            last_v6 = Some(ip);
        }
        let changed = held != Some(allocation);
        if changed {
            self.state.version = STATE_VERSION;
            self.state.pods.insert(pod.to_owned(), allocation);
            self.state.last_v4 = last_v4;
            self.state.last_v6 = last_v6;
        }
        Ok((allocation, changed))
    }

    fn take(
        &self,
        pod: &str,
        pool: &Pool,
        last: Option<u128>,
        in_use: &HashSet<u128>,
    ) -> Result<u128, Error> {
        pool.next_free(last, in_use)
            .ok_or_else(|| Error::Exhausted {
                pod: pod.to_owned(),
                family: pool.family,
                cidr: pool.cidr,
                in_use: in_use.iter().filter(|v| pool.contains(**v)).count() as u128,
            })
    }

    /// Gives the pod's addresses back; returns them, or `None` if it held none.
    pub fn release(&mut self, pod: &str) -> Option<Allocation> {
        let released = self.state.pods.remove(pod);
        if released.is_some() {
            self.state.version = STATE_VERSION;
        }
        released
    }
}

/// Reads the state file; a missing file is an empty state.
pub(crate) fn load(path: &Path) -> Result<State, Error> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(Error::io("reading the IPAM state", path, e)),
    };
    let state: State = serde_json::from_slice(&bytes).map_err(|e| Error::IpamState {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if state.version > STATE_VERSION {
        return Err(Error::IpamState {
            path: path.to_owned(),
            reason: format!(
                "it has version {}, this agent understands up to {STATE_VERSION}",
                state.version
            ),
        });
    }
    Ok(state)
}

/// Writes the state file atomically and durably: a temporary file, fsync,
/// rename over the old one, fsync of the directory.
pub(crate) fn save(path: &Path, state: &State) -> Result<(), Error> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::IpamState {
        path: path.to_owned(),
        reason: format!("cannot encode it: {e}"),
    })?;
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()
    };
    write().map_err(|e| Error::io("writing the IPAM state", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("replacing the IPAM state", path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("syncing the IPAM directory", dir, e))?;
    }
    Ok(())
}

/// The family of an address, for messages.
pub(crate) fn family_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

#[cfg(test)]
mod tests;
