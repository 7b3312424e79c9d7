//! Client certificate rotation, as the kubelet's `rotateCertificates`:
//! somewhere between 70% and 90% of the node certificate's validity
//! (jittered, so a fleet joined together does not renew together) the
//! agent makes a new key, sends a CertificateSigningRequest for
//! `system:node:<name>` (signer `kubernetes.io/kube-apiserver-client-kubelet`)
//! authenticated with its current certificate, which the controllers
//! approve because a node renews its own identity, and writes the signed
//! certificate and the key to its kubeconfig atomically: until the rename
//! the old file is whole, so a crash leaves one usable identity. A renewal
//! that fails keeps the current certificate and is retried with backoff.
//!
//! kube-rs's `Client` cannot change its TLS identity, so the agent's tasks
//! share a [`RotatingClient`]: a client whose every request goes through
//! the client built from the current kubeconfig, swapped after a renewal.
//! Requests in flight (a watch) finish on the connection they started on;
//! every later request opens its connections with the new certificate, and
//! the old client's pool goes when its last request ends (as the kubelet
//! closes its connections after a rotation). The streaming server needs
//! nothing: it serves with its own certificate and checks the apiserver's
//! against the cluster CA, which a rotation does not change.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use base64::Engine;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::{Api, Client, api::PostParams};
use rand::Rng;
use shoal_ca::{KUBELET_CLIENT_SIGNER, NodeRequest};

/// The first retry after a failed renewal; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two renewal attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a renewal waits for its request to be signed.
const SIGN_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The kubeconfig could not be read or holds no node certificate.
    #[error("rotating the client certificate in {path}: {reason}")]
    Kubeconfig {
        /// The kubeconfig.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The API refused or failed the request.
    #[error("renewing node {node}'s client certificate: {what}: {reason}")]
    Api {
        /// The node.
        node: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// A kube client whose requests go through the client of the current
/// certificate; clones share it.
#[derive(Clone)]
pub struct RotatingClient {
    current: Arc<RwLock<Client>>,
}

impl RotatingClient {
    /// Starts with `client`; [`RotatingClient::client`] is what the tasks use.
    pub fn new(client: Client) -> Self {
        Self {
            current: Arc::new(RwLock::new(client)),
        }
    }

    /// A client for the agent's tasks: each request uses the client set last.
    pub fn client(&self) -> Client {
        let ns = self.current().default_namespace().to_owned();
        Client::new(Swap(self.current.clone()), ns)
    }

    /// Makes `client` the one later requests go through.
    pub fn replace(&self, client: Client) {
        match self.current.write() {
            Ok(mut current) => *current = client,
            Err(poisoned) => *poisoned.into_inner() = client,
        }
    }

    fn current(&self) -> Client {
        current_of(&self.current)
    }
}

fn current_of(lock: &RwLock<Client>) -> Client {
    match lock.read() {
        Ok(c) => c.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// The service under [`RotatingClient::client`].
#[derive(Clone)]
struct Swap(Arc<RwLock<Client>>);

type Reply = Result<http::Response<kube::client::Body>, kube::Error>;

impl tower_service::Service<http::Request<kube::client::Body>> for Swap {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Reply> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let client = current_of(&self.0);
        Box::pin(async move { client.send(request).await })
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: at a
/// random point between 70% and 90% of its validity, as the kubelet's
/// `nextRotationDeadline` picks it.
pub fn rotation_deadline(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let total = not_after.duration_since(not_before).unwrap_or_default();
    let fraction = rand::rng().random_range(0.7..0.9);
    not_before + total.mul_f64(fraction)
}

/// The node certificate (PEM) of a kubeconfig written by a join or by
/// `shoal up`: its first user's embedded `client-certificate-data`.
pub fn node_certificate(kubeconfig: &Path) -> Result<String, RotationError> {
    let err = |reason: String| RotationError::Kubeconfig {
        path: kubeconfig.to_owned(),
        reason,
    };
    let file = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| err(e.to_string()))?;
    let b64 = file
        .auth_infos
        .first()
        .and_then(|u| u.auth_info.as_ref())
        .and_then(|u| u.client_certificate_data.as_deref())
        .ok_or_else(|| err("its user has no client-certificate-data".into()))?;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| err("client-certificate-data is not base64 of PEM".into()))
}

fn der_of(cert_pem: &str) -> Option<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()
}

/// The user (common name) a PEM certificate names.
fn user_of(cert_pem: &str) -> Option<String> {
    shoal_ca::identity_from_peer(&[der_of(cert_pem)?]).map(|i| i.user)
}

/// When a PEM certificate starts and stops being valid.
pub fn validity(cert_pem: &str) -> Option<(SystemTime, SystemTime)> {
    shoal_ca::certificate_validity(&[der_of(cert_pem)?])
}

/// What [`run`] renews.
pub struct Rotation {
    /// The node's name; the certificate is `system:node:<node>`'s.
    pub node: String,
    /// The kubeconfig holding the certificate, rewritten on renewal.
    pub kubeconfig: PathBuf,
    /// The API's URL written into the kubeconfig, and the CA (PEM) it
    /// names.
    pub server_url: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
}

impl Rotation {
    /// The rotation of the kubeconfig at `path` (its server and CA kept),
    /// or `None` when it holds no certificate of node `node` (an operator's
    /// `--kubeconfig` with other credentials is never rewritten).
    pub fn of_kubeconfig(node: &str, path: &Path) -> Option<Self> {
        let cert = node_certificate(path).ok()?;
        if user_of(&cert)? != shoal_ca::node_user(node) {
            return None;
        }
        let file = kube::config::Kubeconfig::read_from(path).ok()?;
        let cluster = file.clusters.first()?.cluster.as_ref()?;
        let ca_pem = base64::engine::general_purpose::STANDARD
            .decode(cluster.certificate_authority_data.as_deref()?.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())?;
        Some(Self {
            node: node.to_owned(),
            kubeconfig: path.to_owned(),
            server_url: cluster.server.clone()?,
            ca_pem,
        })
    }

    /// Sends a renewal request through `client` (authenticated with the
    /// current certificate), waits for it to be signed and writes the new
    /// certificate and key to the kubeconfig. Returns the new certificate.
    pub async fn renew(&self, client: &Client) -> Result<String, RotationError> {
        let api_err = |what: &'static str, reason: String| RotationError::Api {
            node: self.node.clone(),
            what,
            reason,
        };
        let request = NodeRequest::generate(&self.node)
            .map_err(|e| api_err("making a key", e.to_string()))?;
        let api: Api<CertificateSigningRequest> = Api::all(client.clone());
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
            .map_err(|e| api_err("creating a CertificateSigningRequest", e.to_string()))?;
        let name = created.metadata.name.unwrap_or_default();
        let deadline = tokio::time::Instant::now() + SIGN_WAIT;
        let cert_pem = loop {
            let csr = api.get(&name).await.map_err(|e| {
                api_err(
                    "reading the CertificateSigningRequest",
                    format!("{name}: {e}"),
                )
            })?;
            let status = csr.status.unwrap_or_default();
            if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
                break String::from_utf8(cert.0).map_err(|_| {
                    api_err("reading status.certificate", format!("{name}: not PEM"))
                })?;
            }
            if let Some(c) = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status != "False")
            {
                return Err(api_err(
                    "the CertificateSigningRequest was not issued",
                    format!(
                        "{name} is {}: {}: {} (see `kubectl get csr {name} -o yaml`)",
                        c.type_,
                        c.reason.unwrap_or_default(),
                        c.message.unwrap_or_default()
                    ),
                ));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(api_err(
                    "waiting for the signature",
                    format!(
                        "{name} was not signed within {SIGN_WAIT:?} (approve it with `kubectl certificate approve {name}`)"
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        };
        let user = shoal_ca::node_user(&self.node);
        shoal_ca::Kubeconfig {
            server_url: &self.server_url,
            ca_pem: &self.ca_pem,
            client_cert_pem: &cert_pem,
            client_key_pem: &request.key_pem,
            user_name: &user,
            cluster_name: shoal_ca::DEFAULT_KUBECONFIG_NAME,
            context_name: shoal_ca::DEFAULT_KUBECONFIG_NAME,
        }
        .write(&self.kubeconfig)
        .map_err(|e| RotationError::Kubeconfig {
            path: self.kubeconfig.clone(),
            reason: e.to_string(),
        })?;
        tracing::info!(csr = %name, node = %self.node, kubeconfig = %self.kubeconfig.display(), "renewed the node's client certificate");
        Ok(cert_pem)
    }
}

/// Renews the certificate in `rotation.kubeconfig` for ever: sleeps until
/// its rotation deadline, renews through `clients`, then makes `rebuild`'s
/// client of the new kubeconfig the one `clients` uses. A failure keeps
/// the current certificate and is retried after a backoff.
pub async fn run<F, Fut>(rotation: Rotation, clients: RotatingClient, rebuild: F)
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = anyhow::Result<Client>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let wait = match node_certificate(&rotation.kubeconfig)
            .ok()
            .and_then(|cert| validity(&cert))
        {
            Some((not_before, not_after)) => {
                let at = rotation_deadline(not_before, not_after);
                let wait = at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tracing::info!(
                    node = %rotation.node,
                    renew_in = ?wait,
                    expires = %jiff::Timestamp::try_from(not_after).map(|t| t.to_string()).unwrap_or_default(),
                    "the node's client certificate will be renewed"
                );
                wait
            }
            None => Duration::ZERO,
        };
        tokio::time::sleep(wait).await;
        loop {
            let renewed = match rotation.renew(&clients.client()).await {
                Ok(_) => rebuild(rotation.kubeconfig.clone())
                    .await
                    .map_err(|e| format!("{e:#}")),
                Err(e) => Err(e.to_string()),
            };
            match renewed {
                Ok(client) => {
                    clients.replace(client);
                    backoff = FIRST_BACKOFF;
                    break;
                }
                Err(e) => {
                    tracing::warn!("{e}; keeping the current certificate, retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
