//! The agent's side of the NodePort conntrack maps (`CT4_V1`/`CT6_V1`): a
//! garbage collector that ends flows by Cilium-like timeouts, and the
//! purge of flows whose backend left their service.
//!
//! The purge is what fixes the classic stale-conntrack bug: without it a
//! UDP client that keeps sending from one source port keeps reaching a
//! backend that is no longer in the Service's EndpointSlice (as long as
//! the backend still exists, say as a backend of another Service), because
//! its conntrack entry says so. The service sync hands every backend that
//! left a service ([`Departed`]) to the collector, which deletes both
//! entries of each flow of that service to that backend at once; the next
//! packet opens a flow to a live backend.
//!
//! Entries are read in a snapshot and each is read again just before it is
//! deleted, so a flow the datapath re-balanced or refreshed meanwhile is
//! left alone. The walk runs on its own thread with its own map handles and
//! never holds the writer's lock.

use std::{
    collections::{HashMap, HashSet},
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError};
use shoal_ebpf_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_FLAG_CLOSING, CT4, CT6, Ct4Key, Ct4Value, Ct6Key, Ct6Value,
    IPPROTO_TCP,
};

use crate::dataplane::{Error, lb::Departed};

/// Default timeout of an established TCP flow (Cilium's
/// `--bpf-ct-timeout-regular-tcp`).
pub const DEFAULT_CT_TIMEOUT_TCP: Duration = Duration::from_secs(6 * 3600);
/// Default timeout of a TCP flow once a FIN or RST was seen
/// (`--bpf-ct-timeout-regular-tcp-fin`).
pub const DEFAULT_CT_TIMEOUT_TCP_FIN: Duration = Duration::from_secs(10);
/// Default timeout of a TCP flow whose backend never answered
/// (`--bpf-ct-timeout-regular-tcp-syn`).
pub const DEFAULT_CT_TIMEOUT_TCP_SYN: Duration = Duration::from_secs(60);
/// Default timeout of a UDP flow without packets
/// (`--bpf-ct-timeout-regular-any`).
pub const DEFAULT_CT_TIMEOUT_ANY: Duration = Duration::from_secs(60);
/// Default interval between two collections.
pub const DEFAULT_CT_GC_INTERVAL: Duration = Duration::from_secs(10);

/// Flows the collector ended by their timeout, since the agent started.
static GC_EXPIRED: AtomicU64 = AtomicU64::new(0);
/// Flows the collector purged because their backend left their Service.
static GC_PURGED: AtomicU64 = AtomicU64::new(0);

/// What the collector deleted since the agent started: (flows expired,
/// flows purged because their backend left their Service).
pub fn gc_totals() -> (u64, u64) {
    (
        GC_EXPIRED.load(Ordering::Relaxed),
        GC_PURGED.load(Ordering::Relaxed),
    )
}

/// How long a flow may stay idle, by its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP, the backend answered, no FIN/RST yet.
    pub tcp: Duration,
    /// TCP after a FIN or RST in either direction.
    pub tcp_fin: Duration,
    /// TCP the backend never answered.
    pub tcp_syn: Duration,
    /// UDP.
    pub any: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            tcp: DEFAULT_CT_TIMEOUT_TCP,
            tcp_fin: DEFAULT_CT_TIMEOUT_TCP_FIN,
            tcp_syn: DEFAULT_CT_TIMEOUT_TCP_SYN,
            any: DEFAULT_CT_TIMEOUT_ANY,
        }
    }
}

impl CtTimeouts {
    /// The timeout of a flow of protocol `proto` that is `closing` (FIN/RST
    /// seen) and whose backend `replied` or not.
    pub fn of(&self, proto: u8, closing: bool, replied: bool) -> Duration {
        if proto != IPPROTO_TCP {
            self.any
        } else if closing {
            self.tcp_fin
        } else if replied {
            self.tcp
        } else {
            self.tcp_syn
        }
    }
}

/// How the collector runs.
#[derive(Clone, Debug)]
pub struct CtGcConfig {
    /// Where the conntrack maps are pinned.
    pub pin_dir: PathBuf,
    /// Flow timeouts.
    pub timeouts: CtTimeouts,
    /// Time between two timeout collections (purges of departed backends
    /// run as soon as they arrive).
    pub interval: Duration,
}

impl CtGcConfig {
    /// The defaults for maps pinned under `pin_dir`.
    pub fn new(pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            timeouts: CtTimeouts::default(),
            interval: DEFAULT_CT_GC_INTERVAL,
        }
    }
}

/// What one sweep deleted (flows: both entries of a flow count once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Flows ended by their timeout.
    pub expired: u64,
    /// Flows whose backend left their service.
    pub purged: u64,
    /// Flows kept.
    pub kept: u64,
}

/// One entry, family aside.
#[derive(Clone, Copy, Debug)]
struct View<K> {
    proto: u8,
    original: bool,
    closing: bool,
    packets: u32,
    last_seen: u32,
    backend_id: u32,
    rev_nat_index: u16,
    /// The backend this entry leads to (original) or comes from (reply).
    backend: SocketAddr,
    /// Original entries: the key of the flow's reply entry.
    reply: Option<K>,
}

/// What differs between `CT4_V1` and `CT6_V1`.
trait CtFamily {
    type Key: aya::Pod + Eq + std::hash::Hash;
    type Value: aya::Pod;
    const NAME: &'static str;
    fn view(k: &Self::Key, v: &Self::Value) -> View<Self::Key>;
}

enum F4 {}
enum F6 {}

impl CtFamily for F4 {
    type Key = Ct4Key;
    type Value = Ct4Value;
    const NAME: &'static str = CT4;
    fn view(k: &Ct4Key, v: &Ct4Value) -> View<Ct4Key> {
        let ip = |a: u32| IpAddr::V4(Ipv4Addr::from(a.to_ne_bytes()));
        let original = k.dir == CT_DIR_ORIGINAL;
        let backend = if original {
            SocketAddr::new(ip(v.to_daddr), u16::from_be(v.to_dport))
        } else {
            SocketAddr::new(ip(k.saddr), u16::from_be(k.sport))
        };
        let reply = original.then_some(Ct4Key {
            saddr: v.to_daddr,
            daddr: if v.to_saddr != 0 { v.to_saddr } else { k.saddr },
            sport: v.to_dport,
            dport: if v.to_sport != 0 { v.to_sport } else { k.sport },
            proto: k.proto,
            dir: CT_DIR_REPLY,
            pad: [0; 2],
        });
        View {
            proto: k.proto,
            original,
            closing: v.flags & CT_FLAG_CLOSING != 0,
            packets: v.packets,
            last_seen: v.last_seen,
            backend_id: v.backend_id,
            rev_nat_index: v.rev_nat_index,
            backend,
            reply,
        }
    }
}

impl CtFamily for F6 {
    type Key = Ct6Key;
    type Value = Ct6Value;
    const NAME: &'static str = CT6;
    fn view(k: &Ct6Key, v: &Ct6Value) -> View<Ct6Key> {
        let ip = |a: [u8; 16]| IpAddr::V6(Ipv6Addr::from(a));
        let original = k.dir == CT_DIR_ORIGINAL;
        let backend = if original {
            SocketAddr::new(ip(v.to_daddr), u16::from_be(v.to_dport))
        } else {
            SocketAddr::new(ip(k.saddr), u16::from_be(k.sport))
        };
        let reply = original.then_some(Ct6Key {
            saddr: v.to_daddr,
            daddr: if v.to_saddr != [0; 16] {
                v.to_saddr
            } else {
                k.saddr
            },
            sport: v.to_dport,
            dport: if v.to_sport != 0 { v.to_sport } else { k.sport },
            proto: k.proto,
            dir: CT_DIR_REPLY,
            pad: [0; 2],
        });
        View {
            proto: k.proto,
            original,
            closing: v.flags & CT_FLAG_CLOSING != 0,
            packets: v.packets,
            last_seen: v.last_seen,
            backend_id: v.backend_id,
            rev_nat_index: v.rev_nat_index,
            backend,
            reply,
        }
    }
}

/// Why an entry goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    Expired,
    Purged,
}

/// The departed backends, as entries name them.
type DepartedSet = HashSet<(u16, u32, SocketAddr, u8)>;

fn departed_set(departed: &[Departed]) -> DepartedSet {
    departed
        .iter()
        .map(|d| (d.rev_nat_index, d.backend_id, d.backend, d.proto))
        .collect()
}

fn departed_match<K>(v: &View<K>, departed: &DepartedSet) -> bool {
    departed.contains(&(v.rev_nat_index, v.backend_id, v.backend, v.proto))
}

/// The fate of a flow from its entries: `original` (if any) and `reply`
/// (if any), at `now` (seconds of CLOCK_BOOTTIME).
fn judge<K>(
    original: Option<&View<K>>,
    reply: Option<&View<K>>,
    now: u32,
    timeouts: &CtTimeouts,
    departed: &DepartedSet,
) -> Verdict {
    let entries = || original.into_iter().chain(reply);
    if entries().any(|v| departed_match(v, departed)) {
        return Verdict::Purged;
    }
    let Some(first) = entries().next() else {
        return Verdict::Keep;
    };
    let last = entries().map(|v| v.last_seen).max().unwrap_or(0);
    let closing = entries().any(|v| v.closing);
    // The reply entry is touched only by the backend's packets.
    let replied = reply.is_some_and(|r| r.packets > 0);
    let timeout = timeouts.of(first.proto, closing, replied).as_secs();
    if u64::from(now.saturating_sub(last)) > timeout {
        Verdict::Expired
    } else {
        Verdict::Keep
    }
}

/// An entry to delete, as the snapshot read it, why, and whether it
/// counts (the other half of a flow does not).
type Doomed<K> = (K, View<K>, Verdict, bool);

/// One family's map, opened from its pin.
struct CtMap<F: CtFamily> {
    path: PathBuf,
    map: BpfHashMap<MapData, F::Key, F::Value>,
}

impl<F: CtFamily> CtMap<F> {
    fn open(pin_dir: &Path) -> Result<Self, Error> {
        let path = pin_dir.join(F::NAME);
        let name = F::NAME;
        let fail = |e: MapError| Error::Nodeport(format!("opening {}: {e}", path.display()));
        let data = MapData::from_pin(&path).map_err(fail)?;
        let map = Map::from_map_data(data).map_err(fail)?;
        let map = BpfHashMap::try_from(map)
            .map_err(|e| Error::Nodeport(format!("{name} at {}: {e}", path.display())))?;
        Ok(Self { path, map })
    }

    /// Deletes `key` if it still leads to the backend it did in the
    /// snapshot (the datapath may have re-balanced it since) and, for an
    /// `expired` flow, no packet refreshed it since.
    fn delete_if_unchanged(
        &mut self,
        key: &F::Key,
        then: &View<F::Key>,
        expired: bool,
    ) -> Result<(), Error> {
        let now = match self.map.get(key, 0) {
            Ok(v) => F::view(key, &v),
            Err(MapError::KeyNotFound) => return Ok(()),
            Err(e) => return Err(self.err(e)),
        };
        if (expired && now.last_seen != then.last_seen)
            || now.backend_id != then.backend_id
            || now.backend != then.backend
        {
            return Ok(());
        }
        match self.map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    fn err(&self, e: MapError) -> Error {
        Error::Nodeport(format!("conntrack map {}: {e}", self.path.display()))
    }

    fn sweep(
        &mut self,
        now: u32,
        timeouts: &CtTimeouts,
        departed: &DepartedSet,
    ) -> Result<SweepStats, Error> {
        let snapshot: HashMap<F::Key, View<F::Key>> = self
            .map
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| {
                let view = F::view(&k, &v);
                (k, view)
            })
            .collect();
        let mut stats = SweepStats::default();
        let mut paired: HashSet<F::Key> = HashSet::new();
        // What goes, and why.
        let mut doomed: Vec<Doomed<F::Key>> = Vec::new();
        for (key, view) in &snapshot {
            if !view.original {
                continue;
            }
            let reply = view.reply.and_then(|r| snapshot.get_key_value(&r));
            if let Some((rk, _)) = reply {
                paired.insert(*rk);
            }
            let verdict = judge(Some(view), reply.map(|(_, v)| v), now, timeouts, departed);
            match verdict {
                Verdict::Keep => stats.kept += 1,
                gone => {
                    doomed.push((*key, *view, gone, true));
                    if let Some((rk, rv)) = reply {
                        doomed.push((*rk, *rv, gone, false));
                    }
                }
            }
        }
        // Reply entries whose original is gone.
        for (key, view) in &snapshot {
            if view.original || paired.contains(key) {
                continue;
            }
            match judge(None, Some(view), now, timeouts, departed) {
                Verdict::Keep => {}
                gone => doomed.push((*key, *view, gone, true)),
            }
        }
        for (key, view, verdict, counts) in doomed {
            self.delete_if_unchanged(&key, &view, verdict == Verdict::Expired)?;
            match (verdict, counts) {
                (Verdict::Expired, true) => stats.expired += 1,
                (Verdict::Purged, true) => stats.purged += 1,
                _ => {}
            }
        }
        Ok(stats)
    }
}

/// Both conntrack maps of a node, opened from their pins.
pub struct Conntrack {
    ct4: CtMap<F4>,
    ct6: CtMap<F6>,
}

impl Conntrack {
    /// Opens `CT4_V1` and `CT6_V1` under `pin_dir` (the dataplane must have
    /// been loaded there).
    pub fn open(pin_dir: &Path) -> Result<Self, Error> {
        Ok(Self {
            ct4: CtMap::open(pin_dir)?,
            ct6: CtMap::open(pin_dir)?,
        })
    }

    /// One pass over both maps at `now` (seconds of CLOCK_BOOTTIME, as the
    /// programs stamp entries): flows idle past their timeout and flows of
    /// `departed` backends are deleted, both entries of each.
    pub fn sweep(
        &mut self,
        now: u32,
        timeouts: &CtTimeouts,
        departed: &[Departed],
    ) -> Result<SweepStats, Error> {
        let set = departed_set(departed);
        let a = self.ct4.sweep(now, timeouts, &set)?;
        let b = self.ct6.sweep(now, timeouts, &set)?;
        Ok(SweepStats {
            expired: a.expired + b.expired,
            purged: a.purged + b.purged,
            kept: a.kept + b.kept,
        })
    }
}

/// Seconds of CLOCK_BOOTTIME, the programs' clock.
pub fn boot_seconds() -> u32 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => t.tv_sec() as u32,
        Err(_) => 0,
    }
}

/// The collector's loop, on the calling thread until `departed`'s sender
/// is dropped: a sweep every `config.interval`, and one as soon as a batch
/// of departed backends arrives.
pub fn run_gc(config: &CtGcConfig, departed: &Receiver<Vec<Departed>>) {
    let mut maps: Option<Conntrack> = None;
    let mut pending: Vec<Departed> = Vec::new();
    let mut next = Instant::now() + config.interval;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match departed.recv_timeout(wait) {
            Ok(batch) => {
                pending.extend(batch);
                while let Ok(more) = departed.try_recv() {
                    pending.extend(more);
                }
            }
            Err(RecvTimeoutError::Timeout) => next = Instant::now() + config.interval,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if maps.is_none() {
            match Conntrack::open(&config.pin_dir) {
                Ok(m) => maps = Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "conntrack GC: maps not available; retrying");
                    continue;
                }
            }
        }
        let Some(ct) = maps.as_mut() else { continue };
        let started = Instant::now();
        match ct.sweep(boot_seconds(), &config.timeouts, &pending) {
            Ok(stats) => {
                GC_EXPIRED.fetch_add(stats.expired, Ordering::Relaxed);
                GC_PURGED.fetch_add(stats.purged, Ordering::Relaxed);
                if stats.purged > 0 || stats.expired > 0 {
                    tracing::info!(
                        purged = stats.purged,
                        expired = stats.expired,
                        kept = stats.kept,
                        departed_backends = pending.len(),
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "conntrack GC"
                    );
                }
                pending.clear();
            }
            Err(e) => {
                // Kept: the next pass purges them.
                tracing::warn!(error = %e, "conntrack GC failed; retrying");
                maps = None;
            }
        }
    }
}

#[cfg(test)]
mod tests;
