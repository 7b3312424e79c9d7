//! The etcd v3 API against a single-member store on 127.0.0.1, through the
//! `etcd-client` crate (what shoal's API server uses) and the real
//! `etcdctl` 3.4 binary.

mod bad_input;
mod cluster;
mod common;
mod etcdctl;
mod kv;
mod lease;
mod maintenance;
mod watch;
