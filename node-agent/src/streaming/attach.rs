//! `kubectl attach` on the agent, over the same WebSocket channel protocols
//! as exec: what the running container writes from now on goes out on
//! channel 1 until the attempt ends or the client leaves; with `-i` the
//! client's input (channel 0) goes to the container's stdin, with `-t`
//! to its terminal, which channel 4 resizes.
//!
//! The agent gives containers an O_APPEND log file as stdout and stderr (so
//! logs survive an agent restart); a container on a terminal has its output
//! copied to that file by the agent. So the output is the live end of that
//! log, both streams as one. The stdin and terminal are what the pod worker
//! created with the container (`shoal_runtime::Consoles`): `stdinOnce`
//! closes stdin when the first session that wrote it ends.

use std::io::Write as _;

use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

use super::{
    Config, ResponseBody,
    exec::{self, ERROR, STDOUT},
    logs, text,
};

/// Channel numbers of the channel protocols the client writes.
const STDIN: u8 = 0;
const RESIZE: u8 = 4;
/// `v5.channel.k8s.io`: `[CLOSE, channel]` closes that channel.
const CLOSE: u8 = 255;

/// Streams the container's output to the client over its WebSocket, and
/// its input to the container when asked for.
pub async fn handle(
    config: &Config,
    req: Request<Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Response<ResponseBody> {
    let mut pod_uid = None;
    let mut want_stdin = false;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        let flag = v == "1" || v.eq_ignore_ascii_case("true");
        match k.as_ref() {
            "stdin" | "input" => want_stdin = flag,
            "podUID" => pod_uid = Some(v.into_owned()).filter(|s| !s.is_empty()),
            _ => {}
        }
    }
    let offer = match exec::Offer::read(&req, "attach") {
        Ok(offer) => offer,
        Err(refused) => return *refused,
    };
    // Only a running container can be attached to.
    let (runtime, id) =
        match exec::find_container(config, ns, pod, container, pod_uid.clone()).await {
            Ok(found) => found,
            Err(message) => return text(StatusCode::NOT_FOUND, message),
        };
    let bundle_dir = match runtime.state(&id).await {
        Ok(state) => state.bundle,
        Err(e) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("container \"{container}\" in pod \"{pod}\" is not running: {e}"),
            );
        }
    };
    let input = match config.consoles.attach(&id, &bundle_dir, want_stdin) {
        Ok(input) => input,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "attaching to the stdin of container \"{container}\" in pod \"{pod}\": {e}; attach without -i to follow its output"
                ),
            );
        }
    };
    let request = logs::LogRequest {
        namespace: ns.to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
        pod_uid,
        follow: true,
        tail_lines: Some(0),
        ..Default::default()
    };
    let output = match logs::open(config, request).await {
        Ok(body) => body,
        Err(e) => return text(e.status(), e.to_string()),
    };

    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(error = %e, "attach: the WebSocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        session(ws, input, output).await;
    });

    offer.accept()
}

/// One attach over an accepted WebSocket.
async fn session<S>(
    ws: WebSocketStream<S>,
    mut input: shoal_runtime::AttachInput,
    mut output: ResponseBody,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    // The container's stdin is written on a thread of its own: a FIFO or
    // terminal the container does not read blocks the writer.
    let (stdin_tx, stdin_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    if let Some(mut stdin) = input.stdin.take() {
        std::thread::spawn(move || {
            while let Ok(data) = stdin_rx.recv() {
                if stdin.write_all(&data).is_err() {
                    return;
                }
            }
            // The session's input ended: dropping the writer closes a
            // stdinOnce container's stdin.
        });
    }
    let input = std::sync::Arc::new(input);
    let (gone_tx, mut gone) = tokio::sync::oneshot::channel::<()>();
    let reader = {
        let input = input.clone();
        tokio::spawn(async move {
            let mut stdin_tx = Some(stdin_tx);
            while let Some(message) = incoming.next().await {
                let data = match message {
                    Ok(Message::Binary(data)) => data,
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                match data.first() {
                    Some(&STDIN) => {
                        if let Some(tx) = &stdin_tx
                            && tx.send(data[1..].to_vec()).is_err()
                        {
                            stdin_tx = None;
                        }
                    }
                    Some(&RESIZE) => {
                        if let Ok(size) = serde_json::from_slice::<TerminalSize>(&data[1..]) {
                            input.resize(size.width, size.height);
                        }
                    }
                    Some(&CLOSE) if data.get(1) == Some(&STDIN) => stdin_tx = None,
                    _ => {}
                }
            }
            drop(stdin_tx);
            let _ = gone_tx.send(());
        })
    };
    loop {
        tokio::select! {
            frame = output.frame() => match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        let mut payload = Vec::with_capacity(data.len() + 1);
                        payload.push(STDOUT);
                        payload.extend_from_slice(&data);
                        if sink.send(Message::Binary(payload.into())).await.is_err() {
                            reader.abort();
                            return;
                        }
                    }
                }
                _ => break,
            },
            _ = &mut gone => {
                // The client left: the session's input ends with it.
                drop(input);
                return;
            }
        }
    }
    // The attempt ended: tell kubectl it went well, then close.
    let status =
        serde_json::to_vec(&json!({"metadata": {}, "status": "Success"})).unwrap_or_default();
    let mut payload = vec![ERROR];
    payload.extend_from_slice(&status);
    let _ = sink.send(Message::Binary(payload.into())).await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), gone).await;
    reader.abort();
}

/// `{"Width":..,"Height":..}` on the resize channel.
#[derive(serde::Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}
