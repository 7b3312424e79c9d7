//! shoal's etcd v3 gRPC API.
#![forbid(unsafe_code)]
pub mod proto;
