//! Keeps the policy maps equal to a [`Desired`] state, writing only what
//! changed. Additions and changes go first (policy entries, then ipcache,
//! then endpoint flags, so an endpoint starts enforcing only once its rules
//! are in), removals after, so no lookup ever falls between an old and a
//! new entry set and an endpoint is never briefly left without a rule both
//! its old and new policy allow.

use std::collections::{BTreeMap, BTreeSet};

use shoal_ebpf_common::policy::{
    EndpointInfo, Ipcache4Key, Ipcache6Key, IpcacheValue, POLICY_FLAG_ALLOW, PolicyKey, PolicyValue,
};

use super::compile::Desired;

/// A failed map operation, naming the map and the entry.
#[derive(Debug, thiserror::Error)]
#[error("{op} {map} entry {entry}: {reason}")]
pub struct PolicyMapError {
    /// `writing` or `deleting`.
    pub op: &'static str,
    /// The map's pinned name.
    pub map: &'static str,
    /// The entry, as debug text.
    pub entry: String,
    /// What the kernel said.
    pub reason: String,
}

/// The four policy maps as the writer drives them.
pub trait PolicyMaps {
    /// Inserts or replaces a `POLICY_V1` entry.
    fn put_policy(&mut self, prefix: u32, key: PolicyKey, value: PolicyValue)
    -> Result<(), String>;
    /// Deletes a `POLICY_V1` entry (absent is fine).
    fn delete_policy(&mut self, prefix: u32, key: PolicyKey) -> Result<(), String>;
    /// Inserts or replaces an `ENDPOINTS_V1` entry.
    fn put_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), String>;
    /// Deletes an `ENDPOINTS_V1` entry.
    fn delete_endpoint(&mut self, ifindex: u32) -> Result<(), String>;
    /// Inserts or replaces an `IPCACHE4_V1` entry.
    fn put_ipcache4(
        &mut self,
        prefix: u32,
        key: Ipcache4Key,
        value: IpcacheValue,
    ) -> Result<(), String>;
    /// Deletes an `IPCACHE4_V1` entry.
    fn delete_ipcache4(&mut self, prefix: u32, key: Ipcache4Key) -> Result<(), String>;
    /// Inserts or replaces an `IPCACHE6_V1` entry.
    fn put_ipcache6(
        &mut self,
        prefix: u32,
        key: Ipcache6Key,
        value: IpcacheValue,
    ) -> Result<(), String>;
    /// Deletes an `IPCACHE6_V1` entry.
    fn delete_ipcache6(&mut self, prefix: u32, key: Ipcache6Key) -> Result<(), String>;
    /// What the maps hold now (to take pinned maps over after a restart).
    fn read(&self) -> Result<Desired, String>;
}

/// How many entries one [`PolicyWriter::apply`] wrote and deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Entries inserted or replaced.
    pub written: usize,
    /// Entries deleted.
    pub deleted: usize,
}

/// Writes policy maps incrementally.
pub struct PolicyWriter<M> {
    maps: M,
    held: Desired,
}

const ALLOW: PolicyValue = PolicyValue {
    flags: POLICY_FLAG_ALLOW,
    pad: 0,
};

fn err(
    op: &'static str,
    map: &'static str,
    entry: impl std::fmt::Debug,
) -> impl FnOnce(String) -> PolicyMapError {
    move |reason| PolicyMapError {
        op,
        map,
        entry: format!("{entry:?}"),
        reason,
    }
}

/// Keys of `want` whose value differs from (or is missing in) `held`.
fn changed<K: Ord + Clone, V: PartialEq + Clone>(
    want: &BTreeMap<K, V>,
    held: &BTreeMap<K, V>,
) -> Vec<(K, V)> {
    want.iter()
        .filter(|(k, v)| held.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Keys of `held` that `want` no longer has.
fn stale<K: Ord + Clone, V>(want: &BTreeMap<K, V>, held: &BTreeMap<K, V>) -> Vec<K> {
    held.keys()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect()
}

impl<M: PolicyMaps> PolicyWriter<M> {
    /// A writer over `maps`, taking over whatever they already hold.
    pub fn restore(maps: M) -> Result<Self, PolicyMapError> {
        let held = maps.read().map_err(err("reading", "policy maps", ()))?;
        Ok(Self { maps, held })
    }

    /// What the maps hold, as far as this writer knows.
    pub fn held(&self) -> &Desired {
        &self.held
    }

    /// The maps, for inspection.
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// Makes the maps hold `want`. On an error what was written so far is
    /// remembered, so the next call retries only the rest.
    pub fn apply(&mut self, want: &Desired) -> Result<Changes, PolicyMapError> {
        use shoal_ebpf_common::policy::{ENDPOINTS, IPCACHE4, IPCACHE6, POLICY};
        let mut changes = Changes::default();
        for entry in want
            .policy
            .difference(&self.held.policy)
            .copied()
            .collect::<Vec<_>>()
        {
            let (prefix, key) = entry;
            self.maps
                .put_policy(prefix, key, ALLOW)
                .map_err(err("writing", POLICY, entry))?;
            self.held.policy.insert(entry);
            changes.written += 1;
        }
        for ((prefix, key), value) in changed(&want.ipcache4, &self.held.ipcache4) {
            self.maps.put_ipcache4(prefix, key, value).map_err(err(
                "writing",
                IPCACHE4,
                (prefix, key),
            ))?;
            self.held.ipcache4.insert((prefix, key), value);
            changes.written += 1;
        }
        for ((prefix, key), value) in changed(&want.ipcache6, &self.held.ipcache6) {
            self.maps.put_ipcache6(prefix, key, value).map_err(err(
                "writing",
                IPCACHE6,
                (prefix, key),
            ))?;
            self.held.ipcache6.insert((prefix, key), value);
            changes.written += 1;
        }
        for (ifindex, info) in changed(&want.endpoints, &self.held.endpoints) {
            self.maps
                .put_endpoint(ifindex, info)
                .map_err(err("writing", ENDPOINTS, ifindex))?;
            self.held.endpoints.insert(ifindex, info);
            changes.written += 1;
        }
        for (prefix, key) in stale(&want.ipcache4, &self.held.ipcache4) {
            self.maps.delete_ipcache4(prefix, key).map_err(err(
                "deleting",
                IPCACHE4,
                (prefix, key),
            ))?;
            self.held.ipcache4.remove(&(prefix, key));
            changes.deleted += 1;
        }
        for (prefix, key) in stale(&want.ipcache6, &self.held.ipcache6) {
            self.maps.delete_ipcache6(prefix, key).map_err(err(
                "deleting",
                IPCACHE6,
                (prefix, key),
            ))?;
            self.held.ipcache6.remove(&(prefix, key));
            changes.deleted += 1;
        }
        let gone: BTreeSet<(u32, PolicyKey)> =
            self.held.policy.difference(&want.policy).copied().collect();
        for entry in gone {
            let (prefix, key) = entry;
            self.maps
                .delete_policy(prefix, key)
                .map_err(err("deleting", POLICY, entry))?;
            self.held.policy.remove(&entry);
            changes.deleted += 1;
        }
        for ifindex in stale(&want.endpoints, &self.held.endpoints) {
            self.maps
                .delete_endpoint(ifindex)
                .map_err(err("deleting", ENDPOINTS, ifindex))?;
            self.held.endpoints.remove(&ifindex);
            changes.deleted += 1;
        }
        Ok(changes)
    }
}

/// In-memory maps for unit tests: every operation is logged in order.
#[derive(Clone, Debug, Default)]
pub struct MemoryMaps {
    /// What the maps hold.
    pub state: Desired,
    /// Every operation, as `put POLICY ...` / `delete ENDPOINTS ...`.
    pub log: Vec<String>,
}

impl PolicyMaps for MemoryMaps {
    fn put_policy(&mut self, prefix: u32, key: PolicyKey, _: PolicyValue) -> Result<(), String> {
        self.log.push(format!("put POLICY {prefix} {key:?}"));
        self.state.policy.insert((prefix, key));
        Ok(())
    }

    fn delete_policy(&mut self, prefix: u32, key: PolicyKey) -> Result<(), String> {
        self.log.push(format!("delete POLICY {prefix} {key:?}"));
        self.state.policy.remove(&(prefix, key));
        Ok(())
    }

    fn put_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), String> {
        self.log.push(format!("put ENDPOINTS {ifindex} {info:?}"));
        self.state.endpoints.insert(ifindex, info);
        Ok(())
    }

    fn delete_endpoint(&mut self, ifindex: u32) -> Result<(), String> {
        self.log.push(format!("delete ENDPOINTS {ifindex}"));
        self.state.endpoints.remove(&ifindex);
        Ok(())
    }

    fn put_ipcache4(
        &mut self,
        prefix: u32,
        key: Ipcache4Key,
        value: IpcacheValue,
    ) -> Result<(), String> {
        self.log.push(format!("put IPCACHE4 {prefix} {key:?}"));
        self.state.ipcache4.insert((prefix, key), value);
        Ok(())
    }

    fn delete_ipcache4(&mut self, prefix: u32, key: Ipcache4Key) -> Result<(), String> {
        self.log.push(format!("delete IPCACHE4 {prefix} {key:?}"));
        self.state.ipcache4.remove(&(prefix, key));
        Ok(())
    }

    fn put_ipcache6(
        &mut self,
        prefix: u32,
        key: Ipcache6Key,
        value: IpcacheValue,
    ) -> Result<(), String> {
        self.log.push(format!("put IPCACHE6 {prefix} {key:?}"));
        self.state.ipcache6.insert((prefix, key), value);
        Ok(())
    }

    fn delete_ipcache6(&mut self, prefix: u32, key: Ipcache6Key) -> Result<(), String> {
        self.log.push(format!("delete IPCACHE6 {prefix} {key:?}"));
        self.state.ipcache6.remove(&(prefix, key));
        Ok(())
    }

    fn read(&self) -> Result<Desired, String> {
        Ok(self.state.clone())
    }
}
