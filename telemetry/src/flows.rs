//! OTLP export of network flows: one log record per flow and counters
//! (flows, bytes, drops), with `k8s.node.name` and `k8s.cluster.name` as
//! resource attributes.
//!
//! Configured by the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` / `..._METRICS_ENDPOINT` and
//! `OTEL_EXPORTER_OTLP_PROTOCOL` / `..._LOGS_PROTOCOL` /
//! `..._METRICS_PROTOCOL` (`grpc`, the default, or `http/protobuf`). No
//! endpoint, no export.
//!
//! Back-pressure: [`FlowExporter::export`] never blocks. Log records go
//! through a bounded queue of our own in front of the OTLP exporter (the
//! SDK's batch processor drops silently when full); a full queue drops the
//! record and counts it, and a failed or timed-out batch counts its records
//! as failed. A slow or stopped collector therefore costs counted drops,
//! never a stalled caller.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use opentelemetry::{
    InstrumentationScope, KeyValue,
    logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity},
    metrics::{Counter, MeterProvider as _},
};
use opentelemetry_otlp::{LogExporter, MetricExporter, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    logs::{LogBatch, LogExporter as _, LogProcessor, SdkLogRecord, SdkLogger, SdkLoggerProvider},
    metrics::{PeriodicReader, SdkMeterProvider},
};
use tokio::{runtime::Runtime, sync::mpsc};

use crate::Error;

/// Generic OTLP endpoint.
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// OTLP endpoint of log records (used as is).
pub const LOGS_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT";
/// OTLP endpoint of metrics (used as is).
pub const METRICS_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
/// Generic OTLP protocol.
pub const PROTOCOL_ENV: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// OTLP protocol of log records.
pub const LOGS_PROTOCOL_ENV: &str = "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL";
/// OTLP protocol of metrics.
pub const METRICS_PROTOCOL_ENV: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";
/// `true` turns every export off.
pub const SDK_DISABLED_ENV: &str = "OTEL_SDK_DISABLED";
/// Default bound of the log record queue in front of the exporter.
pub const DEFAULT_QUEUE: usize = 8192;
/// Most log records in one export call.
pub const DEFAULT_BATCH: usize = 512;
/// How long a batch may wait for more records.
pub const BATCH_DELAY: Duration = Duration::from_millis(200);
/// How long one export call may take before its records count as failed.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Instrumentation scope of the flow records and metrics.
pub const SCOPE: &str = "shoal.flows";

/// An OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `grpc` (port 4317 by convention).
    Grpc,
    /// `http/protobuf` (port 4318 by convention).
    HttpProtobuf,
}

impl Protocol {
    fn parse(var: &'static str, value: &str) -> Result<Self, Error> {
        match value {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            _ => Err(Error::UnsupportedProtocol {
                var,
                value: value.to_owned(),
            }),
        }
    }
}

/// Where flows go: which signals are exported over which transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowExportConfig {
    /// Log records' transport; `None`: no log export.
    pub logs: Option<Protocol>,
    /// Metrics' transport; `None`: no metric export.
    pub metrics: Option<Protocol>,
    /// Bound of the log record queue.
    pub queue: usize,
    /// `k8s.node.name`.
    pub node: String,
    /// `k8s.cluster.name`.
    pub cluster: String,
}

impl FlowExportConfig {
    /// Reads the OTLP variables through `lookup`; `None` when no endpoint
    /// is configured (or the SDK is disabled).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        node: &str,
        cluster: &str,
    ) -> Result<Option<Self>, Error> {
        let get = |key: &'static str| {
            lookup(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if get(SDK_DISABLED_ENV).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let generic = get(ENDPOINT_ENV).is_some();
        let signal = |endpoint: &'static str, protocol: &'static str| -> Result<_, Error> {
            if !generic && get(endpoint).is_none() {
                return Ok(None);
            }
            let (var, value) = match get(protocol) {
                Some(v) => (protocol, v),
                None => match get(PROTOCOL_ENV) {
                    Some(v) => (PROTOCOL_ENV, v),
                    None => return Ok(Some(Protocol::Grpc)),
                },
            };
            Protocol::parse(var, &value).map(Some)
        };
        let logs = signal(LOGS_ENDPOINT_ENV, LOGS_PROTOCOL_ENV)?;
        let metrics = signal(METRICS_ENDPOINT_ENV, METRICS_PROTOCOL_ENV)?;
        if logs.is_none() && metrics.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            logs,
            metrics,
            queue: DEFAULT_QUEUE,
            node: node.to_owned(),
            cluster: cluster.to_owned(),
        }))
    }
}

/// An attribute value of a flow record.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
}

/// One flow as a log record: its time, a one-line body and its attributes.
#[derive(Clone, Debug)]
pub struct FlowLog {
    /// When the flow ended (or was seen).
    pub time: SystemTime,
    /// A human-readable line.
    pub body: String,
    /// Semantic-convention and `shoal.flow.*` attributes.
    pub attributes: Vec<(&'static str, Value)>,
}

/// What one flow adds to the metrics.
#[derive(Clone, Debug)]
pub struct FlowCounts {
    /// `network.transport` (`tcp`, `udp`).
    pub transport: &'static str,
    /// `network.type` (`ipv4`, `ipv6`).
    pub network_type: &'static str,
    /// `shoal.flow.verdict`.
    pub verdict: &'static str,
    /// Why it was dropped, when it was.
    pub drop_reason: Option<&'static str>,
    /// Bytes from the flow's source to its destination.
    pub bytes_sent: u64,
    /// Bytes back.
    pub bytes_received: u64,
}

/// Counters of the export path, for the agent's `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Log records handed to the exporter.
    pub queued: AtomicU64,
    /// Log records dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Log records in batches the collector did not accept (error or timeout).
    pub failed: AtomicU64,
    /// Log records the collector accepted.
    pub exported: AtomicU64,
}

/// The running flow export; flushes and stops on drop.
pub struct FlowExporter {
    logger: Option<SdkLogger>,
    logs: Option<SdkLoggerProvider>,
    meters: Option<SdkMeterProvider>,
    flows: Option<Counter<u64>>,
    bytes: Option<Counter<u64>>,
    drops: Option<Counter<u64>>,
    stats: Arc<ExportStats>,
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for FlowExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowExporter")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl FlowExporter {
    /// Starts the exporters `config` asks for, on a runtime of their own.
    pub fn start(config: &FlowExportConfig) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shoal-otlp-flows")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let resource = Resource::builder()
            .with_service_name("shoal-agent")
            .with_attributes([
                KeyValue::new("k8s.node.name", config.node.clone()),
                KeyValue::new("k8s.cluster.name", config.cluster.clone()),
            ])
            .build();
        let stats = Arc::new(ExportStats::default());
        let mut this = Self {
            logger: None,
            logs: None,
            meters: None,
            flows: None,
            bytes: None,
            drops: None,
            stats: stats.clone(),
            runtime: None,
        };
        if let Some(protocol) = config.logs {
            let exporter = {
                let _entered = runtime.enter();
                match protocol {
                    Protocol::Grpc => LogExporter::builder().with_tonic().build(),
                    Protocol::HttpProtobuf => LogExporter::builder()
                        .with_http()
                        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                        .build(),
                }
            }
            .map_err(|error| Error::FlowExporter {
                signal: "logs",
                error,
            })?;
            let processor =
                QueueProcessor::start(&runtime, exporter, &resource, config.queue, stats);
            let provider = SdkLoggerProvider::builder()
                .with_resource(resource.clone())
                .with_log_processor(processor)
                .build();
            this.logger = Some(provider.logger(SCOPE));
            this.logs = Some(provider);
        }
        if let Some(protocol) = config.metrics {
            let exporter = {
                let _entered = runtime.enter();
                match protocol {
                    Protocol::Grpc => MetricExporter::builder().with_tonic().build(),
                    Protocol::HttpProtobuf => MetricExporter::builder()
                        .with_http()
                        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                        .build(),
                }
            }
            .map_err(|error| Error::FlowExporter {
                signal: "metrics",
                error,
            })?;
            let provider = SdkMeterProvider::builder()
                .with_resource(resource)
                .with_reader(PeriodicReader::builder(exporter).build())
                .build();
            let meter = provider.meter(SCOPE);
            this.flows = Some(
                meter
                    .u64_counter("shoal.flows")
                    .with_description("Flows seen on pod interfaces, by verdict")
                    .build(),
            );
            this.bytes = Some(
                meter
                    .u64_counter("shoal.flow.bytes")
                    .with_unit("By")
                    .with_description("Bytes of flows seen on pod interfaces, by direction")
                    .build(),
            );
            this.drops = Some(
                meter
                    .u64_counter("shoal.flow.drops")
                    .with_description("Dropped flows, by reason")
                    .build(),
            );
            this.meters = Some(provider);
        }
        this.runtime = Some(runtime);
        Ok(this)
    }

    /// Hands one flow to the exporters; never blocks (a full queue drops
    /// the log record and counts it).
    pub fn export(&self, log: FlowLog, counts: &FlowCounts) {
        if let Some(logger) = &self.logger {
            let mut record = logger.create_log_record();
            record.set_timestamp(log.time);
            record.set_observed_timestamp(SystemTime::now());
            record.set_severity_number(Severity::Info);
            record.set_severity_text("INFO");
            record.set_event_name("shoal.flow");
            record.set_body(AnyValue::from(log.body));
            for (key, value) in log.attributes {
                let value = match value {
                    Value::Str(s) => AnyValue::from(s),
                    Value::Int(i) => AnyValue::from(i),
                };
                record.add_attribute(key, value);
            }
            logger.emit(record);
        }
        let base = [
            KeyValue::new("network.transport", counts.transport),
            KeyValue::new("network.type", counts.network_type),
            KeyValue::new("shoal.flow.verdict", counts.verdict),
        ];
        if let Some(flows) = &self.flows {
            flows.add(1, &base);
        }
        if let Some(bytes) = &self.bytes {
            let [t, n, _] = base.clone();
            bytes.add(
                counts.bytes_sent,
                &[
                    t.clone(),
                    n.clone(),
                    KeyValue::new("shoal.flow.direction", "sent"),
                ],
            );
            bytes.add(
                counts.bytes_received,
                &[t, n, KeyValue::new("shoal.flow.direction", "received")],
            );
        }
        if let (Some(drops), Some(reason)) = (&self.drops, counts.drop_reason) {
            drops.add(1, &[KeyValue::new("shoal.flow.drop_reason", reason)]);
        }
    }

    /// The export path's counters.
    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }

    /// Flushes and stops; later calls do nothing.
    pub fn shutdown(&mut self) {
        if let Some(logs) = self.logs.take() {
            let _ = logs.shutdown_with_timeout(EXPORT_TIMEOUT);
        }
        if let Some(meters) = self.meters.take() {
            let _ = meters.shutdown_with_timeout(EXPORT_TIMEOUT);
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for FlowExporter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A log processor with a bounded queue whose drops are counted.
#[derive(Debug)]
struct QueueProcessor {
    tx: mpsc::Sender<(SdkLogRecord, InstrumentationScope)>,
    stats: Arc<ExportStats>,
}

impl QueueProcessor {
    fn start(
        runtime: &Runtime,
        mut exporter: LogExporter,
        resource: &Resource,
        queue: usize,
        stats: Arc<ExportStats>,
    ) -> Self {
        exporter.set_resource(resource);
        let (tx, mut rx) = mpsc::channel::<(SdkLogRecord, InstrumentationScope)>(queue.max(1));
        let worker_stats = stats.clone();
        runtime.spawn(async move {
            let mut batch = Vec::with_capacity(DEFAULT_BATCH);
            loop {
                let Some(first) = rx.recv().await else { return };
                batch.push(first);
                let deadline = tokio::time::Instant::now() + BATCH_DELAY;
                while batch.len() < DEFAULT_BATCH {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(item)) => batch.push(item),
                        Ok(None) | Err(_) => break,
                    }
                }
                let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                    batch.iter().map(|(r, s)| (r, s)).collect();
                let n = refs.len() as u64;
                let result =
                    tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(LogBatch::new(&refs)))
                        .await;
                match result {
                    Ok(Ok(())) => {
                        worker_stats.exported.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(Err(error)) => {
                        worker_stats.failed.fetch_add(n, Ordering::Relaxed);
                        tracing::debug!(%error, records = n, "flow log export failed");
                    }
                    Err(_) => {
                        worker_stats.failed.fetch_add(n, Ordering::Relaxed);
                        tracing::debug!(records = n, "flow log export timed out");
                    }
                }
                drop(refs);
                batch.clear();
            }
        });
        Self { tx, stats }
    }
}

impl LogProcessor for QueueProcessor {
    fn emit(&self, data: &mut SdkLogRecord, instrumentation: &InstrumentationScope) {
        match self.tx.try_send((data.clone(), instrumentation.clone())) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}
