//! The streaming server's TLS: a self-signed serving certificate made at
//! start (as the kubelet makes one when none is configured; the apiserver
//! does not verify it, as Kubernetes' apiserver by default), and a client
//! certificate required and checked against the cluster CA.

use std::{net::IpAddr, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use shoal_ca::SubjectAltName;

use super::Error;

/// A TLS server configuration for the streaming port: a fresh serving
/// certificate for `node_name` and `node_ips` (plus `localhost` and the
/// loopback addresses), HTTP/1.1 only (exec upgrades the connection), and a
/// client certificate signed by `client_ca_pem` required: a client without
/// one fails the handshake. Also returns the certificate (PEM) that signed
/// the serving certificate, for a client that wants to pin it.
pub fn server_config(
    client_ca_pem: &str,
    node_name: &str,
    node_ips: &[IpAddr],
) -> Result<(ServerConfig, String), Error> {
    let tls = |what: &str, e: &dyn std::fmt::Display| Error::Tls(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| tls("reading the cluster CA certificate", &e))?;
        roots
            .add(cert)
            .map_err(|e| tls("adding the cluster CA certificate", &e))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls(
            "the cluster CA holds no CERTIFICATE block: pass the kubeconfig of the cluster the agent joins".into(),
        ));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls("building the client certificate verifier", &e))?;

    let mut names = vec![
        SubjectAltName::parse("localhost"),
        SubjectAltName::parse("127.0.0.1"),
        SubjectAltName::parse("::1"),
    ];
    if !node_name.is_empty() {
        names.push(SubjectAltName::parse(node_name));
    }
    names.extend(node_ips.iter().map(|ip| SubjectAltName::from(*ip)));
    // A throwaway signer: its key lives only in memory, so the certificate
    // is as good as self-signed, and a restart makes a new one.
    let serving = shoal_ca::ClusterCa::generate()
        .and_then(|ca| ca.issue_serving(&names))
        .map_err(|e| tls("making the serving certificate", &e))?;
    let chain = CertificateDer::pem_slice_iter(serving.chain_pem().as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls("reading the serving certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())
        .map_err(|e| tls("reading the serving key", &e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("ring provider", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls("serving certificate", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, serving.ca_pem))
}
