//! The client listener's TLS: handshakes run concurrently beside the accept
//! loop, and a refused client reads why before the connection closes.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{TLS_HANDSHAKE_TIMEOUT, TLS_REFUSAL_LINGER};

/// Handshaken connections waiting for the gRPC server.
const READY_QUEUE: usize = 64;
/// Pause after a failed accept (out of file descriptors, say).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The TLS connections on `listener`, for tonic's `serve_with_incoming`.
/// The accept loop ends when the server drops the stream.
pub(crate) fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (ready, stream) = mpsc::channel(READY_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = ready.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "accepting an etcd API connection");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(handshake(acceptor.clone(), tcp, peer, ready.clone()));
        }
    });
    ReceiverStream::new(stream)
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    ready: mpsc::Sender<io::Result<TlsStream<TcpStream>>>,
) {
    let accept = acceptor.accept(tcp).into_fallible();
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => {
            let _ = ready.send(Ok(tls)).await;
        }
        Ok(Err((error, tcp))) => {
            tracing::info!(%peer, %error, "etcd API client refused in the TLS handshake");
            linger(tcp).await;
        }
        Err(_) => {
            tracing::info!(%peer, "etcd API client did not finish the TLS handshake in time");
        }
    }
}

/// Closes a refused connection gently: the alert was written, so send FIN
/// and read (dropping) what the client still sends. Closing a socket with
/// unread data resets it, and the client would never read the alert (a TLS
/// 1.3 client has already sent its first request when the server checks
/// its certificate).
async fn linger(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(TLS_REFUSAL_LINGER, async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
