//! Namespace deletion: a namespace being deleted (phase Terminating, the
//! `kubernetes` finalizer in `spec.finalizers`) has every namespaced object
//! in it deleted; once none is left the finalizer is removed through the
//! `finalize` subresource, and the API server removes the namespace, so
//! `kubectl delete namespace` completes.

use std::{sync::Arc, time::Duration};

use futures_util::FutureExt;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    core::DynamicObject,
    discovery::{ApiResource, Discovery, Scope, verbs},
    runtime::{controller::Action, reflector::ObjectRef},
};
use serde_json::json;
use tracing::info;

use crate::control_loop;

/// The finalizer this controller owns.
pub const FINALIZER: &str = "kubernetes";
/// How soon a namespace whose contents are still going is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

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

struct Ctx {
    client: Client,
}

/// Runs the controller until its watch ends.
pub async fn run(client: Client) {
    let (namespaces, events) = control_loop::reflect(Api::<Namespace>::all(client.clone()));
    let triggers = vec![control_loop::trigger(events, |n: &Namespace| {
        [ObjectRef::from_obj(n)]
    })];
    control_loop::run(
        "namespace controller",
        namespaces,
        triggers,
        Arc::new(Ctx { client }),
        |n, ctx| reconcile(n, ctx).boxed(),
        |_, _| async {},
    )
    .await;
}

/// Every namespaced resource that can be listed and deleted.
async fn namespaced_resources(client: &Client, ns: &str) -> Result<Vec<ApiResource>, Error> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(api_err(ns, "discovering the API's resources"))?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope == Scope::Namespaced
                && caps.supports_operation(verbs::LIST)
                && caps.supports_operation(verbs::DELETE)
            {
                out.push(ar);
            }
        }
    }
    Ok(out)
}

async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = namespace.name_any();
    let finalizers: Vec<String> = namespace
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if namespace.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER)
    {
        return Ok(Action::await_change());
    }
    let mut remaining = Vec::new();
    for ar in namespaced_resources(&ctx.client, &name).await? {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, &ar);
        let items = match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            // A kind the server lists in discovery but cannot serve here
            // holds nothing of this namespace.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => continue,
            Err(e) => return Err(api_err(&name, format!("listing {}", ar.plural))(e)),
        };
        for obj in items {
            let obj_name = obj.name_any();
            remaining.push(format!("{}/{obj_name}", ar.plural));
            if obj.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match api.delete(&obj_name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    return Err(api_err(&name, format!("deleting {} {obj_name}", ar.plural))(e));
                }
            }
        }
    }
    let ns_api: Api<Namespace> = Api::all(ctx.client.clone());
    if !remaining.is_empty() {
        // Say what is left, as Kubernetes' NamespaceContentRemaining does;
        // the next look finds them gone or still finalizing.
        remaining.sort();
        let message = format!("Some resources are remaining: {}", summary(&remaining));
        let has = namespace
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "NamespaceContentRemaining"))
            .and_then(|c| c.message.clone());
        if has.as_deref() != Some(message.as_str()) {
            let cond = NamespaceCondition {
                type_: "NamespaceContentRemaining".into(),
                status: "True".into(),
                reason: Some("SomeResourcesRemain".into()),
                message: Some(message),
                last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::now(),
                )),
            };
            let patch = json!({"status": {"conditions": [cond]}});
            // Best effort: the condition is for people; deletion goes on.
            let _ = ns_api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
        return Ok(Action::requeue(RECHECK));
    }
    let mut finalized = (*namespace).clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    }
    ns_api
        .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
        .await
        .map_err(api_err(&name, "removing the kubernetes finalizer"))?;
    info!(namespace = %name, "namespace controller: contents deleted, namespace finalized");
    Ok(Action::await_change())
}

/// "pods: 3, services: 1" from "pods/a", "pods/b", ...
fn summary(remaining: &[String]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for r in remaining {
        let kind = r.split('/').next().unwrap_or_default();
        *counts.entry(kind).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} has {n} resource instances"))
        .collect::<Vec<_>>()
        .join(", ")
}
