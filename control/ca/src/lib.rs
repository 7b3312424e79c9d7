//! shoal's cluster identity: the cluster CA and the certificates it issues
//! (apiserver serving, user and node clients), the rustls configurations
//! that use them, kubeconfig files, service-account tokens, and what a
//! node joins with (bootstrap tokens, the CA hash, certificate requests);
//! and the mesh CA, a separate root for SPIFFE workload certificates.
#![forbid(unsafe_code)]

mod atomic_file;
mod authority;
mod bootstrap;
mod certificate;
mod identity;
mod kubeconfig;
mod mesh;
mod request;
mod tls;
mod token;

pub use authority::{
    CA_CERT_FILE, CA_COMMON_NAME, CA_KEY_FILE, CA_LIFETIME, CaError, ClusterCa, LEAF_LIFETIME,
    SERVING_CERT_FILE, SERVING_COMMON_NAME, SERVING_KEY_FILE,
};
pub use bootstrap::{
    BOOTSTRAP_TOKEN_NAMESPACE, BOOTSTRAP_TOKEN_SECRET_PREFIX, BOOTSTRAP_TOKEN_SECRET_TYPE,
    BOOTSTRAPPERS_GROUP, BootstrapError, BootstrapToken, CaCertHash, KUBELET_CLIENT_SIGNER,
    NodeRequest, SERVER_JOIN_GROUP, bootstrap_user, secret_name as bootstrap_token_secret_name,
};
pub use certificate::{
    DEFAULT_APISERVER_DNS_NAMES, DEFAULT_APISERVER_IPS, IssuedCert, SubjectAltName,
    default_apiserver_names,
};
pub use identity::{
    ADMIN_USER, Identity, MASTERS_GROUP, NODES_GROUP, SERVICE_ACCOUNTS_GROUP, node_user,
};
pub use kubeconfig::{DEFAULT_KUBECONFIG_NAME, Kubeconfig, KubeconfigError};
pub use mesh::{
    DEFAULT_TRUST_DOMAIN, DEFAULT_WORKLOAD_LIFETIME, MESH_CA_CERT_FILE, MESH_CA_COMMON_NAME,
    MESH_CA_KEY_FILE, MeshCa, SpiffeId, SpiffeIdError, WorkloadKey, check_trust_domain,
    validity as cert_validity,
};
pub use request::{CertificateRequest, RequestError};
pub use tls::{
    API_ALPN_PROTOCOLS, TlsError, certificate_validity, client_config, identity_from_peer,
    server_config,
};
pub use token::{
    Claims, KubernetesClaims, LEGACY_ISSUER, LegacyClaims, ObjectRef, SA_KEY_FILE,
    SERVICE_ACCOUNT_ISSUER, TokenError, TokenSigner, Verified, service_account_user,
};
