//! Identity garbage collection: deletes `shoal.io/v1alpha1` Identities no
//! pod has used for a grace period, as Cilium's operator collects unused
//! CiliumIdentities.
//!
//! The node agents allocate identities for their pods; nothing else
//! releases them. Each pass lists Identities, Pods and Namespaces and
//! computes every running pod's label set the way the agents do
//! (`shoal_api::identity::security_labels`). An Identity whose set no pod
//! has is marked unused; one still unused a grace period later (and older
//! than the grace period, so an identity an agent has just created for a
//! pod the list has not seen yet survives) is deleted, with its uid as a
//! precondition so a re-created object is never hit. An agent whose pod
//! still needs a deleted identity creates it again at the same number.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Preconditions},
};
use shoal_api::identity::{self as id, Labels};

/// How long an identity must be unused before it is deleted (Cilium's
/// default identity GC interval is 15 minutes).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(15 * 60);
/// How often the collector looks.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// How the collector runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long an identity must be unused (and exist) before deletion.
    pub grace: Duration,
    /// How often a pass runs.
    pub interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// Errors of one pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Listing failed.
    #[error("identity GC: listing {what}: {source}")]
    List {
        /// The resource.
        what: &'static str,
        /// What the API said.
        #[source]
        source: kube::Error,
    },
}

fn identity_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(id::GROUP, id::VERSION, id::KIND),
        id::PLURAL,
    )
}

/// The label sets of every pod that holds an identity: not host-network,
/// not finished.
fn used_sets(pods: &[Pod], namespaces: &[Namespace]) -> BTreeSet<Labels> {
    let ns_labels: BTreeMap<String, Labels> = namespaces
        .iter()
        .map(|ns| {
            (
                ns.metadata.name.clone().unwrap_or_default(),
                ns.metadata.labels.clone().unwrap_or_default(),
            )
        })
        .collect();
    let empty = Labels::new();
    pods.iter()
        .filter(|p| {
            let host = p
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false);
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !host && !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .map(|p| {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let labels = p.metadata.labels.clone().unwrap_or_default();
            id::security_labels(&labels, &ns, ns_labels.get(&ns).unwrap_or(&empty))
        })
        .collect()
}

/// Runs the collector until the process ends.
pub async fn run(client: Client, config: Config) {
    let mut unused_since: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        if let Err(e) = pass(&client, &config, &mut unused_since).await {
            tracing::warn!("{e}");
        }
        tokio::time::sleep(config.interval).await;
    }
}

async fn pass(
    client: &Client,
    config: &Config,
    unused_since: &mut BTreeMap<String, Instant>,
) -> Result<(), Error> {
    let ar = identity_resource();
    let identities: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    // Identities first: one created after this list is not judged now, and
    // one created before it has its pod in the pod list that follows.
    let list = identities
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            what: "identities",
            source,
        })?;
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            what: "pods",
            source,
        })?;
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            what: "namespaces",
            source,
        })?;
    let used = used_sets(&pods.items, &namespaces.items);
    let now = Instant::now();
    let now_wall = jiff::Timestamp::now();
    let mut seen = BTreeSet::new();
    for obj in list.items {
        let Some(name) = obj.metadata.name.clone() else {
            continue;
        };
        seen.insert(name.clone());
        let in_use = id::labels_of(&obj.data).is_some_and(|set| used.contains(&set));
        if in_use {
            unused_since.remove(&name);
            continue;
        }
        let since = *unused_since.entry(name.clone()).or_insert(now);
        let age = obj
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| now_wall.duration_since(t.0))
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        if now.duration_since(since) < config.grace || age < config.grace {
            continue;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: obj.metadata.uid.clone(),
                resource_version: obj.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match identities.delete(&name, &params).await {
            Ok(_) => {
                tracing::info!(identity = %name, "deleted unused identity");
                unused_since.remove(&name);
            }
            // Gone already, or changed since the list: judged next pass.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                unused_since.remove(&name);
            }
            Err(e) => tracing::warn!(identity = %name, "identity GC: deleting: {e}"),
        }
    }
    unused_since.retain(|name, _| seen.contains(name));
    Ok(())
}

#[cfg(test)]
mod tests;
