//! `kubectl attach` on the agent, output only: over the same WebSocket
//! channel protocols as exec, what the running container writes from now
//! on goes out on channel 1 until the attempt ends or the client leaves.
//! The agent gives containers an O_APPEND log file as stdout and stderr
//! (so logs survive an agent restart) and keeps no stdin pipe, so the
//! output is the live end of that log, both streams as one, and `-i`/`-t`
//! are refused.

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use super::{
    Config, ResponseBody,
    exec::{self, ERROR, STDOUT},
    logs, portforward, text,
};

/// Streams the container's output to the client over its WebSocket.
pub async fn handle(
    config: &Config,
    req: Request<Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Response<ResponseBody> {
    let mut pod_uid = None;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        let flag = v == "1" || v.eq_ignore_ascii_case("true");
        match k.as_ref() {
            "stdin" | "input" | "tty" if flag => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "attaching to the stdin or terminal of container \"{container}\" in pod \"{pod}\" is not supported: this agent keeps no stdin for containers; use kubectl attach without -i and -t to follow its output"
                    ),
                );
            }
            "podUID" => pod_uid = Some(v.into_owned()).filter(|s| !s.is_empty()),
            _ => {}
        }
    }
    let offer = match exec::Offer::read(&req, "attach") {
        Ok(offer) => offer,
        Err(refused) => return *refused,
    };
    // Only a running container can be attached to.
    if let Err(message) = exec::find_container(config, ns, pod, container, pod_uid.clone()).await {
        return text(StatusCode::NOT_FOUND, message);
    }
    let request = logs::LogRequest {
        namespace: ns.to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
        pod_uid,
        follow: true,
        tail_lines: Some(0),
        ..Default::default()
    };
    let mut output = match logs::open(config, request).await {
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
        let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
        // Without stdin the client sends only pings (kubectl's heartbeat,
        // which wants pongs) and, at the end, a close.
        let (pings, mut pinged) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        tokio::spawn(async move {
            while let Ok((opcode, payload)) = portforward::read_message_frame(&mut rd).await {
                match opcode {
                    0x8 => return,
                    0x9 if pings.send(payload).await.is_err() => return,
                    _ => {}
                }
            }
        });
        loop {
            tokio::select! {
                ping = pinged.recv() => match ping {
                    Some(payload) => {
                        if wr.write_all(&exec::frame(0xA, &payload)).await.is_err()
                            || wr.flush().await.is_err()
                        {
                            return;
                        }
                    }
                    None => {
                        let _ = wr.write_all(&exec::frame(0x8, &[0x03, 0xe8])).await;
                        return;
                    }
                },
                frame = output.frame() => match frame {
                    Some(Ok(f)) => {
                        if let Ok(data) = f.into_data()
                            && exec::send_channel(&mut wr, STDOUT, &data).await.is_err()
                        {
                            return;
                        }
                    }
                    _ => break,
                },
            }
        }
        // The attempt ended: tell kubectl it went well, then close.
        let status =
            serde_json::to_vec(&json!({"metadata": {}, "status": "Success"})).unwrap_or_default();
        let _ = exec::send_channel(&mut wr, ERROR, &status).await;
        let _ = wr.write_all(&exec::frame(0x8, &[0x03, 0xe8])).await;
        let _ = wr.flush().await;
    });

    offer.accept()
}
