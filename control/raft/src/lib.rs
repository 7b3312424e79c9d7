//! Raft consensus (openraft) replicating shoal's MVCC keyspace between
//! control-plane members: a redb log store, the keyspace as state machine,
//! a gRPC peer protocol (`api/proto/shoal/raft.proto`), and [`RaftNode`],
//! the facade the etcd API serves from.

#![forbid(unsafe_code)]

mod config;
mod error;
mod faults;
mod lease;
mod log_store;
mod network;
mod node;
mod peer_service;
mod proposal;
mod state_machine;
mod types;

#[cfg(test)]
mod crash_tests;

/// The peer protocol, generated from `api/proto/shoal/raft.proto`.
mod proto {
    tonic::include_proto!("shoal.raft.v1");
}

pub use config::{
    Config, DEFAULT_APPLY_SYNC_COMMANDS, DEFAULT_APPLY_SYNC_INTERVAL, DEFAULT_ELECTION_TIMEOUT_MAX,
    DEFAULT_ELECTION_TIMEOUT_MIN, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LEADER_WAIT,
    DEFAULT_LOGS_TO_KEEP, DEFAULT_MAX_PAYLOAD_ENTRIES, DEFAULT_SNAPSHOT_CHUNK_BYTES,
    DEFAULT_SNAPSHOT_LOGS_SINCE_LAST, LOG_FILE, PEER_TLS_HANDSHAKE_TIMEOUT, PeerTls, REMOVED_FILE,
    SNAPSHOT_FILE, STATE_FILE,
};
pub use error::Error;
pub use faults::{Faults, LinkFault};
pub use lease::{LeaseError, LeaseOracle};
pub use node::{Leadership, RaftNode};
pub use proposal::RemoveRefused;
pub use types::{Member, NodeId, TypeConfig};
