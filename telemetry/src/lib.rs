//! Telemetry set-up shared by every shoal binary: `tracing` with an env
//! filter, `log` records bridged into it, and OTLP span export when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! ```no_run
//! # fn main() -> Result<(), shoal_telemetry::Error> {
//! let telemetry = shoal_telemetry::init("shoal-agent")?;
//! tracing::info!("started");
//! // Flushes pending spans; dropping the guard does the same.
//! telemetry.shutdown()?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod config;
mod error;
pub mod flows;
mod otlp;
mod subscriber;

#[cfg(test)]
mod tests;

pub use crate::{
    config::{
        Config, DEFAULT_FILTER, DEFAULT_PROTOCOL, ENDPOINT_ENV, FILTER_ENV, Otlp, PROTOCOL_ENV,
        SDK_DISABLED_ENV, SERVICE_NAME_ENV, TRACES_ENDPOINT_ENV, TRACES_PROTOCOL_ENV,
    },
    error::Error,
    subscriber::{Telemetry, init},
};
