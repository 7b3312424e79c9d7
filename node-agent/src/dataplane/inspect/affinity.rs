//! `shoal dataplane affinity`: the session-affinity maps as a table: which
//! client (network namespace) sticks to which backend of which service,
//! since when, and whether that backend is still live in the service.

use std::{collections::HashMap, net::SocketAddr};

use shoal_ebpf_common::{
    LB4_AFFINITY, LB4_AFFINITY_MATCH, LB6_AFFINITY, LB6_AFFINITY_MATCH, LbAffinityKey,
    LbAffinityMatchKey, LbAffinityValue,
};

use super::{InspectError, PinnedMaps, render};
use crate::dataplane::{Frontend, V4, V6};

/// One affinity entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinityRow {
    /// The client: its network namespace's cookie.
    pub client: u64,
    /// The service's reverse-NAT id.
    pub rev_nat_index: u16,
    /// A frontend of that service, when the maps still hold one.
    pub service: Option<Frontend>,
    /// The backend the client goes back to.
    pub backend_id: u32,
    /// That backend's address, when the backends map still holds it.
    pub backend: Option<SocketAddr>,
    /// Whether the backend is still live in the service (else the next
    /// connect picks anew).
    pub live: bool,
    /// When the client last used it (CLOCK_MONOTONIC nanoseconds).
    pub last_used_ns: u64,
}

impl PinnedMaps {
    /// Every session-affinity entry of both families, most recently used
    /// first.
    pub fn affinity(&self) -> Result<Vec<AffinityRow>, InspectError> {
        let services = self.services()?;
        let mut rows = Vec::new();
        for (v6, map, matches, backends) in [
            (
                false,
                LB4_AFFINITY,
                LB4_AFFINITY_MATCH,
                self.family_backends::<V4>()?,
            ),
            (
                true,
                LB6_AFFINITY,
                LB6_AFFINITY_MATCH,
                self.family_backends::<V6>()?,
            ),
        ] {
            let frontends: HashMap<u16, Frontend> = services
                .iter()
                .filter(|s| s.frontend.address.is_ipv6() == v6)
                .map(|s| (s.rev_nat_index, s.frontend))
                .collect();
            let live = self.entries::<LbAffinityMatchKey, u32>(matches)?;
            rows.extend(
                self.entries::<LbAffinityKey, LbAffinityValue>(map)?
                    .into_iter()
                    .map(|(k, v)| AffinityRow {
                        client: k.client,
                        rev_nat_index: k.rev_nat_index,
                        service: frontends.get(&k.rev_nat_index).copied(),
                        backend_id: v.backend_id,
                        backend: backends.get(&v.backend_id).map(|b| b.0),
                        live: live.iter().any(|(m, _)| {
                            m.backend_id == v.backend_id && m.rev_nat_index == k.rev_nat_index
                        }),
                        last_used_ns: v.last_used_ns,
                    }),
            );
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.last_used_ns));
        Ok(rows)
    }
}

/// Nanoseconds of CLOCK_MONOTONIC, the programs' `bpf_ktime_get_ns`.
fn monotonic_ns() -> Option<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    let secs = u64::try_from(now.tv_sec()).ok()?;
    let nanos = u64::try_from(now.tv_nsec()).ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

/// `shoal dataplane affinity`'s table.
pub fn format_affinity(rows: &[AffinityRow]) -> String {
    let now = monotonic_ns();
    let mut table = vec![[
        "CLIENT (NETNS)".to_owned(),
        "SERVICE".to_owned(),
        "REVNAT".to_owned(),
        "BACKEND".to_owned(),
        "LIVE".to_owned(),
        "LAST USED".to_owned(),
    ]];
    for r in rows {
        let used = match now {
            Some(now) => format!(
                "{}s ago",
                now.saturating_sub(r.last_used_ns) / 1_000_000_000
            ),
            None => format!("{}ns", r.last_used_ns),
        };
        table.push([
            r.client.to_string(),
            r.service.map_or_else(|| "-".to_owned(), |f| f.to_string()),
            r.rev_nat_index.to_string(),
            match r.backend {
                Some(addr) => format!("{} ({addr})", r.backend_id),
                None => r.backend_id.to_string(),
            },
            if r.live { "yes" } else { "no" }.to_owned(),
            used,
        ]);
    }
    render(&table)
}
