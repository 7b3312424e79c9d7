//! Flow observability: reads the flow events the pod-interface programs
//! send through their ring buffer, ends idle flows by sweeping the flow
//! table, resolves both ends (pod, namespace, node, services), keeps a
//! bounded ring of recent records for `shoal flows` (served on a unix
//! socket), and hands every finished flow to the OTLP exporter.
//!
//! One flow, one record: a connection between two pods is seen on both
//! pods' interfaces (on one node or two). A record is kept where the flow
//! left its initiator, or, when the initiator is not a pod the agent knows,
//! where it entered its destination pod.
//!
//! | task | what |
//! |---|---|
//! | attach | a hook when a sandbox's veth is up, plus a 2 s pass over the node's `shl*` veths (adopted pods, restarts); dead links' pins removed |
//! | reader | drains the ring buffer (tokio `AsyncFd`) |
//! | sweep | every second: flows ended by FIN/RST are removed after a grace period, UDP flows idle for `udp_idle` and TCP flows idle for `tcp_idle` get an `idle-end` record and are removed |
//! | server | `shoal flows`: recent records and a follow stream over `<socket>` |

mod record;
mod resolve;
mod server;

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use shoal_ebpf_common::flow::{
    FLOW_STAT_COUNT, FLOW_STAT_NAMES, FLOW_STATE_ENDED, FlowKey, FlowValue,
};
use shoal_telemetry::flows::{FlowCounts, FlowExporter, FlowLog, Value};
use tokio::{io::unix::AsyncFd, sync::broadcast};

use crate::dataplane::Dataplane;

pub use record::{Endpoint, Filter, FlowRecord, Kind, format_line};
pub use server::{Request, follow as follow_socket};

/// Default idle timeout of UDP flows.
pub const DEFAULT_UDP_IDLE: Duration = Duration::from_secs(30);
/// Default idle timeout of TCP flows that never closed.
pub const DEFAULT_TCP_IDLE: Duration = Duration::from_secs(300);
/// How long a closed flow's entry stays (its last ACKs still count, and
/// start no new flow).
pub const ENDED_GRACE: Duration = Duration::from_secs(5);
/// How often the flow table is swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often the node's pod veths are checked for missing programs.
pub const ATTACH_INTERVAL: Duration = Duration::from_secs(2);
/// Default number of recent records kept for `shoal flows`.
pub const DEFAULT_RECENT: usize = 8192;
/// Where the agent serves `shoal flows` by default: `/run/shoal/<node>/flows.sock`.
pub const SOCKET_ROOT: &str = "/run/shoal";
/// The socket's file name under [`SOCKET_ROOT`]`/<node>`.
pub const SOCKET_NAME: &str = "flows.sock";

/// The default socket of node `node`.
pub fn socket_for(node: &str) -> PathBuf {
    PathBuf::from(SOCKET_ROOT).join(node).join(SOCKET_NAME)
}

/// How flows are handled on one node.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name.
    pub node: String,
    /// Where the dataplane pins its maps.
    pub pin_dir: PathBuf,
    /// Idle timeout of UDP flows.
    pub udp_idle: Duration,
    /// Idle timeout of TCP flows.
    pub tcp_idle: Duration,
    /// Recent records kept.
    pub recent: usize,
    /// The `shoal flows` socket.
    pub socket: PathBuf,
}

impl Config {
    /// The defaults for node `node` pinning under `pin_dir`.
    pub fn new(node: &str, pin_dir: PathBuf) -> Self {
        // Named like the node's pin directory (the node's name unless the
        // agent was given another), as `shoal dataplane --node` names it:
        // agents of several clusters on one host never share a socket.
        let socket = socket_for(pin_dir.file_name().and_then(|n| n.to_str()).unwrap_or(node));
        Self {
            node: node.to_owned(),
            pin_dir,
            udp_idle: DEFAULT_UDP_IDLE,
            tcp_idle: DEFAULT_TCP_IDLE,
            recent: DEFAULT_RECENT,
            socket,
        }
    }
}

/// Errors of the flow pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The dataplane could not hand over its ring buffer or maps.
    #[error("flows: {0}")]
    Dataplane(#[from] crate::dataplane::Error),
    /// A pinned map could not be opened.
    #[error("flows: opening the pinned map {path}: {message}")]
    Pin {
        /// The pin.
        path: PathBuf,
        /// What aya said.
        message: String,
    },
    /// The ring buffer could not be registered with tokio.
    #[error("flows: watching the ring buffer: {0}")]
    Ring(std::io::Error),
    /// The socket could not be served.
    #[error("flows: serving {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The agent's flow counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Ring-buffer events read.
    pub events: AtomicU64,
    /// Ring-buffer items too short to be an event.
    pub malformed: AtomicU64,
    /// Records kept (after de-duplication).
    pub records: AtomicU64,
    /// Flows ended by the idle sweep.
    pub idle_ended: AtomicU64,
    /// Pod veths attached to (by this agent).
    pub attached: AtomicU64,
    /// Attach failures.
    pub attach_failed: AtomicU64,
    /// The exporter's counters, when export is on.
    pub export: Mutex<Option<Arc<shoal_telemetry::flows::ExportStats>>>,
    /// Where the flow counters are pinned.
    pub pin_dir: Mutex<Option<PathBuf>>,
}

impl Metrics {
    /// Prometheus text of the flow pipeline and the datapath's flow
    /// counters.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            "shoal_flow_events_total",
            "Flow events read from the ring buffer.",
            get(&self.events),
        );
        counter(
            "shoal_flow_records_total",
            "Flow records kept after de-duplication.",
            get(&self.records),
        );
        counter(
            "shoal_flow_idle_ended_total",
            "Flows ended by the idle sweep.",
            get(&self.idle_ended),
        );
        counter(
            "shoal_flow_malformed_events_total",
            "Ring-buffer items too short to be an event.",
            get(&self.malformed),
        );
        counter(
            "shoal_flow_attach_failures_total",
            "Failed attaches of the flow programs to pod veths.",
            get(&self.attach_failed),
        );
        let export = self
            .export
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(s) = export {
            counter(
                "shoal_flow_export_queued_total",
                "Flow log records queued for OTLP export.",
                get(&s.queued),
            );
            counter(
                "shoal_flow_export_exported_total",
                "Flow log records the collector accepted.",
                get(&s.exported),
            );
            counter(
                "shoal_flow_export_dropped_total",
                "Flow log records dropped: export queue full.",
                get(&s.dropped_queue_full),
            );
            counter(
                "shoal_flow_export_failed_total",
                "Flow log records in batches the collector refused or did not answer in time.",
                get(&s.failed),
            );
        }
        let pins = self
            .pin_dir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(pins) = pins
            && let Ok(stats) = read_stats(&pins)
        {
            let _ = writeln!(
                out,
                "# HELP shoal_flow_datapath_total Flow counters of the pod-interface programs, by kind (ring_full: events lost to a full ring buffer).\n# TYPE shoal_flow_datapath_total counter"
            );
            for (name, v) in stats {
                let _ = writeln!(out, "shoal_flow_datapath_total{{kind=\"{name}\"}} {v}");
            }
        }
        out
    }
}

/// The datapath's flow counters, summed over CPUs, from their pin.
pub fn read_stats(pin_dir: &std::path::Path) -> Result<Vec<(&'static str, u64)>, Error> {
    let path = pin_dir.join(shoal_ebpf_common::flow::FLOW_STATS);
    let pin_err = |message: String| Error::Pin {
        path: path.clone(),
        message,
    };
    let data = MapData::from_pin(&path).map_err(|e| pin_err(e.to_string()))?;
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
        .map_err(|e| pin_err(e.to_string()))?;
    (0..FLOW_STAT_COUNT)
        .map(|i| {
            let v = map.get(&i, 0).map_err(|e| pin_err(e.to_string()))?;
            Ok((FLOW_STAT_NAMES[i as usize], v.iter().sum()))
        })
        .collect()
}

/// The process's flow counters (the health port renders them).
pub fn metrics() -> &'static Arc<Metrics> {
    static METRICS: std::sync::OnceLock<Arc<Metrics>> = std::sync::OnceLock::new();
    METRICS.get_or_init(Arc::default)
}

/// Recent records and the follow stream.
pub(crate) struct Hub {
    recent: Mutex<VecDeque<FlowRecord>>,
    capacity: usize,
    tx: broadcast::Sender<FlowRecord>,
}

impl Hub {
    fn new(capacity: usize) -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            tx: broadcast::channel(4096).0,
        }
    }

    fn push(&self, r: FlowRecord) {
        {
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent.len() == self.capacity {
                recent.pop_front();
            }
            recent.push_back(r.clone());
        }
        // No follower is fine.
        let _ = self.tx.send(r);
    }

    pub(crate) fn snapshot(&self, filter: &Filter) -> Vec<FlowRecord> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|r| filter.matches(r))
            .cloned()
            .collect()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<FlowRecord> {
        self.tx.subscribe()
    }
}

/// `CLOCK_BOOTTIME` now, in ns (the clock of `bpf_ktime_get_boot_ns`).
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn clock() -> record::Clock {
    record::Clock {
        offset: i128::from(unix_ns()) - i128::from(boot_ns()),
    }
}

/// Whether this node keeps the record of a flow seen on one of its pods:
/// yes where the flow left its initiator, or where it entered its
/// destination when the initiator is not a known pod (elsewhere the
/// initiator's node keeps it), and always where policy dropped it (only
/// this node saw that verdict).
pub fn keeps(egress: bool, initiator_is_pod: bool, forwarded: bool) -> bool {
    egress || !initiator_is_pod || !forwarded
}

/// Resolves, de-duplicates, keeps and exports one record.
struct Sink {
    dir: resolve::Shared,
    hub: Arc<Hub>,
    exporter: Option<Arc<FlowExporter>>,
    metrics: Arc<Metrics>,
}

impl Sink {
    fn take(&self, mut r: FlowRecord) {
        {
            let d = self
                .dir
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let initiator_is_pod = r.source.ip.is_some_and(|ip| d.pod(&ip).is_some());
            if !keeps(r.egress, initiator_is_pod, r.verdict == "forwarded") {
                return;
            }
            d.resolve(&mut r.source, &r.transport);
            d.resolve(&mut r.destination, &r.transport);
        }
        self.metrics.records.fetch_add(1, Ordering::Relaxed);
        if r.kind.is_end()
            && let Some(exporter) = &self.exporter
        {
            exporter.export(to_log(&r), &to_counts(&r));
        }
        self.hub.push(r);
    }
}

fn leak_str(s: &str) -> &'static str {
    match s {
        "tcp" => "tcp",
        "udp" => "udp",
        "ipv4" => "ipv4",
        "ipv6" => "ipv6",
        "dropped_policy" => "dropped_policy",
        "dropped" => "dropped",
        _ => "forwarded",
    }
}

fn to_counts(r: &FlowRecord) -> FlowCounts {
    FlowCounts {
        transport: leak_str(&r.transport),
        network_type: leak_str(&r.network_type),
        verdict: leak_str(&r.verdict),
        drop_reason: (r.verdict != "forwarded").then_some("policy"),
        bytes_sent: r.bytes_sent,
        bytes_received: r.bytes_received,
    }
}

/// The OTLP log record of a flow: semantic-convention attributes
/// (`network.*`, `source.*`, `destination.*`, `client.*`, `server.*`,
/// `k8s.*` of the source pod) and `shoal.flow.*`.
pub fn to_log(r: &FlowRecord) -> FlowLog {
    let mut a: Vec<(&'static str, Value)> = vec![
        ("network.transport", Value::Str(r.transport.clone())),
        ("network.type", Value::Str(r.network_type.clone())),
        ("source.port", Value::Int(i64::from(r.source.port))),
        (
            "destination.port",
            Value::Int(i64::from(r.destination.port)),
        ),
        ("client.port", Value::Int(i64::from(r.source.port))),
        ("server.port", Value::Int(i64::from(r.destination.port))),
        ("shoal.flow.verdict", Value::Str(r.verdict.clone())),
        ("shoal.flow.end", Value::Str(r.kind.word().to_owned())),
        (
            "shoal.flow.bytes_sent",
            Value::Int(i64::try_from(r.bytes_sent).unwrap_or(i64::MAX)),
        ),
        (
            "shoal.flow.bytes_received",
            Value::Int(i64::try_from(r.bytes_received).unwrap_or(i64::MAX)),
        ),
        (
            "shoal.flow.packets_sent",
            Value::Int(i64::try_from(r.packets_sent).unwrap_or(i64::MAX)),
        ),
        (
            "shoal.flow.packets_received",
            Value::Int(i64::try_from(r.packets_received).unwrap_or(i64::MAX)),
        ),
        (
            "shoal.flow.tcp_flags_sent",
            Value::Int(i64::from(r.tcp_flags_sent)),
        ),
        (
            "shoal.flow.tcp_flags_received",
            Value::Int(i64::from(r.tcp_flags_received)),
        ),
        (
            "shoal.flow.start_time_unix_nano",
            Value::Int(i64::try_from(r.start_ns).unwrap_or(i64::MAX)),
        ),
        (
            "shoal.flow.end_time_unix_nano",
            Value::Int(i64::try_from(r.end_ns).unwrap_or(i64::MAX)),
        ),
        (
            "shoal.flow.direction",
            Value::Str(if r.egress { "egress" } else { "ingress" }.to_owned()),
        ),
    ];
    if let Some(ip) = r.source.ip {
        a.push(("source.address", Value::Str(ip.to_string())));
        a.push(("client.address", Value::Str(ip.to_string())));
    }
    if let Some(ip) = r.destination.ip {
        a.push(("destination.address", Value::Str(ip.to_string())));
        a.push(("server.address", Value::Str(ip.to_string())));
    }
    let ends: [(&Endpoint, [&'static str; 4]); 2] = [
        (
            &r.source,
            [
                "k8s.pod.name",
                "k8s.namespace.name",
                "k8s.node.name",
                "shoal.flow.source.services",
            ],
        ),
        (
            &r.destination,
            [
                "shoal.flow.destination.pod",
                "shoal.flow.destination.namespace",
                "shoal.flow.destination.node",
                "shoal.flow.destination.services",
            ],
        ),
    ];
    for (e, [pod, ns, node, services]) in ends {
        if let Some(v) = &e.pod {
            a.push((pod, Value::Str(v.clone())));
        }
        if let Some(v) = &e.namespace {
            a.push((ns, Value::Str(v.clone())));
        }
        if let Some(v) = &e.node {
            a.push((node, Value::Str(v.clone())));
        }
        if !e.services.is_empty() {
            a.push((services, Value::Str(e.services.join(","))));
        }
    }
    if let Some(reason) = &r.drop_reason {
        a.push(("shoal.flow.drop_reason", Value::Str(reason.clone())));
    }
    let secs = r.time_ns / 1_000_000_000;
    FlowLog {
        time: std::time::UNIX_EPOCH
            + Duration::from_secs(secs)
            + Duration::from_nanos(r.time_ns % 1_000_000_000),
        body: format_line(r),
        attributes: a,
    }
}

/// Runs the flow pipeline until the task is dropped: attaches to pod
/// veths, reads and sweeps, resolves, serves `shoal flows`, exports.
pub async fn run(
    client: kube::Client,
    dataplane: Arc<Mutex<Dataplane>>,
    cfg: Config,
    exporter: Option<Arc<FlowExporter>>,
) -> Result<(), Error> {
    let metrics = metrics().clone();
    *metrics
        .pin_dir
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cfg.pin_dir.clone());
    if let Some(e) = &exporter {
        *metrics
            .export
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.stats());
    }
    let ring = dataplane
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take_flow_events()?;
    let table_path = cfg.pin_dir.join(shoal_ebpf_common::flow::FLOWS);
    let table = MapData::from_pin(&table_path)
        .map_err(|e| e.to_string())
        .and_then(|d| {
            BpfHashMap::<MapData, FlowKey, FlowValue>::try_from(aya::maps::Map::LruHashMap(d))
                .map_err(|e| e.to_string())
        })
        .map_err(|message| Error::Pin {
            path: table_path.clone(),
            message,
        })?;

    let dir = resolve::Shared::default();
    let hub = Arc::new(Hub::new(cfg.recent));
    let sink = Arc::new(Sink {
        dir: dir.clone(),
        hub: hub.clone(),
        exporter,
        metrics: metrics.clone(),
    });

    // Sandboxes made from now on get the programs before their first packet.
    {
        let dataplane = dataplane.clone();
        let metrics = metrics.clone();
        shoal_sandbox::set_veth_hook(Box::new(move |veth| {
            let mut dp = dataplane
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match dp.attach_pod(veth) {
                Ok(()) => {
                    metrics.attached.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    metrics.attach_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(veth, error = %e, "attaching the flow programs; the 2 s pass retries");
                }
            }
        }));
    }
    let resolver = tokio::spawn(resolve::watch(client, dir));
    let attacher = tokio::spawn(attach_loop(dataplane, metrics.clone()));
    let sweeper = tokio::spawn(sweep_loop(table, cfg.clone(), sink.clone()));
    let server = server::serve(cfg.socket.clone(), hub);
    let reader = read_loop(ring, sink, metrics);
    let result = tokio::select! {
        r = server => r,
        r = reader => r,
    };
    resolver.abort();
    attacher.abort();
    sweeper.abort();
    result
}

/// The reader and sink alone, without the cluster: no resolver (records
/// stay unresolved), attacher, sweeper or socket. `cargo xtask bench
/// flows` drives the pipeline through this with events made by
/// `BPF_PROG_TEST_RUN`; `metrics` counts what it read.
pub async fn read_events(
    ring: RingBuf<MapData>,
    exporter: Option<Arc<FlowExporter>>,
    metrics: Arc<Metrics>,
) -> Result<(), Error> {
    let sink = Arc::new(Sink {
        dir: resolve::Shared::default(),
        hub: Arc::new(Hub::new(DEFAULT_RECENT)),
        exporter,
        metrics: metrics.clone(),
    });
    read_loop(ring, sink, metrics).await
}

/// One ring-buffer item as the reader decodes it (unresolved), for
/// `BPF_PROG_TEST_RUN` tests; `None` if it is too short to be an event.
pub fn decode_event(item: &[u8]) -> Option<FlowRecord> {
    record::decode(item).map(|e| record::from_event(&e, clock()))
}

#[expect(
    deprecated,
    reason = "its replacement is the same call marked unsafe; the ring buffer owns its fd for the AsyncFd's lifetime"
)]
async fn read_loop(
    ring: RingBuf<MapData>,
    sink: Arc<Sink>,
    metrics: Arc<Metrics>,
) -> Result<(), Error> {
    let mut fd =
        AsyncFd::with_interest(ring, tokio::io::Interest::READABLE).map_err(Error::Ring)?;
    let clock = clock();
    loop {
        let mut guard = fd.readable_mut().await.map_err(Error::Ring)?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(event) = record::decode(&item) else {
                metrics.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            drop(item);
            metrics.events.fetch_add(1, Ordering::Relaxed);
            sink.take(record::from_event(&event, clock));
        }
        guard.clear_ready();
    }
}

/// Removes closed flows after [`ENDED_GRACE`] and ends idle ones.
async fn sweep_loop(
    mut table: BpfHashMap<MapData, FlowKey, FlowValue>,
    cfg: Config,
    sink: Arc<Sink>,
) {
    let clock = clock();
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let now = boot_ns();
        let entries: Vec<(FlowKey, FlowValue)> = table.iter().filter_map(Result::ok).collect();
        for (key, value) in entries {
            let idle = Duration::from_nanos(now.saturating_sub(value.last_ns));
            let ended = value.state & FLOW_STATE_ENDED != 0;
            let timeout = if key.proto == shoal_ebpf_common::IPPROTO_UDP {
                cfg.udp_idle
            } else {
                cfg.tcp_idle
            };
            if ended && idle >= ENDED_GRACE {
                let _ = table.remove(&key);
            } else if !ended && idle >= timeout {
                let _ = table.remove(&key);
                sink.metrics.idle_ended.fetch_add(1, Ordering::Relaxed);
                let r = record::from_entry(
                    &key,
                    &value,
                    Kind::EndIdle,
                    shoal_ebpf_common::flow::FLOW_VERDICT_FORWARDED,
                    clock,
                    unix_ns(),
                );
                sink.take(r);
            }
        }
    }
}

/// Attaches the flow programs to every pod veth of the node that this
/// agent has not attached yet (adopted sandboxes, a missed hook), and
/// removes the pins of veths that are gone.
async fn attach_loop(dataplane: Arc<Mutex<Dataplane>>, metrics: Arc<Metrics>) {
    let mut done: BTreeMap<String, u32> = BTreeMap::new();
    let mut tick = tokio::time::interval(ATTACH_INTERVAL);
    loop {
        tick.tick().await;
        let Ok(ifaces) = nix::net::if_::if_nameindex() else {
            continue;
        };
        let live: BTreeMap<String, u32> = ifaces
            .iter()
            .filter_map(|i| {
                let name = i.name().to_str().ok()?;
                name.starts_with(shoal_sandbox::HOST_VETH_PREFIX)
                    .then(|| (name.to_owned(), i.index()))
            })
            .collect();
        let mut dp = dataplane
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (veth, index) in &live {
            if done.get(veth) == Some(index) {
                continue;
            }
            match dp.attach_pod(veth) {
                Ok(()) => {
                    metrics.attached.fetch_add(1, Ordering::Relaxed);
                    done.insert(veth.clone(), *index);
                }
                Err(e) => {
                    metrics.attach_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%veth, error = %e, "attaching the flow programs; retrying");
                }
            }
        }
        done.retain(|veth, _| live.contains_key(veth));
        let names: BTreeSet<String> = live.into_keys().collect();
        if let Err(e) = dp.prune_pod_links(&names) {
            tracing::warn!(error = %e, "removing the pins of gone pod veths");
        }
    }
}
