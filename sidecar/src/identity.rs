//! The workload identity: a fresh key and its certificate from the mesh CA,
//! asked for with the pod's service-account token, renewed at half life;
//! while renewal fails the current certificate stays in use, and renewal
//! is retried with backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use shoal_ca::{SpiffeId, WorkloadKey};
use shoal_mesh_ca::{MeshCaClient, SignedCert};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::tls;

#[cfg(test)]
mod tests;

/// The first retry after a failed renewal; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between renewal attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The shortest wait before a renewal, whatever the lifetime.
const MIN_REFRESH: Duration = Duration::from_millis(100);

/// Where certificates come from: the mesh CA, or a fake in tests.
#[async_trait::async_trait]
pub trait CertSource: Send + Sync + 'static {
    /// Signs `csr_pem`'s key, or says why not.
    async fn sign(&self, csr_pem: &str) -> Result<SignedCert, String>;
}

/// The mesh CA, asked with the token read from a file at every request
/// (projected tokens are rotated by the kubelet).
pub struct CaSource {
    client: MeshCaClient,
    token_path: PathBuf,
    lifetime: Option<Duration>,
}

impl CaSource {
    /// Asks `client` with the token in `token_path`, for `lifetime` (`None`:
    /// the CA's default).
    pub fn new(client: MeshCaClient, token_path: PathBuf, lifetime: Option<Duration>) -> Self {
        Self {
            client,
            token_path,
            lifetime,
        }
    }
}

#[async_trait::async_trait]
impl CertSource for CaSource {
    async fn sign(&self, csr_pem: &str) -> Result<SignedCert, String> {
        let token = tokio::fs::read_to_string(&self.token_path)
            .await
            .map_err(|e| {
                format!(
                    "reading the service-account token {}: {e}",
                    self.token_path.display()
                )
            })?;
        self.client
            .sign(token.trim(), csr_pem, self.lifetime)
            .await
            .map_err(|e| e.to_string())
    }
}

/// One certificate and what the listeners build from it.
pub struct Identity {
    /// Who this workload is.
    pub id: SpiffeId,
    /// When the certificate expires.
    pub expires_at: SystemTime,
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client_cert: Arc<CertifiedKey>,
    pub(crate) roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id.to_string())
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Whether the certificate has expired.
    pub fn expired(&self) -> bool {
        SystemTime::now() >= self.expires_at
    }

    fn build(key: &WorkloadKey, signed: SignedCert, trust_domain: &str) -> Result<Self, String> {
        if signed.spiffe_id.trust_domain != trust_domain {
            return Err(format!(
                "the mesh CA signed {}, outside this sidecar's trust domain {trust_domain}",
                signed.spiffe_id
            ));
        }
        let mut chain = Vec::new();
        for pem in &signed.chain_pem {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(cert.map_err(|e| format!("the certificate chain: {e}"))?);
            }
        }
        let mut roots = RootCertStore::empty();
        for pem in &signed.trust_bundle {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("the trust bundle: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("the trust bundle: {e}"))?;
            }
        }
        if chain.is_empty() || roots.is_empty() {
            return Err("the mesh CA sent no certificate or no trust bundle".to_owned());
        }
        let key_pem = key.key_pem().map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("the workload key: {e}"))?;
        let roots = Arc::new(roots);
        let client_cert = tls::certified_key(chain.clone(), &key)?;
        let server = Arc::new(tls::server_config(chain, key, roots.clone())?);
        Ok(Self {
            id: signed.spiffe_id,
            expires_at: signed.expires_at,
            server,
            client_cert,
            roots,
        })
    }
}

/// Holds the current identity and keeps it renewed.
#[derive(Clone, Debug)]
pub struct IdentityManager {
    current: watch::Receiver<Option<Arc<Identity>>>,
}

impl IdentityManager {
    /// Starts getting and renewing certificates from `source` for
    /// `trust_domain`; the task runs until the returned handle is aborted.
    pub fn start(
        source: Arc<dyn CertSource>,
        trust_domain: &str,
        metrics: Arc<Metrics>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(None);
        let trust_domain = trust_domain.to_owned();
        let task = tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let wait = match renew(&*source, &trust_domain).await {
                    Ok(identity) => {
                        let expiry = identity
                            .expires_at
                            .duration_since(UNIX_EPOCH)
                            .ok()
                            .and_then(|d| i64::try_from(d.as_secs()).ok());
                        metrics.renewal(true, expiry);
                        tracing::info!(id = %identity.id, expires_at = ?identity.expires_at, "workload certificate renewed");
                        let wait = refresh_in(identity.expires_at, SystemTime::now());
                        tx.send_replace(Some(Arc::new(identity)));
                        backoff = FIRST_BACKOFF;
                        wait
                    }
                    Err(error) => {
                        metrics.renewal(false, None);
                        let keeping = tx.borrow().as_ref().map(|i| i.id.to_string());
                        tracing::warn!(%error, ?keeping, retry_in = ?backoff, "renewing the workload certificate failed; the current one stays in use");
                        let wait = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        wait
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
        (Self { current: rx }, task)
    }

    /// The identity in use, if one was had.
    pub fn current(&self) -> Option<Arc<Identity>> {
        self.current.borrow().clone()
    }

    /// Waits for the first identity.
    pub async fn ready(&self) -> Option<Arc<Identity>> {
        let mut rx = self.current.clone();
        let got = rx.wait_for(Option::is_some).await.ok()?;
        got.clone()
    }
}

async fn renew(source: &dyn CertSource, trust_domain: &str) -> Result<Identity, String> {
    let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
    let csr = key.csr_pem(None).map_err(|e| e.to_string())?;
    let signed = source.sign(&csr).await?;
    Identity::build(&key, signed, trust_domain)
}

/// How long until a certificate expiring at `expires_at` is renewed, seen
/// at `now`: half of what is left.
fn refresh_in(expires_at: SystemTime, now: SystemTime) -> Duration {
    expires_at
        .duration_since(now)
        .map_or(MIN_REFRESH, |left| (left / 2).max(MIN_REFRESH))
}
