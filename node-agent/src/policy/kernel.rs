//! The policy maps in the kernel: created from userspace and pinned under
//! the node's bpffs directory by name (`POLICY_V1`, `ENDPOINTS_V1`,
//! `IPCACHE4_V1`, `IPCACHE6_V1`), so the pod-interface programs, which
//! declare them pinned by name, find and share them when they load, and
//! both outlive the agent. A pin whose key or value size does not match
//! this build is replaced by an empty map.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
};

use aya::maps::{
    HashMap as BpfHashMap, Map, MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use shoal_ebpf_common::policy::{
    ENDPOINTS, ENDPOINTS_ENTRIES, EndpointInfo, IPCACHE_ENTRIES, IPCACHE4, IPCACHE6, Ipcache4Key,
    Ipcache6Key, IpcacheValue, LPM_MAP_FLAGS, POLICY, POLICY_ENTRIES, PolicyKey, PolicyValue,
};

use super::compile::Desired;
use super::writer::PolicyMaps;

/// Errors of opening the pinned policy maps.
#[derive(Debug, thiserror::Error)]
pub enum KernelMapError {
    /// The map could not be created, pinned or opened.
    #[error(
        "policy map {path}: {reason} (is bpffs mounted at /sys/fs/bpf and is this root? `cargo xtask setup` mounts it)"
    )]
    Open {
        /// The pin.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// The four pinned policy maps of one node.
pub struct KernelPolicyMaps {
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    endpoints: BpfHashMap<MapData, u32, EndpointInfo>,
    ipcache4: LpmTrie<MapData, Ipcache4Key, IpcacheValue>,
    ipcache6: LpmTrie<MapData, Ipcache6Key, IpcacheValue>,
}

fn open_err(path: &Path) -> impl Fn(String) -> KernelMapError + '_ {
    move |reason| KernelMapError::Open {
        path: path.to_path_buf(),
        reason,
    }
}

/// Opens the pin at `path` as a `T`, or creates and pins a new map with
/// `create` when it is absent or of another shape.
fn open_or_create<T>(
    path: &Path,
    convert: impl Fn(Map) -> Result<T, MapError>,
    create: impl Fn() -> Result<T, MapError>,
    pin: impl Fn(T, &Path) -> Result<(), String>,
) -> Result<T, KernelMapError> {
    let fail = open_err(path);
    if path.exists() {
        let opened = MapData::from_pin(path)
            .and_then(Map::from_map_data)
            .and_then(&convert);
        match opened {
            Ok(map) => return Ok(map),
            Err(e) => {
                tracing::warn!(pin = %path.display(), error = %e, "replacing a policy map of another shape");
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != ErrorKind::NotFound => {
                        return Err(fail(e.to_string()));
                    }
                    _ => {}
                }
            }
        }
    }
    let map = create().map_err(|e| fail(e.to_string()))?;
    pin(map, path).map_err(&fail)?;
    MapData::from_pin(path)
        .and_then(Map::from_map_data)
        .and_then(&convert)
        .map_err(|e| fail(e.to_string()))
}

impl KernelPolicyMaps {
    /// Opens the maps pinned in `pin_dir`, creating what is missing.
    pub fn open_or_create(pin_dir: &Path) -> Result<Self, KernelMapError> {
        std::fs::create_dir_all(pin_dir).map_err(|e| KernelMapError::Open {
            path: pin_dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let policy = open_or_create(
            &pin_dir.join(POLICY),
            LpmTrie::try_from,
            || LpmTrie::<MapData, PolicyKey, PolicyValue>::create(POLICY_ENTRIES, LPM_MAP_FLAGS),
            |m, p| m.pin(p).map_err(|e| e.to_string()),
        )?;
        let endpoints = open_or_create(
            &pin_dir.join(ENDPOINTS),
            BpfHashMap::try_from,
            || BpfHashMap::<MapData, u32, EndpointInfo>::create(ENDPOINTS_ENTRIES, 0),
            |m, p| m.pin(p).map_err(|e| e.to_string()),
        )?;
        let ipcache4 = open_or_create(
            &pin_dir.join(IPCACHE4),
            LpmTrie::try_from,
            || {
                LpmTrie::<MapData, Ipcache4Key, IpcacheValue>::create(
                    IPCACHE_ENTRIES,
                    LPM_MAP_FLAGS,
                )
            },
            |m, p| m.pin(p).map_err(|e| e.to_string()),
        )?;
        let ipcache6 = open_or_create(
            &pin_dir.join(IPCACHE6),
            LpmTrie::try_from,
            || {
                LpmTrie::<MapData, Ipcache6Key, IpcacheValue>::create(
                    IPCACHE_ENTRIES,
                    LPM_MAP_FLAGS,
                )
            },
            |m, p| m.pin(p).map_err(|e| e.to_string()),
        )?;
        Ok(Self {
            policy,
            endpoints,
            ipcache4,
            ipcache6,
        })
    }

    /// Opens maps that exist, for reading (`shoal dataplane policy`).
    pub fn open_existing(pin_dir: &Path) -> Result<Self, KernelMapError> {
        fn open<T>(
            path: &Path,
            convert: impl Fn(Map) -> Result<T, MapError>,
        ) -> Result<T, KernelMapError> {
            MapData::from_pin(path)
                .and_then(Map::from_map_data)
                .and_then(convert)
                .map_err(|e| KernelMapError::Open {
                    path: path.to_path_buf(),
                    reason: format!(
                        "{e} (is the agent running on this node, and is --node the agent's node name?)"
                    ),
                })
        }
        Ok(Self {
            policy: open(&pin_dir.join(POLICY), LpmTrie::try_from)?,
            endpoints: open(&pin_dir.join(ENDPOINTS), BpfHashMap::try_from)?,
            ipcache4: open(&pin_dir.join(IPCACHE4), LpmTrie::try_from)?,
            ipcache6: open(&pin_dir.join(IPCACHE6), LpmTrie::try_from)?,
        })
    }
}

/// Absent entries are what a delete wants.
fn gone(r: Result<(), MapError>) -> Result<(), String> {
    match r {
        Ok(()) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

impl PolicyMaps for KernelPolicyMaps {
    fn put_policy(
        &mut self,
        prefix: u32,
        key: PolicyKey,
        value: PolicyValue,
    ) -> Result<(), String> {
        self.policy
            .insert(&Key::new(prefix, key), value, 0)
            .map_err(|e| e.to_string())
    }

    fn delete_policy(&mut self, prefix: u32, key: PolicyKey) -> Result<(), String> {
        gone(self.policy.remove(&Key::new(prefix, key)))
    }

    fn put_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), String> {
        self.endpoints
            .insert(ifindex, info, 0)
            .map_err(|e| e.to_string())
    }

    fn delete_endpoint(&mut self, ifindex: u32) -> Result<(), String> {
        gone(self.endpoints.remove(&ifindex))
    }

    fn put_ipcache4(
        &mut self,
        prefix: u32,
        key: Ipcache4Key,
        value: IpcacheValue,
    ) -> Result<(), String> {
        self.ipcache4
            .insert(&Key::new(prefix, key), value, 0)
            .map_err(|e| e.to_string())
    }

    fn delete_ipcache4(&mut self, prefix: u32, key: Ipcache4Key) -> Result<(), String> {
        gone(self.ipcache4.remove(&Key::new(prefix, key)))
    }

    fn put_ipcache6(
        &mut self,
        prefix: u32,
        key: Ipcache6Key,
        value: IpcacheValue,
    ) -> Result<(), String> {
        self.ipcache6
            .insert(&Key::new(prefix, key), value, 0)
            .map_err(|e| e.to_string())
    }

    fn delete_ipcache6(&mut self, prefix: u32, key: Ipcache6Key) -> Result<(), String> {
        gone(self.ipcache6.remove(&Key::new(prefix, key)))
    }

    fn read(&self) -> Result<Desired, String> {
        let mut out = Desired::default();
        for entry in self.policy.iter() {
            let (key, _) = entry.map_err(|e| format!("{POLICY}: {e}"))?;
            out.policy.insert((key.prefix_len(), key.data()));
        }
        for entry in self.endpoints.iter() {
            let (k, v) = entry.map_err(|e| format!("{ENDPOINTS}: {e}"))?;
            out.endpoints.insert(k, v);
        }
        for entry in self.ipcache4.iter() {
            let (k, v) = entry.map_err(|e| format!("{IPCACHE4}: {e}"))?;
            out.ipcache4.insert((k.prefix_len(), k.data()), v);
        }
        for entry in self.ipcache6.iter() {
            let (k, v) = entry.map_err(|e| format!("{IPCACHE6}: {e}"))?;
            out.ipcache6.insert((k.prefix_len(), k.data()), v);
        }
        Ok(out)
    }
}
