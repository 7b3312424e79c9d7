use std::{
    collections::HashMap,
    sync::mpsc,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::Span,
};
use tokio::runtime::Runtime;
use tracing::Instrument as _;

use crate::{
    Config, DEFAULT_FILTER, ENDPOINT_ENV, Error, Otlp, PROTOCOL_ENV, SDK_DISABLED_ENV,
    SERVICE_NAME_ENV, TRACES_ENDPOINT_ENV, TRACES_PROTOCOL_ENV, Telemetry,
};

/// Upper bound on any wait for the collector.
const WAIT: Duration = Duration::from_secs(10);

fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let vars: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |key| vars.get(key).cloned()
}

fn config(pairs: &[(&str, &str)]) -> Config {
    Config::from_lookup(lookup(pairs)).expect("config should be accepted")
}

fn config_error(pairs: &[(&str, &str)]) -> String {
    match Config::from_lookup(lookup(pairs)) {
        Ok(config) => panic!("expected an error for {pairs:?}, got {config:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn defaults_without_environment() {
    let config = config(&[]);
    assert_eq!(config, Config::default());
    assert_eq!(config.filter, DEFAULT_FILTER);
    assert_eq!(config.otlp, None);

    let config = self::config(&[("RUST_LOG", "warn,shoal_agent=debug")]);
    assert_eq!(config.filter, "warn,shoal_agent=debug");
}

#[test]
fn traces_endpoint_takes_precedence() {
    let config = config(&[
        (ENDPOINT_ENV, "http://127.0.0.1:4317"),
        (TRACES_ENDPOINT_ENV, "http://127.0.0.1:14317"),
    ]);
    assert_eq!(
        config.otlp,
        Some(Otlp {
            endpoint: "http://127.0.0.1:14317".to_owned()
        })
    );

    // An empty variable counts as unset, per the OpenTelemetry spec.
    let config = self::config(&[
        (ENDPOINT_ENV, "http://127.0.0.1:4317"),
        (TRACES_ENDPOINT_ENV, ""),
    ]);
    assert_eq!(
        config.otlp,
        Some(Otlp {
            endpoint: "http://127.0.0.1:4317".to_owned()
        })
    );
}

#[test]
fn unsupported_protocol_names_variable_and_value() {
    let endpoint = (ENDPOINT_ENV, "http://127.0.0.1:4317");
    assert_eq!(
        config_error(&[endpoint, (PROTOCOL_ENV, "http/json")]),
        "OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not supported; use grpc"
    );
    assert_eq!(
        config_error(&[
            endpoint,
            (PROTOCOL_ENV, "grpc"),
            (TRACES_PROTOCOL_ENV, "http/protobuf")
        ]),
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf is not supported; use grpc"
    );
    assert!(config(&[endpoint, (PROTOCOL_ENV, "grpc")]).otlp.is_some());
}

#[test]
fn unusable_endpoints_are_rejected() {
    let error = config_error(&[(ENDPOINT_ENV, "https://collector:4317")]);
    assert!(
        error.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT=https://collector:4317 "),
        "{error}"
    );
    assert!(error.contains("TLS is not supported"), "{error}");

    let error = config_error(&[(TRACES_ENDPOINT_ENV, "127.0.0.1:4317")]);
    assert!(
        error.starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=127.0.0.1:4317 "),
        "{error}"
    );
}

#[test]
fn no_endpoint_means_no_export() {
    let config = config(&[(SERVICE_NAME_ENV, "shoal-test")]);
    assert_eq!(config.otlp, None);
    let telemetry = Telemetry::build(&config, "shoal-test").expect("build");
    assert!(!telemetry.exports_spans());
}

#[test]
fn sdk_disabled_means_no_export() {
    for value in ["true", "TRUE"] {
        let config = config(&[
            (ENDPOINT_ENV, "http://127.0.0.1:4317"),
            (SDK_DISABLED_ENV, value),
        ]);
        assert_eq!(config.otlp, None, "{SDK_DISABLED_ENV}={value}");
        let telemetry = Telemetry::build(&config, "shoal-test").expect("build");
        assert!(!telemetry.exports_spans());
    }

    let config = config(&[
        (ENDPOINT_ENV, "http://127.0.0.1:4317"),
        (SDK_DISABLED_ENV, "false"),
    ]);
    assert!(config.otlp.is_some());

    assert_eq!(
        config_error(&[(SDK_DISABLED_ENV, "1")]),
        "OTEL_SDK_DISABLED=1 is not a boolean; use true or false"
    );
}

#[test]
fn invalid_filter_names_the_variable() {
    let config = config(&[("RUST_LOG", "shoal=loud")]);
    match Telemetry::build(&config, "shoal-test") {
        Err(error @ Error::InvalidFilter { .. }) => {
            assert!(
                error
                    .to_string()
                    .starts_with("RUST_LOG=shoal=loud is not a valid filter"),
                "{error}"
            );
        }
        other => panic!("expected an invalid filter error, got {other:?}"),
    }
}

/// An OTLP gRPC receiver on loopback, on a runtime of its own so that a test
/// blocking its own thread (as a binary does when it shuts telemetry down)
/// cannot stall it.
struct Collector {
    endpoint: String,
    requests: mpsc::Receiver<ExportTraceServiceRequest>,
    runtime: Option<Runtime>,
}

struct Sink(mpsc::Sender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0
            .send(request.into_inner())
            .map_err(|_| tonic::Status::unavailable("test no longer listening"))?;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A span as the collector saw it, with its resource's `service.name`.
struct Received {
    service_name: Option<String>,
    span: Span,
}

impl Collector {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        listener.set_nonblocking(true).expect("non-blocking");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("collector runtime");
        let (tx, requests) = mpsc::channel();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let served = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Sink(tx)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
            if let Err(error) = served {
                eprintln!("test collector stopped: {error}");
            }
        });
        Self {
            endpoint: format!("http://{addr}"),
            requests,
            runtime: Some(runtime),
        }
    }

    /// Waits until at least `count` spans arrived, then returns all that did.
    fn spans(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        let mut received = Vec::new();
        while received.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(request) = self.requests.recv_timeout(left) else {
                panic!(
                    "collector at {} got {} of {count} spans within {WAIT:?}: {:?}",
                    self.endpoint,
                    received.len(),
                    received
                        .iter()
                        .map(|r: &Received| &r.span.name)
                        .collect::<Vec<_>>()
                );
            };
            received.extend(flatten(request));
        }
        while let Ok(request) = self.requests.try_recv() {
            received.extend(flatten(request));
        }
        received
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .and_then(|resource| string_attribute(&resource.attributes, "service.name"));
        for scope_spans in resource_spans.scope_spans {
            out.extend(scope_spans.spans.into_iter().map(|span| Received {
                service_name: service_name.clone(),
                span,
            }));
        }
    }
    out
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match &kv.value {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(value)),
            }) => Some(value.clone()),
            _ => None,
        })
}

fn telemetry_for(collector: &Collector, service_name: &str) -> Telemetry {
    let config = config(&[
        (ENDPOINT_ENV, &collector.endpoint),
        (SERVICE_NAME_ENV, service_name),
    ]);
    // The name passed here loses to OTEL_SERVICE_NAME.
    let telemetry = Telemetry::build(&config, "overridden").expect("build telemetry");
    assert!(telemetry.exports_spans());
    telemetry
}

/// Asserts that exactly a `parent` span and its `child` arrived, and returns them.
fn assert_parent_and_child(received: Vec<Received>, service_name: &str) -> (Span, Span) {
    let mut by_name: HashMap<String, Received> = HashMap::new();
    for r in received {
        let name = r.span.name.clone();
        assert!(
            by_name.insert(name.clone(), r).is_none(),
            "span {name} arrived twice"
        );
    }
    let mut names: Vec<_> = by_name.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        ["child", "parent"],
        "the debug span must be filtered out"
    );

    for r in by_name.values() {
        assert_eq!(
            r.service_name.as_deref(),
            Some(service_name),
            "service.name of {}",
            r.span.name
        );
    }
    let parent = by_name.remove("parent").expect("parent").span;
    let child = by_name.remove("child").expect("child").span;
    assert!(
        parent.parent_span_id.is_empty(),
        "parent must be a root span"
    );
    assert_eq!(child.trace_id, parent.trace_id, "one trace");
    assert_eq!(child.parent_span_id, parent.span_id, "child's parent");
    assert_eq!(
        string_attribute(&child.attributes, "pod").as_deref(),
        Some("web-0")
    );
    (parent, child)
}

fn emit_parent_and_child() {
    tracing::info_span!("parent").in_scope(|| {
        tracing::debug_span!("hidden").in_scope(|| {});
        tracing::info_span!("child", pod = "web-0").in_scope(|| tracing::info!("reconciled"));
    });
}

// The shoal binaries are Tokio programs; a current-thread runtime is the
// hard case, as shutting down blocks the only thread that could drive a
// client living on the caller's runtime.
#[tokio::test]
async fn spans_reach_collector_from_a_current_thread_runtime() {
    let collector = Collector::start();
    let telemetry = telemetry_for(&collector, "shoal-current-thread");
    {
        let _default = telemetry.set_default();
        async {
            tokio::task::yield_now().await;
            tracing::debug_span!("hidden").in_scope(|| {});
            tracing::info_span!("child", pod = "web-0").in_scope(|| tracing::info!("reconciled"));
        }
        .instrument(tracing::info_span!("parent"))
        .await;
    }
    telemetry.shutdown().expect("shutdown flushes spans");

    let (_, child) = assert_parent_and_child(collector.spans(2), "shoal-current-thread");
    assert!(
        child.events.iter().any(|event| event.name == "reconciled"),
        "the event inside the child span is exported with it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_guard_flushes_from_a_multi_thread_runtime() {
    let collector = Collector::start();
    let telemetry = telemetry_for(&collector, "shoal-multi-thread");
    tracing::dispatcher::with_default(telemetry.dispatch(), emit_parent_and_child);
    drop(telemetry);

    assert_parent_and_child(collector.spans(2), "shoal-multi-thread");
}

#[test]
fn spans_reach_collector_without_a_runtime() {
    let collector = Collector::start();
    let telemetry = telemetry_for(&collector, "shoal-no-runtime");
    tracing::dispatcher::with_default(telemetry.dispatch(), emit_parent_and_child);
    drop(telemetry);

    assert_parent_and_child(collector.spans(2), "shoal-no-runtime");
}

// The only test that installs process-wide state.
#[test]
fn install_bridges_log_records() {
    let collector = Collector::start();
    let telemetry = telemetry_for(&collector, "shoal-installed")
        .install()
        .expect("first install in this process");
    tracing::info_span!("parent").in_scope(|| {
        tracing::info_span!("child", pod = "web-0").in_scope(|| {
            tracing_log::log::info!(target: "aya_log", "map pinned");
            tracing_log::log::debug!(target: "aya_log", "below the filter");
        });
    });
    telemetry.shutdown().expect("shutdown flushes spans");

    let (_, child) = assert_parent_and_child(collector.spans(2), "shoal-installed");
    let events: Vec<_> = child
        .events
        .iter()
        .map(|event| event.name.as_str())
        .collect();
    assert_eq!(
        events,
        ["map pinned"],
        "log records arrive as span events, filtered"
    );

    let again = Telemetry::build(&Config::default(), "shoal-again").expect("build");
    assert!(matches!(again.install(), Err(Error::LoggerAlreadySet)));
}
