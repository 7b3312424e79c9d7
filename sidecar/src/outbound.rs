//! The outbound listener (15001): the app's connections, each with its
//! original destination, leave as mutual TLS 1.3 towards the destination's
//! sidecar, or unencrypted to an unmeshed destination (and are counted so).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use shoal_ca::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::config::{Config, HANDSHAKE_TIMEOUT};
use crate::destination::{Destinations, Route};
use crate::identity::{Identity, IdentityManager};
use crate::metrics::{Direction, Metrics};
use crate::original_dst::OriginalDst;
use crate::{proxy, tls};

/// Client configurations by expected server identity, with the identity
/// each was built from.
type ConfigCache = HashMap<Option<SpiffeId>, (Arc<Identity>, Arc<ClientConfig>)>;

/// What every outbound connection shares.
struct Shared {
    config: Config,
    destinations: Destinations,
    original_dst: Arc<dyn OriginalDst>,
    identity: IdentityManager,
    metrics: Arc<Metrics>,
    /// One client configuration per expected server identity, for the
    /// current certificate: kept, so TLS sessions resume.
    configs: Mutex<ConfigCache>,
}

impl Shared {
    fn client_config(
        &self,
        own: &Arc<Identity>,
        expected: Option<SpiffeId>,
    ) -> Result<Arc<ClientConfig>, String> {
        let mut configs = self
            .configs
            .lock()
            .map_err(|_| "the client configuration cache is poisoned".to_owned())?;
        if let Some((built_for, config)) = configs.get(&expected)
            && Arc::ptr_eq(built_for, own)
        {
            return Ok(config.clone());
        }
        let config = Arc::new(tls::client_config(
            own.client_cert.clone(),
            own.roots.clone(),
            &self.config.trust_domain,
            expected.clone(),
        )?);
        configs.insert(expected, (own.clone(), config.clone()));
        Ok(config)
    }
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
        configs: Mutex::new(HashMap::new()),
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
            let config = shared.client_config(&own, identity)?;
            let upstream = TcpStream::connect(connect)
                .await
                .map_err(|e| format!("connecting to {dst}'s sidecar at {connect}: {e}"))?;
            let _ = upstream.set_nodelay(true);
            let name = ServerName::IpAddress(connect.ip().into());
            let handshake = TlsConnector::from(config).connect(name, upstream);
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
