//! The inbound listener (15006): terminates mutual TLS from other sidecars
//! (a client certificate chaining to the trust bundle, with a SPIFFE ID of
//! the trust domain, is required), and in permissive mode takes plaintext
//! from unmeshed clients, told apart by the first byte (a TLS handshake
//! record is 0x16). Either way the app gets plaintext on localhost.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, HANDSHAKE_TIMEOUT, Mode};
use crate::identity::IdentityManager;
use crate::metrics::{Direction, Metrics};
use crate::{proxy, tls};

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

struct Shared {
    config: Config,
    identity: IdentityManager,
    metrics: Arc<Metrics>,
}

/// Serves the inbound listener until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    identity: IdentityManager,
    metrics: Arc<Metrics>,
) {
    let shared = Arc::new(Shared {
        config,
        identity,
        metrics,
    });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "accepting an inbound connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(error) = connection(&shared, tcp, peer).await {
                tracing::info!(%peer, %error, "inbound connection ended");
            }
        });
    }
}

async fn connection(shared: &Shared, tcp: TcpStream, peer: SocketAddr) -> Result<(), String> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(shared.config.detect_timeout, tcp.peek(&mut first)).await;
    let is_tls = matches!(peeked, Ok(Ok(1))) && first[0] == TLS_HANDSHAKE;
    if matches!(peeked, Ok(Ok(0))) {
        return Ok(());
    }
    if is_tls {
        return mutual_tls(shared, tcp, peer).await;
    }
    if shared.config.mode == Mode::Strict {
        shared.metrics.refused("plaintext_in_strict_mode");
        return Err(
            "plaintext refused: this sidecar is in strict mode (mutual TLS only)".to_owned(),
        );
    }
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    // A connection captured on its way to an app port keeps that port;
    // one addressed to the listener itself goes to the configured app port.
    let port = if local.port() != shared.config.inbound_port {
        local.port()
    } else {
        shared.config.app_port.ok_or_else(|| {
            shared.metrics.refused("no_app_port");
            "plaintext connection to the inbound port, and no --app-port to send it to".to_owned()
        })?
    };
    let app = connect_app(shared, port).await?;
    shared.metrics.connection(Direction::Inbound, false);
    proxy::to_app(tcp, app, None, shared.config.detect_timeout)
        .await
        .map_err(|e| format!("plaintext to app port {port}: {e}"))
}

async fn mutual_tls(shared: &Shared, tcp: TcpStream, peer: SocketAddr) -> Result<(), String> {
    let Some(own) = shared.identity.current() else {
        shared.metrics.handshake_failed(Direction::Inbound);
        return Err("no workload certificate yet: cannot accept mutual TLS".to_owned());
    };
    let accept = async {
        let mut stream = TlsAcceptor::from(own.server.clone())
            .accept(tcp)
            .await
            .map_err(|e| format!("mutual TLS handshake: {e}"))?;
        let port = proxy::read_header(&mut stream)
            .await
            .map_err(|e| format!("transport header: {e}"))?;
        Ok::<_, String>((stream, port))
    };
    let (stream, port) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            shared.metrics.handshake_failed(Direction::Inbound);
            return Err(e);
        }
        Err(_) => {
            shared.metrics.handshake_failed(Direction::Inbound);
            return Err(format!("no mutual TLS handshake in {HANDSHAKE_TIMEOUT:?}"));
        }
    };
    let client = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| tls::peer_id(certs, &shared.config.trust_domain));
    let Some(client) = client else {
        shared.metrics.handshake_failed(Direction::Inbound);
        return Err(format!(
            "the client's certificate carries no SPIFFE ID of trust domain {}",
            shared.config.trust_domain
        ));
    };
    let client = client.to_string();
    tracing::info!(%peer, client_id = %client, port, "inbound mutual TLS");
    let app = connect_app(shared, port).await?;
    shared.metrics.connection(Direction::Inbound, true);
    shared.metrics.client(&client);
    proxy::to_app(stream, app, Some(client), shared.config.detect_timeout)
        .await
        .map_err(|e| format!("mutual TLS to app port {port}: {e}"))
}

async fn connect_app(shared: &Shared, port: u16) -> Result<TcpStream, String> {
    if shared.config.own_ports.contains(&port) {
        shared.metrics.refused("sidecar_port");
        return Err(format!("port {port} is the sidecar's own, not the app's"));
    }
    let addr = SocketAddr::new(shared.config.app_host, port);
    let app = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to the app at {addr}: {e}"))?;
    let _ = app.set_nodelay(true);
    Ok(app)
}
