//! Reads a node's pinned load-balancing maps from outside the agent and
//! prints them as tables (`shoal dataplane services|backends|drops|
//! conntrack|affinity`), like
//! `cilium bpf lb list`. Nothing here writes to a map.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray};
use shoal_ebpf_common::{BACKEND_SLOT_FRONTEND, LbService, Verdict};

use super::lb::{Family, Frontend, Protocol, V4, V6};

mod affinity;
mod conntrack;
pub use affinity::{AffinityRow, format_affinity};
pub use conntrack::{ConntrackRow, CtFill, format_conntrack, format_dataplane_metrics};

/// Errors of reading pinned maps.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A pinned map could not be opened.
    #[error(
        "opening pinned map {path}: {source} (is the agent running on this node, and is --node the agent's node name?)"
    )]
    Open {
        /// The pin.
        path: PathBuf,
        /// What aya said.
        #[source]
        source: MapError,
    },
    /// A pinned map could not be read.
    #[error("reading pinned map {path}: {source}")]
    Read {
        /// The pin.
        path: PathBuf,
        /// What aya said.
        #[source]
        source: MapError,
    },
}

/// One backend slot of a frontend's live generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRow {
    /// The slot, from 1.
    pub slot: u16,
    /// The backend id it names.
    pub backend_id: u32,
    /// The backend's address, if the id resolves.
    pub backend: Option<SocketAddr>,
}

/// One frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRow {
    /// The service address.
    pub frontend: Frontend,
    /// Its reverse-NAT id.
    pub rev_nat_index: u16,
    /// The generation whose slots are live.
    pub generation: u8,
    /// The live slot count.
    pub count: u16,
    /// ClientIP affinity timeout in seconds, 0 = none.
    pub affinity_timeout: u32,
    /// The live slots, in order.
    pub slots: Vec<SlotRow>,
}

/// One backend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRow {
    /// Its id.
    pub id: u32,
    /// Its address.
    pub address: SocketAddr,
    /// Its protocol (`None` for a number the maps should not hold).
    pub protocol: Option<Protocol>,
    /// How many live slots name it.
    pub references: usize,
}

/// A node's pinned maps, opened for reading.
pub struct PinnedMaps {
    pin_dir: PathBuf,
}

impl PinnedMaps {
    /// The maps pinned under `pin_dir` (`/sys/fs/bpf/shoal/<node>`).
    pub fn new(pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            pin_dir: pin_dir.into(),
        }
    }

    fn open(&self, name: &str) -> Result<(PathBuf, Map), InspectError> {
        let path = self.pin_dir.join(name);
        let open = |source| InspectError::Open {
            path: path.clone(),
            source,
        };
        let data = MapData::from_pin(&path).map_err(open)?;
        let map = Map::from_map_data(data).map_err(open)?;
        Ok((path, map))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &str,
    ) -> Result<(PathBuf, BpfHashMap<MapData, K, V>), InspectError> {
        let (path, map) = self.open(name)?;
        let map = BpfHashMap::try_from(map).map_err(|source| InspectError::Open {
            path: path.clone(),
            source,
        })?;
        Ok((path, map))
    }

    fn entries<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> Result<Vec<(K, V)>, InspectError> {
        let (path, map) = self.hash::<K, V>(name)?;
        map.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| InspectError::Read { path, source })
    }

    fn family_backends<F: Family>(&self) -> Result<BTreeMap<u32, (SocketAddr, u8)>, InspectError>
    where
        F::Backend: aya::Pod,
    {
        Ok(self
            .entries::<u32, F::Backend>(F::BACKENDS)?
            .into_iter()
            .map(|(id, b)| {
                let (addr, port, proto) = F::parse_backend(&b);
                (id, (SocketAddr::new(F::ip(addr), port), proto))
            })
            .collect())
    }

    fn family_services<F: Family>(&self) -> Result<Vec<ServiceRow>, InspectError>
    where
        F::Key: aya::Pod,
        F::Backend: aya::Pod,
    {
        let backends = self.family_backends::<F>()?;
        let entries = self.entries::<F::Key, LbService>(F::SERVICES)?;
        // (address, port, proto, generation) → slot → backend id.
        type Slots<A> = HashMap<(A, u16, u8, u8), BTreeMap<u16, u32>>;
        let mut slots: Slots<F::Addr> = HashMap::new();
        let mut fronts = Vec::new();
        for (key, value) in entries {
            let (addr, port, proto, slot, generation) = F::parse_key(&key);
            if slot == BACKEND_SLOT_FRONTEND {
                fronts.push((addr, port, proto, value));
            } else {
                slots
                    .entry((addr, port, proto, generation))
                    .or_default()
                    .insert(slot, value.backend_id);
            }
        }
        Ok(fronts
            .into_iter()
            .filter_map(|(addr, port, proto, front)| {
                let live = slots
                    .get(&(addr, port, proto, front.generation))
                    .cloned()
                    .unwrap_or_default();
                let slots = (1..=front.count)
                    .map(|slot| {
                        let backend_id = live.get(&slot).copied().unwrap_or(0);
                        SlotRow {
                            slot,
                            backend_id,
                            backend: backends.get(&backend_id).map(|b| b.0),
                        }
                    })
                    .collect();
                Some(ServiceRow {
                    frontend: Frontend {
                        address: F::ip(addr),
                        port,
                        protocol: Protocol::from_number(proto)?,
                    },
                    rev_nat_index: front.rev_nat_index,
                    generation: front.generation,
                    count: front.count,
                    affinity_timeout: front.affinity_timeout,
                    slots,
                })
            })
            .collect())
    }

    /// Every frontend of both families with its live slots, sorted.
    pub fn services(&self) -> Result<Vec<ServiceRow>, InspectError> {
        let mut rows = self.family_services::<V4>()?;
        rows.extend(self.family_services::<V6>()?);
        rows.sort_by_key(|r| r.frontend);
        Ok(rows)
    }

    /// Every backend of both families, by id, with how many live slots
    /// name it.
    pub fn backends(&self) -> Result<Vec<BackendRow>, InspectError> {
        let services = self.services()?;
        let mut refs: HashMap<(bool, u32), usize> = HashMap::new();
        for s in &services {
            for slot in &s.slots {
                *refs
                    .entry((s.frontend.address.is_ipv6(), slot.backend_id))
                    .or_default() += 1;
            }
        }
        let mut rows = Vec::new();
        for (v6, backends) in [
            (false, self.family_backends::<V4>()?),
            (true, self.family_backends::<V6>()?),
        ] {
            rows.extend(
                backends
                    .into_iter()
                    .map(|(id, (address, proto))| BackendRow {
                        id,
                        address,
                        protocol: Protocol::from_number(proto),
                        references: refs.get(&(v6, id)).copied().unwrap_or(0),
                    }),
            );
        }
        Ok(rows)
    }

    /// Every verdict counter, summed over CPUs.
    pub fn verdicts(&self) -> Result<Vec<(Verdict, u64)>, InspectError> {
        let (path, map) = self.open(shoal_ebpf_common::VERDICTS)?;
        let counters: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| InspectError::Open {
                path: path.clone(),
                source,
            })?;
        Verdict::ALL
            .iter()
            .map(|v| {
                let per_cpu =
                    counters
                        .get(&(*v as u32), 0)
                        .map_err(|source| InspectError::Read {
                            path: path.clone(),
                            source,
                        })?;
                Ok((*v, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// The pin directory read.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

/// The services table: one line per frontend, then one per further slot.
pub fn format_services(rows: &[ServiceRow]) -> String {
    let mut table = vec![[
        "FRONTEND".to_owned(),
        "REVNAT".to_owned(),
        "GEN".to_owned(),
        "SLOTS".to_owned(),
        "AFFINITY".to_owned(),
        "SLOT".to_owned(),
        "BACKEND_ID".to_owned(),
        "BACKEND".to_owned(),
    ]];
    for row in rows {
        let affinity = if row.affinity_timeout == 0 {
            "-".to_owned()
        } else {
            format!("{}s", row.affinity_timeout)
        };
        let head = [
            row.frontend.to_string(),
            row.rev_nat_index.to_string(),
            row.generation.to_string(),
            row.count.to_string(),
            affinity,
        ];
        if row.slots.is_empty() {
            let [a, b, c, d, e] = head;
            table.push([
                a,
                b,
                c,
                d,
                e,
                "-".to_owned(),
                "-".to_owned(),
                "(no backends: connects refused)".to_owned(),
            ]);
            continue;
        }
        for (i, slot) in row.slots.iter().enumerate() {
            let [a, b, c, d, e] = if i == 0 {
                head.clone()
            } else {
                Default::default()
            };
            table.push([
                a,
                b,
                c,
                d,
                e,
                slot.slot.to_string(),
                slot.backend_id.to_string(),
                slot.backend
                    .map_or_else(|| "(missing)".to_owned(), |b| b.to_string()),
            ]);
        }
    }
    render(&table)
}

/// The backends table.
pub fn format_backends(rows: &[BackendRow]) -> String {
    let mut table = vec![[
        "ID".to_owned(),
        "BACKEND".to_owned(),
        "PROTO".to_owned(),
        "SLOTS".to_owned(),
    ]];
    for row in rows {
        table.push([
            row.id.to_string(),
            row.address.to_string(),
            row.protocol
                .map_or_else(|| "?".to_owned(), |p| p.to_string()),
            row.references.to_string(),
        ]);
    }
    render(&table)
}

/// The verdict counters table.
pub fn format_verdicts(rows: &[(Verdict, u64)]) -> String {
    let mut table = vec![["REASON".to_owned(), "COUNT".to_owned()]];
    for (verdict, count) in rows {
        table.push([verdict.name().to_owned(), count.to_string()]);
    }
    render(&table)
}

/// Left-aligned columns two spaces apart, no trailing blanks.
fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_table_shows_every_slot_and_a_refusing_service() {
        let fe = |port| Frontend {
            address: "10.96.0.7".parse().expect("literal"),
            port,
            protocol: Protocol::Tcp,
        };
        let rows = [
            ServiceRow {
                frontend: fe(80),
                rev_nat_index: 3,
                generation: 1,
                count: 2,
                affinity_timeout: 10_800,
                slots: vec![
                    SlotRow {
                        slot: 1,
                        backend_id: 4,
                        backend: Some("10.244.1.5:8080".parse().expect("literal")),
                    },
                    SlotRow {
                        slot: 2,
                        backend_id: 9,
                        backend: None,
                    },
                ],
            },
            ServiceRow {
                frontend: fe(81),
                rev_nat_index: 4,
                generation: 0,
                count: 0,
                affinity_timeout: 0,
                slots: vec![],
            },
        ];
        let text = format_services(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("FRONTEND"), "{text}");
        let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            words(lines[1]),
            [
                "10.96.0.7:80/TCP",
                "3",
                "1",
                "2",
                "10800s",
                "1",
                "4",
                "10.244.1.5:8080"
            ]
        );
        assert_eq!(words(lines[2]), ["2", "9", "(missing)"]);
        assert!(
            lines[3].starts_with("10.96.0.7:81/TCP") && lines[3].contains("connects refused"),
            "{text}"
        );
    }
}
