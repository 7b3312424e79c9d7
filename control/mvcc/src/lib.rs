//! shoal's MVCC keyspace: etcd's data model (a cluster revision, per-key
//! create/mod revision and version, history for watches, compaction,
//! leases) persisted in redb. Deterministic: the Raft layer applies the same
//! [`Command`]s in the same order on every member.
//!
//! The storage layout is described in `tables`; [`Mvcc`] is the facade.

#![forbid(unsafe_code)]

mod batch;
mod changes;
mod history;
mod keyspace;
mod lease;
mod snapshot;
mod store;
mod tables;
mod txn;
mod types;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod crash_tests;

/// Crash-test doubles: a redb backend that loses what was not fsynced.
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use store::{AppliedBatch, Error, Mvcc, Status};
pub use types::{
    Command, CommandResult, Compare, CompareResult, CompareTarget, DeleteArgs, DeleteResult, Event,
    EventKind, KeyValue, KvError, Lease, LeaseId, Outcome, PutArgs, PutResult, RangeArgs,
    RangeResult, RequestOp, ResponseOp, Revision, SortOrder, SortTarget, TxnArgs, TxnResult,
};
