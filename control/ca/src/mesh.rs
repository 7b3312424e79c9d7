//! The mesh CA: a root of its own, separate from the cluster CA the API
//! trusts, that signs workload certificates (X.509-SVIDs) whose only name is
//! a SPIFFE ID, `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`;
//! and the workload side: a key and a certificate request for it.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use x509_cert::builder::{Builder, RequestBuilder};
use x509_cert::der::asn1::Ia5String;
use x509_cert::der::{Decode, Encode, EncodePem};
use x509_cert::ext::pkix::SubjectAltName as SanExtension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::{Name, RdnSequence};

use crate::authority::{CaError, ClusterCa, generate_key};
use crate::certificate::{self, ParsedCert, Signer, Usage};
use crate::request::CertificateRequest;

#[cfg(test)]
mod tests;

/// File name of the mesh CA's certificate, beside the cluster CA's in the
/// control plane's secrets directory (shared by every member).
pub const MESH_CA_CERT_FILE: &str = "mesh-ca.crt";
/// File name of the mesh CA's private key, beside the cluster CA's.
pub const MESH_CA_KEY_FILE: &str = "mesh-ca.key";
/// Common name of the mesh CA's root certificate.
pub const MESH_CA_COMMON_NAME: &str = "shoal-mesh-ca";
/// The trust domain of SPIFFE IDs unless configured otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// How long a workload certificate is valid unless configured otherwise.
pub const DEFAULT_WORKLOAD_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a SPIFFE ID does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{id:?} is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>: {reason}"
)]
pub struct SpiffeIdError {
    /// The text given.
    pub id: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// The trust domain, such as `cluster.local`.
    pub trust_domain: String,
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
}

impl SpiffeId {
    /// The identity of service account `namespace/service_account` in `trust_domain`.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// The SPIFFE ID in a verified workload certificate (DER): its URI
    /// subjectAltName, if it has exactly one and it parses.
    pub fn from_cert_der(der: &[u8]) -> Option<Self> {
        let cert = ParsedCert::from_der(der).ok()?;
        match cert.uri_names().as_slice() {
            [one] => one.parse().ok(),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let bad = |reason| SpiffeIdError {
            id: id.to_owned(),
            reason,
        };
        let rest = id
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("it does not start with spiffe://"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("it has no path after the trust domain"))?;
        check_trust_domain(trust_domain).map_err(bad)?;
        let parts: Vec<&str> = path.split('/').collect();
        let [ns_key, namespace, sa_key, service_account] = parts.as_slice() else {
            return Err(bad("the path is not /ns/<namespace>/sa/<serviceaccount>"));
        };
        if *ns_key != "ns" || *sa_key != "sa" {
            return Err(bad("the path is not /ns/<namespace>/sa/<serviceaccount>"));
        }
        if namespace.is_empty() || service_account.is_empty() {
            return Err(bad("the namespace and service account must not be empty"));
        }
        Ok(Self::new(trust_domain, namespace, service_account))
    }
}

/// Checks a trust domain as the SPIFFE spec writes it: lowercase letters,
/// digits, dots, dashes and underscores.
pub fn check_trust_domain(trust_domain: &str) -> Result<(), &'static str> {
    if trust_domain.is_empty() {
        return Err("the trust domain is empty");
    }
    let ok = trust_domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err("a trust domain holds only lowercase letters, digits, '.', '-' and '_'")
    }
}

/// The mesh CA: signs workload certificates for SPIFFE IDs. Its root is its
/// own, so nothing it signs is trusted by the API.
#[derive(Debug)]
pub struct MeshCa {
    ca: ClusterCa,
}

impl MeshCa {
    /// A new mesh CA in memory (tests, or a cluster that keeps none on disk).
    pub fn generate() -> Result<Self, CaError> {
        Ok(Self {
            ca: ClusterCa::from_key(generate_key()?, MESH_CA_COMMON_NAME)?,
        })
    }

    /// Loads the mesh CA from `dir/mesh-ca.crt` and `dir/mesh-ca.key`,
    /// creating both (key 0600) if neither is there, as the cluster CA is
    /// kept beside them.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        Ok(Self {
            ca: ClusterCa::load_or_create_files(
                &dir.join(MESH_CA_CERT_FILE),
                &dir.join(MESH_CA_KEY_FILE),
                MESH_CA_COMMON_NAME,
            )?,
        })
    }

    /// The trust bundle (PEM): the roots a workload verifies its peers with.
    pub fn trust_bundle(&self) -> &str {
        self.ca.cert_pem()
    }

    /// Signs `request`'s key into a workload certificate (PEM) for `id`,
    /// valid for `lifetime`. Nothing of the request but its key is used:
    /// the identity is the caller's, established from a verified token.
    pub fn sign_workload(
        &self,
        request: &CertificateRequest,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<String, CaError> {
        let (name, key) = self.ca.signer_parts();
        let built = empty_name().map_err(|e| e.to_string()).and_then(|subject| {
            certificate::build(
                subject,
                &request.key,
                Usage::Workload(id.to_string()),
                lifetime,
                Signer { name, key },
            )
            .map_err(|e| e.to_string())
        });
        built.map_err(|reason| CaError::Build {
            subject: id.to_string(),
            reason,
        })
    }
}

fn empty_name() -> Result<Name, x509_cert::der::Error> {
    Name::from_der(&RdnSequence::default().to_der()?)
}

/// A workload's private key, and the certificate request the mesh CA signs.
pub struct WorkloadKey {
    key: SigningKey,
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkloadKey([secret])")
    }
}

impl WorkloadKey {
    /// A new P-256 key.
    pub fn generate() -> Result<Self, CaError> {
        Ok(Self {
            key: generate_key()?,
        })
    }

    /// The key as PKCS#8 PEM; keep it secret.
    pub fn key_pem(&self) -> Result<String, CaError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| CaError::KeyGen(e.to_string()))
    }

    /// A PEM certificate request for this key naming `id` (the CA ignores
    /// the name and uses the identity its token proves).
    pub fn csr_pem(&self, id: Option<&SpiffeId>) -> Result<String, CaError> {
        let build = || -> Result<String, String> {
            let mut builder = RequestBuilder::new(empty_name().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            if let Some(id) = id {
                let uri = Ia5String::new(&id.to_string()).map_err(|e| e.to_string())?;
                builder
                    .add_extension(&SanExtension(vec![GeneralName::UniformResourceIdentifier(
                        uri,
                    )]))
                    .map_err(|e| e.to_string())?;
            }
            let req = builder
                .build::<_, DerSignature>(&self.key)
                .map_err(|e| e.to_string())?;
            req.to_pem(x509_cert::der::pem::LineEnding::LF)
                .map_err(|e| e.to_string())
        };
        build().map_err(|reason| CaError::Build {
            subject: id.map_or_else(|| "a workload".to_owned(), ToString::to_string),
            reason,
        })
    }
}

/// When a workload certificate (PEM) stops being valid, and when it
/// started; `None` if it does not parse.
pub fn validity(cert_pem: &str) -> Option<(SystemTime, SystemTime)> {
    let cert = ParsedCert::from_pem(cert_pem).ok()?;
    Some((cert.not_before(), cert.not_after()))
}
