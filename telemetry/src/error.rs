//! Why telemetry could not be set up or shut down.

/// An error setting up or shutting down telemetry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A protocol other than gRPC was asked for.
    #[error("{var}={value} is not supported; use grpc")]
    UnsupportedProtocol {
        /// The variable that set it.
        var: &'static str,
        /// Its value.
        value: String,
    },

    /// An endpoint this build cannot export to.
    #[error("{var}={value} is not a usable OTLP endpoint: {reason}")]
    InvalidEndpoint {
        /// The variable that set it.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it and what to use instead.
        reason: &'static str,
    },

    /// A boolean variable with a value other than `true` or `false`.
    #[error("{var}={value} is not a boolean; use true or false")]
    InvalidBool {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },

    /// Filter directives that do not parse.
    #[error(
        "{var}={value} is not a valid filter ({error}); use directives such as info,shoal_agent=debug"
    )]
    InvalidFilter {
        /// The variable that set it.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it does not parse.
        error: tracing_subscriber::filter::ParseError,
    },

    /// The runtime that drives the OTLP client could not start.
    #[error("starting the OTLP export runtime failed: {0}")]
    Runtime(std::io::Error),

    /// The OTLP span exporter rejected its settings.
    #[error("building the OTLP span exporter for {endpoint} failed: {error}")]
    Exporter {
        /// The collector endpoint.
        endpoint: String,
        /// Why the exporter could not be built.
        error: opentelemetry_otlp::ExporterBuildError,
    },

    /// An OTLP exporter of flows rejected its settings.
    #[error(
        "building the OTLP {signal} exporter of flows failed: {error}; check the OTEL_EXPORTER_OTLP_* variables"
    )]
    FlowExporter {
        /// `logs` or `metrics`.
        signal: &'static str,
        /// Why the exporter could not be built.
        error: opentelemetry_otlp::ExporterBuildError,
    },

    /// Something else already set the global `tracing` subscriber.
    #[error("a global tracing subscriber is already installed; set up telemetry once per process")]
    SubscriberAlreadySet,

    /// Something else already set the global `log` logger.
    #[error(
        "a global log logger is already installed; shoal-telemetry bridges log records itself, so set up telemetry before anything else installs a logger"
    )]
    LoggerAlreadySet,

    /// Pending spans could not be flushed on shutdown.
    #[error("flushing spans to the OTLP collector on shutdown failed: {0}")]
    Shutdown(opentelemetry_sdk::error::OTelSdkError),
}
