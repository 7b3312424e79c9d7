//! The apiserver's side of the streaming contract with node agents:
//! `pods/log` (and `pods/exec`, `attach`, `portforward`) checked against
//! the pod, then proxied to the agent of the pod's node on its kubelet
//! port, over mutual TLS with the apiserver's kubelet-client certificate,
//! the body streamed through as it comes.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, BodyStream, Empty, Limited, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{
    body::Reply, request::ResourceRequest, rest::object_key, status::ApiError, storage::Storage,
};

/// The user (CN) of the certificate the apiserver presents to agents; the
/// agent lets in no one else (shoal-agent's `APISERVER_CLIENT_USER`).
pub const KUBELET_CLIENT_USER: &str = "shoal-apiserver-kubelet-client";
/// The file stem of that certificate in `DATA_DIR/pki`.
pub const KUBELET_CLIENT_CERT: &str = "apiserver-kubelet-client";
/// The kubelet port when the Node does not say.
const DEFAULT_KUBELET_PORT: u16 = 10250;
/// How long connecting to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an agent's error answer passed on.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The header SPDY upgrades name their sub-protocol in.
const STREAM_PROTOCOL_VERSION: &str = "x-stream-protocol-version";

/// Connects to node agents as the apiserver.
pub struct KubeletClient {
    tls: TlsConnector,
}

impl KubeletClient {
    /// A client presenting `cert` (issued by the cluster CA for
    /// [`KUBELET_CLIENT_USER`]). The agent's serving certificate is not
    /// verified, as Kubernetes' apiserver does not verify kubelets' unless
    /// given a kubelet CA: agents make theirs self-signed at start.
    pub fn new(cert: &shoal_ca::IssuedCert) -> Result<Self, shoal_ca::TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(cert.chain_pem().as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| shoal_ca::TlsError::Pem {
                what: "kubelet client certificate",
                reason: e.to_string(),
            })?;
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).map_err(|e| {
            shoal_ca::TlsError::Pem {
                what: "kubelet client key",
                reason: e.to_string(),
            }
        })?;
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| shoal_ca::TlsError::Rustls {
                what: "ring provider",
                source,
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyAgentCert(provider)))
            .with_client_auth_cert(chain, key)
            .map_err(|source| shoal_ca::TlsError::Rustls {
                what: "kubelet client certificate",
                source,
            })?;
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// `GET .../pods/{name}/log`: checks the container against the pod,
    /// finds the node's agent and streams the agent's answer through.
    pub async fn pod_log(
        &self,
        storage: &Storage,
        req: &ResourceRequest,
        raw_query: Option<&str>,
    ) -> Result<Reply, ApiError> {
        let opts = LogQuery::parse(raw_query)?;
        let (pod, name, ns) = get_pod(storage, req).await?;
        let container = pick_container(&pod, &name, opts.container.as_deref())?;
        let Some(node) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        else {
            return Err(ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: the pod is not scheduled to a node yet"
            )));
        };
        if !opts.previous
            && let Some(reason) = waiting_before_first_start(&pod, &container)
        {
            return Err(ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
            )));
        }
        let addr = agent_addr(storage, node).await?;
        let path = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if opts.follow {
                query.append_pair("follow", "true");
            }
            if opts.previous {
                query.append_pair("previous", "true");
            }
            if let Some(n) = opts.tail_lines {
                query.append_pair("tailLines", &n.to_string());
            }
            if let Some(n) = opts.limit_bytes {
                query.append_pair("limitBytes", &n.to_string());
            }
            if let Some(uid) = pod.pointer("/metadata/uid").and_then(Value::as_str) {
                query.append_pair("podUID", uid);
            }
            format!("/containerLogs/{ns}/{name}/{container}?{}", query.finish())
        };
        let what = format!("the logs of container \"{container}\" in pod \"{name}\"");
        let body = self.get(node, addr, &path, &what).await?;
        let frames = BodyStream::new(body)
            .take_while(|f| std::future::ready(f.is_ok()))
            .filter_map(|f| std::future::ready(f.ok()))
            .map(Ok::<_, Infallible>);
        Ok(Reply {
            code: 200,
            content_type: "text/plain",
            body: http_body_util::BodyExt::boxed(StreamBody::new(frames)),
            streaming: opts.follow,
            headers: http::HeaderMap::new(),
        })
    }

    /// An HTTP/1.1 connection to the agent at `addr` (upgrades allowed).
    async fn connect(
        &self,
        addr: SocketAddr,
        unreachable: &(dyn Fn(&dyn std::fmt::Display) -> ApiError + Sync),
    ) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, ApiError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable(&format!("no connection in {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(&e))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|e| unreachable(&format!("TLS: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "agent connection ended");
            }
        });
        Ok(sender)
    }

    /// `.../pods/{name}/exec` over WebSocket: checks the container, then
    /// passes the client's upgrade to the node's agent and joins the two
    /// upgraded connections. The agent speaks the channel protocol itself.
    pub async fn pod_exec(
        &self,
        storage: &Storage,
        req: &ResourceRequest,
        client: Request<Incoming>,
    ) -> Result<Reply, ApiError> {
        self.channel_stream(storage, req, client, "exec").await
    }

    /// `.../pods/{name}/attach` over WebSocket: the container's output from
    /// now on, from the node's agent, as exec's channels.
    pub async fn pod_attach(
        &self,
        storage: &Storage,
        req: &ResourceRequest,
        client: Request<Incoming>,
    ) -> Result<Reply, ApiError> {
        self.channel_stream(storage, req, client, "attach").await
    }

    /// Exec or attach (`kind`): checks the container, then passes the
    /// WebSocket upgrade to the agent's `/{kind}/...`.
    async fn channel_stream(
        &self,
        storage: &Storage,
        req: &ResourceRequest,
        client: Request<Incoming>,
        kind: &str,
    ) -> Result<Reply, ApiError> {
        let asks_stdin = form_urlencoded::parse(client.uri().query().unwrap_or("").as_bytes())
            .any(|(k, v)| (k == "stdin" || k == "input") && (v == "1" || v == "true"));
        let (container, mut query) = {
            let mut container = None;
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (k, v) in form_urlencoded::parse(client.uri().query().unwrap_or("").as_bytes()) {
                match k.as_ref() {
                    "container" => container = Some(v.to_string()).filter(|c| !c.is_empty()),
                    "command" | "stdin" | "stdout" | "stderr" | "tty" => {
                        query.append_pair(&k, &v);
                    }
                    _ => {}
                }
            }
            (container, query.finish())
        };
        let (pod, name, ns) = get_pod(storage, req).await?;
        let container = pick_container(&pod, &name, container.as_deref())?;
        if kind == "attach" && asks_stdin && !has_stdin(&pod, &container) {
            // Before the transport: kubectl retries a refused WebSocket
            // over SPDY, and the reason must be the same both times.
            return Err(ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" was not created with stdin: true, so it has no stdin to attach to; attach without -i to follow its output, or create it with stdin: true"
            )));
        }
        let is_websocket = client
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        if !is_websocket {
            return Err(ApiError::bad_request(format!(
                "{kind} is served over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io), as kubectl 1.30 and later use it; SPDY is not served"
            )));
        }
        let node = assigned_node(&pod, &name)?;
        if let Some(uid) = pod.pointer("/metadata/uid").and_then(Value::as_str) {
            query.push_str("&podUID=");
            query.push_str(&form_urlencoded::byte_serialize(uid.as_bytes()).collect::<String>());
        }
        let what = format!("{kind} in container \"{container}\" of pod \"{name}\"");
        self.proxy_upgrade(
            storage,
            &node,
            &format!("/{kind}/{ns}/{name}/{container}?{query}"),
            &what,
            client,
        )
        .await
    }

    /// `.../pods/{name}/portforward`, over WebSocket (SPDY tunnelled in its
    /// messages, kubectl 1.31 and later) or SPDY/3.1: checks the pod runs,
    /// then passes the upgrade to the node's agent, which speaks
    /// `portforward.k8s.io` itself and connects inside the pod's network.
    pub async fn pod_portforward(
        &self,
        storage: &Storage,
        req: &ResourceRequest,
        client: Request<Incoming>,
    ) -> Result<Reply, ApiError> {
        if !client.headers().contains_key(header::UPGRADE) {
            return Err(ApiError::bad_request(
                "port-forward is served over an upgraded connection: WebSocket with the protocol SPDY/3.1+portforward.k8s.io, or SPDY/3.1 with X-Stream-Protocol-Version portforward.k8s.io (what kubectl port-forward sends)",
            ));
        }
        let (pod, name, ns) = get_pod(storage, req).await?;
        let node = assigned_node(&pod, &name)?;
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Pending");
        if phase != "Running" {
            // kubectl's own words when it sees the pod first.
            return Err(ApiError::bad_request(format!(
                "unable to forward port because pod is not running. Current status={phase}"
            )));
        }
        let path = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(uid) = pod.pointer("/metadata/uid").and_then(Value::as_str) {
                query.append_pair("podUID", uid);
            }
            // Every container shares the pod's network; the agent reaches it
            // through the first one running.
            for c in pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
            {
                query.append_pair("container", c);
            }
            format!("/portForward/{ns}/{name}?{}", query.finish())
        };
        let what = format!("port-forward to pod \"{name}\"");
        self.proxy_upgrade(storage, &node, &path, &what, client)
            .await
    }

    /// Sends the client's upgrade request to `path` on `node`'s agent and,
    /// once the agent switches protocols, joins the two connections.
    async fn proxy_upgrade(
        &self,
        storage: &Storage,
        node: &str,
        path: &str,
        what: &str,
        mut client: Request<Incoming>,
    ) -> Result<Reply, ApiError> {
        let addr = agent_addr(storage, node).await?;
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::internal(format!(
                "{what} on node \"{node}\" (agent at https://{addr}): {e}; is the node's agent running and its streaming port reachable from the apiserver?"
            ))
        };
        let mut sender = self.connect(addr, &unreachable).await?;
        let uri: Uri = path
            .parse()
            .map_err(|e| ApiError::internal(format!("agent path {path:?}: {e}")))?;
        let mut upstream = Request::get(uri);
        for h in [
            header::CONNECTION,
            header::UPGRADE,
            header::SEC_WEBSOCKET_KEY,
            header::SEC_WEBSOCKET_VERSION,
            header::SEC_WEBSOCKET_PROTOCOL,
            header::HeaderName::from_static(STREAM_PROTOCOL_VERSION),
        ] {
            for v in client.headers().get_all(&h) {
                upstream = upstream.header(&h, v);
            }
        }
        let upstream = upstream
            .header(header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| ApiError::internal(format!("agent request: {e}")))?;
        let mut resp = sender
            .send_request(upstream)
            .await
            .map_err(|e| unreachable(&e))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let code = resp.status().as_u16();
            let text = Limited::new(resp.into_body(), MAX_ERROR_BODY)
                .collect()
                .await
                .map(|c| String::from_utf8_lossy(&c.to_bytes()).trim().to_string())
                .unwrap_or_default();
            return Err(agent_error(code, node, text));
        }
        let mut headers = http::HeaderMap::new();
        for h in [
            header::CONNECTION,
            header::UPGRADE,
            header::SEC_WEBSOCKET_ACCEPT,
            header::SEC_WEBSOCKET_PROTOCOL,
            header::HeaderName::from_static(STREAM_PROTOCOL_VERSION),
        ] {
            if let Some(v) = resp.headers().get(&h) {
                headers.insert(h, v.clone());
            }
        }
        let client_upgrade = hyper::upgrade::on(&mut client);
        let agent_upgrade = hyper::upgrade::on(&mut resp);
        let what = what.to_owned();
        tokio::spawn(async move {
            let (Ok(c), Ok(a)) = tokio::join!(client_upgrade, agent_upgrade) else {
                tracing::info!(%what, "an upgrade to the agent failed");
                return;
            };
            let (mut c, mut a) = (TokioIo::new(c), TokioIo::new(a));
            let _ = tokio::io::copy_bidirectional(&mut c, &mut a).await;
        });
        Ok(Reply {
            code: 101,
            content_type: "application/octet-stream",
            body: http_body_util::BodyExt::boxed(Empty::<Bytes>::new()),
            streaming: false,
            headers,
        })
    }

    /// GETs `path` from the agent at `addr`; the body when it answers 200,
    /// its error as Kubernetes' otherwise.
    pub(crate) async fn get(
        &self,
        node: &str,
        addr: SocketAddr,
        path: &str,
        what: &str,
    ) -> Result<Incoming, ApiError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::internal(format!(
                "reading {what} from node \"{node}\" (agent at https://{addr}): {e}; is the node's agent running and its streaming port reachable from the apiserver?"
            ))
        };
        let mut sender = self.connect(addr, &unreachable).await?;
        let uri: Uri = path
            .parse()
            .map_err(|e| ApiError::internal(format!("agent path {path:?}: {e}")))?;
        let request = Request::get(uri)
            .header(header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| ApiError::internal(format!("agent request: {e}")))?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        if resp.status() == StatusCode::OK {
            return Ok(resp.into_body());
        }
        let code = resp.status().as_u16();
        let text = Limited::new(resp.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|c| String::from_utf8_lossy(&c.to_bytes()).trim().to_string())
            .unwrap_or_default();
        Err(agent_error(code, node, text))
    }
}

/// An agent's error as the apiserver passes it on: its code and words.
fn agent_error(code: u16, node: &str, text: String) -> ApiError {
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        _ => "InternalError",
    };
    let message = if code == 401 || code == 403 {
        format!("the agent of node \"{node}\" refused the apiserver: {text}")
    } else {
        text
    };
    ApiError {
        code,
        reason,
        message,
        details: None,
    }
}

/// The `pods/log` query parameters.
#[derive(Debug, Default)]
struct LogQuery {
    container: Option<String>,
    follow: bool,
    previous: bool,
    tail_lines: Option<u64>,
    limit_bytes: Option<u64>,
}

impl LogQuery {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut q = LogQuery::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let flag =
                !(v == "0" || v.eq_ignore_ascii_case("f") || v.eq_ignore_ascii_case("false"));
            let int = |name: &str| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid value for query parameter {name}: {v:?} is not an integer"
                    ))
                })
            };
            match k.as_ref() {
                "container" => q.container = Some(v.to_string()).filter(|c| !c.is_empty()),
                "follow" => q.follow = flag,
                "previous" => q.previous = flag,
                // Negative means "all", as kubectl's --tail=-1.
                "tailLines" => q.tail_lines = u64::try_from(int("tailLines")?).ok(),
                "limitBytes" => {
                    let n = int("limitBytes")?;
                    if n < 1 {
                        return Err(ApiError::bad_request(format!(
                            "invalid value for query parameter limitBytes: {n}: must be greater than 0"
                        )));
                    }
                    q.limit_bytes = u64::try_from(n).ok();
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

/// The pod the request names, its name and namespace.
async fn get_pod(
    storage: &Storage,
    req: &ResourceRequest,
) -> Result<(Value, String, String), ApiError> {
    let kind = shoal_api::find_resource("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not served"))?;
    let (Some(name), Some(ns)) = (req.name.as_deref(), req.namespace.as_deref()) else {
        return Err(ApiError::bad_request(
            "pods/log names a pod: /api/v1/namespaces/<namespace>/pods/<name>/log",
        ));
    };
    let pod = storage
        .get(&object_key(kind, Some(ns), name))
        .await?
        .ok_or_else(|| ApiError::not_found("", "pods", name))?
        .value;
    Ok((pod, name.to_string(), ns.to_string()))
}

/// The node a pod is bound to; a 400 in Kubernetes' words while it has
/// none.
fn assigned_node(pod: &Value, name: &str) -> Result<String, ApiError> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))
}

/// The container a request means, with Kubernetes' checks and words: the
/// only one when none is named, else a 400 listing the choices.
fn pick_container(pod: &Value, name: &str, wanted: Option<&str>) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
            .collect()
    };
    let app = names("containers");
    let mut all = names("initContainers");
    all.extend(app.iter().cloned());
    all.extend(names("ephemeralContainers"));
    match wanted {
        Some(c) if all.iter().any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if app.len() == 1 => Ok(app[0].clone()),
        None if app.is_empty() => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}"
        ))),
        // Go's %s of a []string, as Kubernetes prints it.
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            all.join(" ")
        ))),
    }
}

/// The waiting reason of a container that has never run (no log to read
/// yet), as the kubelet reports it.
fn waiting_before_first_start(pod: &Value, container: &str) -> Option<String> {
    [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .filter_map(|f| {
        pod.pointer(&format!("/status/{f}"))
            .and_then(Value::as_array)
    })
    .flatten()
    .find(|s| s.get("name").and_then(Value::as_str) == Some(container))
    .filter(|s| s.get("restartCount").and_then(Value::as_i64).unwrap_or(0) == 0)
    .and_then(|s| s.pointer("/state/waiting/reason").and_then(Value::as_str))
    .map(String::from)
}

/// The agent's address for `node`: its first InternalIP (any address if it
/// has none) and its kubelet port.
async fn agent_addr(storage: &Storage, node: &str) -> Result<SocketAddr, ApiError> {
    let kind = shoal_api::find_resource("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let obj = storage
        .get(&object_key(kind, None, node))
        .await?
        .ok_or_else(|| ApiError::not_found("", "nodes", node))?
        .value;
    agent_addr_of(&obj).ok_or_else(|| {
        ApiError::internal(format!(
            "node \"{node}\" reports no InternalIP address in status.addresses: its agent cannot be reached for logs or exec"
        ))
    })
}

/// The agent's address from a Node object: its first InternalIP (any
/// ExternalIP if it has none) and its kubelet port.
pub(crate) fn agent_addr_of(obj: &Value) -> Option<SocketAddr> {
    let addresses: Vec<(&str, &str)> = obj
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a.get("type")?.as_str()?, a.get("address")?.as_str()?)))
        .collect();
    let ip = ["InternalIP", "ExternalIP"]
        .iter()
        .flat_map(|t| addresses.iter().filter(move |(at, _)| at == t))
        .find_map(|(_, a)| a.parse::<std::net::IpAddr>().ok())?;
    let port = obj
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Some(SocketAddr::new(ip, port))
}

/// Accepts the agent's self-signed serving certificate while still checking
/// the handshake's signatures, so the session is bound to the key the agent
/// holds; the agent in turn checks the apiserver's client certificate
/// against the cluster CA.
#[derive(Debug)]
struct AnyAgentCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyAgentCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;

/// Whether container `container` of `pod` (any kind) has `stdin: true`.
fn has_stdin(pod: &Value, container: &str) -> bool {
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
        .flatten()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(container))
        .and_then(|c| c.get("stdin"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}
