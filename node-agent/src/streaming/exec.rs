//! `kubectl exec` on the agent: the apiserver passes the client's
//! WebSocket upgrade through (Kubernetes' `v5.channel.k8s.io` and
//! `v4.channel.k8s.io` channel protocols, framed by tungstenite), the
//! command runs in the container with `runc exec` (on a terminal for `-t`),
//! the client's stdin goes to it on channel 0 (`-i`), its stdout and stderr
//! come back on channels 1 and 2 as they are printed, and its exit status
//! on channel 3 (a `metav1.Status`, which is how kubectl learns the exit
//! code).

use std::path::PathBuf;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha1::{Digest as _, Sha1};
use shoal_runtime::{ExecRequest, ExecStdio, Runtime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Error as WsError, Message,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

use super::{Config, ResponseBody, logs, text};

/// The channel protocols served, in order of preference.
pub(super) const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// RFC 6455's key suffix.
pub(super) const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Channel numbers of the channel protocols.
const STDIN: u8 = 0;
pub(super) const STDOUT: u8 = 1;
const STDERR: u8 = 2;
pub(super) const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// `v5.channel.k8s.io`: `[CLOSE, channel]` closes that channel.
const CLOSE: u8 = 255;
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
/// client opened: output as it comes, stdin (`-i`) and a terminal (`-t`)
/// when asked for.
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
    let offer = match Offer::read(&req, "exec") {
        Ok(offer) => offer,
        Err(refused) => return *refused,
    };
    let (runtime, id) = match find_container(config, ns, pod, container, q.pod_uid).await {
        Ok(found) => found,
        Err(message) => return text(StatusCode::NOT_FOUND, message),
    };
    let request = ExecRequest {
        args: q.command,
        ..Default::default()
    };
    let stdio = ExecStdio {
        stdin: q.stdin,
        tty: q.tty,
        size: None,
    };
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(error = %e, "exec: the WebSocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        session(ws, runtime, id, request, stdio).await;
    });

    offer.accept()
}

/// One exec over an accepted WebSocket: channel 0 is stdin, 1 and 2 are
/// stdout and stderr, 3 carries the final `metav1.Status`, 4 resizes the
/// terminal (`{"Width":..,"Height":..}`), and in `v5.channel.k8s.io` a
/// message `[255, 0]` closes stdin. Pings get pongs (tungstenite answers
/// them while the client side is read).
async fn session<S>(
    ws: WebSocketStream<S>,
    runtime: Runtime,
    id: String,
    request: ExecRequest,
    stdio: ExecStdio,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    // kubectl sends the terminal's size first thing: start the command on
    // a terminal of that size rather than resize it while it starts (a
    // command reading the size then may see the resize half done).
    let mut early_stdin = Vec::new();
    let mut stdio = stdio;
    if stdio.tty {
        let first_size = async {
            while let Some(Ok(Message::Binary(data))) = incoming.next().await {
                match data.first() {
                    Some(&RESIZE) => {
                        return serde_json::from_slice::<TerminalSize>(&data[1..]).ok();
                    }
                    Some(&STDIN) => early_stdin.extend_from_slice(&data[1..]),
                    _ => {}
                }
            }
            None
        };
        if let Ok(Some(size)) =
            tokio::time::timeout(std::time::Duration::from_millis(500), first_size).await
        {
            stdio.size = Some((size.width, size.height));
        }
    }
    let mut process = match runtime.exec_streaming(&id, &request, stdio).await {
        Ok(p) => p,
        Err(e) => {
            let status = json!({
                "metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": format!("error executing command in container: {e}"),
            });
            finish(&mut sink, Some(&mut incoming), &status).await;
            return;
        }
    };

    // The client's side: stdin, resizes, and the end of the session.
    let mut stdin = process.stdin.take();
    if let Some(w) = stdin.as_mut()
        && !early_stdin.is_empty()
        && (w.write_all(&early_stdin).await.is_err() || w.flush().await.is_err())
    {
        stdin = None;
    }
    let resizer = process.resizer();
    let (gone_tx, mut gone) = tokio::sync::oneshot::channel::<()>();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let mut reader = tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = &mut stopped => break,
                message = incoming.next() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            match data.first() {
                Some(&STDIN) => {
                    if let Some(w) = stdin.as_mut()
                        && (w.write_all(&data[1..]).await.is_err() || w.flush().await.is_err())
                    {
                        stdin = None;
                    }
                }
                Some(&RESIZE) => {
                    if let (Some(r), Ok(size)) =
                        (&resizer, serde_json::from_slice::<TerminalSize>(&data[1..]))
                    {
                        r.resize(size.width, size.height);
                    }
                }
                Some(&CLOSE) if data.get(1) == Some(&STDIN) => stdin = None,
                _ => {}
            }
        }
        let _ = gone_tx.send(());
        incoming
    });

    // The command's side: its output, as it comes.
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(16);
    let outputs = [
        (STDOUT, process.stdout.take()),
        (STDERR, process.stderr.take()),
    ];
    for (channel, output) in outputs {
        if let Some(output) = output {
            tokio::spawn(pump(channel, output, out_tx.clone()));
        }
    }
    drop(out_tx);
    let mut client_gone = false;
    loop {
        tokio::select! {
            message = out_rx.recv() => match message {
                Some(m) => {
                    if sink.send(m).await.is_err() {
                        client_gone = true;
                        break;
                    }
                }
                None => break,
            },
            _ = &mut gone => {
                client_gone = true;
                break;
            }
        }
    }
    if client_gone {
        // Nobody reads the output any more: end the command.
        process.kill().await;
        let _ = process.wait().await;
        reader.abort();
        return;
    }
    let status = match process.wait().await {
        Ok(code) => exit_status(code),
        Err(e) => json!({
            "metadata": {}, "status": "Failure", "reason": "InternalError",
            "message": format!("error executing command in container: {e}"),
        }),
    };
    // Stop reading the client before finishing: `finish` reads its close.
    let _ = stop.send(());
    match tokio::time::timeout(std::time::Duration::from_secs(1), &mut reader).await {
        Ok(Ok(mut incoming)) => finish(&mut sink, Some(&mut incoming), &status).await,
        _ => {
            // Still writing stdin the command does not read.
            reader.abort();
            finish(&mut sink, None, &status).await;
        }
    }
}

/// `{"Width":..,"Height":..}` on the resize channel.
#[derive(serde::Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// Copies one output of the command into channel messages.
async fn pump(
    channel: u8,
    mut output: shoal_runtime::ExecReader,
    out: tokio::sync::mpsc::Sender<Message>,
) {
    let mut buf = vec![0u8; FRAME];
    loop {
        match output.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut payload = Vec::with_capacity(n + 1);
                payload.push(channel);
                payload.extend_from_slice(&buf[1..=n]);
                if out.send(Message::Binary(payload.into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

type Sink<S> = futures_util::stream::SplitSink<WebSocketStream<S>, Message>;
type Source<S> = futures_util::stream::SplitStream<WebSocketStream<S>>;

/// Sends `data` on `channel`.
async fn send<S>(sink: &mut Sink<S>, channel: u8, data: &[u8]) -> Result<(), WsError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut payload = Vec::with_capacity(data.len() + 1);
    payload.push(channel);
    payload.extend_from_slice(data);
    sink.send(Message::Binary(payload.into())).await
}

/// Sends the final status, closes with 1000 (normal: kubectl reads the
/// status until then) and waits briefly for the client's close.
async fn finish<S>(sink: &mut Sink<S>, incoming: Option<&mut Source<S>>, status: &serde_json::Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let status = serde_json::to_vec(status).unwrap_or_default();
    let _ = send(sink, ERROR, &status).await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    let Some(incoming) = incoming else {
        return;
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(m)) = incoming.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
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
