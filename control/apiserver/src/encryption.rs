//! Secrets encrypted at rest, as Kubernetes' `EncryptionConfiguration` with
//! the `aesgcm` provider does it: every value under `/registry/secrets/` is
//! stored as `k8s:enc:aesgcm:v1:<key name>:` + a 12-byte random nonce + the
//! AES-256-GCM ciphertext and tag, with the etcd key as associated data (a
//! ciphertext copied to another key does not decrypt). Values without the
//! `k8s:enc:` prefix are plain JSON and still read, so Secrets written
//! before encryption was enabled keep working until they are rewritten.
//!
//! The keys live in `<data dir>/pki/encryption.yaml` (mode 0600), in
//! Kubernetes' own format, created at first start with one random key:
//!
//! ```yaml
//! apiVersion: apiserver.config.k8s.io/v1
//! kind: EncryptionConfiguration
//! resources:
//!   - resources: [secrets]
//!     providers:
//!       - aesgcm:
//!           keys:
//!             - name: key1
//!               secret: <32 random bytes, base64>
//!       - identity: {}
//! ```
//!
//! The first provider's first key encrypts every write; every key listed
//! decrypts. With `identity: {}` first, writes are stored plain again
//! (the way to turn encryption off: rewrite every Secret, then remove the
//! aesgcm provider). Only `secrets`, and only the `aesgcm` and `identity`
//! providers, are supported. Every API server of a cluster needs the same
//! file.
//!
//! Rotating the key (AES-GCM with random nonces should be rotated well
//! before 2^32 writes under one key):
//!
//! 1. Generate a key (`head -c 32 /dev/urandom | base64`) and add it as a
//!    new entry at the top of the `aesgcm` keys, named `key2` (any name
//!    without a colon), keeping `key1` below it.
//! 2. Restart every API server: `key2` now encrypts every write, and `key1`
//!    still decrypts what it wrote.
//! 3. Rewrite every Secret so it is stored under `key2`:
//!    `kubectl get secrets -A -o json | kubectl replace -f -` (an update
//!    that changes nothing still rewrites an object stored under an older
//!    key). Until the API serves `/openapi/v2`, add `--validate=false` to
//!    `kubectl replace`: kubectl validates a List against that document.
//! 4. Remove `key1` from the file and restart the API servers again.
//!
//! A Secret still written under a removed key, or whose stored bytes were
//! damaged, fails to read (and so to delete) with a 500 naming the key; the
//! other Secrets and the server are unaffected. A file without a `secrets`
//! entry turns encryption off.

use std::{
    borrow::Cow,
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use aes_gcm::{
    Aes256Gcm, KeyInit as _,
    aead::{Aead as _, Generate as _, Key, Nonce, Payload},
};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

#[cfg(test)]
mod tests;

/// File name of the encryption configuration, in the data directory's `pki/`.
pub const ENCRYPTION_CONFIG_FILE: &str = "encryption.yaml";
/// The prefix of every value the `aesgcm` provider wrote; the key name and
/// a colon follow it.
pub const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";
/// The keys whose values are encrypted.
pub const ENCRYPTED_KEYS: &str = "/registry/secrets/";
/// The name of the key created at first start.
pub const FIRST_KEY_NAME: &str = "key1";
/// The prefix every provider's ciphertext starts with.
const ENCRYPTED_MARK: &[u8] = b"k8s:enc:";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const GENERATE_HINT: &str = "generate one with `head -c 32 /dev/urandom | base64`";

/// Why the configuration could not be loaded, or a value not sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file does not say what shoal can do.
    #[error("encryption config {}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The system's random number source failed.
    #[error("generating an encryption key or nonce: {0}")]
    Random(String),
    /// A value names a key the configuration does not have.
    #[error(
        "the object at {key} is encrypted with key {name:?}, which is not in {ENCRYPTION_CONFIG_FILE}: \
         add the key back (below the current one) and restart the API server"
    )]
    UnknownKey {
        /// The etcd key.
        key: String,
        /// The key name the value carries.
        name: String,
    },
    /// The ciphertext does not authenticate with the named key.
    #[error(
        "the object at {key} does not decrypt with key {name:?}: the stored bytes are damaged, were \
         copied from another key, or the key's secret changed; restore the key's secret, or remove \
         the object from the store (`etcdctl del {key}`)"
    )]
    Decrypt {
        /// The etcd key.
        key: String,
        /// The key name the value carries.
        name: String,
    },
    /// A value is encrypted by a provider shoal does not implement.
    #[error(
        "the object at {key} is encrypted by the {provider:?} provider, which shoal cannot read (only aesgcm)"
    )]
    Unsupported {
        /// The etcd key.
        key: String,
        /// The provider named in the value's prefix.
        provider: String,
    },
    /// Encrypting failed (a value too large for AES-GCM).
    #[error("encrypting the object at {key} with key {name:?} failed")]
    Encrypt {
        /// The etcd key.
        key: String,
        /// The key used.
        name: String,
    },
}

/// The keys that encrypt and decrypt Secrets.
pub struct Encryption {
    keys: Vec<AesKey>,
    /// Whether writes are encrypted (with `keys[0]`), or stored plain.
    encrypt_writes: bool,
}

struct AesKey {
    name: String,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryption")
            .field(
                "keys",
                &self.keys.iter().map(|k| &k.name).collect::<Vec<_>>(),
            )
            .field("encrypt_writes", &self.encrypt_writes)
            .finish()
    }
}

impl Default for Encryption {
    fn default() -> Self {
        Self::disabled()
    }
}

impl Encryption {
    /// No keys: everything is stored and read plain.
    pub fn disabled() -> Self {
        Self {
            keys: Vec::new(),
            encrypt_writes: false,
        }
    }

    /// Loads `pki/encryption.yaml`, or creates it (mode 0600) with one new
    /// random key if there is none.
    pub fn load_or_create(pki: &Path) -> Result<Self, EncryptionError> {
        let path = pki.join(ENCRYPTION_CONFIG_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).map_err(|reason| EncryptionError::Config {
                path: path.clone(),
                reason,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let secret = Key::<Aes256Gcm>::try_generate()
                    .map_err(|e| EncryptionError::Random(e.to_string()))?;
                let text = config_text(FIRST_KEY_NAME, secret.as_slice());
                write_private(&path, text.as_bytes()).map_err(|source| EncryptionError::Write {
                    path: path.clone(),
                    source,
                })?;
                tracing::info!(path = %path.display(), "created the Secret encryption key");
                Self::parse(&text).map_err(|reason| EncryptionError::Config { path, reason })
            }
            Err(source) => Err(EncryptionError::Read { path, source }),
        }
    }

    /// Parses an `EncryptionConfiguration`; the error says what to change.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: ConfigFile =
            serde_saphyr::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
        if let Some(kind) = file.kind.as_deref()
            && kind != "EncryptionConfiguration"
        {
            return Err(format!(
                "kind is {kind:?}, expected EncryptionConfiguration"
            ));
        }
        let mut chosen = None;
        for (i, entry) in file.resources.iter().enumerate() {
            for r in &entry.resources {
                if r != "secrets" {
                    return Err(format!(
                        "resources[{i}] lists {r:?}: shoal encrypts secrets only; remove it"
                    ));
                }
            }
            if entry.resources.iter().any(|r| r == "secrets") {
                if chosen.is_some() {
                    return Err("secrets are listed in more than one resources entry".into());
                }
                chosen = Some((i, entry));
            }
        }
        let Some((i, entry)) = chosen else {
            return Ok(Self::disabled());
        };
        let mut keys = Vec::new();
        let mut encrypt_writes = None;
        for (j, provider) in entry.providers.iter().enumerate() {
            let at = format!("resources[{i}].providers[{j}]");
            let mut names = provider.keys();
            let (Some(name), None) = (names.next(), names.next()) else {
                return Err(format!("{at} must name exactly one provider"));
            };
            match name.as_str() {
                "identity" => {
                    encrypt_writes.get_or_insert(false);
                }
                "aesgcm" => {
                    let body: KeyList = serde_json::from_value(provider[name].clone())
                        .map_err(|e| format!("{at}.aesgcm: {e}"))?;
                    if body.keys.is_empty() {
                        return Err(format!(
                            "{at}.aesgcm.keys is empty: add a key ({GENERATE_HINT})"
                        ));
                    }
                    for key in body.keys {
                        keys.push(aes_key(&key, &at)?);
                    }
                    encrypt_writes.get_or_insert(true);
                }
                other => {
                    return Err(format!(
                        "{at}: the {other:?} provider is not supported; use aesgcm (and identity)"
                    ));
                }
            }
        }
        for (n, k) in keys.iter().enumerate() {
            if keys[..n].iter().any(|o| o.name == k.name) {
                return Err(format!("key name {:?} is used twice", k.name));
            }
        }
        Ok(Self {
            keys,
            encrypt_writes: encrypt_writes.unwrap_or(false),
        })
    }

    /// The name of the key writes are encrypted with, if they are.
    pub fn write_key(&self) -> Option<&str> {
        self.writer().map(|k| k.name.as_str())
    }

    fn writer(&self) -> Option<&AesKey> {
        self.encrypt_writes.then(|| self.keys.first()).flatten()
    }

    /// The bytes to store for `value` at etcd key `key`: encrypted for a
    /// Secret when a write key is configured, `value` itself otherwise.
    pub fn seal(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, EncryptionError> {
        let Some(writer) = self.writer().filter(|_| key.starts_with(ENCRYPTED_KEYS)) else {
            return Ok(value);
        };
        let nonce = Nonce::<Aes256Gcm>::try_generate()
            .map_err(|e| EncryptionError::Random(e.to_string()))?;
        let sealed = writer
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &value,
                    aad: key.as_bytes(),
                },
            )
            .map_err(|_| EncryptionError::Encrypt {
                key: key.into(),
                name: writer.name.clone(),
            })?;
        let mut out = Vec::with_capacity(
            AESGCM_PREFIX.len() + writer.name.len() + 1 + NONCE_LEN + sealed.len(),
        );
        out.extend_from_slice(AESGCM_PREFIX.as_bytes());
        out.extend_from_slice(writer.name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Whether a stored value is not as a write now would store it: plain
    /// or under an older key while a key encrypts, encrypted while none
    /// does. Such an object is rewritten even by an update that changes
    /// nothing, so `kubectl replace` moves it to the current key.
    pub fn is_stale(&self, key: &[u8], stored: &[u8]) -> bool {
        if !key.starts_with(ENCRYPTED_KEYS.as_bytes()) {
            return false;
        }
        match self.writer() {
            Some(w) => {
                let rest = stored.strip_prefix(AESGCM_PREFIX.as_bytes());
                rest.and_then(|r| r.strip_prefix(w.name.as_bytes()))
                    .is_none_or(|r| !r.starts_with(b":"))
            }
            None => stored.starts_with(ENCRYPTED_MARK),
        }
    }

    /// The plain bytes of a stored value: decrypted if it carries the
    /// `k8s:enc:` prefix, as is otherwise.
    pub fn open<'a>(&self, key: &[u8], stored: &'a [u8]) -> Result<Cow<'a, [u8]>, EncryptionError> {
        if !stored.starts_with(ENCRYPTED_MARK) {
            return Ok(Cow::Borrowed(stored));
        }
        let etcd_key = || String::from_utf8_lossy(key).into_owned();
        let Some(rest) = stored.strip_prefix(AESGCM_PREFIX.as_bytes()) else {
            let provider = stored[ENCRYPTED_MARK.len()..]
                .split(|b| *b == b':')
                .next()
                .unwrap_or_default();
            return Err(EncryptionError::Unsupported {
                key: etcd_key(),
                provider: String::from_utf8_lossy(provider).into_owned(),
            });
        };
        let colon = rest.iter().position(|b| *b == b':').unwrap_or(rest.len());
        let name = String::from_utf8_lossy(&rest[..colon]).into_owned();
        let Some(aes) = self.keys.iter().find(|k| k.name == name) else {
            return Err(EncryptionError::UnknownKey {
                key: etcd_key(),
                name,
            });
        };
        let body = rest.get(colon + 1..).unwrap_or_default();
        let bad = || EncryptionError::Decrypt {
            key: etcd_key(),
            name: name.clone(),
        };
        if body.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce = Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| bad())?;
        aes.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: key,
                },
            )
            .map(Cow::Owned)
            .map_err(|_| bad())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    resources: Vec<ResourceEntry>,
}

#[derive(Deserialize)]
struct ResourceEntry {
    #[serde(default)]
    resources: Vec<String>,
    /// Each a one-entry map: provider name → its settings.
    #[serde(default)]
    providers: Vec<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
struct KeyList {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    name: String,
    secret: String,
}

fn aes_key(key: &KeyEntry, at: &str) -> Result<AesKey, String> {
    let name = &key.name;
    if name.is_empty() || name.contains(':') {
        return Err(format!(
            "{at}.aesgcm: key name {name:?} must be non-empty and contain no colon"
        ));
    }
    let secret = base64::engine::general_purpose::STANDARD
        .decode(key.secret.trim())
        .map_err(|e| format!("{at}.aesgcm: key {name:?}: secret is not base64 ({e})"))?;
    if secret.len() != KEY_LEN {
        return Err(format!(
            "{at}.aesgcm: key {name:?}: secret is {} bytes, shoal needs {KEY_LEN} (AES-256): {GENERATE_HINT}",
            secret.len()
        ));
    }
    let cipher = Aes256Gcm::new_from_slice(&secret)
        .map_err(|_| format!("{at}.aesgcm: key {name:?}: not a valid AES-256 key"))?;
    Ok(AesKey {
        name: name.clone(),
        cipher,
    })
}

/// The configuration file created at first start.
fn config_text(name: &str, secret: &[u8]) -> String {
    let secret = base64::engine::general_purpose::STANDARD.encode(secret);
    format!(
        "# Secrets are encrypted at rest with the first aesgcm key; every key listed decrypts.\n\
         # To rotate: add a new key above {name}, restart, run\n\
         #   kubectl get secrets -A -o json | kubectl replace -f -\n\
         # then remove {name} and restart again. Every API server needs this same file.\n\
         apiVersion: apiserver.config.k8s.io/v1\n\
         kind: EncryptionConfiguration\n\
         resources:\n\
         \x20 - resources:\n\
         \x20     - secrets\n\
         \x20   providers:\n\
         \x20     - aesgcm:\n\
         \x20         keys:\n\
         \x20           - name: {name}\n\
         \x20             secret: {secret}\n\
         \x20     - identity: {{}}\n"
    )
}

/// Writes a file readable by its owner only, whole or not at all.
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{ENCRYPTION_CONFIG_FILE}.{}.tmp",
        std::process::id()
    ));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}
