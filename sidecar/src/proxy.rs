//! Moving bytes once both ends are connected: opaque TCP, or HTTP/1 when
//! the client's first bytes are a request line, so the inbound side can set
//! the client's identity header on every request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::config::CLIENT_ID_HEADER;

/// Request-line methods that mark HTTP/1.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
];

/// A stream whose first bytes were already read: they are read again first.
pub(crate) struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways until both sides closed.
pub(crate) async fn opaque<A, B>(mut a: A, mut b: B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional(&mut a, &mut b).await?;
    Ok(())
}

/// The inbound side's hand-off to the app: HTTP/1 requests get
/// [`CLIENT_ID_HEADER`] set to `client_id` (removed when there is none);
/// anything else is copied as it is.
pub(crate) async fn to_app<S>(
    mut client: S,
    app: TcpStream,
    client_id: Option<String>,
    detect_timeout: std::time::Duration,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = vec![0u8; 8];
    let mut filled = 0;
    // Enough bytes to tell a request line; a client that sends nothing
    // (the server speaks first) is copied as it is once the wait is over.
    let sniff = async {
        while filled < first.len() {
            let n = client.read(&mut first[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
            let seen = &first[..filled];
            let undecided = METHODS
                .iter()
                .any(|m| seen.len() < m.len() && m.starts_with(seen));
            if !undecided {
                break;
            }
        }
        Ok::<_, io::Error>(())
    };
    if let Ok(read) = tokio::time::timeout(detect_timeout, sniff).await {
        read?;
    }
    first.truncate(filled);
    let is_http = METHODS.iter().any(|m| first.starts_with(m));
    let client = Rewind {
        prefix: first,
        pos: 0,
        inner: client,
    };
    if !is_http {
        return opaque(client, app).await;
    }
    http1(client, app, client_id).await
}

/// Serves the client's HTTP/1 requests over one connection to the app. An
/// upgrade the app accepts (101, e.g. WebSocket) turns the connection into
/// bytes copied both ways.
async fn http1<S>(client: Rewind<S>, app: TcpStream, client_id: Option<String>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(app))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let sender = Arc::new(Mutex::new(sender));
    let value = client_id.and_then(|id| HeaderValue::from_str(&id).ok());
    let service = service_fn(move |mut req: Request<Incoming>| {
        let sender = sender.clone();
        let value = value.clone();
        async move {
            req.headers_mut().remove(CLIENT_ID_HEADER);
            if let Some(value) = value {
                req.headers_mut().insert(CLIENT_ID_HEADER, value);
            }
            let downstream = req
                .headers()
                .contains_key(http::header::UPGRADE)
                .then(|| hyper::upgrade::on(&mut req));
            let mut sender = sender.lock().await;
            sender.ready().await?;
            let mut response = sender.send_request(req).await?;
            if response.status() == http::StatusCode::SWITCHING_PROTOCOLS
                && let Some(downstream) = downstream
            {
                let upstream = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    if let (Ok(down), Ok(up)) = (downstream.await, upstream.await) {
                        let _ = opaque(TokioIo::new(down), TokioIo::new(up)).await;
                    }
                });
            }
            Ok::<_, hyper::Error>(response)
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .with_upgrades()
        .await
        .map_err(io::Error::other)
}

/// Writes the transport header (magic and destination port).
pub(crate) async fn write_header<S: AsyncWrite + Unpin>(
    stream: &mut S,
    port: u16,
) -> io::Result<()> {
    let mut header = [0u8; 6];
    header[..4].copy_from_slice(crate::config::TRANSPORT_MAGIC);
    header[4..].copy_from_slice(&port.to_be_bytes());
    stream.write_all(&header).await?;
    stream.flush().await
}

/// Reads the transport header: the destination port.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<u16> {
    let mut header = [0u8; 6];
    stream.read_exact(&mut header).await?;
    if &header[..4] != crate::config::TRANSPORT_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer sent no shoal transport header (SHL1 and a port)",
        ));
    }
    Ok(u16::from_be_bytes([header[4], header[5]]))
}
