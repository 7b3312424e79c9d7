//! shoal's mesh proxy, as injected beside a pod's containers: the identity
//! manager (a key, its SPIFFE certificate from the mesh CA, renewed at half
//! life) and the mTLS engine: the outbound listener wraps the app's
//! connections in TLS 1.3 towards the destination's sidecar, the inbound
//! listener terminates it, checks the client's SPIFFE ID and hands
//! plaintext to the app on localhost; the admin listener serves /metrics
//! and /ready. See ARCHITECTURE.md for the ports and the wire format.
//! [`inject`] is the template the apiserver's admission adds to pods.
#![forbid(unsafe_code)]

mod admin;
mod config;
mod destination;
mod identity;
mod inbound;
pub mod inject;
mod metrics;
mod original_dst;
mod outbound;
mod proxy;
mod tls;

pub use admin::serve as serve_admin;
pub use config::{
    ADMIN_PORT, CLIENT_ID_HEADER, Config, DEFAULT_ADMIN_LISTEN, DEFAULT_DETECT_TIMEOUT,
    DEFAULT_INBOUND_LISTEN, DEFAULT_OUTBOUND_LISTEN, DEFAULT_TOKEN_PATH, INBOUND_PORT, Mode,
    OUTBOUND_PORT, TRANSPORT_MAGIC,
};
pub use destination::{Destinations, Route};
pub use identity::{CaSource, CertSource, Identity, IdentityManager};
pub use inbound::serve as serve_inbound;
pub use metrics::Metrics;
pub use original_dst::{DstError, FixedDst, OriginalDst, ProxyProtocolDst};
pub use outbound::serve as serve_outbound;
