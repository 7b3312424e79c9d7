//! shoal's API server: the Kubernetes REST API over the etcd v3 API, so
//! `kubectl`, kube-rs and the other Kubernetes clients work against shoal's
//! store (or a real etcd).
#![forbid(unsafe_code)]

mod admission;
mod apiserver;
mod authn;
mod authz;
mod body;
mod certificates;
mod cluster_info;
mod compactor;
mod discovery;
mod encryption;
mod kubelet;
mod openapi;
mod patch;
mod request;
mod resource_metrics;
mod rest;
mod selector;
mod server;
mod server_join;
mod status;
mod storage;
mod watch_cache;

pub use admission::{Cidr, ClusterAdmission, ServiceNetwork};
pub use apiserver::{
    Apiserver, ClusterSecrets, Config, DEFAULT_LISTEN, DEFAULT_SERVICE_CIDR_V4,
    DEFAULT_SERVICE_CIDR_V6, Error, TokenReviewer, cluster_secrets,
};
pub use authz::{Authorizer, User};
pub use encryption::{AESGCM_PREFIX, ENCRYPTION_CONFIG_FILE, Encryption, EncryptionError};
pub use kubelet::{KUBELET_CLIENT_CERT, KUBELET_CLIENT_USER, KubeletClient};
pub use request::{ResourceRequest, Verb};
pub use server::{ApiServer, MAX_BODY};
pub use server_join::{
    SERVER_JOIN_PATH, SHARED_SECRET_FILES, ServerJoin, ServerJoinRequest, ServerJoinResponse,
};
pub use status::ApiError;
pub use storage::StoreTls;
