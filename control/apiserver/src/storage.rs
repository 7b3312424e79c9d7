//! Objects in the store: JSON under `/registry/...` keys, read and written
//! through the etcd v3 API (shoal's store or a real etcd). Every write is a
//! transaction guarded by the key's revision, so nothing is half-written and
//! a stale writer gets a conflict. Secrets are encrypted on the way in and
//! decrypted on the way out (see `encryption`).

use std::sync::Arc;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KvClient, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, WatchClient,
};
use serde_json::Value;

use crate::{
    encryption::{Encryption, EncryptionError},
    status::ApiError,
};

/// TLS towards the store (etcd's `--cacert`, `--cert`, `--key`): the CA
/// that signed the store's serving certificate and the client certificate
/// the API presents.
#[derive(Clone)]
pub struct StoreTls {
    /// The CA the store's certificate must chain to (PEM).
    pub ca_pem: String,
    /// The API's client certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for StoreTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("StoreTls").finish_non_exhaustive()
    }
}

/// Why the store could not be reached or answered.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The gRPC call failed.
    #[error("store: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A stored value is not JSON (written by something else).
    #[error("stored object at {key} is not valid JSON: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// The parse error.
        reason: String,
    },
    /// A stored value could not be encrypted or decrypted.
    #[error(transparent)]
    Encryption(#[from] EncryptionError),
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let text = e.to_string();
        if text.contains("required revision has been compacted") {
            ApiError::gone(format!(
                "The resourceVersion for the provided list is too old: {text}"
            ))
        } else if text.contains("no leader")
            || text.contains("timed out")
            || text.contains("Unavailable")
        {
            ApiError::timeout(format!("the store did not answer: {text}"))
        } else {
            ApiError::internal(text)
        }
    }
}

/// An object as read from the store, with its `resourceVersion` set.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The object.
    pub value: Value,
    /// The revision it was last written at.
    pub rev: i64,
    /// Whether the stored bytes are encrypted other than a write now would
    /// (an older key, or plain): an update rewrites it even if unchanged.
    pub stale: bool,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page {
    /// Objects in key order with their keys.
    pub items: Vec<(String, Stored)>,
    /// The store revision the page was read at.
    pub rev: i64,
    /// Whether more keys follow.
    pub more: bool,
    /// How many keys follow, when `more`.
    pub remaining: i64,
}

/// The outcome of a guarded write.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// Written at this revision.
    Ok(i64),
    /// The guard failed; the current object, if any.
    Rejected(Option<Stored>),
    /// The object's guard held, but this claimed key is held already
    /// (another writer allocated the same address or port first).
    Taken(String),
}

/// Keys a write claims and releases in the same transaction as the object
/// itself: a claimed key is created only if absent, so an allocated
/// address or port is held by one object at a time, and a write that fails
/// claims nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    /// Keys to create, with their values; the write fails if one exists.
    pub claim: Vec<(String, Value)>,
    /// Keys to delete.
    pub release: Vec<String>,
}

impl Claims {
    /// Whether the write claims and releases nothing.
    pub fn is_empty(&self) -> bool {
        self.claim.is_empty() && self.release.is_empty()
    }
}

/// The API's view of the store.
#[derive(Clone)]
pub struct Storage {
    client: Client,
    kv: KvClient,
    watch: WatchClient,
    encryption: Arc<Encryption>,
}

/// Largest store response taken, as Go's clientv3 allows: a list of every
/// object of a kind is one response (10k pods are ~17 MB), far above
/// gRPC's 4 MiB default.
const MAX_RESPONSE: usize = 2 * 1024 * 1024 * 1024 - 1;

impl Storage {
    /// Connects to the store's endpoints (`http://host:port`, or
    /// `https://host:port` with `tls`).
    pub async fn connect(
        endpoints: &[String],
        tls: Option<&StoreTls>,
    ) -> Result<Self, StorageError> {
        let options = tls.map(|tls| {
            etcd_client::ConnectOptions::new().with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem))
                    .identity(etcd_client::Identity::from_pem(&tls.cert_pem, &tls.key_pem)),
            )
        });
        let client = Client::connect(endpoints, options).await?;
        Ok(Self {
            kv: client.kv_client().max_decoding_message_size(MAX_RESPONSE),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE),
            client,
            encryption: Arc::new(Encryption::disabled()),
        })
    }

    /// The same store, with Secrets encrypted at rest by `encryption`.
    pub fn with_encryption(self, encryption: Arc<Encryption>) -> Self {
        Self { encryption, ..self }
    }

    /// Parses a stored value (decrypting it if it is encrypted) and stamps
    /// `resourceVersion` = `rev`.
    pub fn decode(&self, key: &[u8], value: &[u8], rev: i64) -> Result<Stored, StorageError> {
        let plain = self.encryption.open(key, value)?;
        let mut stored = decode_bytes(key, &plain, rev)?;
        stored.stale = self.encryption.is_stale(key, value);
        Ok(stored)
    }

    fn decode_kv(&self, kv: &etcd_client::KeyValue) -> Result<Stored, StorageError> {
        self.decode(kv.key(), kv.value(), kv.mod_revision())
    }

    /// The bytes stored for `obj` at `key`: JSON, encrypted for a Secret.
    fn encode(&self, key: &str, obj: &Value) -> Result<Vec<u8>, StorageError> {
        Ok(self.encryption.seal(key, encode(obj))?)
    }

    /// The etcd client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The KV client, taking responses as large as a full list.
    pub fn kv(&self) -> KvClient {
        self.kv.clone()
    }

    /// The watch client, taking responses as large as a full list.
    pub fn watch_client(&self) -> WatchClient {
        self.watch.clone()
    }

    /// Reads one object.
    pub async fn get(&self, key: &str) -> Result<Option<Stored>, StorageError> {
        let resp = self.kv.clone().get(key, None).await?;
        resp.kvs().first().map(|kv| self.decode_kv(kv)).transpose()
    }

    /// Reads a page of objects under `prefix`, from `start` (inclusive) on,
    /// at `rev` (0: now).
    pub async fn list(
        &self,
        prefix: &str,
        start: Option<&str>,
        rev: i64,
        limit: Option<i64>,
    ) -> Result<Page, StorageError> {
        let from = start.unwrap_or(prefix);
        let mut opts = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        if rev > 0 {
            opts = opts.with_revision(rev);
        }
        if let Some(limit) = limit {
            opts = opts.with_limit(limit);
        }
        let resp = self.kv.clone().get(from, Some(opts)).await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let items = resp
            .kvs()
            .iter()
            .map(|kv| {
                Ok((
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    self.decode_kv(kv)?,
                ))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let more = resp.more();
        let remaining = if more {
            resp.count() - items.len() as i64
        } else {
            0
        };
        Ok(Page {
            items,
            rev,
            more,
            remaining,
        })
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Result<i64, StorageError> {
        let resp = self
            .client
            .clone()
            .get(
                "/registry/",
                Some(GetOptions::new().with_count_only().with_limit(1)),
            )
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Writes `obj` at `key` only if the key does not exist.
    pub async fn create(&self, key: &str, obj: &Value) -> Result<Written, StorageError> {
        self.create_claiming(key, obj, &Claims::default()).await
    }

    /// Writes `obj` at `key` only if the key does not exist, with `claims`.
    pub async fn create_claiming(
        &self,
        key: &str,
        obj: &Value,
        claims: &Claims,
    ) -> Result<Written, StorageError> {
        let op = TxnOp::put(key, self.encode(key, obj)?, None);
        self.guarded(key, None, op, claims).await
    }

    /// Writes `obj` at `key` only if the key is still at revision `rev`.
    pub async fn update(&self, key: &str, obj: &Value, rev: i64) -> Result<Written, StorageError> {
        self.update_claiming(key, obj, rev, &Claims::default())
            .await
    }

    /// Writes `obj` at `key` only if the key is still at revision `rev`,
    /// with `claims`.
    pub async fn update_claiming(
        &self,
        key: &str,
        obj: &Value,
        rev: i64,
        claims: &Claims,
    ) -> Result<Written, StorageError> {
        let op = TxnOp::put(key, self.encode(key, obj)?, None);
        self.guarded(key, Some(rev), op, claims).await
    }

    /// Deletes `key` only if it is still at revision `rev`.
    pub async fn delete(&self, key: &str, rev: i64) -> Result<Written, StorageError> {
        self.delete_claiming(key, rev, &Claims::default()).await
    }

    /// Deletes `key` only if it is still at revision `rev`, releasing
    /// what `claims` releases.
    pub async fn delete_claiming(
        &self,
        key: &str,
        rev: i64,
        claims: &Claims,
    ) -> Result<Written, StorageError> {
        self.guarded(key, Some(rev), TxnOp::delete(key, None), claims)
            .await
    }

    /// One transaction: `op` on `key` and the claims, if `key` is at
    /// revision `rev` (None: absent) and no claimed key exists; else the
    /// current object, or which claimed key is held.
    async fn guarded(
        &self,
        key: &str,
        rev: Option<i64>,
        op: TxnOp,
        claims: &Claims,
    ) -> Result<Written, StorageError> {
        let guard = match rev {
            None => Compare::create_revision(key, CompareOp::Equal, 0),
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
        };
        let mut guards = vec![guard];
        let mut ops = vec![op];
        let mut reads = vec![TxnOp::get(key, None)];
        for (claimed, value) in &claims.claim {
            guards.push(Compare::create_revision(
                claimed.as_str(),
                CompareOp::Equal,
                0,
            ));
            ops.push(TxnOp::put(
                claimed.as_str(),
                self.encode(claimed, value)?,
                None,
            ));
            reads.push(TxnOp::get(
                claimed.as_str(),
                Some(GetOptions::new().with_keys_only()),
            ));
        }
        for released in &claims.release {
            ops.push(TxnOp::delete(released.as_str(), None));
        }
        let txn = Txn::new().when(guards).and_then(ops).or_else(reads);
        let resp = self.kv.clone().txn(txn).await?;
        if resp.succeeded() {
            return Ok(Written::Ok(resp.header().map_or(0, |h| h.revision())));
        }
        let mut found = resp.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let current = found
            .next()
            .flatten()
            .map(|kv| self.decode_kv(&kv))
            .transpose()?;
        let held = claims
            .claim
            .iter()
            .zip(found)
            .find_map(|((claimed, _), kv)| kv.map(|_| claimed.clone()));
        Ok(match held {
            // The object's own guard held: a claimed key failed the write.
            Some(claimed) if current.as_ref().map(|c| c.rev) == rev => Written::Taken(claimed),
            _ => Written::Rejected(current),
        })
    }
}

/// The first key after every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Serializes for the store: `resourceVersion` is the key's revision, never
/// stored in the value.
pub fn encode(obj: &Value) -> Vec<u8> {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj).unwrap_or_default()
}

/// Parses plain stored bytes and stamps `resourceVersion` = `rev`.
pub fn decode_bytes(key: &[u8], value: &[u8], rev: i64) -> Result<Stored, StorageError> {
    let mut value: Value = serde_json::from_slice(value).map_err(|e| StorageError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })?;
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
    Ok(Stored {
        value,
        rev,
        stale: false,
    })
}
