//! `kubectl exec` on the agent, non-interactive: the apiserver passes the
//! client's WebSocket upgrade through (Kubernetes' `v5.channel.k8s.io` and
//! `v4.channel.k8s.io` channel protocols), the command runs in the
//! container with `runc exec`, and its stdout, stderr and exit status go
//! back on channels 1, 2 and 3 (a `metav1.Status`, which is how kubectl
//! learns the exit code).

use std::path::PathBuf;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha1::{Digest as _, Sha1};
use shoal_runtime::{ExecRequest, Runtime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Config, ResponseBody, logs, text};

/// The channel protocols served, in order of preference.
pub(super) const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// RFC 6455's key suffix.
pub(super) const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Channel numbers of the channel protocols.
pub(super) const STDOUT: u8 = 1;
const STDERR: u8 = 2;
pub(super) const ERROR: u8 = 3;
/// Largest payload put in one WebSocket frame.
const FRAME: usize = 32 * 1024;

/// What `/exec/{ns}/{pod}/{container}` asks for.
struct ExecQuery {
    command: Vec<String>,
    stdin: bool,
    tty: bool,
    pod_uid: Option<String>,
}

impl ExecQuery {
    fn parse(query: Option<&str>) -> Self {
        let mut q = ExecQuery {
            command: Vec::new(),
            stdin: false,
            tty: false,
            pod_uid: None,
        };
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let flag = v == "1" || v.eq_ignore_ascii_case("true");
            match k.as_ref() {
                "command" => q.command.push(v.into_owned()),
                "stdin" | "input" => q.stdin = flag,
                "tty" => q.tty = flag,
                "podUID" => q.pod_uid = Some(v.into_owned()).filter(|s| !s.is_empty()),
                _ => {}
            }
        }
        q
    }
}

/// Runs a command in a container for the apiserver, over the WebSocket the
/// client opened.
pub async fn handle(
    config: &Config,
    req: Request<Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Response<ResponseBody> {
    let q = ExecQuery::parse(req.uri().query());
    if q.command.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command".into(),
        );
    }
    if q.stdin || q.tty {
        return text(
            StatusCode::BAD_REQUEST,
            "interactive exec (stdin or a terminal, kubectl exec -i/-t) is not supported by this agent yet; run the command without -i and -t".into(),
        );
    }
    let offer = match Offer::read(&req, "exec") {
        Ok(offer) => offer,
        Err(refused) => return *refused,
    };
    let (runtime, id) = match find_container(config, ns, pod, container, q.pod_uid).await {
        Ok(found) => found,
        Err(message) => return text(StatusCode::NOT_FOUND, message),
    };

    let command = q.command;
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(error = %e, "exec: the WebSocket upgrade failed");
                return;
            }
        };
        let mut io = TokioIo::new(upgraded);
        let request = ExecRequest {
            args: command,
            ..Default::default()
        };
        let status = match runtime.exec(&id, &request).await {
            Ok(out) => {
                let _ = send_channel(&mut io, STDOUT, &out.stdout).await;
                let _ = send_channel(&mut io, STDERR, &out.stderr).await;
                exit_status(out.exit_code)
            }
            Err(e) => json!({
                "metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": format!("error executing command in container: {e}"),
            }),
        };
        let status = serde_json::to_vec(&status).unwrap_or_default();
        let _ = send_channel(&mut io, ERROR, &status).await;
        // Close with 1000 (normal), then wait briefly for the client's close.
        let _ = io.write_all(&frame(0x8, &[0x03, 0xe8])).await;
        let _ = io.flush().await;
        let mut sink = [0u8; 512];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), io.read(&mut sink)).await;
    });

    offer.accept()
}

/// A client's WebSocket upgrade offer: the channel protocol chosen from
/// [`PROTOCOLS`] and the client's key.
pub(super) struct Offer {
    protocol: &'static str,
    key: String,
}

impl Offer {
    /// Reads the offer; a request without a WebSocket upgrade to one of
    /// [`PROTOCOLS`] gets a 400 that names `what` (exec, attach).
    pub(super) fn read<B>(
        req: &Request<B>,
        what: &str,
    ) -> Result<Self, Box<Response<ResponseBody>>> {
        let header = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let offered = header(header::SEC_WEBSOCKET_PROTOCOL);
        let protocol = PROTOCOLS
            .iter()
            .find(|p| offered.split(',').any(|o| o.trim() == **p));
        let key = header(header::SEC_WEBSOCKET_KEY);
        match protocol {
            Some(protocol) if !key.is_empty() => Ok(Self { protocol, key }),
            _ => Err(Box::new(text(
                StatusCode::BAD_REQUEST,
                format!(
                    "{what} needs a WebSocket upgrade with one of the protocols {PROTOCOLS:?} (SPDY is not served); kubectl 1.30 and later use WebSocket"
                ),
            ))),
        }
    }

    /// The 101 Switching Protocols that accepts it.
    pub(super) fn accept(&self) -> Response<ResponseBody> {
        let accept = base64::engine::general_purpose::STANDARD.encode(Sha1::digest(
            format!("{}{WEBSOCKET_GUID}", self.key).as_bytes(),
        ));
        let mut resp = Response::new(Empty::<Bytes>::new().boxed());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(self.protocol),
        );
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        resp
    }
}

/// The Status kubectl turns into its exit code.
fn exit_status(code: i32) -> serde_json::Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command [..], exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// Sends `data` on `channel` as binary frames (channel byte first).
pub(super) async fn send_channel<W: tokio::io::AsyncWrite + Unpin>(
    io: &mut W,
    channel: u8,
    data: &[u8],
) -> std::io::Result<()> {
    for chunk in data.chunks(FRAME) {
        let mut payload = Vec::with_capacity(chunk.len() + 1);
        payload.push(channel);
        payload.extend_from_slice(chunk);
        io.write_all(&frame(0x2, &payload)).await?;
    }
    io.flush().await
}

/// One unmasked (server-to-client) WebSocket frame with FIN set.
pub(super) fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// The runtime holding the container's current attempt and its id.
pub(super) async fn find_container(
    config: &Config,
    ns: &str,
    pod: &str,
    container: &str,
    pod_uid: Option<String>,
) -> Result<(Runtime, String), String> {
    let request = logs::LogRequest {
        namespace: ns.to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
        pod_uid,
        ..Default::default()
    };
    let id = logs::current_id(&config.logs_dir(), &request).map_err(|e| e.to_string())?;
    let root = config.data_dir.join("runtime");
    let handlers = std::fs::read_dir(&root).map_err(|e| {
        format!(
            "container \"{container}\" in pod \"{pod}\" is not running: no runtime state in {} ({e})",
            root.display()
        )
    })?;
    for h in handlers.flatten() {
        if h.path().join(&id).exists() {
            let name = h.file_name().to_string_lossy().into_owned();
            // Pods without a RuntimeClass run under the configured binary;
            // a handler's directory is named after its runtime.
            let binary = if name == "default" {
                config.runtime_binary.clone()
            } else {
                PathBuf::from(name)
            };
            return Ok((Runtime::new(binary, h.path()), id));
        }
    }
    Err(format!(
        "container \"{container}\" in pod \"{pod}\" is not running"
    ))
}
