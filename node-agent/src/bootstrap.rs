//! Joining a cluster with a bootstrap token, as the kubelet's TLS
//! bootstrapping and kubeadm's token discovery do it:
//!
//! 1. read `kube-public/cluster-info` without credentials and without
//!    trusting the server yet, and keep its CA only if the hash of the CA's
//!    public key is the `--ca-cert-hash` the operator gave;
//! 2. trusting that CA, send the token and create a CertificateSigningRequest
//!    for `system:node:<name>` (signer
//!    `kubernetes.io/kube-apiserver-client-kubelet`) with a key made here;
//! 3. wait for the control plane to approve and sign it, and write
//!    `<data-dir>/kubeconfig` with the certificate and key.
//!
//! The token is sent only once the server has shown it holds the pinned CA.
//! A restart finds the kubeconfig and does not need the token again; the
//! certificate is renewed before it expires by [`crate::cert_rotation`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, api::PostParams};
use shoal_ca::{BootstrapToken, CaCertHash, KUBELET_CLIENT_SIGNER, NodeRequest};

/// The file the agent's credentials go to, in its data directory.
pub const KUBECONFIG_FILE: &str = "kubeconfig";
/// How long the agent waits for its request to be approved and signed.
pub const DEFAULT_SIGN_WAIT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(250);

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The server could not be reached or answered oddly.
    #[error("joining the cluster at {server}: {what}: {reason}")]
    Server {
        /// The API's URL.
        server: String,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The CA the server sent is not the pinned one.
    #[error("joining the cluster at {server}: {source}")]
    Untrusted {
        /// The API's URL.
        server: String,
        /// Which hashes differ.
        source: shoal_ca::BootstrapError,
    },
    /// The server answered 401 to the token.
    #[error(
        "the server at {server} refused the bootstrap token {id}.<secret> (401 Unauthorized): \
         it is unknown, expired or deleted; create a new one with `shoal token create` on the server"
    )]
    TokenRefused {
        /// The API's URL.
        server: String,
        /// The token's public id.
        id: String,
    },
    /// The request was denied or could not be signed.
    #[error(
        "CertificateSigningRequest {name} on {server} was {outcome}: {message} \
         (see `kubectl get csr {name} -o yaml`)"
    )]
    NotIssued {
        /// The API's URL.
        server: String,
        /// The request's name.
        name: String,
        /// `Denied` or `Failed`.
        outcome: String,
        /// The condition's reason and message.
        message: String,
    },
    /// Nobody approved and signed the request in time.
    #[error(
        "CertificateSigningRequest {name} on {server} was not signed within {wait:?}: approve it \
         with `kubectl certificate approve {name}`, or check that the controllers run"
    )]
    Timeout {
        /// The API's URL.
        server: String,
        /// The request's name.
        name: String,
        /// How long the agent waited.
        wait: Duration,
    },
    /// A key, request or file could not be made.
    #[error("joining the cluster: {0}")]
    Local(String),
}

/// What a node joins with: `--server`, `--token`, `--ca-cert-hash`.
#[derive(Debug, Clone)]
pub struct Join {
    /// The API's URL, such as `https://10.0.0.1:6443`.
    pub server: String,
    /// The bootstrap token.
    pub token: BootstrapToken,
    /// The hash the cluster CA must have.
    pub ca_cert_hash: CaCertHash,
    /// How long to wait for the certificate.
    pub wait: Duration,
}

impl Join {
    fn server_error(&self, what: &'static str, reason: impl ToString) -> JoinError {
        JoinError::Server {
            server: self.server.clone(),
            what,
            reason: reason.to_string(),
        }
    }

    fn config(&self) -> Result<kube::Config, JoinError> {
        let url = self
            .server
            .parse::<http::Uri>()
            .map_err(|e| self.server_error("reading --server", e))?;
        Ok(kube::Config::new(url))
    }

    /// Step 1: the cluster CA from `kube-public/cluster-info`, checked
    /// against the pinned hash.
    pub async fn discover_ca(&self) -> Result<String, JoinError> {
        let mut config = self.config()?;
        // Nothing is trusted yet: what comes back is checked by its hash.
        config.accept_invalid_certs = true;
        let client =
            Client::try_from(config).map_err(|e| self.server_error("making a client", e))?;
        let api: Api<ConfigMap> = Api::namespaced(client, "kube-public");
        let cm = api
            .get("cluster-info")
            .await
            .map_err(|e| self.server_error("reading configmap kube-public/cluster-info", e))?;
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get("kubeconfig"))
            .ok_or_else(|| {
                self.server_error(
                    "reading configmap kube-public/cluster-info",
                    "it has no data.kubeconfig",
                )
            })?;
        let kubeconfig = kube::config::Kubeconfig::from_yaml(text).map_err(|e| {
            self.server_error("reading data.kubeconfig of kube-public/cluster-info", e)
        })?;
        let ca_b64 = kubeconfig
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.certificate_authority_data.clone())
            .ok_or_else(|| {
                self.server_error(
                    "reading data.kubeconfig of kube-public/cluster-info",
                    "its cluster has no certificate-authority-data",
                )
            })?;
        let ca_pem = base64::engine::general_purpose::STANDARD
            .decode(ca_b64.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                self.server_error(
                    "reading the CA of kube-public/cluster-info",
                    "certificate-authority-data is not base64 of a PEM certificate",
                )
            })?;
        self.ca_cert_hash
            .check(&ca_pem)
            .map_err(|source| JoinError::Untrusted {
                server: self.server.clone(),
                source,
            })?;
        Ok(ca_pem)
    }

    /// Steps 2 and 3: asks for node `node`'s client certificate with the
    /// token, trusting `ca_pem`, and waits until it is signed. Returns the
    /// certificate and its key (PEM).
    pub async fn request_certificate(
        &self,
        ca_pem: &str,
        node: &str,
    ) -> Result<(String, String), JoinError> {
        let mut config = self.config()?;
        config.root_cert = Some(
            <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_slice_iter(
                ca_pem.as_bytes(),
            )
                .filter_map(Result::ok)
                .map(|c| c.to_vec())
                .collect(),
        );
        config.auth_info.token = Some(self.token.to_string().into());
        let client =
            Client::try_from(config).map_err(|e| self.server_error("making a client", e))?;
        let api: Api<CertificateSigningRequest> = Api::all(client);
        let request = NodeRequest::generate(node).map_err(|e| JoinError::Local(e.to_string()))?;
        let csr = CertificateSigningRequest {
            metadata: kube::api::ObjectMeta {
                generate_name: Some("node-csr-".to_owned()),
                ..Default::default()
            },
            spec: CertificateSigningRequestSpec {
                request: k8s_openapi::ByteString(request.csr_pem.clone().into_bytes()),
                signer_name: KUBELET_CLIENT_SIGNER.to_owned(),
                usages: Some(vec!["digital signature".into(), "client auth".into()]),
                ..Default::default()
            },
            status: None,
        };
        let created = api
            .create(&PostParams::default(), &csr)
            .await
            .map_err(|e| self.refused_or(e, "creating a CertificateSigningRequest"))?;
        let name = created.metadata.name.clone().unwrap_or_default();
        tracing::info!(csr = %name, node, "asked for the node's client certificate");
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let csr = api
                .get(&name)
                .await
                .map_err(|e| self.refused_or(e, "reading the CertificateSigningRequest"))?;
            let status = csr.status.unwrap_or_default();
            if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
                let cert_pem = String::from_utf8(cert.0)
                    .map_err(|_| self.server_error("reading status.certificate", "not PEM"))?;
                return Ok((cert_pem, request.key_pem));
            }
            if let Some(c) = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status != "False")
            {
                return Err(JoinError::NotIssued {
                    server: self.server.clone(),
                    name,
                    outcome: c.type_,
                    message: format!(
                        "{}: {}",
                        c.reason.unwrap_or_default(),
                        c.message.unwrap_or_default()
                    ),
                });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(JoinError::Timeout {
                    server: self.server.clone(),
                    name,
                    wait: self.wait,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn refused_or(&self, e: kube::Error, what: &'static str) -> JoinError {
        match &e {
            kube::Error::Api(status) if status.code == 401 => JoinError::TokenRefused {
                server: self.server.clone(),
                id: self.token.id().to_owned(),
            },
            _ => self.server_error(what, e),
        }
    }

    /// Joins as node `node` and writes the kubeconfig to `path`.
    pub async fn run(&self, node: &str, path: &Path) -> Result<(), JoinError> {
        let ca_pem = self.discover_ca().await?;
        let (cert_pem, key_pem) = self.request_certificate(&ca_pem, node).await?;
        let user = shoal_ca::node_user(node);
        shoal_ca::Kubeconfig {
            server_url: &self.server,
            ca_pem: &ca_pem,
            client_cert_pem: &cert_pem,
            client_key_pem: &key_pem,
            user_name: &user,
            cluster_name: shoal_ca::DEFAULT_KUBECONFIG_NAME,
            context_name: shoal_ca::DEFAULT_KUBECONFIG_NAME,
        }
        .write(path)
        .map_err(|e| JoinError::Local(e.to_string()))?;
        tracing::info!(node, kubeconfig = %path.display(), "joined the cluster with a client certificate");
        Ok(())
    }
}

/// The kubeconfig the agent runs with: `explicit` if given; else the one a
/// previous join wrote to `<data_dir>/kubeconfig`; else a new join with
/// `join`, written there.
pub async fn kubeconfig(
    explicit: Option<&Path>,
    data_dir: &Path,
    node: &str,
    join: Option<&Join>,
) -> Result<PathBuf, JoinError> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let path = data_dir.join(KUBECONFIG_FILE);
    if path.is_file() {
        tracing::info!(kubeconfig = %path.display(), "using the credentials of an earlier join");
        return Ok(path);
    }
    let Some(join) = join else {
        return Err(JoinError::Local(format!(
            "{} does not exist: join with --server, --token and --ca-cert-hash (printed by \
             `shoal token create`), or give --kubeconfig",
            path.display()
        )));
    };
    join.run(node, &path).await?;
    Ok(path)
}

/// The file in the agent's data directory listing the control-plane
/// servers it was given, one URL a line.
pub const SERVERS_FILE: &str = "servers";

/// The servers the agent talks to: `flag` (`--server`) when given, kept in
/// `<data_dir>/servers` for the next start; else what that file holds;
/// else none (the kubeconfig's server alone).
pub fn servers(data_dir: &Path, flag: &[String]) -> Result<Vec<String>, JoinError> {
    let path = data_dir.join(SERVERS_FILE);
    let flag: Vec<String> = flag
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if !flag.is_empty() {
        let mut text = flag.join("\n");
        text.push('\n');
        std::fs::write(&path, text)
            .map_err(|e| JoinError::Local(format!("writing {}: {e}", path.display())))?;
        return Ok(flag);
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(JoinError::Local(format!("reading {}: {e}", path.display()))),
    }
}

/// [`kubeconfig`] joining through the first of `joins` (one per server)
/// that answers: a server that cannot be reached is skipped, a refusal
/// (token, CA hash, denied request) is final.
pub async fn kubeconfig_from_any(
    explicit: Option<&Path>,
    data_dir: &Path,
    node: &str,
    joins: &[Join],
) -> Result<PathBuf, JoinError> {
    let mut last = None;
    for join in joins {
        match kubeconfig(explicit, data_dir, node, Some(join)).await {
            Err(e @ JoinError::Server { .. }) => {
                tracing::warn!(error = %e, "trying the next server");
                last = Some(e);
            }
            done => return done,
        }
    }
    match last {
        Some(e) => Err(e),
        None => kubeconfig(explicit, data_dir, node, None).await,
    }
}
