//! What a node joins with, after kubeadm's TLS bootstrapping: a bootstrap
//! token (`abcdef.0123456789abcdef`, kept as a Secret
//! `kube-system/bootstrap-token-<id>`), the hash of the cluster CA's public
//! key that the node checks before trusting what the server sends
//! (`--ca-cert-hash sha256:<hex>`), and the node's client certificate
//! request.

use std::fmt;

use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rand::Rng;
use sha2::{Digest, Sha256};
use x509_cert::builder::{Builder, RequestBuilder};
use x509_cert::der::EncodePem;

use crate::authority::{CaError, generate_key};
use crate::certificate::{self, ParsedCert};
use crate::identity::{NODES_GROUP, node_user};

#[cfg(test)]
mod tests;

/// The Secret type of a bootstrap token.
pub const BOOTSTRAP_TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// How a bootstrap token's Secret is named: this, then the token id.
pub const BOOTSTRAP_TOKEN_SECRET_PREFIX: &str = "bootstrap-token-";
/// The namespace bootstrap tokens' Secrets live in.
pub const BOOTSTRAP_TOKEN_NAMESPACE: &str = "kube-system";
/// The group every bootstrap token authenticates in.
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
/// The extra group of bootstrap tokens that may join the control plane
/// (`shoal token create --server-join`): they receive the cluster CA's
/// key, so an agent's token must not be one.
pub const SERVER_JOIN_GROUP: &str = "system:bootstrappers:shoal:server-join";
/// The signer of kubelet (node agent) client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Why a bootstrap token or a CA hash was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    /// The token is not `[a-z0-9]{6}.[a-z0-9]{16}`.
    #[error(
        "the token is not a bootstrap token: it must look like abcdef.0123456789abcdef \
         ([a-z0-9]{{6}}.[a-z0-9]{{16}}); `shoal token create` prints one"
    )]
    MalformedToken,
    /// A token id is not `[a-z0-9]{6}`.
    #[error("{0:?} is not a bootstrap token id: it must be 6 characters of [a-z0-9]")]
    MalformedId(String),
    /// The CA hash is not `sha256:<64 hex digits>`.
    #[error(
        "the CA certificate hash {0:?} is not of the form sha256:<64 hex digits> \
         (`shoal token create` prints it)"
    )]
    MalformedHash(String),
    /// The CA the server sent is not the one the hash names.
    #[error(
        "the cluster CA the server sent does not match --ca-cert-hash: expected {expected}, got {got}; \
         refusing to trust it (check the hash `shoal token create` printed, or the server address)"
    )]
    HashMismatch {
        /// The hash the user gave.
        expected: String,
        /// The hash of the CA the server sent.
        got: String,
    },
}

/// A bootstrap token: a public id and a secret, written `id.secret`.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("id", &self.id)
            .field("secret", &"[secret]")
            .finish()
    }
}

impl fmt::Display for BootstrapToken {
    /// The whole token, secret included: `abcdef.0123456789abcdef`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

fn is_token_part(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

impl BootstrapToken {
    /// A new random token.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
                .collect()
        };
        Self {
            id: pick(ID_LEN),
            secret: pick(SECRET_LEN),
        }
    }

    /// Reads `id.secret`, each part of `[a-z0-9]`, 6 and 16 long.
    pub fn parse(token: &str) -> Result<Self, BootstrapError> {
        let (id, secret) = token
            .trim()
            .split_once('.')
            .ok_or(BootstrapError::MalformedToken)?;
        if !is_token_part(id, ID_LEN) || !is_token_part(secret, SECRET_LEN) {
            return Err(BootstrapError::MalformedToken);
        }
        Ok(Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// Checks a token id on its own (`shoal token delete <id>`).
    pub fn check_id(id: &str) -> Result<(), BootstrapError> {
        if is_token_part(id, ID_LEN) {
            Ok(())
        } else {
            Err(BootstrapError::MalformedId(id.to_owned()))
        }
    }

    /// The public part, which names the Secret.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret part.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The Secret's name: `bootstrap-token-<id>`.
    pub fn secret_name(&self) -> String {
        secret_name(&self.id)
    }

    /// Whether `secret` is this token's secret, compared in constant time.
    pub fn secret_matches(&self, secret: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The Secret name of token `id`: `bootstrap-token-<id>`.
pub fn secret_name(id: &str) -> String {
    format!("{BOOTSTRAP_TOKEN_SECRET_PREFIX}{id}")
}

/// The user a bootstrap token authenticates as: `system:bootstrap:<id>`.
pub fn bootstrap_user(id: &str) -> String {
    format!("system:bootstrap:{id}")
}

/// The hash of a CA certificate's public key (its SubjectPublicKeyInfo),
/// as kubeadm's `--discovery-token-ca-cert-hash` writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaCertHash(String);

impl fmt::Display for CaCertHash {
    /// `sha256:<64 lowercase hex digits>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl CaCertHash {
    /// Reads `sha256:<hex>` (hex in either case).
    pub fn parse(text: &str) -> Result<Self, BootstrapError> {
        let bad = || BootstrapError::MalformedHash(text.to_owned());
        let hex = text.trim().strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Self(hex.to_ascii_lowercase()))
    }

    /// The hash of the first certificate in `pem`.
    pub fn of_pem(pem: &str) -> Result<Self, CaError> {
        let bad = |reason: String| CaError::Build {
            subject: "the CA certificate".to_owned(),
            reason,
        };
        let cert = ParsedCert::from_pem(first_pem_block(pem)).map_err(|e| bad(e.to_string()))?;
        let spki = cert.public_key_der().map_err(|e| bad(e.to_string()))?;
        Ok(Self(
            Sha256::digest(&spki)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        ))
    }

    /// `Ok` if `ca_pem` is the CA this hash names; the refusal names both.
    pub fn check(&self, ca_pem: &str) -> Result<(), BootstrapError> {
        let got = Self::of_pem(ca_pem)
            .map_or_else(|e| format!("<not a certificate: {e}>"), |h| h.to_string());
        if got == self.to_string() {
            Ok(())
        } else {
            Err(BootstrapError::HashMismatch {
                expected: self.to_string(),
                got,
            })
        }
    }
}

/// The first PEM block of a bundle (a CA file may hold several).
fn first_pem_block(pem: &str) -> &str {
    const END: &str = "-----END CERTIFICATE-----";
    match pem.find(END) {
        Some(i) => &pem[..i + END.len()],
        None => pem,
    }
}

/// A node's new key and its certificate request (both PEM): CN
/// `system:node:<node>`, O `system:nodes`, what the kubelet sends to the
/// `kubernetes.io/kube-apiserver-client-kubelet` signer.
#[derive(Clone)]
pub struct NodeRequest {
    /// The private key (PKCS#8 PEM); it never leaves the node.
    pub key_pem: String,
    /// The PKCS#10 request (PEM `CERTIFICATE REQUEST`).
    pub csr_pem: String,
}

impl fmt::Debug for NodeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeRequest")
            .field("csr_pem", &self.csr_pem)
            .field("key_pem", &"[secret]")
            .finish()
    }
}

impl NodeRequest {
    /// A fresh P-256 key and a request for node `node`'s client certificate.
    pub fn generate(node: &str) -> Result<Self, CaError> {
        let user = node_user(node);
        let build = |reason: String| CaError::Build {
            subject: format!("CN={user}"),
            reason,
        };
        let key: SigningKey = generate_key()?;
        let subject =
            certificate::subject_name(&user, &[NODES_GROUP]).map_err(|e| build(e.to_string()))?;
        let builder = RequestBuilder::new(subject).map_err(|e| build(e.to_string()))?;
        let request = builder
            .build::<_, DerSignature>(&key)
            .map_err(|e| build(e.to_string()))?;
        let csr_pem = request
            .to_pem(LineEnding::LF)
            .map_err(|e| build(e.to_string()))?;
        let key_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| build(e.to_string()))?
            .to_string();
        Ok(Self { key_pem, csr_pem })
    }
}
