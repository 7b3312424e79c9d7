//! kubeconfig files: what `kubectl`, kube-rs and the other Kubernetes clients
//! read to find the API server and authenticate, with the CA and the client
//! certificate embedded so the file stands alone.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::atomic_file;
use crate::certificate::IssuedCert;

#[cfg(test)]
mod tests;

/// The cluster and context name shoal writes by default.
pub const DEFAULT_KUBECONFIG_NAME: &str = "shoal";

/// Errors from writing a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// The YAML could not be produced.
    #[error("encoding the kubeconfig for {user}: {reason}")]
    Encode {
        /// The user it was for.
        user: String,
        /// The serializer's reason.
        reason: String,
    },
    /// The file could not be written.
    #[error("writing kubeconfig {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A kubeconfig with one cluster, one user and one context selecting both.
#[derive(Clone, Debug)]
pub struct Kubeconfig<'a> {
    /// The API server's URL, such as `https://127.0.0.1:6443`.
    pub server_url: &'a str,
    /// The CA certificate (PEM) the client trusts for the server.
    pub ca_pem: &'a str,
    /// The client certificate (PEM).
    pub client_cert_pem: &'a str,
    /// The client certificate's private key (PEM).
    pub client_key_pem: &'a str,
    /// The user entry's name, usually the certificate's CN.
    pub user_name: &'a str,
    /// The cluster entry's name (`shoal` by default).
    pub cluster_name: &'a str,
    /// The context's name, also the current context (`shoal` by default).
    pub context_name: &'a str,
}

impl<'a> Kubeconfig<'a> {
    /// A kubeconfig for `client` against `server_url`, trusting the CA that
    /// issued `client`, with cluster and context both named `shoal`.
    pub fn new(server_url: &'a str, client: &'a IssuedCert, user_name: &'a str) -> Self {
        Self {
            server_url,
            ca_pem: &client.ca_pem,
            client_cert_pem: &client.cert_pem,
            client_key_pem: &client.key_pem,
            user_name,
            cluster_name: DEFAULT_KUBECONFIG_NAME,
            context_name: DEFAULT_KUBECONFIG_NAME,
        }
    }

    /// The kubeconfig as YAML.
    pub fn to_yaml(&self) -> Result<String, KubeconfigError> {
        serde_saphyr::to_string(&self.document()).map_err(|e| KubeconfigError::Encode {
            user: self.user_name.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Writes the kubeconfig to `path`, mode 0600 (it holds a private key),
    /// replacing any file there atomically.
    pub fn write(&self, path: &Path) -> Result<(), KubeconfigError> {
        let yaml = self.to_yaml()?;
        atomic_file::write(path, yaml.as_bytes(), atomic_file::PRIVATE).map_err(|source| {
            KubeconfigError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }

    fn document(&self) -> Document {
        Document {
            api_version: "v1".to_owned(),
            kind: "Config".to_owned(),
            clusters: vec![NamedCluster {
                name: self.cluster_name.to_owned(),
                cluster: Cluster {
                    server: self.server_url.to_owned(),
                    certificate_authority_data: STANDARD.encode(self.ca_pem),
                },
            }],
            users: vec![NamedUser {
                name: self.user_name.to_owned(),
                user: User {
                    client_certificate_data: STANDARD.encode(self.client_cert_pem),
                    client_key_data: STANDARD.encode(self.client_key_pem),
                },
            }],
            contexts: vec![NamedContext {
                name: self.context_name.to_owned(),
                context: Context {
                    cluster: self.cluster_name.to_owned(),
                    user: self.user_name.to_owned(),
                },
            }],
            current_context: self.context_name.to_owned(),
        }
    }
}

/// The subset of the kubeconfig format (client-go's `clientcmd/api/v1`) that
/// shoal writes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Document {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    clusters: Vec<NamedCluster>,
    users: Vec<NamedUser>,
    contexts: Vec<NamedContext>,
    current_context: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority_data: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate_data: String,
    client_key_data: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Debug, Serialize, Deserialize)]
struct Context {
    cluster: String,
    user: String,
}
