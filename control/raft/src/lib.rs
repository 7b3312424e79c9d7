//! Raft consensus (openraft) replicating shoal's MVCC keyspace.

#![forbid(unsafe_code)]

mod config;
mod types;

pub use config::Config;
pub use types::{Member, NodeId, TypeConfig};
