//! The agent's plain-HTTP health and metrics port (DESIGN: 10256):
//! `GET /healthz` answers `ok`, `GET /metrics` the node-local DNS server's
//! counters and latency histogram and the dataplane's verdict counters and
//! conntrack fullness in Prometheus text.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;

/// The agent's default health and metrics address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:10256";

/// What `/metrics` renders; the DNS server fills it in once it serves.
pub type DnsMetrics = Arc<OnceLock<Arc<shoal_dns::Metrics>>>;

/// The pin directory of the agent's dataplane, once loaded: `/metrics`
/// adds its verdict counters and conntrack fullness, read from the pins.
pub static DATAPLANE_PINS: OnceLock<std::path::PathBuf> = OnceLock::new();

fn dataplane_metrics() -> String {
    let Some(pins) = DATAPLANE_PINS.get() else {
        return String::new();
    };
    match shoal_agent::format_dataplane_metrics(&shoal_agent::PinnedMaps::new(pins.clone())) {
        Ok(text) => text,
        Err(e) => {
            tracing::warn!("metrics: reading the dataplane's maps: {e}");
            String::new()
        }
    }
}

/// Serves health and metrics on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, dns: DnsMetrics) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the health and metrics port {addr} (--health-listen)"))?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("health port: accepting: {e}");
                continue;
            }
        };
        let dns = dns.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let dns = dns.clone();
                async move { Ok::<_, Infallible>(answer(&req, &dns)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(req: &Request<Incoming>, dns: &DnsMetrics) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/healthz") => (StatusCode::OK, "ok\n".to_owned()),
        ("GET", "/metrics") => (
            StatusCode::OK,
            dns.get().map(|m| m.render()).unwrap_or_default()
                + &dataplane_metrics()
                + &shoal_agent::flows::metrics().render(),
        ),
        (_, path) => (
            StatusCode::NOT_FOUND,
            format!("{path} is not served here; try /healthz or /metrics\n"),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if status == StatusCode::OK {
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
    }
    response
}
