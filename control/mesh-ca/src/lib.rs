//! shoal's mesh CA service: signs SPIFFE workload certificates
//! (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`) for callers that prove their
//! service account with its token, over gRPC with TLS on port 15012; and
//! the client the sidecar asks it with.
#![forbid(unsafe_code)]

mod client;
mod review;
mod service;

/// The generated protocol types (`shoal.meshca.v1`).
#[expect(missing_docs, reason = "generated from api/proto/shoal/meshca.proto")]
pub mod proto {
    tonic::include_proto!("shoal.meshca.v1");
}

pub use client::{ClientError, MeshCaClient, SignedCert};
pub use review::{ServiceAccount, TokenReviewer, service_account_from_user};
pub use service::{Config, DEFAULT_MAX_LIFETIME, DEFAULT_PORT, MeshCaService, ServeError, serve};
/// gRPC status codes, as [`ClientError::code`] gives them.
pub use tonic::Code;
