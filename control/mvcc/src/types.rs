//! The keyspace's public data model, independent of any wire protocol.
//! Mirrors etcd v3's semantics (see etcd's `rpc.proto` / `kv.proto`); the
//! gRPC layer converts to and from the protobuf messages.
//!
//! These types are also what the Raft log carries (`Command`), serialized
//! with postcard: append new enum variants at the end, never reorder.

use serde::{Deserialize, Serialize};

/// A store revision (etcd's `revision`, `create_revision`, `mod_revision`).
pub type Revision = i64;
/// A lease id; 0 means "no lease".
pub type LeaseId = i64;

/// One key's value at a revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// Revision of the last creation of this key.
    pub create_revision: Revision,
    /// Revision of the last modification of this key.
    pub mod_revision: Revision,
    /// Number of modifications since the last creation (1 after creation).
    pub version: i64,
    /// The value (empty when the read asked for keys only).
    pub value: Vec<u8>,
    /// The lease the key is attached to, 0 if none.
    pub lease: LeaseId,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// Created or modified.
    Put,
    /// Deleted (explicitly, by range, or by its lease expiring).
    Delete,
}

/// One change, as watchers see it. For a delete, `kv` holds the key and
/// `mod_revision` = the deleting revision, other fields zero/empty (etcd's
/// shape); `prev_kv` is the value before the change, if it existed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change.
    pub kv: KeyValue,
    /// The key before the change, if any.
    pub prev_kv: Option<KeyValue>,
}

/// Sort order of a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SortOrder {
    /// Key order (the default).
    #[default]
    None,
    /// Ascending by the sort target.
    Ascend,
    /// Descending by the sort target.
    Descend,
}

/// Field a range is sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// A range read (etcd `RangeRequest`). `range_end` follows etcd: empty =
/// just `key`; `[0]` = every key >= `key`; otherwise `[key, range_end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RangeArgs {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range (exclusive), see above.
    pub range_end: Vec<u8>,
    /// At most this many keys; 0 = no limit.
    pub limit: i64,
    /// Read at this revision; <= 0 = the current one.
    pub revision: Revision,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort field.
    pub sort_target: SortTarget,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Filter: mod revision >= this (0 = off).
    pub min_mod_revision: Revision,
    /// Filter: mod revision <= this (0 = off).
    pub max_mod_revision: Revision,
    /// Filter: create revision >= this (0 = off).
    pub min_create_revision: Revision,
    /// Filter: create revision <= this (0 = off).
    pub max_create_revision: Revision,
}

/// The result of a range read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RangeResult {
    /// The keys (empty for count_only).
    pub kvs: Vec<KeyValue>,
    /// Whether more keys matched than `limit` allowed.
    pub more: bool,
    /// How many keys matched in total.
    pub count: i64,
}

/// A put (etcd `PutRequest`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PutArgs {
    /// The key; must not be empty.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Attach to this lease (0 = none); the lease must exist.
    pub lease: LeaseId,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// The result of a put.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PutResult {
    /// The previous key-value, if asked for and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// A delete (etcd `DeleteRangeRequest`), `range_end` as in [`RangeArgs`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeleteArgs {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range.
    pub range_end: Vec<u8>,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// The result of a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeleteResult {
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted key-values, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a compare's target relates to the given value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// ==
    Equal,
    /// >
    Greater,
    /// <
    Less,
    /// !=
    NotEqual,
}

/// What a compare looks at, with the value to compare against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version (0 if absent).
    Version(i64),
    /// The key's create revision (0 if absent).
    Create(Revision),
    /// The key's mod revision (0 if absent).
    Mod(Revision),
    /// The key's value.
    Value(Vec<u8>),
    /// The key's lease.
    Lease(LeaseId),
}

/// One condition of a transaction (etcd `Compare`), over `key` or the
/// range `[key, range_end)` (every key in it must satisfy it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key.
    pub key: Vec<u8>,
    /// Optional range end, as in [`RangeArgs`].
    pub range_end: Vec<u8>,
    /// The relation.
    pub result: CompareResult,
    /// The field and value.
    pub target: CompareTarget,
}

/// One operation inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// A read at the transaction's revision.
    Range(RangeArgs),
    /// A put.
    Put(PutArgs),
    /// A delete.
    Delete(DeleteArgs),
    /// A nested transaction.
    Txn(TxnArgs),
}

/// One result inside a transaction, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// Of a range.
    Range(RangeResult),
    /// Of a put.
    Put(PutResult),
    /// Of a delete.
    Delete(DeleteResult),
    /// Of a nested transaction.
    Txn(TxnResult),
}

/// A transaction (etcd `TxnRequest`): if every compare holds, `success`
/// runs, else `failure`. All its writes share one new revision; a key may
/// not be written twice in one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TxnArgs {
    /// The conditions.
    pub compare: Vec<Compare>,
    /// Run when all hold.
    pub success: Vec<RequestOp>,
    /// Run otherwise.
    pub failure: Vec<RequestOp>,
}

impl TxnArgs {
    /// Whether every op of both branches is a range read, as etcd's
    /// `isTxnReadonly` decides: such a transaction changes nothing and
    /// etcd serves it as a read instead of proposing it. A nested
    /// transaction counts as a write, as in etcd.
    pub fn is_read_only(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .all(|op| matches!(op, RequestOp::Range(_)))
    }
}

/// The result of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TxnResult {
    /// Whether the compares held.
    pub succeeded: bool,
    /// One result per op of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// A lease as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// Its granted time-to-live in seconds.
    pub ttl: i64,
    /// Keys attached to it, sorted.
    pub keys: Vec<Vec<u8>>,
}

/// A replicated command: what the Raft log carries. Applying a command is
/// deterministic: every member that applies the same commands in the same
/// order ends in the same state. Append variants at the end only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A put.
    Put(PutArgs),
    /// A delete.
    Delete(DeleteArgs),
    /// A transaction.
    Txn(TxnArgs),
    /// Compact history up to and including `revision`.
    Compact {
        /// The revision.
        revision: Revision,
    },
    /// Grant a lease. The id is chosen before proposing (by the leader or
    /// the client), so applying it is deterministic.
    LeaseGrant {
        /// The id, non-zero.
        id: LeaseId,
        /// Time-to-live in seconds.
        ttl: i64,
    },
    /// Revoke a lease (by the client, or by the leader when it expired):
    /// its keys are deleted at one new revision.
    LeaseRevoke {
        /// The id.
        id: LeaseId,
    },
}

/// What applying a [`Command`] produced. Logical failures (a compacted
/// revision, an unknown lease, ...) are results, not storage errors: they
/// are as deterministic as successes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The store's revision after the command (etcd's header revision).
    pub revision: Revision,
    /// The outcome.
    pub outcome: Result<Outcome, KvError>,
}

/// A successful command's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Of a put.
    Put(PutResult),
    /// Of a delete.
    Delete(DeleteResult),
    /// Of a transaction.
    Txn(TxnResult),
    /// Of a compaction.
    Compact,
    /// Of a lease grant.
    LeaseGrant {
        /// The id.
        id: LeaseId,
        /// The TTL.
        ttl: i64,
    },
    /// Of a lease revoke.
    LeaseRevoke,
}

/// A request the keyspace refuses, deterministically. The messages are
/// etcd's where clients parse them (the gRPC layer maps each to etcd's
/// status code).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// The revision asked for has been compacted.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted {
        /// The compaction revision.
        compact_revision: Revision,
    },
    /// The revision asked for is in the future.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// The key is empty.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// The lease does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with that id exists.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// ignore_value / ignore_lease on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A transaction writes the same key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// Too many operations in a transaction.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A TTL out of range.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
}
