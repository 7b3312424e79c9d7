//! Service accounts, as kube-controller-manager's serviceaccount,
//! root-ca-cert-publisher and serviceaccount-token controllers keep them:
//!
//! - every namespace has the `default` ServiceAccount (made again if
//!   deleted);
//! - every namespace has the ConfigMap `kube-root-ca.crt` whose `ca.crt` is
//!   the cluster CA (restored if changed or deleted), which the projected
//!   token volume of every pod reads;
//! - a Secret of type `kubernetes.io/service-account-token` naming a
//!   service account (annotation `kubernetes.io/service-account.name`) gets
//!   `token` (a non-expiring legacy token the API accepts while the Secret
//!   holds it), `ca.crt` and `namespace`; it is deleted when its service
//!   account is gone.

use std::{collections::BTreeMap, sync::Arc};

use futures_util::{FutureExt, StreamExt, stream::BoxStream};
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, PostParams, Preconditions},
    runtime::{
        WatchStreamExt,
        controller::Action,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use shoal_ca::{LegacyClaims, TokenSigner};
use tracing::info;

use crate::control_loop::{self, RESYNC};

/// The service account every namespace has.
pub const DEFAULT_ACCOUNT: &str = "default";
/// The ConfigMap holding the cluster CA in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The key of the CA in [`ROOT_CA_CONFIGMAP`] and in token Secrets.
pub const CA_KEY: &str = "ca.crt";
/// The type of Secrets that hold a legacy token.
pub const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
/// The annotation naming a token Secret's service account.
pub const ACCOUNT_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// The annotation holding a token Secret's service account uid.
pub const ACCOUNT_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
/// Kubernetes' description of the root CA ConfigMap.
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const ROOT_CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("namespace {namespace}: {what}: {source}")]
    Api {
        /// The namespace.
        namespace: String,
        /// What was being done.
        what: String,
        /// The API's answer.
        source: kube::Error,
    },
    /// A token could not be signed.
    #[error("secret {namespace}/{secret}: signing its token: {source}")]
    Sign {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret.
        secret: String,
        /// Why.
        source: shoal_ca::TokenError,
    },
}

fn api_err(ns: &str, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let namespace = ns.to_string();
    let what = what.into();
    move |source| Error::Api {
        namespace,
        what,
        source,
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// A watch of `api` limited to `fields`, yielding every changed object.
fn watch_fields<K>(api: Api<K>, fields: &str) -> BoxStream<'static, Result<K, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let config = if fields.is_empty() {
        watcher::Config::default()
    } else {
        watcher::Config::default().fields(fields)
    };
    watcher::watcher(api, config)
        .default_backoff()
        .touched_objects()
        .boxed()
}

struct AccountsCtx {
    client: Client,
    root_ca: Option<String>,
}

/// Runs the service account and root CA publisher loops until their
/// watches end; without `root_ca` (PEM) only the accounts are kept.
pub async fn run_accounts(client: Client, root_ca: Option<String>) {
    let (namespaces, ns_events) = control_loop::reflect(Api::<Namespace>::all(client.clone()));
    let to_ns = |o: &dyn NamespacedName| o.ns().map(|ns| ObjectRef::<Namespace>::new(&ns));
    let accounts = watch_fields(
        Api::<ServiceAccount>::all(client.clone()),
        &format!("metadata.name={DEFAULT_ACCOUNT}"),
    );
    let mut triggers = vec![
        control_loop::trigger(ns_events, |n: &Namespace| [ObjectRef::from_obj(n)]),
        control_loop::trigger(accounts, move |sa: &ServiceAccount| to_ns(sa)),
    ];
    if root_ca.is_some() {
        let maps = watch_fields(
            Api::<ConfigMap>::all(client.clone()),
            &format!("metadata.name={ROOT_CA_CONFIGMAP}"),
        );
        triggers.push(control_loop::trigger(maps, move |cm: &ConfigMap| to_ns(cm)));
    }
    control_loop::run(
        "service account controller",
        namespaces,
        triggers,
        Arc::new(AccountsCtx { client, root_ca }),
        |ns, ctx| reconcile_namespace(ns, ctx).boxed(),
        |_, _| async {},
    )
    .await;
}

/// The namespace of a namespaced object, for the triggers.
trait NamespacedName {
    fn ns(&self) -> Option<String>;
}

impl<K: Resource> NamespacedName for K {
    fn ns(&self) -> Option<String> {
        self.meta().namespace.clone()
    }
}

async fn reconcile_namespace(ns: Arc<Namespace>, ctx: Arc<AccountsCtx>) -> Result<Action, Error> {
    let name = ns.name_any();
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::await_change());
    }
    ensure_default_account(&ctx.client, &name).await?;
    if let Some(ca) = &ctx.root_ca {
        publish_root_ca(&ctx.client, &name, ca).await?;
    }
    Ok(Action::requeue(RESYNC))
}

/// Whether a create failed only because the namespace is going away (or
/// someone else created the object first).
fn harmless_create_error(e: &kube::Error) -> bool {
    is_code(e, 409) || is_code(e, 403) || is_code(e, 404)
}

async fn ensure_default_account(client: &Client, ns: &str) -> Result<(), Error> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    if api
        .get_opt(DEFAULT_ACCOUNT)
        .await
        .map_err(api_err(ns, "reading the default ServiceAccount"))?
        .is_some()
    {
        return Ok(());
    }
    let sa = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some(DEFAULT_ACCOUNT.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => {
            info!(namespace = %ns, "service account controller: created the default ServiceAccount");
            Ok(())
        }
        Err(e) if harmless_create_error(&e) => Ok(()),
        Err(e) => Err(api_err(ns, "creating the default ServiceAccount")(e)),
    }
}

async fn publish_root_ca(client: &Client, ns: &str, ca: &str) -> Result<(), Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let data = BTreeMap::from([(CA_KEY.to_owned(), ca.to_owned())]);
    let existing = api.get_opt(ROOT_CA_CONFIGMAP).await.map_err(api_err(
        ns,
        format!("reading ConfigMap {ROOT_CA_CONFIGMAP}"),
    ))?;
    match existing {
        None => {
            let cm = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(ROOT_CA_CONFIGMAP.into()),
                    namespace: Some(ns.into()),
                    annotations: Some(BTreeMap::from([(
                        DESCRIPTION_ANNOTATION.to_owned(),
                        ROOT_CA_DESCRIPTION.to_owned(),
                    )])),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => {
                    info!(namespace = %ns, "root CA publisher: created ConfigMap {ROOT_CA_CONFIGMAP}");
                    Ok(())
                }
                Err(e) if harmless_create_error(&e) => Ok(()),
                Err(e) => Err(api_err(
                    ns,
                    format!("creating ConfigMap {ROOT_CA_CONFIGMAP}"),
                )(e)),
            }
        }
        Some(mut cm) => {
            let described = cm
                .annotations()
                .get(DESCRIPTION_ANNOTATION)
                .is_some_and(|d| !d.is_empty());
            if cm.data.as_ref() == Some(&data) && cm.binary_data.is_none() && described {
                return Ok(());
            }
            cm.data = Some(data);
            cm.binary_data = None;
            cm.annotations_mut()
                .insert(DESCRIPTION_ANNOTATION.into(), ROOT_CA_DESCRIPTION.into());
            match api
                .replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &cm)
                .await
            {
                Ok(_) => {
                    info!(namespace = %ns, "root CA publisher: restored ConfigMap {ROOT_CA_CONFIGMAP}");
                    Ok(())
                }
                Err(e) => Err(api_err(
                    ns,
                    format!("restoring ConfigMap {ROOT_CA_CONFIGMAP}"),
                )(e)),
            }
        }
    }
}

struct TokensCtx {
    client: Client,
    signer: Arc<TokenSigner>,
    root_ca: Option<String>,
}

/// Runs the legacy token controller until its watches end.
pub async fn run_tokens(client: Client, signer: Arc<TokenSigner>, root_ca: Option<String>) {
    let (reader, writer) = reflector::store();
    let secret_events = reflector::reflector(
        writer,
        watcher::watcher(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().fields(&format!("type={TOKEN_SECRET_TYPE}")),
        ),
    )
    .default_backoff()
    .touched_objects()
    .boxed();
    let account_events = watch_fields(Api::<ServiceAccount>::all(client.clone()), "");
    let by_account = {
        let secrets = reader.clone();
        move |sa: &ServiceAccount| secrets_of(&secrets, sa)
    };
    let triggers = vec![
        control_loop::trigger(secret_events, |s: &Secret| [ObjectRef::from_obj(s)]),
        control_loop::trigger(account_events, by_account),
    ];
    control_loop::run(
        "service account token controller",
        reader,
        triggers,
        Arc::new(TokensCtx {
            client,
            signer,
            root_ca,
        }),
        |s, ctx| reconcile_secret(s, ctx).boxed(),
        |_, _| async {},
    )
    .await;
}

/// The token Secrets that name `sa`.
fn secrets_of(secrets: &Store<Secret>, sa: &ServiceAccount) -> Vec<ObjectRef<Secret>> {
    let ns = sa.namespace();
    let name = sa.name_any();
    secrets
        .state()
        .iter()
        .filter(|s| s.namespace() == ns)
        .filter(|s| s.annotations().get(ACCOUNT_NAME_ANNOTATION) == Some(&name))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

async fn reconcile_secret(secret: Arc<Secret>, ctx: Arc<TokensCtx>) -> Result<Action, Error> {
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    if secret.metadata.deletion_timestamp.is_some()
        || secret.type_.as_deref() != Some(TOKEN_SECRET_TYPE)
    {
        return Ok(Action::await_change());
    }
    let Some(account) = secret
        .annotations()
        .get(ACCOUNT_NAME_ANNOTATION)
        .filter(|a| !a.is_empty())
        .cloned()
    else {
        return Ok(Action::await_change());
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let sa = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&account)
        .await
        .map_err(api_err(&ns, format!("reading ServiceAccount {account}")))?;
    let sa_uid = sa.as_ref().and_then(|sa| sa.uid()).unwrap_or_default();
    let wanted_uid = secret.annotations().get(ACCOUNT_UID_ANNOTATION);
    let orphaned = sa.is_none()
        || sa
            .as_ref()
            .is_some_and(|sa| sa.metadata.deletion_timestamp.is_some())
        || wanted_uid.is_some_and(|u| !u.is_empty() && *u != sa_uid);
    if orphaned {
        // As Kubernetes' token controller: a token of a service account
        // that is gone (or was recreated) goes too.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: secret.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match secrets.delete(&name, &params).await {
            Ok(_) => {
                info!(secret = %format!("{ns}/{name}"), account = %account, "token controller: deleted the token Secret of a missing ServiceAccount");
            }
            Err(e) if is_code(&e, 404) || is_code(&e, 409) => {}
            Err(e) => return Err(api_err(&ns, format!("deleting Secret {name}"))(e)),
        }
        return Ok(Action::await_change());
    }
    let data = secret.data.clone().unwrap_or_default();
    let has = |k: &str, want: &[u8]| data.get(k).is_some_and(|v| v.0 == want);
    let token_present = data.get("token").is_some_and(|t| !t.0.is_empty());
    let ca = ctx.root_ca.as_deref().unwrap_or("");
    let complete = token_present
        && has("namespace", ns.as_bytes())
        && (ca.is_empty() || has(CA_KEY, ca.as_bytes()))
        && wanted_uid.is_some_and(|u| *u == sa_uid);
    if complete {
        return Ok(Action::requeue(RESYNC));
    }
    let mut updated = (*secret).clone();
    let mut data = data;
    if !token_present {
        let claims = LegacyClaims::new(&ns, &account, &sa_uid, &name);
        let token = ctx
            .signer
            .sign_legacy(&claims)
            .map_err(|source| Error::Sign {
                namespace: ns.clone(),
                secret: name.clone(),
                source,
            })?;
        data.insert("token".into(), ByteString(token.into_bytes()));
    }
    data.insert("namespace".into(), ByteString(ns.clone().into_bytes()));
    if !ca.is_empty() {
        data.insert(CA_KEY.into(), ByteString(ca.as_bytes().to_vec()));
    }
    updated.data = Some(data);
    updated
        .annotations_mut()
        .insert(ACCOUNT_UID_ANNOTATION.into(), sa_uid);
    match secrets
        .replace(&name, &PostParams::default(), &updated)
        .await
    {
        Ok(_) => {
            info!(secret = %format!("{ns}/{name}"), account = %account, "token controller: filled the token Secret");
            Ok(Action::requeue(RESYNC))
        }
        Err(e) if is_code(&e, 404) => Ok(Action::await_change()),
        Err(e) => Err(api_err(&ns, format!("filling Secret {name}"))(e)),
    }
}

/// The CA (PEM) a kubeconfig trusts for its first cluster that names one.
pub fn root_ca_from_kubeconfig(kubeconfig: &kube::config::Kubeconfig) -> Option<String> {
    use base64::Engine;
    kubeconfig.clusters.iter().find_map(|c| {
        let cluster = c.cluster.as_ref()?;
        if let Some(data) = &cluster.certificate_authority_data {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .ok()?;
            return String::from_utf8(pem).ok();
        }
        let path = cluster.certificate_authority.as_ref()?;
        std::fs::read_to_string(path).ok()
    })
}
