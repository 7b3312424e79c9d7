//! Certificate signing requests (PKCS#10) as a CertificateSigningRequest's
//! `spec.request` carries them: read, their self-signature checked, and
//! signed by the cluster CA into a client certificate.

use std::time::Duration;

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use x509_cert::der::oid::db::{rfc4519, rfc5280, rfc5912};
use x509_cert::der::{DecodePem, Encode};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::DirectoryString;
use x509_cert::name::Name;
use x509_cert::request::CertReq;

use crate::authority::{CaError, ClusterCa};
use crate::certificate::{self, Signer, Usage};

/// Why a certificate request cannot be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `spec.request` is not one PEM `CERTIFICATE REQUEST` block.
    #[error("the request is not a PEM CERTIFICATE REQUEST: {0}")]
    Pem(String),
    /// The key is of a kind shoal does not sign for.
    #[error(
        "the request's key is not an ECDSA P-256 key signed with SHA-256 ({0}); \
         shoal signs P-256 requests, as the kubelet makes them"
    )]
    KeyType(String),
    /// The request's signature is not made by its own key.
    #[error("the request's signature does not verify with its own public key")]
    Signature,
}

/// A parsed certificate request whose self-signature verified.
#[derive(Clone, Debug)]
pub struct CertificateRequest {
    pub(crate) subject: Name,
    pub(crate) key: VerifyingKey,
    extensions: Vec<Extension>,
}

impl CertificateRequest {
    /// Reads one PEM request and checks its signature.
    pub fn from_pem(pem: &str) -> Result<Self, RequestError> {
        let req = CertReq::from_pem(pem.trim()).map_err(|e| RequestError::Pem(e.to_string()))?;
        if req.algorithm.oid != rfc5912::ECDSA_WITH_SHA_256 {
            return Err(RequestError::KeyType(format!(
                "signature algorithm {}",
                req.algorithm.oid
            )));
        }
        let spki = req
            .info
            .public_key
            .to_der()
            .map_err(|e| RequestError::Pem(e.to_string()))?;
        let key = VerifyingKey::from_public_key_der(&spki)
            .map_err(|e| RequestError::KeyType(e.to_string()))?;
        let signed = req
            .info
            .to_der()
            .map_err(|e| RequestError::Pem(e.to_string()))?;
        let signature = req
            .signature
            .as_bytes()
            .and_then(|der| Signature::from_der(der).ok())
            .ok_or(RequestError::Signature)?;
        key.verify(&signed, &signature)
            .map_err(|_| RequestError::Signature)?;
        let mut extensions = Vec::new();
        for attr in req.info.attributes.iter() {
            if attr.oid != rfc5912::ID_EXTENSION_REQ {
                continue;
            }
            for value in attr.values.iter() {
                let exts: Vec<Extension> = value
                    .decode_as()
                    .map_err(|e| RequestError::Pem(format!("extensionRequest: {e}")))?;
                extensions.extend(exts);
            }
        }
        Ok(Self {
            subject: req.info.subject,
            key,
            extensions,
        })
    }

    /// The subject's common name (`CN=`), if any.
    pub fn common_name(&self) -> Option<String> {
        self.name_values(rfc4519::COMMON_NAME).into_iter().next()
    }

    /// Every organization (`O=`) of the subject, in order.
    pub fn organizations(&self) -> Vec<String> {
        self.name_values(rfc4519::ORGANIZATION_NAME)
    }

    /// Whether the request asks for subject alternative names (DNS names,
    /// addresses, emails or URIs), which a client certificate of a node
    /// must not carry.
    pub fn requests_alt_names(&self) -> bool {
        self.extensions
            .iter()
            .any(|e| e.extn_id == rfc5280::ID_CE_SUBJECT_ALT_NAME)
    }

    fn name_values(&self, oid: x509_cert::der::oid::ObjectIdentifier) -> Vec<String> {
        self.subject
            .iter()
            .filter(|atv| atv.oid == oid)
            .filter_map(|atv| DirectoryString::try_from(&atv.value).ok())
            .map(|value| value.value().into_owned())
            .collect()
    }
}

impl ClusterCa {
    /// Signs `request` into a TLS client certificate (PEM) valid for
    /// `lifetime`, with the request's subject as it is: CN the user, each
    /// O a group.
    pub fn sign_client_request(
        &self,
        request: &CertificateRequest,
        lifetime: Duration,
    ) -> Result<String, CaError> {
        let (name, key) = self.signer_parts();
        certificate::build(
            request.subject.clone(),
            &request.key,
            Usage::Client,
            lifetime,
            Signer { name, key },
        )
        .map_err(|e| CaError::Build {
            subject: request.subject.to_string(),
            reason: e.to_string(),
        })
    }
}
