//! Node client certificates, as kube-controller-manager's `csrapproving`,
//! `csrsigning` and `tokencleaner` controllers do it:
//!
//! - a CertificateSigningRequest for `kubernetes.io/kube-apiserver-client-kubelet`
//!   asking for a node's client certificate (CN `system:node:<name>`, O
//!   `system:nodes`, no alternative names, client-auth usages) is approved
//!   when a bootstrap token (`system:bootstrappers`) or that node itself
//!   asked for it; other requests are left Pending for an operator;
//! - an approved request of that signer is signed by the cluster CA (one
//!   year or `--node-cert-lifetime`, less if `spec.expirationSeconds` asks)
//!   into `status.certificate`;
//!   one that cannot be signed gets a `Failed` condition;
//! - bootstrap token Secrets past their `expiration` are deleted (looked
//!   for every ten seconds).
//!
//! Kubernetes' approver asks a SubjectAccessReview whether the requester
//! may create `certificatesigningrequests/nodeclient`; shoal decides on the
//! requester's groups instead, which is what the default bindings grant.

use std::{path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::controller::Action,
};
use shoal_ca::{
    BOOTSTRAP_TOKEN_NAMESPACE, BOOTSTRAP_TOKEN_SECRET_TYPE, BOOTSTRAPPERS_GROUP,
    CertificateRequest, ClusterCa, KUBELET_CLIENT_SIGNER, LEAF_LIFETIME, NODES_GROUP,
};
use tracing::{info, warn};

use crate::control_loop;

/// The usages a node's client certificate may ask for.
const CLIENT_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];
/// How often the token cleaner looks when no token expires sooner.
const CLEANER_PERIOD: Duration = Duration::from_secs(10);

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("CertificateSigningRequest {name}: {source}")]
    Api {
        /// The request.
        name: String,
        /// Why.
        source: kube::Error,
    },
}

struct Ctx {
    api: Api<CertificateSigningRequest>,
    /// The CA that signs; `None` leaves approved requests unsigned.
    ca: Option<ClusterCa>,
    /// The longest a node client certificate is valid.
    lifetime: Duration,
}

/// Approves and signs node client certificate requests until the watch
/// ends. `ca_dir` is where the cluster CA (`ca.crt`, `ca.key`) lives, as
/// kube-controller-manager's `--cluster-signing-cert-file`/`-key-file`;
/// without it nothing is signed. Certificates are valid for `lifetime`
/// (default [`LEAF_LIFETIME`]) or less if the request asks.
pub async fn run(client: Client, ca_dir: Option<PathBuf>, lifetime: Option<Duration>) {
    let ca = match ca_dir.as_deref().map(ClusterCa::load).transpose() {
        Ok(ca) => ca,
        Err(e) => {
            warn!("CSR signer: {e}; approved requests stay unsigned");
            None
        }
    };
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let (store, changes) = control_loop::reflect(api.clone());
    let triggers = control_loop::trigger(changes, |csr: &CertificateSigningRequest| {
        Some(kube::runtime::reflector::ObjectRef::from_obj(csr))
    });
    let ctx = Arc::new(Ctx {
        api,
        ca,
        lifetime: lifetime.unwrap_or(LEAF_LIFETIME),
    });
    tokio::join!(
        control_loop::run(
            "csr",
            store,
            vec![triggers],
            ctx,
            |csr, ctx| Box::pin(reconcile(csr, ctx)),
            |_, _| async {},
        ),
        clean_tokens(client),
    );
}

fn has_condition(csr: &CertificateSigningRequest, ty: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status != "False"))
}

fn condition(ty: &str, reason: &str, message: &str) -> CertificateSigningRequestCondition {
    let now = Time(jiff::Timestamp::now());
    CertificateSigningRequestCondition {
        type_: ty.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// The request in `spec.request`, parsed and its signature checked.
fn request_of(csr: &CertificateSigningRequest) -> Result<CertificateRequest, String> {
    let pem = String::from_utf8(csr.spec.request.0.clone())
        .map_err(|_| "spec.request is not PEM text".to_owned())?;
    CertificateRequest::from_pem(&pem).map_err(|e| e.to_string())
}

/// Kubernetes' `isNodeClientCert`: what a node's client certificate
/// request must look like to be approved without a person.
fn is_node_client_request(csr: &CertificateSigningRequest, req: &CertificateRequest) -> bool {
    let usages = csr.spec.usages.as_deref().unwrap_or_default();
    req.organizations() == [NODES_GROUP]
        && req
            .common_name()
            .is_some_and(|cn| cn.starts_with("system:node:") && cn.len() > "system:node:".len())
        && !req.requests_alt_names()
        && usages.iter().any(|u| u == "client auth")
        && usages.iter().all(|u| CLIENT_USAGES.contains(&u.as_str()))
}

/// Who may have a node client certificate approved: a bootstrap token
/// (a new node joining), or the node itself (renewing).
fn requester_may_join(csr: &CertificateSigningRequest, req: &CertificateRequest) -> bool {
    let groups = csr.spec.groups.as_deref().unwrap_or_default();
    groups.iter().any(|g| g == BOOTSTRAPPERS_GROUP)
        || (groups.iter().any(|g| g == NODES_GROUP)
            && csr.spec.username.is_some()
            && csr.spec.username == req.common_name())
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = csr.name_any();
    let api_error = |source| Error::Api {
        name: name.clone(),
        source,
    };
    let issued = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if csr.spec.signer_name != KUBELET_CLIENT_SIGNER
        || issued
        || has_condition(&csr, "Denied")
        || has_condition(&csr, "Failed")
    {
        return Ok(Action::await_change());
    }
    let request = request_of(&csr);
    if !has_condition(&csr, "Approved") {
        // csrapproving: a request it does not recognise stays Pending.
        let Ok(req) = &request else {
            return Ok(Action::await_change());
        };
        if !is_node_client_request(&csr, req) || !requester_may_join(&csr, req) {
            return Ok(Action::await_change());
        }
        let mut approved = (*csr).clone();
        approved
            .status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(condition(
                "Approved",
                "AutoApproved",
                "Auto approving kubelet client certificate after SubjectAccessReview.",
            ));
        ctx.api
            .replace_subresource("approval", &name, &PostParams::default(), &approved)
            .await
            .map_err(api_error)?;
        info!(csr = %name, user = ?csr.spec.username, "approved a node client certificate");
        return Ok(Action::await_change());
    }
    // csrsigning.
    let Some(ca) = &ctx.ca else {
        return Ok(Action::await_change());
    };
    let mut signed = (*csr).clone();
    let status = signed.status.get_or_insert_with(Default::default);
    match request.and_then(|req| {
        if !is_node_client_request(&csr, &req) {
            return Err(format!(
                "a {KUBELET_CLIENT_SIGNER} certificate must have CN system:node:<name>, \
                 O {NODES_GROUP} alone, no alternative names and client auth usages"
            ));
        }
        let lifetime = csr
            .spec
            .expiration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(ctx.lifetime, |s| Duration::from_secs(s).min(ctx.lifetime));
        ca.sign_client_request(&req, lifetime)
            .map_err(|e| e.to_string())
    }) {
        Ok(cert_pem) => {
            status.certificate = Some(k8s_openapi::ByteString(cert_pem.into_bytes()));
        }
        Err(reason) => {
            status
                .conditions
                .get_or_insert_with(Vec::new)
                .push(condition(
                    "Failed",
                    "SignerValidationFailure",
                    &format!("invalid certificate request: {reason}"),
                ));
        }
    }
    ctx.api
        .replace_status(&name, &PostParams::default(), &signed)
        .await
        .map_err(api_error)?;
    info!(csr = %name, "signed a node client certificate");
    Ok(Action::await_change())
}

/// The tokencleaner: deletes bootstrap token Secrets whose `expiration`
/// has passed, looking again when the next one expires (at most
/// [`CLEANER_PERIOD`] later).
async fn clean_tokens(client: Client) {
    let secrets: Api<Secret> = Api::namespaced(client, BOOTSTRAP_TOKEN_NAMESPACE);
    loop {
        let mut wait = CLEANER_PERIOD;
        match secrets.list(&ListParams::default()).await {
            Ok(list) => {
                let now = jiff::Timestamp::now();
                for secret in list.items.iter().filter(|s| {
                    s.type_.as_deref() == Some(BOOTSTRAP_TOKEN_SECRET_TYPE)
                        && s.metadata.deletion_timestamp.is_none()
                }) {
                    let Some(at) = secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get("expiration"))
                        .and_then(|v| std::str::from_utf8(&v.0).ok())
                        .and_then(|t| t.trim().parse::<jiff::Timestamp>().ok())
                    else {
                        continue;
                    };
                    if at <= now {
                        let name = secret.name_any();
                        match secrets.delete(&name, &DeleteParams::default()).await {
                            Ok(_) => info!(secret = %name, "deleted an expired bootstrap token"),
                            Err(e) => warn!("tokencleaner: deleting {name}: {e}"),
                        }
                    } else if let Ok(left) = Duration::try_from(at.duration_since(now)) {
                        wait = wait.min(left + Duration::from_millis(100));
                    }
                }
            }
            Err(e) => warn!("tokencleaner: listing secrets: {e}"),
        }
        tokio::time::sleep(wait).await;
    }
}

/// The certificate (PEM) a signed request carries, if any.
pub fn issued_certificate(csr: &CertificateSigningRequest) -> Option<String> {
    let cert = csr.status.as_ref()?.certificate.as_ref()?;
    (!cert.0.is_empty()).then(|| String::from_utf8_lossy(&cert.0).into_owned())
}
