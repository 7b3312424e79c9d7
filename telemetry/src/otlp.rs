//! The OTLP span pipeline: gRPC exporter, batch processor, and the runtime
//! the gRPC client runs on.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    trace::{SdkTracer, SdkTracerProvider},
};
use tokio::runtime::Runtime;

use crate::{Error, Otlp};

/// Instrumentation scope of the spans `tracing` hands to OpenTelemetry.
const TRACER_NAME: &str = "shoal";
/// Name of the thread the OTLP client's connections run on.
const RUNTIME_THREAD_NAME: &str = "shoal-otlp";
/// How long shutdown waits for the last batch to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A running span pipeline; shuts down, flushing pending spans, on drop.
#[derive(Debug)]
pub(crate) struct Pipeline {
    provider: SdkTracerProvider,
    /// `None` once shut down.
    runtime: Option<Runtime>,
}

impl Pipeline {
    /// Starts exporting spans to `otlp.endpoint` as `service_name`.
    pub(crate) fn start(otlp: &Otlp, service_name: &str) -> Result<Self, Error> {
        // The batch processor exports from a thread of its own and blocks on
        // each export there, while tonic's channel runs its connection on
        // whichever runtime it was built in. Giving the channel a runtime of
        // its own means export neither needs the caller to be in a runtime
        // nor stalls when the caller blocks one (a current-thread runtime
        // dropping this guard would otherwise deadlock the final flush).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(RUNTIME_THREAD_NAME)
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let exporter = {
            let _entered = runtime.enter();
            SpanExporter::builder()
                .with_tonic()
                .with_endpoint(otlp.endpoint.clone())
                .build()
        };
        let exporter = match exporter {
            Ok(exporter) => exporter,
            Err(error) => {
                runtime.shutdown_background();
                return Err(Error::Exporter {
                    endpoint: otlp.endpoint.clone(),
                    error,
                });
            }
        };

        let resource = Resource::builder()
            .with_service_name(service_name.to_owned())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build();
        Ok(Self {
            provider,
            runtime: Some(runtime),
        })
    }

    /// A tracer recording into this pipeline.
    pub(crate) fn tracer(&self) -> SdkTracer {
        self.provider.tracer(TRACER_NAME)
    }

    /// Flushes pending spans and stops; later calls do nothing.
    pub(crate) fn shutdown(&mut self) -> Result<(), Error> {
        let Some(runtime) = self.runtime.take() else {
            return Ok(());
        };
        let flushed = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        // Not a plain drop: dropping a runtime inside an async context
        // panics, and the guard is usually dropped at the end of `async fn main`.
        runtime.shutdown_background();
        flushed.map_err(Error::Shutdown)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::warn!(%error, "spans may have been lost");
        }
    }
}
