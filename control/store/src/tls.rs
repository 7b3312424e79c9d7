//! TLS for the client and peer listeners, from etcd's flags
//! (`--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`
//! and their `--peer-` twins): reading the files, checking that the
//! combination makes sense, and tonic's configurations.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use shoal_raft::PEER_TLS_HANDSHAKE_TIMEOUT;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[cfg(test)]
mod tests;

/// Which listener a set of TLS flags is for; decides the flags' names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The etcd API (`--cert-file`, ...).
    Client,
    /// The Raft peer protocol (`--peer-cert-file`, ...).
    Peer,
}

impl Listener {
    /// The flag's name with this listener's prefix: `--peer-cert-file`.
    fn flag(self, name: &str) -> String {
        match self {
            Self::Client => format!("--{name}"),
            Self::Peer => format!("--peer-{name}"),
        }
    }
}

/// A TLS flag combination or file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A flag needs another one that is missing.
    #[error("{flag} needs {needs}")]
    Needs {
        /// The flag given.
        flag: String,
        /// What else must be given, and why.
        needs: String,
    },
    /// A file could not be read.
    #[error("{flag} {}: {source}", path.display())]
    Read {
        /// The flag naming the file.
        flag: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rustls refused the certificate, key or CA (a key that does not
    /// match its certificate, say).
    #[error("TLS for the {listener} listener: {reason}")]
    Rustls {
        /// "client" or "peer".
        listener: &'static str,
        /// rustls' reason.
        reason: String,
    },
    /// A file holds no usable PEM.
    #[error("{flag} {}: {reason}", path.display())]
    Pem {
        /// The flag naming the file.
        flag: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The files one listener's TLS comes from, as etcd's flags name them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate (chain) the listener presents, PEM.
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM.
    pub key_file: Option<PathBuf>,
    /// The CA certificates client certificates are verified against (and,
    /// for peers, other members' serving certificates), PEM.
    pub trusted_ca_file: Option<PathBuf>,
    /// Whether clients must present a certificate the CA signed.
    pub client_cert_auth: bool,
}

impl TlsFiles {
    /// Reads and checks the files; `None` when no flag is given (plain
    /// HTTP/2). Errors name the flag and the file.
    pub fn load(&self, listener: Listener) -> Result<Option<ListenerTls>, TlsError> {
        let flag = |name: &str| listener.flag(name);
        let (cert_file, key_file) = match (&self.cert_file, &self.key_file) {
            (None, None) => {
                if self.trusted_ca_file.is_some() {
                    return Err(TlsError::Needs {
                        flag: flag("trusted-ca-file"),
                        needs: format!("{} and {}", flag("cert-file"), flag("key-file")),
                    });
                }
                if self.client_cert_auth {
                    return Err(TlsError::Needs {
                        flag: flag("client-cert-auth"),
                        needs: format!(
                            "{}, {} and {}",
                            flag("cert-file"),
                            flag("key-file"),
                            flag("trusted-ca-file")
                        ),
                    });
                }
                return Ok(None);
            }
            (Some(_), None) => {
                return Err(TlsError::Needs {
                    flag: flag("cert-file"),
                    needs: flag("key-file"),
                });
            }
            (None, Some(_)) => {
                return Err(TlsError::Needs {
                    flag: flag("key-file"),
                    needs: flag("cert-file"),
                });
            }
            (Some(cert), Some(key)) => (cert, key),
        };
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(TlsError::Needs {
                flag: flag("client-cert-auth"),
                needs: format!(
                    "{} to verify client certificates against",
                    flag("trusted-ca-file")
                ),
            });
        }
        if listener == Listener::Peer && self.trusted_ca_file.is_none() {
            return Err(TlsError::Needs {
                flag: flag("cert-file"),
                needs: format!(
                    "{}: members verify each other's certificates against it",
                    flag("trusted-ca-file")
                ),
            });
        }
        let cert_pem = read(&flag("cert-file"), cert_file)?;
        check_certificates(&flag("cert-file"), cert_file, &cert_pem)?;
        let key_pem = read(&flag("key-file"), key_file)?;
        if let Err(e) = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()) {
            return Err(TlsError::Pem {
                flag: flag("key-file"),
                path: key_file.clone(),
                reason: format!("no usable private key ({e})"),
            });
        }
        let trusted_ca_pem = match &self.trusted_ca_file {
            Some(path) => {
                let pem = read(&flag("trusted-ca-file"), path)?;
                check_certificates(&flag("trusted-ca-file"), path, &pem)?;
                Some(pem)
            }
            None => None,
        };
        Ok(Some(ListenerTls {
            cert_pem,
            key_pem,
            trusted_ca_pem,
            client_cert_auth: self.client_cert_auth,
        }))
    }
}

fn read(flag: &str, path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        flag: flag.to_owned(),
        path: path.to_path_buf(),
        source,
    })
}

fn check_certificates(flag: &str, path: &Path, pem: &str) -> Result<(), TlsError> {
    let certs: Result<Vec<CertificateDer<'_>>, _> =
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let reason = match certs {
        Ok(certs) if !certs.is_empty() => return Ok(()),
        Ok(_) => "no CERTIFICATE block (a PEM certificate is expected)".to_owned(),
        Err(e) => format!("not a PEM certificate ({e})"),
    };
    Err(TlsError::Pem {
        flag: flag.to_owned(),
        path: path.to_path_buf(),
        reason,
    })
}

/// One listener's TLS material (PEM): read from [`TlsFiles`], or issued by
/// the cluster CA when `shoal server` runs the store.
#[derive(Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// The certificate (chain) presented.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The CA certificates trusted for client (and peer) certificates.
    pub trusted_ca_pem: Option<String>,
    /// Whether clients must present a certificate the CA signed.
    pub client_cert_auth: bool,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret]")
            .field("trusted_ca_pem", &self.trusted_ca_pem)
            .field("client_cert_auth", &self.client_cert_auth)
            .finish()
    }
}

impl ListenerTls {
    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// The client listener's rustls configuration (the etcd API serves
    /// TLS itself): as [`Self::peer_server_config`], with ring and ALPN `h2`.
    pub(crate) fn rustls_server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let fail = |reason: String| TlsError::Rustls {
            listener: "client",
            reason,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?;
        let builder = match (&self.trusted_ca_pem, self.client_cert_auth) {
            (Some(ca), true) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    let cert = cert.map_err(|e| fail(format!("the trusted CA: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| fail(format!("the trusted CA: {e}")))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| fail(format!("the trusted CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("the certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| fail(format!("the key: {e}")))?;
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| fail(format!("the certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The peer listener's side: present the certificate and, with
    /// `client_cert_auth`, require one the trusted CA signed. As in etcd, a
    /// trusted CA without `client_cert_auth` asks for no certificate.
    pub(crate) fn peer_server_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(self.identity())
            .timeout(PEER_TLS_HANDSHAKE_TIMEOUT);
        match (&self.trusted_ca_pem, self.client_cert_auth) {
            (Some(ca), true) => config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(false),
            _ => config,
        }
    }

    /// A member's side towards other members: trust the CA, present the
    /// same certificate (etcd's peer certificates serve both ways).
    pub(crate) fn peer_client_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .identity(self.identity())
            .timeout(PEER_TLS_HANDSHAKE_TIMEOUT);
        match &self.trusted_ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config,
        }
    }
}
