//! The outbound listener (15001): the app's connections, each with its
//! original destination, leave as mutual TLS 1.3 towards the destination's
//! sidecar, or unencrypted to an unmeshed destination (and are counted so).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::config::{Config, HANDSHAKE_TIMEOUT};
use crate::destination::{Destinations, Route};
use crate::identity::IdentityManager;
use crate::metrics::{Direction, Metrics};
use crate::original_dst::OriginalDst;
use crate::{proxy, tls};

/// What every outbound connection shares.
struct Shared {
    config: Config,
    destinations: Destinations,
    original_dst: Arc<dyn OriginalDst>,
    identity: IdentityManager,
    metrics: Arc<Metrics>,
}

/// Serves the outbound listener until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    destinations: Destinations,
    original_dst: Arc<dyn OriginalDst>,
    identity: IdentityManager,
    metrics: Arc<Metrics>,
) {
    let shared = Arc::new(Shared {
        config,
        destinations,
        original_dst,
        identity,
        metrics,
    });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "accepting an outbound connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(error) = connection(&shared, tcp, peer).await {
                tracing::info!(%peer, %error, "outbound connection ended");
            }
        });
    }
}

async fn connection(shared: &Shared, mut app: TcpStream, peer: SocketAddr) -> Result<(), String> {
    let dst = shared
        .original_dst
        .original_dst(&mut app, peer)
        .await
        .map_err(|e| e.to_string())?;
    match shared.destinations.route(dst) {
        Route::Passthrough => {
            let upstream = TcpStream::connect(dst)
                .await
                .map_err(|e| format!("connecting to unmeshed {dst}: {e}"))?;
            let _ = upstream.set_nodelay(true);
            shared.metrics.connection(Direction::Outbound, false);
            proxy::opaque(app, upstream)
                .await
                .map_err(|e| format!("{dst} (plaintext): {e}"))
        }
        Route::Meshed { connect, identity } => {
            let Some(own) = shared.identity.current() else {
                shared.metrics.handshake_failed(Direction::Outbound);
                return Err(format!(
                    "no workload certificate yet: cannot reach {dst} over mutual TLS"
                ));
            };
            let config = tls::client_config(
                own.client_cert.clone(),
                own.roots.clone(),
                &shared.config.trust_domain,
                identity,
            )?;
            let upstream = TcpStream::connect(connect)
                .await
                .map_err(|e| format!("connecting to {dst}'s sidecar at {connect}: {e}"))?;
            let _ = upstream.set_nodelay(true);
            let name = ServerName::IpAddress(connect.ip().into());
            let handshake = TlsConnector::from(Arc::new(config)).connect(name, upstream);
            let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    shared.metrics.handshake_failed(Direction::Outbound);
                    return Err(format!("mutual TLS with {dst}'s sidecar at {connect}: {e}"));
                }
                Err(_) => {
                    shared.metrics.handshake_failed(Direction::Outbound);
                    return Err(format!(
                        "mutual TLS with {dst}'s sidecar at {connect}: no handshake in {HANDSHAKE_TIMEOUT:?}"
                    ));
                }
            };
            let server = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| tls::peer_id(certs, &shared.config.trust_domain));
            tracing::debug!(%dst, server = ?server.map(|s| s.to_string()), "outbound mutual TLS");
            proxy::write_header(&mut tls, dst.port())
                .await
                .map_err(|e| format!("{dst}: {e}"))?;
            shared.metrics.connection(Direction::Outbound, true);
            proxy::opaque(app, tls)
                .await
                .map_err(|e| format!("{dst} (mutual TLS): {e}"))
        }
    }
}
