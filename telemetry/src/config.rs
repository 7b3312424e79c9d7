//! Settings read from the environment, with every key and default named here.

use crate::Error;

/// Filter directives for `tracing` (and bridged `log` records), e.g. `info,shoal_agent=debug`.
pub const FILTER_ENV: &str = "RUST_LOG";
/// Filter used when [`FILTER_ENV`] is unset or empty.
pub const DEFAULT_FILTER: &str = "info";
/// OTLP collector endpoint for every signal; spans are exported only when
/// this or [`TRACES_ENDPOINT_ENV`] is set.
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// OTLP collector endpoint for spans; takes precedence over [`ENDPOINT_ENV`].
pub const TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// OTLP transport; only [`DEFAULT_PROTOCOL`] is supported.
pub const PROTOCOL_ENV: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// OTLP transport for spans; takes precedence over [`PROTOCOL_ENV`].
pub const TRACES_PROTOCOL_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// The OTLP transport used when none is set, and the only one supported.
pub const DEFAULT_PROTOCOL: &str = "grpc";
/// `service.name` resource attribute; overrides the name the binary passes.
pub const SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";
/// `true` turns OTLP export off even when an endpoint is set.
pub const SDK_DISABLED_ENV: &str = "OTEL_SDK_DISABLED";

/// Telemetry settings for one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `tracing` filter directives, from [`FILTER_ENV`] or [`DEFAULT_FILTER`].
    pub filter: String,
    /// `service.name` from [`SERVICE_NAME_ENV`]; when `None` the binary's own name is used.
    pub service_name: Option<String>,
    /// Where spans are exported; `None` leaves OTLP export off.
    pub otlp: Option<Otlp>,
}

/// OTLP span export settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Otlp {
    /// gRPC endpoint of the collector, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            filter: DEFAULT_FILTER.to_owned(),
            service_name: None,
            otlp: None,
        }
    }
}

impl Config {
    /// Reads the settings from the process environment.
    ///
    /// The OTLP exporter also honours the standard `OTEL_EXPORTER_OTLP_*`
    /// headers, timeout and compression variables, and the resource
    /// `OTEL_RESOURCE_ATTRIBUTES`, straight from the process environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the settings through `lookup`, which maps a variable name to its value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        // The OpenTelemetry spec treats an empty variable like an unset one.
        let get = |key: &'static str| {
            lookup(key)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
                .map(|value| (key, value))
        };

        let filter = get(FILTER_ENV).map_or_else(|| DEFAULT_FILTER.to_owned(), |(_, v)| v);
        let service_name = get(SERVICE_NAME_ENV).map(|(_, v)| v);
        let disabled = match get(SDK_DISABLED_ENV) {
            Some((var, value)) => parse_bool(var, value)?,
            None => false,
        };
        let endpoint = get(TRACES_ENDPOINT_ENV).or_else(|| get(ENDPOINT_ENV));

        let otlp = match endpoint {
            Some((var, endpoint)) if !disabled => {
                let protocol = get(TRACES_PROTOCOL_ENV).or_else(|| get(PROTOCOL_ENV));
                if let Some((var, value)) = protocol
                    && value != DEFAULT_PROTOCOL
                {
                    return Err(Error::UnsupportedProtocol { var, value });
                }
                check_endpoint(var, &endpoint)?;
                Some(Otlp { endpoint })
            }
            _ => None,
        };

        Ok(Self {
            filter,
            service_name,
            otlp,
        })
    }
}

fn parse_bool(var: &'static str, value: String) -> Result<bool, Error> {
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(Error::InvalidBool { var, value })
    }
}

fn check_endpoint(var: &'static str, endpoint: &str) -> Result<(), Error> {
    let scheme = endpoint.split_once("://").map(|(scheme, _)| scheme);
    let reason = match scheme {
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => return Ok(()),
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => {
            "TLS is not supported yet; use an http:// endpoint, such as a collector on the node"
        }
        _ => "expected an http:// URL such as http://127.0.0.1:4317",
    };
    Err(Error::InvalidEndpoint {
        var,
        value: endpoint.to_owned(),
        reason,
    })
}
