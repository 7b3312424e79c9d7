//! The agent's streaming server (port 10250, the kubelet's): `kubectl logs`,
//! `exec`, `attach` and `port-forward` reach a pod's containers here,
//! proxied by the apiserver over mutual TLS, and the apiserver reads the
//! node's and pods' CPU and memory from `/stats/summary` for
//! metrics.k8s.io. Only the apiserver's kubelet-client identity, signed by
//! the cluster CA, gets in.

mod attach;
mod exec;
mod logs;
mod portforward;
mod spdy;
pub mod summary;
mod tls;

#[cfg(test)]
mod tests;

use std::{
    convert::Infallible,
    future::Future,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use logs::LogRequest;
use tls::server_config;

/// Where the streaming server listens unless told otherwise (the kubelet's
/// port on every address).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:10250";
/// The only user the server lets in: the client certificate the apiserver
/// presents when it proxies logs and exec (CN). The apiserver issues it
/// from the cluster CA under the same name.
pub const APISERVER_CLIENT_USER: &str = "shoal-apiserver-kubelet-client";
/// How often a followed log is checked for new bytes.
pub const DEFAULT_POLL: Duration = Duration::from_millis(100);

/// The body every answer has.
pub type ResponseBody = BoxBody<Bytes, Infallible>;

/// How the streaming server runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The HTTPS address.
    pub listen: SocketAddr,
    /// The agent's data directory: logs under `logs/`, runtime state under
    /// `runtime/<handler>/`.
    pub data_dir: PathBuf,
    /// The cluster CA (PEM) client certificates must chain to.
    pub client_ca_pem: String,
    /// The node's name (in the serving certificate).
    pub node_name: String,
    /// The node's addresses (in the serving certificate).
    pub node_ips: Vec<IpAddr>,
    /// The OCI runtime binary of pods without a RuntimeClass.
    pub runtime_binary: PathBuf,
    /// How often a followed log is checked for new bytes.
    pub poll: Duration,
    /// The cgroup parent of every pod (the pods config's): pod `U`'s
    /// cgroup is `<cgroup_parent>/pod-U`, read for `/stats/summary`.
    pub cgroup_parent: String,
    /// How often every pod's CPU is sampled for `usageNanoCores`.
    pub housekeeping: Duration,
    /// The stdins and terminals the pod workers keep (the pods config's),
    /// for `kubectl attach -i/-t`.
    pub consoles: shoal_runtime::Consoles,
}

impl Config {
    /// Defaults for node `node_name` keeping its state in `data_dir`,
    /// trusting clients of the CA `client_ca_pem`.
    pub fn new(
        node_name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        client_ca_pem: impl Into<String>,
    ) -> Self {
        let node_name = node_name.into();
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 10250))),
            data_dir: data_dir.into(),
            client_ca_pem: client_ca_pem.into(),
            node_name: node_name.clone(),
            node_ips: Vec::new(),
            runtime_binary: PathBuf::from(shoal_runtime::RUNC),
            poll: DEFAULT_POLL,
            cgroup_parent: format!("/shoal/{node_name}"),
            housekeeping: summary::DEFAULT_HOUSEKEEPING,
            consoles: shoal_runtime::Consoles::new(),
        }
    }

    fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }
}

/// Why the streaming server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be bound.
    #[error(
        "streaming server: listening on {addr}: {source} (pick another with --streaming-listen)"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error("streaming server TLS: {0}")]
    Tls(String),
    /// The kubeconfig holds no usable cluster CA.
    #[error("reading the cluster CA from the kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// The kubeconfig.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// The cluster CA (PEM) of the kubeconfig's current cluster, from
/// `certificate-authority-data` or the `certificate-authority` file: the CA
/// that signs the apiserver's client certificate.
pub fn client_ca_from_kubeconfig(path: &Path) -> Result<String, Error> {
    use base64::Engine as _;
    let err = |reason: String| Error::Kubeconfig {
        path: path.to_path_buf(),
        reason,
    };
    let config = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let cluster_name = config
        .current_context
        .as_ref()
        .and_then(|c| config.contexts.iter().find(|n| &n.name == c))
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = config
        .clusters
        .iter()
        .find(|c| cluster_name.as_ref().is_none_or(|n| &c.name == n))
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| err("no cluster entry for the current context".into()))?;
    if let Some(data) = &cluster.certificate_authority_data {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| err(format!("certificate-authority-data is not base64: {e}")))?;
        return String::from_utf8(pem)
            .map_err(|_| err("certificate-authority-data is not PEM text".into()));
    }
    if let Some(file) = &cluster.certificate_authority {
        return std::fs::read_to_string(file)
            .map_err(|e| err(format!("reading certificate-authority {file}: {e}")));
    }
    Err(err(
        "the cluster has neither certificate-authority-data nor certificate-authority; the streaming server needs the cluster CA to check the apiserver's certificate".into(),
    ))
}

/// A bound streaming server, ready to serve.
pub struct Server {
    listener: TcpListener,
    serving_ca_pem: String,
    acceptor: TlsAcceptor,
    state: Arc<State>,
}

/// What every request handler sees.
struct State {
    config: Config,
    summary: summary::Collector,
}

impl Server {
    /// Builds the TLS configuration (a fresh self-signed serving
    /// certificate for the node's name and addresses, as the kubelet makes
    /// by default) and binds the address.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        let (tls, serving_ca_pem) =
            server_config(&config.client_ca_pem, &config.node_name, &config.node_ips)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        Ok(Self {
            listener,
            serving_ca_pem,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            state: Arc::new(State::new(config)),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The certificate (PEM) that signed this run's serving certificate:
    /// what a client that wants to verify the agent trusts.
    pub fn serving_ca_pem(&self) -> &str {
        &self.serving_ca_pem
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        tracing::info!(addr = ?self.local_addr(), "streaming server listening");
        let housekeeping = tokio::spawn(housekeeping(self.state.clone()));
        let _abort = AbortOnDrop(housekeeping);
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => return Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "streaming server: accepting a connection");
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let state = self.state.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "streaming server: TLS handshake refused");
                        return;
                    }
                };
                let user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(shoal_ca::identity_from_peer)
                    .map(|id| id.user);
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    let user = user.clone();
                    async move { Ok::<_, Infallible>(state.handle(req, user.as_deref()).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await
                {
                    tracing::debug!(%peer, error = %e, "streaming connection ended");
                }
            });
        }
    }
}

/// Binds `config.listen` and serves until the process ends.
pub async fn run(config: Config) -> Result<(), Error> {
    Server::bind(config)
        .await?
        .serve(std::future::pending())
        .await
}

/// Samples every cgroup now and then, so a summary has CPU rates from the
/// first request on.
async fn housekeeping(state: Arc<State>) {
    let mut tick = tokio::time::interval(state.config.housekeeping.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let state = state.clone();
        if tokio::task::spawn_blocking(move || state.summary.summary())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Stops a background task when the server stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl State {
    fn new(config: Config) -> Self {
        let cgroups = shoal_runtime::CgroupMounts::detect()
            .map(|m| summary::CgroupFs::new(&m))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "reading the cgroup mounts: /stats/summary will report no pods");
                summary::CgroupFs::new(&shoal_runtime::CgroupMounts::default())
            });
        let summary = summary::Collector::new(
            config.node_name.clone(),
            config.logs_dir(),
            config.cgroup_parent.clone(),
            cgroups,
        );
        Self { config, summary }
    }

    async fn handle(&self, req: Request<Incoming>, user: Option<&str>) -> Response<ResponseBody> {
        if user != Some(APISERVER_CLIENT_USER) {
            // The kubelet's words for a client its authorizer refuses.
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden (user={}, verb={}, resource=nodes, subresource=proxy): only the apiserver's {APISERVER_CLIENT_USER} identity may use this port",
                    user.unwrap_or("system:anonymous"),
                    req.method().as_str().to_ascii_lowercase()
                ),
            );
        }
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method(), parts.as_slice()) {
            (&Method::GET, ["containerLogs", ns, pod, container]) => {
                let request = match LogRequest::parse(ns, pod, container, req.uri().query()) {
                    Ok(r) => r,
                    Err(message) => return text(StatusCode::BAD_REQUEST, message),
                };
                match logs::open(&self.config, request).await {
                    Ok(body) => {
                        let mut resp = Response::new(body);
                        resp.headers_mut().insert(
                            header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain"),
                        );
                        resp
                    }
                    Err(e) => text(e.status(), e.to_string()),
                }
            }
            (&Method::GET, ["stats", "summary"]) => {
                // A few small cgroup files per pod: cheap enough to read
                // on the request's task.
                match serde_json::to_vec(&self.summary.summary()) {
                    Ok(json) => {
                        let mut resp = Response::new(Full::new(Bytes::from(json)).boxed());
                        resp.headers_mut().insert(
                            header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        resp
                    }
                    Err(e) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("encoding the summary: {e}"),
                    ),
                }
            }
            (&Method::GET | &Method::POST, ["exec", ns, pod, container]) => {
                exec::handle(&self.config, req, ns, pod, container).await
            }
            (&Method::GET | &Method::POST, ["attach", ns, pod, container]) => {
                attach::handle(&self.config, req, ns, pod, container).await
            }
            (&Method::GET | &Method::POST, ["portForward", ns, pod]) => {
                portforward::handle(&self.config, req, ns, pod).await
            }
            _ => text(
                StatusCode::NOT_FOUND,
                format!("404 page not found: {} {path}", req.method()),
            ),
        }
    }
}

/// A plain-text answer, as the kubelet gives its errors.
fn text(code: StatusCode, message: String) -> Response<ResponseBody> {
    let mut resp = Response::new(Full::new(Bytes::from(message)).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
