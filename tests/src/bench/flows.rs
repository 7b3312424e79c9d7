//! `cargo xtask bench flows`, part (a): flow events through the agent's
//! pipeline.
//!
//! Two cores cannot open 500,000 real connections a second, so a generator
//! feeds the ring buffer the way the datapath does: it runs the real
//! `from_container` program (loaded by the agent's `Dataplane` in a lab
//! host's pin directory and cgroup) with `BPF_PROG_TEST_RUN` over crafted
//! packets, every flow a distinct 5-tuple: IPv4 and IPv6 TCP (a SYN, then
//! an RST: a start and an end event) and UDP (one packet: a start event;
//! its end would come from the idle sweep, which does not run here). The
//! agent's own reader and sink (`shoal_agent::flows::read_events`) drain
//! the ring in the same process and hand every ended flow to the agent's
//! OTLP exporter (`shoal_telemetry`, bounded queue, gRPC), which sends
//! them to a real OTLP receiver (`opentelemetry-proto`'s `LogsService`)
//! on loopback.
//!
//! Each run is its own process (`bench flows-pipeline`, this binary): the
//! exporter reads its endpoint from `OTEL_EXPORTER_OTLP_ENDPOINT` when it
//! starts, and each run starts from empty maps. Cases: the generator as
//! fast as its 2 threads go (the machine has 2 cores, shared with the
//! reader and the exporter), paced at the goal rate (where the generator
//! cannot reach it, the same as unpaced) and at a fifth of it. Figures:
//! events/s read by the pipeline (from the first packet to the last event
//! read), records/s accepted by the receiver, ring-buffer reserve failures
//! (`FLOW_STAT_RING_FULL`) and export drops (queue full or refused). The
//! reference is the goal (500,000 events/s, no losses), not a
//! system measured here: no other flow exporter runs on this machine.

use std::{
    fmt::Write as _,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
    logs_service_server::{LogsService, LogsServiceServer},
};
use serde::{Deserialize, Serialize};
use shoal_agent::{Dataplane, DataplaneConfig, flows};
use shoal_telemetry::flows::{FlowExportConfig, FlowExporter, Protocol};

use super::Row;
use crate::{lab::Lab, test_run::test_run};

/// Runs per case; the median is reported with the spread.
const RUNS: usize = 5;
/// How long the generator runs in one run.
const RUN: Duration = Duration::from_secs(2);
/// The goal: flow events per second through the pipeline.
const GOAL: f64 = 500_000.0;
/// Generator threads (the machine has 2 cores).
const THREADS: usize = 2;
/// How long the pipeline may take to drain the ring, and the exporter its
/// queue, after the generator stops.
const DRAIN: Duration = Duration::from_secs(20);
/// What the program returns for "not ours to decide".
const TC_ACT_UNSPEC: u32 = u32::MAX;

const REFERENCE: &str = "issue 10's goal: 500,000 events/s, no ring-buffer or export losses";

/// Arguments of `bench flows-pipeline`: one run, in its own process.
#[derive(clap::Args, Debug)]
pub struct PipelineArgs {
    /// The lab host's pin directory (a subdirectory is made per run).
    #[arg(long)]
    pub pin_dir: PathBuf,
    /// The lab host's cgroup (the dataplane attaches its socket programs
    /// there).
    #[arg(long)]
    pub cgroup: PathBuf,
    /// The receiver's port on 127.0.0.1 (the same as in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[arg(long)]
    pub port: u16,
    /// Generation time in milliseconds.
    #[arg(long)]
    pub duration_ms: u64,
    /// Events per second to pace the generator at; 0: as fast as it goes.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

/// What one run reports (one JSON line).
#[derive(Serialize, Deserialize, Debug, Clone)]
struct RunReport {
    /// `BPF_PROG_TEST_RUN` calls.
    packets: u64,
    /// Events the program submitted (`FLOW_STAT_EVENTS`).
    submitted: u64,
    /// Ring-buffer reserve failures (`FLOW_STAT_RING_FULL`).
    ring_full: u64,
    /// Events the pipeline read.
    read: u64,
    /// Events read per second, first packet to last event read.
    read_rate: f64,
    /// Ended flows the exporter queued.
    queued: u64,
    /// Dropped by the exporter: queue full.
    export_dropped: u64,
    /// In batches the receiver refused or did not answer in time.
    export_failed: u64,
    /// Log records the receiver got.
    received: u64,
    /// Received records per second, first packet to last batch received
    /// (0 when none arrived).
    received_rate: f64,
    /// Whether the pipeline drained before the deadline.
    drained: bool,
}

/// Runs the cases, each [`RUNS`] times in processes of their own.
pub fn run() -> Result<Vec<Row>> {
    let lab = Lab::create(&Lab::unique_prefix(), 1).context("creating the lab")?;
    let host = lab.host(1);
    let exe = std::env::current_exe().context("finding the bench binary")?;
    let mut rows = Vec::new();
    let mut details = String::new();
    for (case, rate) in [
        ("generator unpaced (2 threads)", 0u64),
        ("generator paced at 500,000 events/s", GOAL as u64),
        ("generator paced at 100,000 events/s", 100_000),
    ] {
        let mut runs = Vec::new();
        for run in 0..RUNS {
            let port = free_port()?;
            let out = std::process::Command::new(&exe)
                .arg("flows-pipeline")
                .arg("--pin-dir")
                .arg(host.pin_dir().join(format!("flows-bench-{run}")))
                .arg("--cgroup")
                .arg(host.cgroup())
                .arg("--port")
                .arg(port.to_string())
                .arg("--duration-ms")
                .arg(RUN.as_millis().to_string())
                .arg("--rate")
                .arg(rate.to_string())
                .env(
                    shoal_telemetry::flows::ENDPOINT_ENV,
                    format!("http://127.0.0.1:{port}"),
                )
                .env(shoal_telemetry::flows::PROTOCOL_ENV, "grpc")
                .stderr(Stdio::inherit())
                .output()
                .context("running bench flows-pipeline")?;
            ensure!(
                out.status.success(),
                "{case}, run {run}: bench flows-pipeline failed ({})",
                out.status
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .with_context(|| format!("{case}, run {run}: no report in {text:?}"))?;
            let report: RunReport = serde_json::from_str(line)
                .with_context(|| format!("{case}, run {run}: reading {line:?}"))?;
            let _ = writeln!(details, "  {case}, run {run}: {report:?}");
            runs.push(report);
        }
        let figure = |f: fn(&RunReport) -> f64| -> (f64, [f64; 2]) {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], [v[0], v[v.len() - 1]])
        };
        let (read, read_spread) = figure(|r| r.read_rate);
        let (received, received_spread) = figure(|r| r.received_rate);
        rows.push(
            Row::higher(case, "read", "ev/s", read, GOAL, REFERENCE)
                .with_spread(read_spread, [GOAL, GOAL]),
        );
        rows.push(
            Row::higher(case, "exported", "rec/s", received, GOAL, REFERENCE)
                .with_spread(received_spread, [GOAL, GOAL]),
        );
        for (metric, f) in [
            (
                "ring_full",
                (|r: &RunReport| r.ring_full as f64) as fn(&RunReport) -> f64,
            ),
            ("exp_drop", |r: &RunReport| {
                (r.export_dropped + r.export_failed) as f64
            }),
        ] {
            let (median, spread) = figure(f);
            rows.push(
                Row::lower(case, metric, "count", median, 0.0, REFERENCE)
                    .with_spread(spread, [0.0, 0.0]),
            );
        }
    }
    println!(
        "median of {RUNS} runs of {} s each:\n{details}",
        RUN.as_secs()
    );
    Ok(rows)
}

/// A port free on 127.0.0.1 right now.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The receiver: counts log records and when the last batch came.
#[derive(Clone)]
struct Receiver {
    records: Arc<AtomicU64>,
    last: Arc<Mutex<Option<Instant>>>,
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let n: usize = request
            .into_inner()
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .map(|sl| sl.log_records.len())
            .sum();
        self.records.fetch_add(n as u64, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// One run (`bench flows-pipeline`): prints one JSON line.
pub fn pipeline(args: &PipelineArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let receiver = Receiver {
        records: Arc::default(),
        last: Arc::default(),
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    let server = {
        let receiver = receiver.clone();
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(LogsServiceServer::new(receiver))
                .serve(addr),
        )
    };

    let _ = std::fs::remove_dir_all(&args.pin_dir);
    let result = measure(args, &runtime, &receiver);
    server.abort();
    let _ = std::fs::remove_dir_all(&args.pin_dir);
    let report = result?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn measure(
    args: &PipelineArgs,
    runtime: &tokio::runtime::Runtime,
    receiver: &Receiver,
) -> Result<RunReport> {
    let mut dataplane = Dataplane::load(DataplaneConfig {
        pin_dir: args.pin_dir.clone(),
        cgroup: args.cgroup.clone(),
        ebpf_debug_logs: false,
    })
    .context("loading the dataplane")?;
    dataplane
        .load_pod_programs()
        .context("loading the pod programs")?;
    let ring = dataplane.take_flow_events()?;
    let fd: OwnedFd = dataplane
        .program_fd("from_container")
        .context("from_container is not loaded")?
        .try_clone_to_owned()?;

    let exporter = {
        let _entered = runtime.enter();
        FlowExporter::start(&FlowExportConfig {
            logs: Some(Protocol::Grpc),
            metrics: None,
            queue: shoal_telemetry::flows::DEFAULT_QUEUE,
            node: "bench".into(),
            cluster: "bench".into(),
        })
        .context("starting the OTLP exporter")?
    };
    let stats = exporter.stats();
    let exporter = Arc::new(exporter);
    let metrics = Arc::new(flows::Metrics::default());
    let reader = runtime.spawn(flows::read_events(
        ring,
        Some(exporter.clone()),
        metrics.clone(),
    ));

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let per_thread_rate = args.rate as f64 / THREADS as f64;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let fd = fd.try_clone()?;
            let stop = stop.clone();
            Ok(std::thread::spawn(move || {
                generate(fd.as_fd(), t as u32, per_thread_rate, &stop)
            }))
        })
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_millis(args.duration_ms));
    stop.store(true, Ordering::Relaxed);
    let mut packets = 0;
    for t in threads {
        match t.join() {
            Ok(r) => packets += r?,
            Err(_) => bail!("a generator thread panicked"),
        }
    }

    let stat = |name: &str| -> Result<u64> {
        let all = flows::read_stats(&args.pin_dir)?;
        Ok(all.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v))
    };
    let submitted = stat("events")?;
    let ring_full = stat("ring_full")?;
    let deadline = Instant::now() + DRAIN;
    let mut read_done = None;
    while Instant::now() < deadline {
        if read_done.is_none() && metrics.events.load(Ordering::Relaxed) >= submitted {
            read_done = Some(started.elapsed());
        }
        let queued = stats.queued.load(Ordering::Relaxed);
        let settled = stats.exported.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed);
        if read_done.is_some() && settled >= queued {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let read = metrics.events.load(Ordering::Relaxed);
    let read_secs = read_done.unwrap_or_else(|| started.elapsed()).as_secs_f64();
    let received = receiver.records.load(Ordering::Relaxed);
    let last = (*receiver.last.lock().unwrap_or_else(|e| e.into_inner()))
        .map(|t| t.duration_since(started).as_secs_f64());
    reader.abort();
    drop(exporter);
    Ok(RunReport {
        packets,
        submitted,
        ring_full,
        read,
        read_rate: read as f64 / read_secs,
        queued: stats.queued.load(Ordering::Relaxed),
        export_dropped: stats.dropped_queue_full.load(Ordering::Relaxed),
        export_failed: stats.failed.load(Ordering::Relaxed),
        received,
        received_rate: last.map_or(0.0, |secs| received as f64 / secs),
        drained: read_done.is_some(),
    })
}

/// Runs flows through the program until `stop` ([`Template::set_flow`]
/// keeps threads' 5-tuples apart).
/// Paced at `rate` events/s when it is not 0. Returns the packets run.
fn generate(fd: BorrowedFd<'_>, t: u32, rate: f64, stop: &AtomicBool) -> Result<u64> {
    let mut tcp4 = Template::new(false, 6);
    let mut tcp6 = Template::new(true, 6);
    let mut udp4 = Template::new(false, 17);
    let mut udp6 = Template::new(true, 17);
    let started = Instant::now();
    let mut events = 0u64;
    let mut packets = 0u64;
    let mut flow = 0u32;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            // One flow in 4 is UDP; families alternate.
            let f = flow;
            flow = flow.wrapping_add(1) & 0x00ff_ffff;
            let template = match flow % 8 {
                0 | 2 | 4 => &mut tcp4,
                1 | 3 | 5 => &mut tcp6,
                6 => &mut udp4,
                _ => &mut udp6,
            };
            template.set_flow(t, f);
            if template.proto == 6 {
                template.set_tcp_flags(0x02);
                run_once(fd, &template.bytes)?;
                template.set_tcp_flags(0x04);
                run_once(fd, &template.bytes)?;
                packets += 2;
                events += 2;
            } else {
                run_once(fd, &template.bytes)?;
                packets += 1;
                events += 1;
            }
        }
        if rate > 0.0 {
            let due = Duration::from_secs_f64(events as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(packets)
}

/// A packet from a pod whose source address and port change per flow.
/// Checksums are left zero: the program does not read them.
struct Template {
    bytes: Vec<u8>,
    v6: bool,
    proto: u8,
}

impl Template {
    fn new(v6: bool, proto: u8) -> Self {
        let l4_len = if proto == 6 { 20 } else { 8 + 32 };
        let mut b = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if v6 {
            b.extend_from_slice(&0x86ddu16.to_be_bytes());
            b.extend_from_slice(&[0x60, 0, 0, 0]);
            b.extend_from_slice(&(l4_len as u16).to_be_bytes());
            b.extend_from_slice(&[proto, 64]);
            b.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            b.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x63]);
        } else {
            b.extend_from_slice(&0x0800u16.to_be_bytes());
            b.extend_from_slice(&[0x45, 0]);
            b.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            b.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            b.extend_from_slice(&[10, 0, 0, 0]);
            b.extend_from_slice(&[10, 99, 0, 99]);
        }
        let mut l4 = vec![0u8; l4_len];
        l4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        if proto == 6 {
            l4[12] = 5 << 4;
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
        } else {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        b.extend_from_slice(&l4);
        Self {
            bytes: b,
            v6,
            proto,
        }
    }

    fn l4(&self) -> usize {
        if self.v6 { 14 + 40 } else { 14 + 20 }
    }

    /// Flow `f` of generator thread `t`: source port `1024 + f % 32768`,
    /// source address `10.(t+1).x.y` / `fd00::(t+1):x:y` with `x.y = f /
    /// 32768`, so no two flows of a run share a 5-tuple.
    fn set_flow(&mut self, t: u32, f: u32) {
        let port = 1024 + (f & 0x7fff) as u16;
        let [_, _, x, y] = (f >> 15).to_be_bytes();
        let l4 = self.l4();
        self.bytes[l4..l4 + 2].copy_from_slice(&port.to_be_bytes());
        let t = (t + 1) as u8;
        let s = if self.v6 { 14 + 8 + 13 } else { 14 + 12 + 1 };
        self.bytes[s..s + 3].copy_from_slice(&[t, x, y]);
    }

    fn set_tcp_flags(&mut self, flags: u8) {
        let l4 = self.l4();
        self.bytes[l4 + 13] = flags;
    }
}

/// One `BPF_PROG_TEST_RUN` of `from_container` on `packet`, which must
/// pass: no policy covers the generator's flows.
fn run_once(fd: BorrowedFd<'_>, packet: &[u8]) -> Result<()> {
    let retval = test_run(fd, packet).context("BPF_PROG_TEST_RUN of from_container")?;
    ensure!(
        retval == TC_ACT_UNSPEC,
        "from_container returned {:#x} for a flow no policy covers",
        retval
    );
    Ok(())
}
