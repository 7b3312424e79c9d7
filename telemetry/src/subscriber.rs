//! The `tracing` subscriber every binary installs, and the guard that owns it.

use std::io::IsTerminal as _;

use tracing::{Dispatch, level_filters::LevelFilter, subscriber::DefaultGuard};
use tracing_log::AsLog as _;
use tracing_subscriber::{EnvFilter, Layer as _, filter::Targets, layer::SubscriberExt as _};

use crate::{Config, Error, FILTER_ENV, otlp::Pipeline};

/// Crates on the export path. Exporting their spans would make every export
/// produce spans for the next one, so they never reach the OTLP layer.
const EXPORT_STACK: [&str; 5] = ["h2", "hyper", "tonic", "tower", "opentelemetry"];

/// Sets up telemetry from the environment for the binary `service_name` and
/// installs it for the whole process, `log` records included.
///
/// Call it once, early in `main`, and keep the guard until exit: dropping it
/// flushes the spans not yet exported.
pub fn init(service_name: &str) -> Result<Telemetry, Error> {
    Telemetry::build(&Config::from_env()?, service_name)?.install()
}

/// A `tracing` subscriber (env filter, human-readable lines on stderr,
/// optional OTLP span export) and the export pipeline behind it.
///
/// Dropping it shuts the pipeline down, flushing pending spans; use
/// [`Telemetry::shutdown`] to see whether that worked.
#[derive(Debug)]
pub struct Telemetry {
    dispatch: Dispatch,
    max_level: LevelFilter,
    pipeline: Option<Pipeline>,
}

impl Telemetry {
    /// Builds the subscriber for `config` without installing it anywhere.
    ///
    /// `service_name` becomes the `service.name` resource attribute unless
    /// `config.service_name` overrides it.
    pub fn build(config: &Config, service_name: &str) -> Result<Self, Error> {
        let filter = EnvFilter::try_new(&config.filter).map_err(|error| Error::InvalidFilter {
            var: FILTER_ENV,
            value: config.filter.clone(),
            error,
        })?;
        let max_level = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);

        let service_name = config.service_name.as_deref().unwrap_or(service_name);
        let pipeline = config
            .otlp
            .as_ref()
            .map(|otlp| Pipeline::start(otlp, service_name))
            .transpose()?;

        let otel_layer = pipeline.as_ref().map(|pipeline| {
            let export_stack = EXPORT_STACK.iter().fold(
                Targets::new().with_default(LevelFilter::TRACE),
                |targets, krate| targets.with_target(*krate, LevelFilter::OFF),
            );
            tracing_opentelemetry::layer()
                .with_tracer(pipeline.tracer())
                .with_filter(export_stack)
        });
        let fmt_layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal());
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(fmt_layer)
            .with(otel_layer);

        Ok(Self {
            dispatch: Dispatch::new(subscriber),
            max_level,
            pipeline,
        })
    }

    /// Makes this the process-wide subscriber and routes `log` records
    /// (aya-log's among them) into it.
    pub fn install(self) -> Result<Self, Error> {
        tracing_log::LogTracer::builder()
            .with_max_level(self.max_level.as_log())
            .init()
            .map_err(|_| Error::LoggerAlreadySet)?;
        tracing::dispatcher::set_global_default(self.dispatch.clone())
            .map_err(|_| Error::SubscriberAlreadySet)?;
        Ok(self)
    }

    /// The subscriber, for [`tracing::dispatcher::with_default`] and the like.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// Makes this the subscriber of the current thread until the guard drops.
    pub fn set_default(&self) -> DefaultGuard {
        tracing::dispatcher::set_default(&self.dispatch)
    }

    /// Whether spans are exported over OTLP.
    pub fn exports_spans(&self) -> bool {
        self.pipeline.is_some()
    }

    /// Flushes pending spans to the collector and stops exporting.
    ///
    /// Blocks the calling thread for at most a few seconds; export does not
    /// depend on the caller's runtime, so calling it from async code is safe.
    pub fn shutdown(mut self) -> Result<(), Error> {
        match self.pipeline.take() {
            Some(mut pipeline) => pipeline.shutdown(),
            None => Ok(()),
        }
    }
}
