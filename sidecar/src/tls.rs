//! rustls for the mesh: TLS 1.3 only, ring provider, client certificates
//! required inbound, and peers identified by the SPIFFE ID in their
//! certificate's URI name (not by DNS names) against the trust bundle.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, ServerConfig,
    SignatureScheme,
};
use shoal_ca::SpiffeId;

/// The ring provider, the workspace's only one.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The inbound side's configuration: presents `chain`, requires a client
/// certificate chaining to `roots`.
pub(crate) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
) -> Result<ServerConfig, String> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| format!("the client verifier: {e}"))?;
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("the workload certificate: {e}"))
}

/// The client certificate and key, loaded once per identity.
pub(crate) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, String> {
    let signing = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("the workload key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesClientCert for OneCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The outbound side's configuration for one connection: presents `cert`
/// and accepts a server whose certificate chains to `roots` and names
/// `expected` (or, without one, any SPIFFE ID of `trust_domain`).
pub(crate) fn client_config(
    cert: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    trust_domain: &str,
    expected: Option<SpiffeId>,
) -> Result<ClientConfig, String> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots,
        provider: provider.clone(),
        trust_domain: trust_domain.to_owned(),
        expected,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(OneCert(cert)));
    // The name the connection is made with is not the peer's identity:
    // sending it would only tell the network where the app goes.
    config.enable_sni = false;
    Ok(config)
}

/// The SPIFFE ID of a peer's verified chain, if it is in `trust_domain`.
pub(crate) fn peer_id(certs: &[CertificateDer<'_>], trust_domain: &str) -> Option<SpiffeId> {
    let id = SpiffeId::from_cert_der(certs.first()?)?;
    (id.trust_domain == trust_domain).then_some(id)
}

/// Verifies a server by chain and SPIFFE ID instead of DNS name.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    trust_domain: String,
    expected: Option<SpiffeId>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let Some(id) = peer_id(std::slice::from_ref(end_entity), &self.trust_domain) else {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(MeshNameError(format!(
                    "the server's certificate carries no SPIFFE ID of trust domain {}",
                    self.trust_domain
                )))),
            )));
        };
        if let Some(expected) = &self.expected
            && *expected != id
        {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(MeshNameError(format!(
                    "the server is {id}, not {expected}"
                )))),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a server's certificate does not name the peer the mesh expects.
#[derive(Debug)]
struct MeshNameError(String);

impl std::fmt::Display for MeshNameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MeshNameError {}
