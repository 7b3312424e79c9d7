//! The mesh CA's client: connects over TLS, trusting the CA certificate
//! given (a pod's `ca.crt` from its service-account volume), and asks for
//! a workload certificate with the pod's token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_ca::SpiffeId;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::proto::CreateCertificateRequest;
use crate::proto::mesh_certificate_client::MeshCertificateClient;

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a certificate could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address or TLS settings are unusable.
    #[error("mesh CA at {url}: {reason}")]
    Config {
        /// The address given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The CA answered with an error (or could not be reached).
    #[error("mesh CA at {url} answered {}: {}", .status.code(), .status.message())]
    Status {
        /// The address.
        url: String,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// The CA's answer does not make sense.
    #[error("mesh CA at {url} answered something unusable: {reason}")]
    Response {
        /// The address.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

impl ClientError {
    /// The gRPC code, when the CA answered one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Status { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct SignedCert {
    /// The chain (PEM), the workload's certificate first.
    pub chain_pem: Vec<String>,
    /// The roots (PEM) to verify peers with.
    pub trust_bundle: Vec<String>,
    /// The identity the certificate carries.
    pub spiffe_id: SpiffeId,
    /// When it expires.
    pub expires_at: SystemTime,
}

/// A client of the mesh CA.
#[derive(Clone, Debug)]
pub struct MeshCaClient {
    url: String,
    inner: MeshCertificateClient<Channel>,
}

impl MeshCaClient {
    /// A client for `url` (`https://host:15012`) trusting `ca_pem` for the
    /// CA's serving certificate, which must name `server_name` (the URL's
    /// host when `None`). Connects on first use and reconnects after a
    /// failure.
    pub fn new(url: &str, ca_pem: &str, server_name: Option<&str>) -> Result<Self, ClientError> {
        let config = |reason: String| ClientError::Config {
            url: url.to_owned(),
            reason,
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        if let Some(name) = server_name {
            tls = tls.domain_name(name);
        }
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| config(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| config(e.to_string()))?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        Ok(Self {
            url: url.to_owned(),
            inner: MeshCertificateClient::new(endpoint.connect_lazy()),
        })
    }

    /// Asks for a certificate for `csr_pem`'s key as the service account
    /// `token` proves, valid for `lifetime` (`None`: the CA's default).
    pub async fn sign(
        &self,
        token: &str,
        csr_pem: &str,
        lifetime: Option<Duration>,
    ) -> Result<SignedCert, ClientError> {
        let mut request = tonic::Request::new(CreateCertificateRequest {
            csr: csr_pem.to_owned(),
            validity_seconds: lifetime
                .map_or(0, |l| i64::try_from(l.as_secs().max(1)).unwrap_or(i64::MAX)),
        });
        let value =
            format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| ClientError::Config {
                    url: self.url.clone(),
                    reason: "the token holds characters metadata cannot carry".to_owned(),
                })?;
        request.metadata_mut().insert("authorization", value);
        let answer = self
            .inner
            .clone()
            .create_certificate(request)
            .await
            .map_err(|status| ClientError::Status {
                url: self.url.clone(),
                status,
            })?
            .into_inner();
        let bad = |reason: String| ClientError::Response {
            url: self.url.clone(),
            reason,
        };
        if answer.cert_chain.is_empty() || answer.trust_bundle.is_empty() {
            return Err(bad("no certificate or no trust bundle".to_owned()));
        }
        let spiffe_id: SpiffeId = answer
            .spiffe_id
            .parse()
            .map_err(|e: shoal_ca::SpiffeIdError| bad(e.to_string()))?;
        let expires_at = UNIX_EPOCH + Duration::from_secs(answer.expires_at.max(0).unsigned_abs());
        Ok(SignedCert {
            chain_pem: answer.cert_chain,
            trust_bundle: answer.trust_bundle,
            spiffe_id,
            expires_at,
        })
    }
}
