//! The cluster CA: one ECDSA P-256 key and self-signed certificate that every
//! API identity (the apiserver, users, nodes) chains to, kept in a directory
//! as `ca.crt` and `ca.key`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use x509_cert::name::Name;

use crate::atomic_file;
use crate::certificate::{self, IssuedCert, ParsedCert, Signer, SubjectAltName, Usage};

#[cfg(test)]
mod tests;

/// File name of the CA certificate in the CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key in the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the apiserver's serving certificate written by [`ClusterCa::ensure_serving`].
pub const SERVING_CERT_FILE: &str = "serving.crt";
/// File name of the serving certificate's key written by [`ClusterCa::ensure_serving`].
pub const SERVING_KEY_FILE: &str = "serving.key";
/// Common name of the cluster CA's certificate.
pub const CA_COMMON_NAME: &str = "shoal-ca";
/// Common name of the apiserver's serving certificate.
pub const SERVING_COMMON_NAME: &str = "shoal-apiserver";
/// How long the cluster CA is valid: ten years.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// How long a serving or client certificate is valid: one year.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// What to tell a user whose CA files are damaged.
const RECOVER: &str = "restore ca.crt and ca.key from a backup, or remove both to start a new \
     cluster CA (every certificate and kubeconfig the old one issued then stops working)";

/// Errors from creating, loading or using the cluster CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The CA certificate is there but its key is not.
    #[error("{} exists but {} does not: {RECOVER}", cert.display(), key.display())]
    MissingKey {
        /// The certificate found.
        cert: PathBuf,
        /// The key not found.
        key: PathBuf,
    },
    /// The CA certificate does not parse.
    #[error("{} is not a PEM X.509 certificate ({reason}): {RECOVER}", path.display())]
    BadCert {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The CA key does not parse.
    #[error("{} is not a PEM PKCS#8 ECDSA P-256 private key ({reason}): {RECOVER}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The CA key is not the key of the CA certificate.
    #[error("{} is not the key of the certificate in {}: {RECOVER}", key.display(), cert.display())]
    Mismatch {
        /// The certificate.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// The system's random number source failed.
    #[error("generating a P-256 key: {0}")]
    KeyGen(String),
    /// A certificate could not be built, usually because of a name that
    /// cannot be encoded (a DNS name must be ASCII).
    #[error("building the certificate for {subject}: {reason}")]
    Build {
        /// The certificate's subject, such as `CN=shoal-admin`.
        subject: String,
        /// What went wrong.
        reason: String,
    },
}

/// The cluster CA: signs the apiserver's serving certificate and the client
/// certificates of users and nodes.
pub struct ClusterCa {
    key: SigningKey,
    name: Name,
    cert_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("name", &self.name.to_string())
            .field("key", &"[secret]")
            .finish()
    }
}

impl ClusterCa {
    /// Creates a new CA in memory (CN `shoal-ca`, ten years); see [`Self::save`].
    pub fn generate() -> Result<Self, CaError> {
        Self::from_key(generate_key()?, CA_COMMON_NAME)
    }

    /// A CA with a fresh self-signed certificate for `key`, named `common_name`.
    /// Certificates the key signed before stay valid: they chain by name and key.
    pub(crate) fn from_key(key: SigningKey, common_name: &str) -> Result<Self, CaError> {
        let name =
            certificate::subject_name(common_name, &[]).map_err(|e| build_error(common_name, e))?;
        let cert_pem = certificate::build(
            name.clone(),
            key.verifying_key(),
            Usage::Ca,
            CA_LIFETIME,
            Signer {
                name: &name,
                key: &key,
            },
        )
        .map_err(|e| build_error(common_name, e))?;
        Ok(Self {
            key,
            name,
            cert_pem,
        })
    }

    /// Loads the CA from `dir/ca.crt` and `dir/ca.key`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        let key = load_key(&key_path)?;
        let cert_pem = read_text(&cert_path, |reason| CaError::BadCert {
            path: cert_path.clone(),
            reason,
        })?;
        Self::from_parts(key, cert_pem, &cert_path, &key_path)
    }

    fn from_parts(
        key: SigningKey,
        cert_pem: String,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, CaError> {
        let cert = ParsedCert::from_pem(&cert_pem).map_err(|e| CaError::BadCert {
            path: cert_path.to_owned(),
            reason: e.to_string(),
        })?;
        let matches = matches!(
            (cert.public_key_der(), certificate::public_key_der(key.verifying_key())),
            (Ok(a), Ok(b)) if a == b
        );
        if !matches {
            return Err(CaError::Mismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            });
        }
        Ok(Self {
            key,
            name: cert.subject().clone(),
            cert_pem,
        })
    }

    /// Writes `dir/ca.key` (mode 0600) and then `dir/ca.crt`, each atomically,
    /// creating `dir` (mode 0700) if needed.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        // Key first: a crash between the two leaves a key without a
        // certificate, which load_or_create repairs; the reverse it cannot.
        write_key(&dir.join(CA_KEY_FILE), &self.key)?;
        write(
            &dir.join(CA_CERT_FILE),
            self.cert_pem.as_bytes(),
            atomic_file::PUBLIC,
        )
    }

    /// Loads the CA from `dir`, or creates and saves a new one if `dir` holds
    /// neither file. A key without its certificate gets a new certificate for
    /// the same key; a certificate without its key is an error, since nothing
    /// can sign for it.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        Self::load_or_create_files(
            &dir.join(CA_CERT_FILE),
            &dir.join(CA_KEY_FILE),
            CA_COMMON_NAME,
        )
    }

    /// [`Self::load_or_create`] for a CA kept in `cert_path` and `key_path`
    /// whose certificate, when one is made, is named `common_name` (the
    /// mesh CA is another root than the cluster's).
    pub(crate) fn load_or_create_files(
        cert_path: &Path,
        key_path: &Path,
        common_name: &str,
    ) -> Result<Self, CaError> {
        let key_there = exists(key_path)?;
        let cert_there = exists(cert_path)?;
        match (cert_there, key_there) {
            (true, true) => {
                let key = load_key(key_path)?;
                let cert_pem = read_text(cert_path, |reason| CaError::BadCert {
                    path: cert_path.to_owned(),
                    reason,
                })?;
                Self::from_parts(key, cert_pem, cert_path, key_path)
            }
            (true, false) => Err(CaError::MissingKey {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            }),
            (false, true) => {
                let ca = Self::from_key(load_key(key_path)?, common_name)?;
                write(cert_path, ca.cert_pem.as_bytes(), atomic_file::PUBLIC)?;
                Ok(ca)
            }
            (false, false) => {
                let ca = Self::from_key(generate_key()?, common_name)?;
                // Key first, as in save.
                write_key(key_path, &ca.key)?;
                write(cert_path, ca.cert_pem.as_bytes(), atomic_file::PUBLIC)?;
                Ok(ca)
            }
        }
    }

    /// The CA certificate (PEM): what clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a one-year TLS serving certificate valid for `names`; see
    /// [`crate::default_apiserver_names`] for the apiserver's.
    pub fn issue_serving(&self, names: &[SubjectAltName]) -> Result<IssuedCert, CaError> {
        self.issue(SERVING_COMMON_NAME, &[], Usage::Serving(names.to_vec()))
    }

    /// Issues a one-year TLS client certificate for Kubernetes user `user` in
    /// `groups` (CN = user, one O per group).
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<IssuedCert, CaError> {
        self.issue(user, groups, Usage::Client)
    }

    /// Issues a one-year certificate for both ends of TLS (serverAuth and
    /// clientAuth), CN = `name`, valid for `names`: what a store member
    /// presents to clients and to the other members, as etcd's peer
    /// certificates do.
    pub fn issue_peer(&self, name: &str, names: &[SubjectAltName]) -> Result<IssuedCert, CaError> {
        self.issue(name, &[], Usage::Peer(names.to_vec()))
    }

    fn issue(&self, cn: &str, orgs: &[&str], usage: Usage) -> Result<IssuedCert, CaError> {
        let subject = certificate::subject_name(cn, orgs).map_err(|e| build_error(cn, e))?;
        let key = generate_key()?;
        let cert_pem = certificate::build(
            subject,
            key.verifying_key(),
            usage,
            LEAF_LIFETIME,
            Signer {
                name: &self.name,
                key: &self.key,
            },
        )
        .map_err(|e| build_error(cn, e))?;
        let key_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| build_error(cn, e))?;
        Ok(IssuedCert {
            cert_pem,
            key_pem: key_pem.to_string(),
            ca_pem: self.cert_pem.clone(),
        })
    }

    /// Returns the serving certificate in `dir/serving.crt` and `serving.key`
    /// if this CA signed it, it covers every one of `names` and more than half
    /// its lifetime is left; otherwise issues a new one and writes it there.
    pub fn ensure_serving(
        &self,
        dir: &Path,
        names: &[SubjectAltName],
    ) -> Result<IssuedCert, CaError> {
        self.ensure(
            &dir.join(SERVING_CERT_FILE),
            &dir.join(SERVING_KEY_FILE),
            |cert| {
                let have = cert.subject_alt_names();
                cert.is_serving() && names.iter().all(|name| have.contains(name))
            },
            || self.issue_serving(names),
        )
    }

    /// Returns the client certificate in `dir/<stem>.crt` and `<stem>.key`
    /// if this CA signed it for exactly `user` and `groups` and more than half
    /// its lifetime is left; otherwise issues a new one and writes it there.
    pub fn ensure_client(
        &self,
        dir: &Path,
        stem: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<IssuedCert, CaError> {
        self.ensure(
            &dir.join(format!("{stem}.crt")),
            &dir.join(format!("{stem}.key")),
            |cert| {
                let mut have = cert.organizations();
                let mut want: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
                have.sort();
                want.sort();
                cert.is_client() && cert.common_name().as_deref() == Some(user) && have == want
            },
            || self.issue_client(user, groups),
        )
    }

    /// Returns the peer certificate in `dir/<stem>.crt` and `<stem>.key` if
    /// this CA signed it for `name`, for both ends of TLS, covering every
    /// one of `names`, with more than half its lifetime left; otherwise
    /// issues a new one and writes it there.
    pub fn ensure_peer(
        &self,
        dir: &Path,
        stem: &str,
        name: &str,
        names: &[SubjectAltName],
    ) -> Result<IssuedCert, CaError> {
        self.ensure(
            &dir.join(format!("{stem}.crt")),
            &dir.join(format!("{stem}.key")),
            |cert| {
                let have = cert.subject_alt_names();
                cert.is_serving()
                    && cert.is_client()
                    && cert.common_name().as_deref() == Some(name)
                    && names.iter().all(|n| have.contains(n))
            },
            || self.issue_peer(name, names),
        )
    }

    fn ensure(
        &self,
        cert_path: &Path,
        key_path: &Path,
        wanted: impl Fn(&ParsedCert) -> bool,
        issue: impl FnOnce() -> Result<IssuedCert, CaError>,
    ) -> Result<IssuedCert, CaError> {
        let cert_pem = read_optional(cert_path)?;
        let key_pem = read_optional(key_path)?;
        if let (Some(cert_pem), Some(key_pem)) = (cert_pem, key_pem)
            && self.can_keep(&cert_pem, &key_pem, &wanted)
        {
            return Ok(IssuedCert {
                cert_pem,
                key_pem,
                ca_pem: self.cert_pem.clone(),
            });
        }
        let issued = issue()?;
        // Key first, as in save: a crash in between leaves a pair that does
        // not match, which the next call replaces.
        write(key_path, issued.key_pem.as_bytes(), atomic_file::PRIVATE)?;
        write(cert_path, issued.cert_pem.as_bytes(), atomic_file::PUBLIC)?;
        Ok(issued)
    }

    /// Whether a certificate and key found on disk can be used as they are.
    /// Anything that does not parse is replaced, not reported: these files
    /// are derived from the CA and cost nothing to make again.
    fn can_keep(
        &self,
        cert_pem: &str,
        key_pem: &str,
        wanted: impl Fn(&ParsedCert) -> bool,
    ) -> bool {
        let Ok(cert) = ParsedCert::from_pem(cert_pem) else {
            return false;
        };
        let Ok(key) = SigningKey::from_pkcs8_pem(key_pem) else {
            return false;
        };
        let key_matches = matches!(
            (cert.public_key_der(), certificate::public_key_der(key.verifying_key())),
            (Ok(a), Ok(b)) if a == b
        );
        key_matches
            && cert.is_signed_by(&self.name, self.verifying_key())
            && cert.has_half_life_left(SystemTime::now())
            && wanted(&cert)
    }

    fn verifying_key(&self) -> &VerifyingKey {
        self.key.verifying_key()
    }

    /// The CA's name and key, for signing elsewhere in the crate.
    pub(crate) fn signer_parts(&self) -> (&Name, &SigningKey) {
        (&self.name, &self.key)
    }
}

/// A new P-256 key from the operating system's random source.
pub(crate) fn generate_key() -> Result<SigningKey, CaError> {
    SigningKey::try_generate().map_err(|e| CaError::KeyGen(e.to_string()))
}

fn build_error(subject: &str, err: impl std::fmt::Display) -> CaError {
    CaError::Build {
        subject: format!("CN={subject}"),
        reason: err.to_string(),
    }
}

fn exists(path: &Path) -> Result<bool, CaError> {
    path.try_exists().map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, CaError> {
    let bytes = atomic_file::read_if_exists(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })?;
    // Not UTF-8 means not PEM: treat it like any unusable file.
    Ok(bytes.and_then(|b| String::from_utf8(b).ok()))
}

fn read_text(path: &Path, corrupt: impl Fn(String) -> CaError) -> Result<String, CaError> {
    let bytes = std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| corrupt("the file is not text".to_owned()))
}

fn load_key(path: &Path) -> Result<SigningKey, CaError> {
    let bad = |reason: String| CaError::BadKey {
        path: path.to_owned(),
        reason,
    };
    let pem = read_text(path, bad)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| bad(e.to_string()))
}

fn write_key(path: &Path, key: &SigningKey) -> Result<(), CaError> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| build_error(CA_COMMON_NAME, e))?;
    write(path, pem.as_bytes(), atomic_file::PRIVATE)
}

fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    atomic_file::write(path, contents, mode).map_err(|source| CaError::Write {
        path: path.to_owned(),
        source,
    })
}
