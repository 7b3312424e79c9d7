//! The gRPC service: authenticate the token, sign the request's key for the
//! token's service account, answer with the chain and the trust bundle.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use shoal_ca::{CertificateRequest, IssuedCert, MeshCa, SpiffeId};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::proto::mesh_certificate_server::{MeshCertificate, MeshCertificateServer};
use crate::proto::{CreateCertificateRequest, CreateCertificateResponse};
use crate::review::TokenReviewer;

#[cfg(test)]
mod tests;

/// The mesh CA's port.
pub const DEFAULT_PORT: u16 = 15012;
/// The longest lifetime a caller may ask for: a week.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How the mesh CA signs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The trust domain of every SPIFFE ID it signs (`cluster.local`).
    pub trust_domain: String,
    /// The lifetime of a certificate whose request asks for none (24 h).
    pub lifetime: Duration,
    /// The longest lifetime a request may ask for.
    pub max_lifetime: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            trust_domain: shoal_ca::DEFAULT_TRUST_DOMAIN.to_owned(),
            lifetime: shoal_ca::DEFAULT_WORKLOAD_LIFETIME,
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }
}

/// The service: a mesh CA, the reviewer its callers' tokens go to, and how
/// it signs.
pub struct MeshCaService {
    ca: Arc<MeshCa>,
    reviewer: Arc<dyn TokenReviewer>,
    config: Config,
}

impl MeshCaService {
    /// A service signing with `ca` for the tokens `reviewer` accepts.
    pub fn new(ca: Arc<MeshCa>, reviewer: Arc<dyn TokenReviewer>, config: Config) -> Self {
        Self {
            ca,
            reviewer,
            config,
        }
    }

    /// The tonic service, for a router.
    pub fn into_server(self) -> MeshCertificateServer<Self> {
        MeshCertificateServer::new(self)
    }
}

/// The token of `authorization: Bearer <token>` metadata.
fn bearer<T>(request: &Request<T>) -> Result<&str, Status> {
    let missing = || {
        Status::unauthenticated(
            "no service-account token: send the pod's token as `authorization: Bearer <token>` metadata",
        )
    };
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization metadata is not ASCII"))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

#[tonic::async_trait]
impl MeshCertificate for MeshCaService {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let token = bearer(&request)?;
        let account = self.reviewer.review(token).await.map_err(|reason| {
            tracing::info!(%reason, "mesh CA refused a token");
            Status::unauthenticated(format!("the service-account token is not valid: {reason}"))
        })?;
        let body = request.get_ref();
        let csr = CertificateRequest::from_pem(&body.csr)
            .map_err(|e| Status::invalid_argument(format!("csr: {e}")))?;
        let lifetime = match body.validity_seconds {
            0 => self.config.lifetime,
            s if s < 0 => {
                return Err(Status::invalid_argument(format!(
                    "validity_seconds: {s} is negative; give 0 for the CA's default or a number of seconds"
                )));
            }
            s => Duration::from_secs(s.unsigned_abs()).min(self.config.max_lifetime),
        };
        let id = SpiffeId::new(&self.config.trust_domain, &account.namespace, &account.name);
        let cert = self
            .ca
            .sign_workload(&csr, &id, lifetime)
            .map_err(|e| Status::internal(e.to_string()))?;
        let expires_at = shoal_ca::cert_validity(&cert)
            .and_then(|(_, end)| end.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        tracing::info!(spiffe_id = %id, ?lifetime, "mesh CA signed a workload certificate");
        Ok(Response::new(CreateCertificateResponse {
            cert_chain: vec![cert],
            trust_bundle: vec![self.ca.trust_bundle().to_owned()],
            spiffe_id: id.to_string(),
            expires_at,
        }))
    }
}

/// Why the mesh CA stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The serving certificate was refused.
    #[error("mesh CA on {addr}: the serving certificate: {source}")]
    Tls {
        /// The address.
        addr: String,
        /// tonic's reason.
        source: tonic::transport::Error,
    },
    /// The server failed.
    #[error("mesh CA on {addr}: {source}")]
    Transport {
        /// The address.
        addr: String,
        /// tonic's reason.
        source: tonic::transport::Error,
    },
}

/// Serves `service` on `listener` over TLS with `serving` (whose chain the
/// callers verify) until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    serving: &IssuedCert,
    service: MeshCaService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a: SocketAddr| a.to_string());
    let identity = Identity::from_pem(serving.chain_pem(), &serving.key_pem);
    Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity))
        .map_err(|source| ServeError::Tls {
            addr: addr.clone(),
            source,
        })?
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
        .map_err(|source| ServeError::Transport { addr, source })
}
