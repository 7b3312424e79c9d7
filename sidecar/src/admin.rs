//! The admin listener (15020): `/metrics` (Prometheus text) and `/ready`
//! (200 once the sidecar holds an unexpired workload certificate, 503
//! before).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::identity::IdentityManager;
use crate::metrics::Metrics;

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, identity: IdentityManager) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        let identity = identity.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = answer(req.uri().path(), &metrics, &identity);
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn answer(path: &str, metrics: &Metrics, identity: &IdentityManager) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => (StatusCode::OK, metrics.render()),
        "/ready" => match identity.current() {
            Some(id) if !id.expired() => (StatusCode::OK, format!("ready: {}\n", id.id)),
            Some(id) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: the certificate of {} expired and renewal fails\n",
                    id.id
                ),
            ),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no workload certificate from the mesh CA yet\n".to_owned(),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "not found: the admin listener serves /metrics and /ready\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
