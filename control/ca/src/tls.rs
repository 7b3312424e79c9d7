//! rustls configurations for the API's TLS, always on rustls' ring provider,
//! and the identity a verified client certificate carries.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::certificate::{IssuedCert, ParsedCert};
use crate::identity::Identity;

#[cfg(test)]
mod tests;

/// ALPN protocols the API server offers, in order of preference.
pub const API_ALPN_PROTOCOLS: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Errors from building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input held nothing usable.
    #[error("reading the {what}: {reason}")]
    Pem {
        /// Which input, such as "serving certificate".
        what: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// rustls refused the input.
    #[error("setting up TLS with the {what}: {source}")]
    Rustls {
        /// Which input.
        what: &'static str,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built.
    #[error("building the client certificate verifier from the CA certificate: {0}")]
    Verifier(String),
}

/// A TLS server configuration presenting `serving` (with its CA), offering
/// `h2` and `http/1.1` by ALPN, and asking clients for a certificate signed
/// by `client_ca_pem`. A client without a certificate still connects, so the
/// server can answer it 401 or 403; a client whose certificate does not chain
/// to the CA fails the handshake.
pub fn server_config(serving: &IssuedCert, client_ca_pem: &str) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let roots = Arc::new(root_store(client_ca_pem)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let chain = certificates(&serving.chain_pem(), "serving certificate")?;
    let key = private_key(&serving.key_pem, "serving key")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "ring provider",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls {
            what: "serving certificate",
            source,
        })?;
    config.alpn_protocols = API_ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS client configuration trusting only `ca_pem` and, if `client` is
/// given, presenting that certificate. No ALPN is set; a client that speaks
/// HTTP/2 sets `alpn_protocols` itself.
pub fn client_config(ca_pem: &str, client: Option<&IssuedCert>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "ring provider",
            source,
        })?
        .with_root_certificates(root_store(ca_pem)?);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some(client) => {
            let chain = certificates(&client.chain_pem(), "client certificate")?;
            let key = private_key(&client.key_pem, "client key")?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| TlsError::Rustls {
                    what: "client certificate",
                    source,
                })
        }
    }
}

/// The identity in a verified client certificate chain: CN as the user and
/// every O as a group. `None` when the client sent no certificate or its
/// leaf has no common name.
///
/// Pass only what rustls verified against the CA, that is the connection's
/// `peer_certificates()` after a handshake under [`server_config`]; with
/// tokio-rustls, `tls_stream.get_ref().1.peer_certificates()`.
pub fn identity_from_peer(certs: &[CertificateDer<'_>]) -> Option<Identity> {
    let leaf = ParsedCert::from_der(certs.first()?).ok()?;
    let user = leaf.common_name().filter(|cn| !cn.is_empty())?;
    Some(Identity {
        user,
        groups: leaf.organizations(),
    })
}

/// When the leaf of `certs` (DER, as a handshake or a PEM file gives them)
/// starts and stops being valid; `None` if it does not parse.
pub fn certificate_validity(
    certs: &[CertificateDer<'_>],
) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    let leaf = ParsedCert::from_der(certs.first()?).ok()?;
    Some((leaf.not_before(), leaf.not_after()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_pem, "CA certificate")? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            what: "CA certificate",
            source,
        })?;
    }
    Ok(roots)
}

fn certificates(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no CERTIFICATE block".to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what,
        reason: e.to_string(),
    })
}
