//! `kubectl port-forward` on the agent: Kubernetes' `portforward.k8s.io`
//! protocol, on SPDY/3.1 either tunnelled in WebSocket binary messages
//! (`SPDY/3.1+portforward.k8s.io`, what kubectl 1.31 and later try first)
//! or after a plain `Upgrade: SPDY/3.1`. Every forwarded connection is a
//! pair of streams sharing a `requestID`: an error stream, where a failure
//! to reach the port is reported in the kubelet's words, and a data stream
//! joined to a TCP connection the agent opens to `localhost:<port>` inside
//! the pod's network namespace.

use std::{collections::HashMap, fs::File, os::fd::AsFd as _, sync::Arc, time::Duration};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha1::{Digest as _, Sha1};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
};

use super::{Config, ResponseBody, exec, spdy, text};

/// The sub-protocol of the port-forward streams.
const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket sub-protocol of SPDY tunnelled in WebSocket messages.
const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// RFC 6455's key suffix.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// How long connecting to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest WebSocket message accepted from the client.
const MAX_MESSAGE: u64 = 16 << 20;
/// Bytes read from the pod per DATA frame.
const CHUNK: usize = 32 * 1024;

/// How the client wants the SPDY connection carried.
enum Transport {
    /// Inside WebSocket messages; the key to answer.
    WebSocket(String),
    /// Straight on the upgraded connection.
    Spdy,
}

/// What the writer task puts on the connection.
enum Out {
    Reply(u32),
    Data(u32, Bytes, bool),
    Rst(u32),
    Ping(u32),
}

/// Answers `/portForward/{ns}/{pod}` with an upgrade, then forwards the
/// client's connections into the pod's network namespace.
pub async fn handle(
    config: &Config,
    req: Request<Incoming>,
    ns: &str,
    pod: &str,
) -> Response<ResponseBody> {
    let headers = req.headers();
    let all = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .collect()
    };
    let upgrade = all(header::UPGRADE.as_str());
    let key = all(header::SEC_WEBSOCKET_KEY.as_str()).join("");
    let transport = if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket"))
        && all(header::SEC_WEBSOCKET_PROTOCOL.as_str())
            .iter()
            .any(|p| p == TUNNEL_PROTOCOL)
        && !key.is_empty()
    {
        Transport::WebSocket(key)
    } else if upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1"))
        && all("x-stream-protocol-version")
            .iter()
            .any(|p| p == PROTOCOL)
    {
        Transport::Spdy
    } else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "port-forward needs an upgrade to WebSocket with the protocol {TUNNEL_PROTOCOL} or to SPDY/3.1 with X-Stream-Protocol-Version {PROTOCOL}"
            ),
        );
    };
    let mut uid = String::new();
    let mut containers = Vec::new();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "podUID" => uid = v.into_owned(),
            "container" => containers.push(v.into_owned()),
            _ => {}
        }
    }
    let netns = match pod_netns(config, ns, pod, &containers, &uid).await {
        Ok(f) => Arc::new(f),
        Err(message) => return text(StatusCode::NOT_FOUND, message),
    };

    let mut resp = Response::new(Empty::<Bytes>::new().boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    match &transport {
        Transport::WebSocket(key) => {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(TUNNEL_PROTOCOL),
            );
            let accept = base64::engine::general_purpose::STANDARD
                .encode(Sha1::digest(format!("{key}{WEBSOCKET_GUID}").as_bytes()));
            if let Ok(v) = HeaderValue::from_str(&accept) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
        }
        Transport::Spdy => {
            h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            h.insert(
                "x-stream-protocol-version",
                HeaderValue::from_static(PROTOCOL),
            );
        }
    }
    let target = Target {
        netns,
        pod: pod.to_owned(),
        uid,
    };
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::info!(error = %e, "port-forward: the upgrade failed");
                return;
            }
        };
        match transport {
            Transport::Spdy => serve(upgraded, target).await,
            Transport::WebSocket(_) => serve(unwrap_websocket(upgraded), target).await,
        }
    });
    resp
}

/// The pod the connections go to.
struct Target {
    netns: Arc<File>,
    pod: String,
    uid: String,
}

/// The network namespace of the first running container of `containers`.
async fn pod_netns(
    config: &Config,
    ns: &str,
    pod: &str,
    containers: &[String],
    uid: &str,
) -> Result<File, String> {
    let mut last = format!("pod \"{pod}\" names no container to reach its network through");
    let uid = Some(uid.to_owned()).filter(|u| !u.is_empty());
    for c in containers {
        let (runtime, id) = match exec::find_container(config, ns, pod, c, uid.clone()).await {
            Ok(found) => found,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match runtime.state(&id).await {
            Ok(s) if s.pid > 0 => {
                let path = format!("/proc/{}/ns/net", s.pid);
                return File::open(&path).map_err(|e| {
                    format!(
                        "unable to do port forwarding: opening the network namespace of pod \"{pod}\" ({path}): {e}"
                    )
                });
            }
            Ok(_) => last = format!("container \"{c}\" in pod \"{pod}\" is not running"),
            Err(e) => last = format!("container \"{c}\" in pod \"{pod}\" is not running: {e}"),
        }
    }
    Err(last)
}

/// Runs the SPDY session: answers every stream, pairs error and data
/// streams by `requestID`, and starts a forward for each data stream.
async fn serve<IO: AsyncRead + AsyncWrite + Send + 'static>(io: IO, target: Target) {
    let target = Arc::new(target);
    let (r, w) = tokio::io::split(io);
    let (out, mut rx) = mpsc::channel::<Out>(64);
    let writer = tokio::spawn(async move {
        let mut w = spdy::Writer::new(w);
        while let Some(o) = rx.recv().await {
            let done = match o {
                Out::Reply(s) => w.syn_reply(s).await,
                Out::Data(s, d, fin) => w.data(s, &d, fin).await,
                Out::Rst(s) => w.rst_stream(s).await,
                Out::Ping(id) => w.ping(id).await,
            };
            if let Err(e) = done {
                tracing::debug!(error = %e, "port-forward: writing to the client");
                return;
            }
        }
    });
    let mut reader = spdy::Reader::new(r);
    let mut error_streams: HashMap<String, u32> = HashMap::new();
    let mut to_pod: HashMap<u32, mpsc::Sender<Option<Bytes>>> = HashMap::new();
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::info!(pod = %target.pod, error = %e, "port-forward session ended");
                break;
            }
        };
        match frame {
            spdy::Frame::SynStream { stream, headers } => {
                let get = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                if out.send(Out::Reply(stream)).await.is_err() {
                    break;
                }
                let request = get("requestid");
                match get("streamtype").as_str() {
                    "error" => {
                        error_streams.insert(request, stream);
                    }
                    "data" => {
                        let (tx, rx) = mpsc::channel(16);
                        to_pod.insert(stream, tx);
                        tokio::spawn(forward(
                            target.clone(),
                            get("port"),
                            stream,
                            error_streams.remove(&request),
                            rx,
                            out.clone(),
                        ));
                    }
                    _ => {
                        let _ = out.send(Out::Rst(stream)).await;
                    }
                }
            }
            spdy::Frame::Data { stream, data, fin } => {
                if let Some(tx) = to_pod.get(&stream) {
                    if !data.is_empty() && tx.send(Some(data)).await.is_err() {
                        to_pod.remove(&stream);
                        continue;
                    }
                    if fin {
                        let _ = tx.send(None).await;
                        to_pod.remove(&stream);
                    }
                }
            }
            spdy::Frame::RstStream { stream } => {
                to_pod.remove(&stream);
            }
            spdy::Frame::Ping { id } => {
                if out.send(Out::Ping(id)).await.is_err() {
                    break;
                }
            }
            spdy::Frame::GoAway => break,
            spdy::Frame::Ignored => {}
        }
    }
    // Dropping the senders ends every forward; the writer ends with them.
    drop(to_pod);
    drop(out);
    let _ = writer.await;
}

/// One forwarded connection: `localhost:<port>` in the pod joined to the
/// data stream, or the reason it could not be reached on the error stream.
async fn forward(
    target: Arc<Target>,
    port: String,
    data_stream: u32,
    error_stream: Option<u32>,
    mut from_client: mpsc::Receiver<Option<Bytes>>,
    out: mpsc::Sender<Out>,
) {
    let connected = match port.parse::<u16>() {
        Ok(p) if p > 0 => connect_in(target.netns.clone(), p).await,
        _ => Err(format!("invalid port {port:?}")),
    };
    let tcp = match connected {
        Ok(tcp) => tcp,
        Err(reason) => {
            let message = format!(
                "error forwarding port {port} to pod {}, uid {}: {reason}",
                target.pod, target.uid
            );
            tracing::info!("port-forward: {message}");
            if let Some(e) = error_stream {
                let _ = out.send(Out::Data(e, Bytes::from(message), true)).await;
            }
            let _ = out.send(Out::Data(data_stream, Bytes::new(), true)).await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let down = {
        let out = out.clone();
        async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let chunk = Bytes::copy_from_slice(&buf[..n]);
                        if out
                            .send(Out::Data(data_stream, chunk, false))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = out.send(Out::Data(data_stream, Bytes::new(), true)).await;
        }
    };
    // Whether the client finished sending (FIN) rather than abandoned the
    // stream.
    let up = async move {
        loop {
            match from_client.recv().await {
                Some(Some(b)) => {
                    if wr.write_all(&b).await.is_err() {
                        return false;
                    }
                }
                Some(None) => {
                    let _ = wr.shutdown().await;
                    return true;
                }
                None => return false,
            }
        }
    };
    tokio::pin!(down);
    tokio::select! {
        () = &mut down => {}
        finished = up => if finished { down.await },
    }
    if let Some(e) = error_stream {
        let _ = out.send(Out::Data(e, Bytes::new(), true)).await;
    }
}

/// A TCP connection to `localhost:<port>` opened from inside `netns`, as
/// the kubelet does (IPv4 first, then IPv6). The socket is made on a
/// short-lived thread that entered the namespace, so tokio's threads never
/// change namespace; the socket keeps the namespace it was made in.
async fn connect_in(netns: Arc<File>, port: u16) -> Result<TcpStream, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shoal-portfwd".into())
        .spawn(move || {
            let result = (|| -> Result<std::net::TcpStream, String> {
                nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("entering the pod's network namespace: {e}"))?;
                let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
                let tcp = std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT)
                    .or_else(|e4| {
                        std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|e6| {
                            format!(
                                "failed to connect to localhost:{port} inside namespace of pod, IPv4: dial tcp4 {v4}: {} IPv6: dial tcp6 {v6}: {}",
                                dial_error(&e4),
                                dial_error(&e6)
                            )
                        })
                    })?;
                tcp.set_nonblocking(true)
                    .map_err(|e| format!("connection to port {port}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                Ok(tcp)
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    let tcp = rx
        .await
        .map_err(|_| "the connecting thread ended without an answer".to_string())??;
    TcpStream::from_std(tcp).map_err(|e| format!("connection to port {port}: {e}"))
}

/// A failed connect in Go's words, as the kubelet reports it.
fn dial_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "i/o timeout".into(),
        std::io::ErrorKind::AddrNotAvailable => "connect: cannot assign requested address".into(),
        std::io::ErrorKind::NetworkUnreachable => "connect: network is unreachable".into(),
        _ => format!("connect: {e}"),
    }
}

/// The byte stream carried in the client's WebSocket binary messages: what
/// is written to the returned end goes out as binary messages, what the
/// client sends comes out of it. Pings are answered; a close ends it.
fn unwrap_websocket<IO: AsyncRead + AsyncWrite + Send + 'static>(
    io: IO,
) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut net_r, mut net_w) = tokio::io::split(io);
    let (mut pipe_r, mut pipe_w) = tokio::io::split(ours);
    let (frames, mut rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if net_w.write_all(&f).await.is_err() || net_w.flush().await.is_err() {
                return;
            }
        }
    });
    let pongs = frames.clone();
    tokio::spawn(async move {
        loop {
            let Ok((opcode, payload)) = read_message_frame(&mut net_r).await else {
                break;
            };
            match opcode {
                0x0..=0x2 if pipe_w.write_all(&payload).await.is_err() => break,
                0x0..=0x2 => {}
                0x8 => {
                    let _ = pongs.send(exec::frame(0x8, &[0x03, 0xe8])).await;
                    break;
                }
                0x9 => {
                    let _ = pongs.send(exec::frame(0xA, &payload)).await;
                }
                _ => {}
            }
        }
        let _ = pipe_w.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match pipe_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if frames.send(exec::frame(0x2, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = frames.send(exec::frame(0x8, &[0x03, 0xe8])).await;
    });
    theirs
}

/// One WebSocket frame from the client (masked, as RFC 6455 requires of
/// clients): its opcode and unmasked payload.
pub(super) async fn read_message_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if len > MAX_MESSAGE {
        return Err(std::io::Error::other(format!(
            "a WebSocket frame of {len} bytes"
        )));
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0)];
    r.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((opcode, payload))
}
