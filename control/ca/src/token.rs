//! Service-account tokens: ES256-signed JWTs in Kubernetes' claim shape,
//! signed by a P-256 key kept beside the CA as `sa.key`.
//!
//! The JWT is done by hand over p256 rather than with jsonwebtoken: its
//! non-aws-lc backend pulls in the `rsa` crate (with an open timing
//! advisory) and a second p256 major version for the single algorithm used
//! here, and ES256 is a few lines of base64 and one signature.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::Generate;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic_file;
use crate::certificate;
use crate::identity::{Identity, SERVICE_ACCOUNTS_GROUP};

#[cfg(test)]
mod tests;

/// File name of the service-account signing key, beside the CA's files.
pub const SA_KEY_FILE: &str = "sa.key";
/// The issuer (`iss`) of every token, and the audience the API server accepts.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The issuer of legacy (Secret-held, non-expiring) tokens, as Kubernetes
/// writes it.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// Clock skew tolerated on `exp` and `nbf`, as Kubernetes does.
const LEEWAY_SECS: i64 = 60;
const ALGORITHM: &str = "ES256";

/// Errors from the signing key, signing, or a token that does not verify.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file does not hold a P-256 key.
    #[error(
        "{} is not a PEM PKCS#8 ECDSA P-256 private key ({reason}): restore it from a backup, \
         or remove it to create a new key (tokens signed with the old one then stop verifying)",
        path.display()
    )]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The system's random number source failed.
    #[error("generating the service-account key: {0}")]
    KeyGen(String),
    /// The claims or key could not be encoded.
    #[error("encoding the token: {0}")]
    Encode(String),
    /// The token is not a well-formed JWT with Kubernetes' claims.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// The token names an algorithm other than ES256.
    #[error("token is signed with {0:?}; this cluster signs with ES256")]
    Algorithm(String),
    /// The signature is not this cluster's.
    #[error("token signature does not verify with this cluster's service-account key")]
    Signature,
    /// `exp` has passed.
    #[error("token expired at {exp} (unix time)")]
    Expired {
        /// The token's `exp`.
        exp: i64,
    },
    /// `nbf` is still ahead.
    #[error("token is not valid before {nbf} (unix time)")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: i64,
    },
    /// `iss` is another issuer's.
    #[error("token issuer is {0:?}, not {SERVICE_ACCOUNT_ISSUER}")]
    Issuer(String),
    /// `aud` does not name the API server.
    #[error("token audiences {0:?} do not include {SERVICE_ACCOUNT_ISSUER}")]
    Audience(Vec<String>),
    /// `sub` does not agree with the `kubernetes.io` claim.
    #[error("token subject {sub:?} does not match its kubernetes.io namespace and service account")]
    Subject {
        /// The token's `sub`.
        sub: String,
    },
}

/// The claims of a service-account token, as Kubernetes writes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: [`SERVICE_ACCOUNT_ISSUER`].
    pub iss: String,
    /// Subject: `system:serviceaccount:<namespace>:<name>`.
    pub sub: String,
    /// Audiences; the API server accepts tokens that list [`SERVICE_ACCOUNT_ISSUER`].
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Not before, unix seconds.
    pub nbf: i64,
    /// Token id, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The `kubernetes.io` claim: which service account, and what the token is bound to.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// The `kubernetes.io` claim of a service-account token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub serviceaccount: ObjectRef,
    /// The pod the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    /// The secret the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    /// The node the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

/// An object a token names: its name and uid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// The object's name.
    pub name: String,
    /// The object's uid.
    pub uid: String,
}

impl Claims {
    /// Claims for service account `namespace/name` (uid `uid`), valid from now
    /// for `lifetime`, for the API server's audience.
    pub fn service_account(namespace: &str, name: &str, uid: &str, lifetime: Duration) -> Self {
        let now = unix_now();
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        Self {
            iss: SERVICE_ACCOUNT_ISSUER.to_owned(),
            sub: service_account_user(namespace, name),
            aud: vec![SERVICE_ACCOUNT_ISSUER.to_owned()],
            exp: now.saturating_add(lifetime),
            iat: now,
            nbf: now,
            jti: None,
            kubernetes: KubernetesClaims {
                namespace: namespace.to_owned(),
                serviceaccount: ObjectRef {
                    name: name.to_owned(),
                    uid: uid.to_owned(),
                },
                pod: None,
                secret: None,
                node: None,
            },
        }
    }

    /// The same claims, bound to pod `name` (uid `uid`).
    pub fn with_pod(mut self, name: &str, uid: &str) -> Self {
        self.kubernetes.pod = Some(ObjectRef {
            name: name.to_owned(),
            uid: uid.to_owned(),
        });
        self
    }

    /// Who the token authenticates: the subject as user, in
    /// `system:serviceaccounts` and `system:serviceaccounts:<namespace>`.
    pub fn identity(&self) -> Identity {
        Identity {
            user: self.sub.clone(),
            groups: vec![
                SERVICE_ACCOUNTS_GROUP.to_owned(),
                format!("{SERVICE_ACCOUNTS_GROUP}:{}", self.kubernetes.namespace),
            ],
        }
    }
}

/// The user name of a service account: `system:serviceaccount:<namespace>:<name>`.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The claims of a legacy service-account token (the `token` of a Secret of
/// type `kubernetes.io/service-account-token`), in Kubernetes' shape: no
/// audience and no expiry; it counts while its Secret holds it and its
/// service account exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyClaims {
    /// Issuer: [`LEGACY_ISSUER`].
    pub iss: String,
    /// Subject: `system:serviceaccount:<namespace>:<name>`.
    pub sub: String,
    /// The service account's namespace.
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    pub namespace: String,
    /// The Secret that holds the token.
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    pub secret_name: String,
    /// The service account.
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    pub service_account_name: String,
    /// The service account's uid.
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    pub service_account_uid: String,
}

impl LegacyClaims {
    /// Claims for service account `namespace/name` (uid `uid`) held by
    /// Secret `secret`.
    pub fn new(namespace: &str, name: &str, uid: &str, secret: &str) -> Self {
        Self {
            iss: LEGACY_ISSUER.to_owned(),
            sub: service_account_user(namespace, name),
            namespace: namespace.to_owned(),
            secret_name: secret.to_owned(),
            service_account_name: name.to_owned(),
            service_account_uid: uid.to_owned(),
        }
    }

    /// Who the token authenticates, as for a bound token.
    pub fn identity(&self) -> Identity {
        Identity {
            user: self.sub.clone(),
            groups: vec![
                SERVICE_ACCOUNTS_GROUP.to_owned(),
                format!("{SERVICE_ACCOUNTS_GROUP}:{}", self.namespace),
            ],
        }
    }
}

/// A token that verified: a bound (TokenRequest) one or a legacy one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verified {
    /// A token with an audience and an expiry.
    Bound(Claims),
    /// A Secret-held token without expiry.
    Legacy(LegacyClaims),
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// Signs and verifies service-account tokens with the cluster's ES256 key.
pub struct TokenSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("key_id", &self.key_id)
            .field("key", &"[secret]")
            .finish()
    }
}

impl TokenSigner {
    /// A signer with a new key, in memory only.
    pub fn generate() -> Result<Self, TokenError> {
        let key = SigningKey::try_generate().map_err(|e| TokenError::KeyGen(e.to_string()))?;
        Self::from_key(key)
    }

    fn from_key(key: SigningKey) -> Result<Self, TokenError> {
        let spki = certificate::public_key_der(key.verifying_key())
            .map_err(|e| TokenError::Encode(e.to_string()))?;
        // Kubernetes' key id: the unpadded base64url SHA-256 of the public key's DER.
        let key_id = URL_SAFE_NO_PAD.encode(Sha256::digest(&spki));
        Ok(Self { key, key_id })
    }

    /// Loads the key from `dir/sa.key`, or creates it there (mode 0600,
    /// written atomically) if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Self, TokenError> {
        let path = dir.join(SA_KEY_FILE);
        let bytes = atomic_file::read_if_exists(&path).map_err(|source| TokenError::Read {
            path: path.clone(),
            source,
        })?;
        let bad = |reason: String| TokenError::BadKey {
            path: path.clone(),
            reason,
        };
        match bytes {
            Some(bytes) => {
                let pem =
                    String::from_utf8(bytes).map_err(|_| bad("the file is not text".to_owned()))?;
                let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| bad(e.to_string()))?;
                Self::from_key(key)
            }
            None => {
                let signer = Self::generate()?;
                let pem = signer
                    .key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| TokenError::Encode(e.to_string()))?;
                atomic_file::write(&path, pem.as_bytes(), atomic_file::PRIVATE).map_err(
                    |source| TokenError::Write {
                        path: path.clone(),
                        source,
                    },
                )?;
                Ok(signer)
            }
        }
    }

    /// The key id (`kid`) every token carries in its header.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        self.sign_json(claims)
    }

    /// Signs legacy claims into a compact JWT that never expires.
    pub fn sign_legacy(&self, claims: &LegacyClaims) -> Result<String, TokenError> {
        self.sign_json(claims)
    }

    fn sign_json(&self, claims: &impl Serialize) -> Result<String, TokenError> {
        let header = Header {
            alg: ALGORITHM.to_owned(),
            kid: Some(self.key_id.clone()),
        };
        let header = serde_json::to_vec(&header).map_err(|e| TokenError::Encode(e.to_string()))?;
        let claims = serde_json::to_vec(claims).map_err(|e| TokenError::Encode(e.to_string()))?;
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let signature: Signature = self.key.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        Ok(token)
    }

    /// Verifies `token`'s signature, issuer, audience, expiry and not-before
    /// (with a minute of leeway) and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let payload = self.verified_payload(token)?;
        let claims: Claims = decode_json(payload, "claims")?;
        check(&claims, unix_now())?;
        Ok(claims)
    }

    /// Verifies a bound token as [`TokenSigner::verify`] does, or a legacy
    /// one (issuer [`LEGACY_ISSUER`]: signature and subject only; whether
    /// its Secret still holds it is the caller's to check).
    pub fn verify_any(&self, token: &str) -> Result<Verified, TokenError> {
        let payload = self.verified_payload(token)?;
        let raw: serde_json::Value = decode_json(payload, "claims")?;
        if raw.get("iss").and_then(serde_json::Value::as_str) == Some(LEGACY_ISSUER) {
            let claims: LegacyClaims = serde_json::from_value(raw)
                .map_err(|e| TokenError::Malformed(format!("legacy claims: {e}")))?;
            if claims.sub != service_account_user(&claims.namespace, &claims.service_account_name) {
                return Err(TokenError::Subject { sub: claims.sub });
            }
            return Ok(Verified::Legacy(claims));
        }
        let claims: Claims = serde_json::from_value(raw)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        check(&claims, unix_now())?;
        Ok(Verified::Bound(claims))
    }

    /// The payload part of `token` once its header and signature check out.
    fn verified_payload<'t>(&self, token: &'t str) -> Result<&'t str, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "a JWT has three dot-separated parts".to_owned(),
            ));
        };
        let header: Header = decode_json(header, "header")?;
        if header.alg != ALGORITHM {
            return Err(TokenError::Algorithm(header.alg));
        }
        let signature = decode_base64(signature, "signature")?;
        let signature = Signature::from_slice(&signature).map_err(|_| TokenError::Signature)?;
        let signed = &token.trim()[..header_and_payload_len(token.trim())];
        self.key
            .verifying_key()
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| TokenError::Signature)?;
        Ok(payload)
    }
}

/// The checks on verified claims, at unix time `now`.
fn check(claims: &Claims, now: i64) -> Result<(), TokenError> {
    if claims.iss != SERVICE_ACCOUNT_ISSUER {
        return Err(TokenError::Issuer(claims.iss.clone()));
    }
    if !claims.aud.iter().any(|aud| aud == SERVICE_ACCOUNT_ISSUER) {
        return Err(TokenError::Audience(claims.aud.clone()));
    }
    if now > claims.exp.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::Expired { exp: claims.exp });
    }
    if now.saturating_add(LEEWAY_SECS) < claims.nbf {
        return Err(TokenError::NotYetValid { nbf: claims.nbf });
    }
    let k8s = &claims.kubernetes;
    if claims.sub != service_account_user(&k8s.namespace, &k8s.serviceaccount.name) {
        return Err(TokenError::Subject {
            sub: claims.sub.clone(),
        });
    }
    Ok(())
}

/// Length of `header.payload`, the part of a JWT the signature covers.
fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

fn decode_base64(part: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| TokenError::Malformed(format!("{what} is not base64url: {e}")))
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str, what: &str) -> Result<T, TokenError> {
    let bytes = decode_base64(part, what)?;
    serde_json::from_slice(&bytes).map_err(|e| TokenError::Malformed(format!("{what}: {e}")))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// JWT allows `aud` to be one string or an array; Kubernetes writes an array.
fn one_or_many<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(de)? {
        OneOrMany::One(aud) => vec![aud],
        OneOrMany::Many(auds) => auds,
    })
}
