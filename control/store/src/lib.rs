//! shoal's cluster store: the etcd v3 API (`shoal-etcd-api`) served over
//! the Raft-replicated MVCC keyspace (`shoal-raft` + `shoal-mvcc`), as
//! `shoal store` runs it alone and `shoal server` will embed it.

#![forbid(unsafe_code)]

mod backend;
mod config;
mod store;
mod tls;

pub use backend::RaftBackend;
pub use config::{
    ConfigError, DEFAULT_LISTEN, DEFAULT_NAME, DEFAULT_PEER_LISTEN, InitialCluster, JoinedMember,
    StoreConfig,
};
pub use store::{Error, Store, restore};
pub use tls::{Listener, ListenerTls, TlsError, TlsFiles};
