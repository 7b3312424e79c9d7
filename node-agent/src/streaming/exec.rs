//! `kubectl exec` on the agent.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{Config, ResponseBody, text};

/// Runs a command in a container for the apiserver.
pub async fn handle(
    _config: &Config,
    _req: Request<Incoming>,
    _ns: &str,
    _pod: &str,
    _container: &str,
) -> Response<ResponseBody> {
    text(
        StatusCode::NOT_IMPLEMENTED,
        "exec is not served by this agent yet".into(),
    )
}
