//! shoal's etcd v3 API: the gRPC services `etcdctl` 3.4 and the
//! `etcd-client` crate speak (KV, Watch, Lease, Cluster, Maintenance, and
//! Auth.Authenticate answering "not enabled"), served with tonic over a
//! [`Backend`]: the Raft store in a cluster, [`LocalBackend`] on a single
//! member.
//!
//! | module | what |
//! |---|---|
//! | `backend` | the [`Backend`] trait the store implements, [`BackendError`] |
//! | `local` | [`LocalBackend`]: single member, applies directly |
//! | `lessor` | [`Lessor`]: in-memory lease deadlines (the leader's) |
//! | `server` | [`serve`]: every service on one listener |
//! | `tls` | the client listener's TLS handshakes |
//! | `config` | [`Config`] and etcd's limits and defaults |
//! | `kv`, `watch`, `lease`, `cluster`, `maintenance`, `auth` | the services |
//! | `convert` | wire messages ↔ keyspace types, etcd's request checks |
//! | `status` | etcd's gRPC error codes and messages |
//! | `snapshot` | the file `etcdctl snapshot save` writes |
//! | [`proto`] | the generated etcd messages and servers |

#![forbid(unsafe_code)]

mod auth;
mod backend;
mod cluster;
mod config;
mod convert;
mod kv;
mod lease;
mod lessor;
mod local;
mod maintenance;
pub mod proto;
mod server;
pub mod snapshot;
mod status;
mod tls;
mod watch;

pub use backend::{Backend, BackendError, MemberInfo, RaftStatus};
pub use config::{
    Config, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS, DEFAULT_MIN_LEASE_TTL,
    DEFAULT_PROGRESS_NOTIFY_INTERVAL, GRPC_OVERHEAD_BYTES, MAX_LEASE_TTL, SERVER_VERSION,
    TLS_HANDSHAKE_TIMEOUT, TLS_REFUSAL_LINGER,
};
pub use lessor::Lessor;
pub use local::{LocalBackend, LocalConfig, id_from};
pub use server::{Error, serve};
