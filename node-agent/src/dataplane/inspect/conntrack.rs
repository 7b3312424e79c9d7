//! `shoal dataplane conntrack`: the NodePort conntrack maps as a table,
//! like `cilium bpf ct list global`, and how full they are.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use shoal_ebpf_common::{
    CT_DIR_ORIGINAL, CT_FLAG_CLOSING, CT_FLAG_LOCAL_BACKEND, CT_FLAG_SNAT, CT4, CT6, Ct4Key,
    Ct4Value, Ct6Key, Ct6Value,
};

use super::{InspectError, PinnedMaps, render};
use crate::dataplane::Protocol;

/// One conntrack entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConntrackRow {
    /// The transport protocol (`None` for a number the map should not hold).
    pub protocol: Option<Protocol>,
    /// Whether the entry matches the client's packets (else the backend's
    /// replies).
    pub original: bool,
    /// The packet's source the entry matches.
    pub source: SocketAddr,
    /// The packet's destination the entry matches.
    pub destination: SocketAddr,
    /// What the source becomes, if it is rewritten.
    pub new_source: Option<SocketAddr>,
    /// What the destination becomes, if it is rewritten.
    pub new_destination: Option<SocketAddr>,
    /// The backend id the flow was balanced to.
    pub backend_id: u32,
    /// The service's reverse-NAT id.
    pub rev_nat_index: u16,
    /// The flow was SNATed to the node (backend on another node).
    pub snat: bool,
    /// The backend is on this node.
    pub local_backend: bool,
    /// A TCP FIN or RST matched: the GC's closing timeout applies.
    pub closing: bool,
    /// Packets that matched.
    pub packets: u32,
    /// When a packet last matched, seconds of CLOCK_BOOTTIME.
    pub last_seen: u32,
}

/// How full one conntrack map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtFill {
    /// Entries held.
    pub entries: u64,
    /// The map's size.
    pub max_entries: u64,
}

/// What a source or destination becomes: the entry's address (`None` =
/// kept) and port (network order, 0 = kept) over the packet's `old` one;
/// `None` when neither is rewritten.
fn rewritten(addr: Option<IpAddr>, port: u16, old: SocketAddr) -> Option<SocketAddr> {
    (addr.is_some() || port != 0).then(|| {
        let port = if port != 0 {
            u16::from_be(port)
        } else {
            old.port()
        };
        SocketAddr::new(addr.unwrap_or(old.ip()), port)
    })
}

/// One row from the fields both families' entries share, their addresses
/// already `IpAddr` (`to_saddr`/`to_daddr` `None` when kept).
struct Entry {
    proto: u8,
    dir: u8,
    source: SocketAddr,
    destination: SocketAddr,
    to_saddr: Option<IpAddr>,
    to_sport: u16,
    to_daddr: Option<IpAddr>,
    to_dport: u16,
    backend_id: u32,
    rev_nat_index: u16,
    flags: u8,
    packets: u32,
    last_seen: u32,
}

impl From<Entry> for ConntrackRow {
    fn from(e: Entry) -> Self {
        ConntrackRow {
            protocol: Protocol::from_number(e.proto),
            original: e.dir == CT_DIR_ORIGINAL,
            source: e.source,
            destination: e.destination,
            new_source: rewritten(e.to_saddr, e.to_sport, e.source),
            new_destination: rewritten(e.to_daddr, e.to_dport, e.destination),
            backend_id: e.backend_id,
            rev_nat_index: e.rev_nat_index,
            snat: e.flags & CT_FLAG_SNAT != 0,
            local_backend: e.flags & CT_FLAG_LOCAL_BACKEND != 0,
            closing: e.flags & CT_FLAG_CLOSING != 0,
            packets: e.packets,
            last_seen: e.last_seen,
        }
    }
}

fn row4(k: &Ct4Key, v: &Ct4Value) -> ConntrackRow {
    let ip = |a: u32| IpAddr::V4(Ipv4Addr::from(a.to_ne_bytes()));
    let set = |a: u32| (a != 0).then(|| ip(a));
    ConntrackRow::from(Entry {
        proto: k.proto,
        dir: k.dir,
        source: SocketAddr::new(ip(k.saddr), u16::from_be(k.sport)),
        destination: SocketAddr::new(ip(k.daddr), u16::from_be(k.dport)),
        to_saddr: set(v.to_saddr),
        to_sport: v.to_sport,
        to_daddr: set(v.to_daddr),
        to_dport: v.to_dport,
        backend_id: v.backend_id,
        rev_nat_index: v.rev_nat_index,
        flags: v.flags,
        packets: v.packets,
        last_seen: v.last_seen,
    })
}

fn row6(k: &Ct6Key, v: &Ct6Value) -> ConntrackRow {
    let ip = |a: [u8; 16]| IpAddr::V6(Ipv6Addr::from(a));
    let set = |a: [u8; 16]| (a != [0; 16]).then(|| ip(a));
    ConntrackRow::from(Entry {
        proto: k.proto,
        dir: k.dir,
        source: SocketAddr::new(ip(k.saddr), u16::from_be(k.sport)),
        destination: SocketAddr::new(ip(k.daddr), u16::from_be(k.dport)),
        to_saddr: set(v.to_saddr),
        to_sport: v.to_sport,
        to_daddr: set(v.to_daddr),
        to_dport: v.to_dport,
        backend_id: v.backend_id,
        rev_nat_index: v.rev_nat_index,
        flags: v.flags,
        packets: v.packets,
        last_seen: v.last_seen,
    })
}

impl PinnedMaps {
    /// Every conntrack entry of both families, most recently seen first.
    pub fn conntrack(&self) -> Result<Vec<ConntrackRow>, InspectError> {
        let mut rows: Vec<ConntrackRow> = self
            .entries::<Ct4Key, Ct4Value>(CT4)?
            .iter()
            .map(|(k, v)| row4(k, v))
            .collect();
        rows.extend(
            self.entries::<Ct6Key, Ct6Value>(CT6)?
                .iter()
                .map(|(k, v)| row6(k, v)),
        );
        rows.sort_by(|a, b| {
            b.last_seen
                .cmp(&a.last_seen)
                .then_with(|| (a.source, a.destination).cmp(&(b.source, b.destination)))
        });
        Ok(rows)
    }

    /// How full `CT4_V1` and `CT6_V1` are.
    pub fn conntrack_fill(&self) -> Result<(CtFill, CtFill), InspectError> {
        let fill = |name: &str, entries: usize| -> Result<CtFill, InspectError> {
            let path = self.pin_dir().join(name);
            let data =
                aya::maps::MapData::from_pin(&path).map_err(|source| InspectError::Open {
                    path: path.clone(),
                    source,
                })?;
            let info = data.info().map_err(|source| InspectError::Read {
                path: path.clone(),
                source,
            })?;
            Ok(CtFill {
                entries: entries as u64,
                max_entries: u64::from(info.max_entries()),
            })
        };
        let v4 = self.entries::<Ct4Key, Ct4Value>(CT4)?.len();
        let v6 = self.entries::<Ct6Key, Ct6Value>(CT6)?.len();
        Ok((fill(CT4, v4)?, fill(CT6, v6)?))
    }
}

/// Seconds since boot (CLOCK_BOOTTIME, as the programs stamp entries).
fn uptime() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(secs as u64)
}

/// `shoal dataplane conntrack`'s table.
pub fn format_conntrack(rows: &[ConntrackRow]) -> String {
    let now = uptime();
    let mut table = vec![[
        "PROTO".to_owned(),
        "DIR".to_owned(),
        "SOURCE".to_owned(),
        "DESTINATION".to_owned(),
        "REWRITE".to_owned(),
        "BACKEND".to_owned(),
        "REVNAT".to_owned(),
        "FLAGS".to_owned(),
        "PACKETS".to_owned(),
        "LAST SEEN".to_owned(),
    ]];
    for r in rows {
        let mut rewrite = Vec::new();
        if let Some(s) = r.new_source {
            rewrite.push(format!("src={s}"));
        }
        if let Some(d) = r.new_destination {
            rewrite.push(format!("dst={d}"));
        }
        let mut flags = Vec::new();
        if r.snat {
            flags.push("snat");
        }
        if r.local_backend {
            flags.push("local-backend");
        }
        if r.closing {
            flags.push("closing");
        }
        let seen = match now {
            Some(now) => format!("{}s ago", now.saturating_sub(u64::from(r.last_seen))),
            None => format!("boot+{}s", r.last_seen),
        };
        table.push([
            r.protocol.map_or_else(|| "?".to_owned(), |p| p.to_string()),
            if r.original { "original" } else { "reply" }.to_owned(),
            r.source.to_string(),
            r.destination.to_string(),
            if rewrite.is_empty() {
                "-".to_owned()
            } else {
                rewrite.join(" ")
            },
            r.backend_id.to_string(),
            r.rev_nat_index.to_string(),
            if flags.is_empty() {
                "-".to_owned()
            } else {
                flags.join(",")
            },
            r.packets.to_string(),
            seen,
        ]);
    }
    render(&table)
}

/// The dataplane's Prometheus metrics: every verdict counter
/// (`shoal_dataplane_verdicts_total{reason}`), how full the conntrack
/// maps are (`shoal_dataplane_conntrack_entries{family}` and
/// `shoal_dataplane_conntrack_max_entries{family}`) and what the
/// conntrack GC deleted (`shoal_dataplane_conntrack_gc_deleted_total{reason}`).
pub fn format_dataplane_metrics(maps: &PinnedMaps) -> Result<String, InspectError> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP shoal_dataplane_verdicts_total Outcomes of the eBPF programs, by reason.\n# TYPE shoal_dataplane_verdicts_total counter"
    );
    for (verdict, count) in maps.verdicts()? {
        let _ = writeln!(
            out,
            "shoal_dataplane_verdicts_total{{reason=\"{}\"}} {count}",
            verdict.name()
        );
    }
    let (v4, v6) = maps.conntrack_fill()?;
    let _ = writeln!(
        out,
        "# HELP shoal_dataplane_conntrack_entries Entries in the NodePort conntrack map (two per flow).\n# TYPE shoal_dataplane_conntrack_entries gauge"
    );
    for (family, fill) in [("ipv4", v4), ("ipv6", v6)] {
        let _ = writeln!(
            out,
            "shoal_dataplane_conntrack_entries{{family=\"{family}\"}} {}",
            fill.entries
        );
    }
    let _ = writeln!(
        out,
        "# HELP shoal_dataplane_conntrack_max_entries Size of the NodePort conntrack map (LRU beyond it).\n# TYPE shoal_dataplane_conntrack_max_entries gauge"
    );
    for (family, fill) in [("ipv4", v4), ("ipv6", v6)] {
        let _ = writeln!(
            out,
            "shoal_dataplane_conntrack_max_entries{{family=\"{family}\"}} {}",
            fill.max_entries
        );
    }
    // Counted by this process's collector (zero in any other process).
    let (expired, purged) = crate::dataplane::nodeport::gc_totals();
    let _ = writeln!(
        out,
        "# HELP shoal_dataplane_conntrack_gc_deleted_total Flows the agent's conntrack GC deleted: idle past their timeout (expired) or their backend left their Service (backend_left).\n# TYPE shoal_dataplane_conntrack_gc_deleted_total counter"
    );
    let _ = writeln!(
        out,
        "shoal_dataplane_conntrack_gc_deleted_total{{reason=\"expired\"}} {expired}"
    );
    let _ = writeln!(
        out,
        "shoal_dataplane_conntrack_gc_deleted_total{{reason=\"backend_left\"}} {purged}"
    );
    Ok(out)
}
