//! ControllerRevisions: the pod templates a DaemonSet or StatefulSet has
//! had, one object per distinct template, numbered in the order they were
//! current (so `kubectl rollout history` and `rollout undo` work). A
//! template that comes back (a rollback) reuses its revision object with a
//! new, highest number, as Kubernetes does.

use std::collections::BTreeSet;

use k8s_openapi::{
    api::{apps::v1::ControllerRevision, core::v1::PodTemplateSpec},
    apimachinery::pkg::runtime::RawExtension,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    core::NamespaceResourceScope,
};
use serde_json::{Value, json};

use crate::{deployment::pod_template_hash, workload::controller_ref};

/// The label on pods and revisions naming the revision they come from.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
/// Names tried with a higher collision count before giving up.
const MAX_COLLISIONS: i32 = 10;

/// The revisions of one owner.
#[derive(Debug)]
pub(crate) struct History {
    /// The revision of the owner's current template.
    pub current: ControllerRevision,
    /// The hash in the current revision's name (`<owner>-<hash>`).
    pub hash: String,
    /// Every revision the owner has, the current one included, oldest
    /// first.
    pub all: Vec<ControllerRevision>,
    /// The collision count the current revision's name was made with.
    pub collision_count: Option<i32>,
}

/// What a revision stores: a patch that puts the template back, as
/// Kubernetes writes it.
pub(crate) fn patch_data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    if let Some(map) = t.as_object_mut() {
        map.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The template a revision stores.
pub(crate) fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.get("spec")?.get("template")?.clone();
    if let Some(map) = t.as_object_mut() {
        map.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// Makes sure `owner` has a revision for `template` and that it is the
/// newest; returns the history.
pub(crate) async fn sync<K>(
    client: &Client,
    owner: &K,
    template: &PodTemplateSpec,
    collision_count: Option<i32>,
) -> Result<History, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    let ns = owner.namespace().unwrap_or_default();
    let uid = owner.uid().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let mut all: Vec<ControllerRevision> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| crate::workload::controller_of(&r.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    all.sort_by_key(|r| (r.revision, r.name_any()));
    let data = patch_data(template);
    let newest = all.last().map_or(0, |r| r.revision);
    let equal = all
        .iter()
        .rev()
        .find(|r| r.data.as_ref().map(|d| &d.0) == Some(&data))
        .cloned();
    let name_hash = |rev: &ControllerRevision| {
        rev.labels()
            .get(REVISION_HASH_LABEL)
            .cloned()
            .unwrap_or_else(|| {
                rev.name_any()
                    .strip_prefix(&format!("{}-", owner.name_any()))
                    .unwrap_or_default()
                    .to_string()
            })
    };
    if let Some(mut current) = equal {
        if current.revision < newest {
            let patch = json!({"revision": newest + 1});
            current = api
                .patch(
                    &current.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            all.retain(|r| r.name_any() != current.name_any());
            all.push(current.clone());
        }
        let hash = name_hash(&current);
        return Ok(History {
            current,
            hash,
            all,
            collision_count,
        });
    }
    let mut collisions = collision_count;
    loop {
        let hash = pod_template_hash(template, collisions);
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(REVISION_HASH_LABEL.into(), hash.clone());
        let rev = ControllerRevision {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{}-{hash}", owner.name_any())),
                namespace: Some(ns.clone()),
                labels: Some(labels),
                owner_references: controller_ref(owner).map(|o| vec![o]),
                ..Default::default()
            },
            data: Some(RawExtension(data.clone())),
            revision: newest + 1,
        };
        match api.create(&PostParams::default(), &rev).await {
            Ok(current) => {
                all.push(current.clone());
                return Ok(History {
                    current,
                    hash,
                    all,
                    collision_count: collisions,
                });
            }
            // Another template took the name: the next collision count
            // gives another.
            Err(kube::Error::Api(s))
                if s.code == 409 && collisions.unwrap_or(0) < MAX_COLLISIONS =>
            {
                collisions = Some(collisions.unwrap_or(0) + 1);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Deletes the oldest revisions no pod uses beyond `limit` (the owner's
/// `revisionHistoryLimit`); the current one always stays.
pub(crate) async fn prune(
    client: &Client,
    history: &History,
    in_use: &BTreeSet<String>,
    limit: i32,
) -> Result<(), kube::Error> {
    let current = history.current.name_any();
    let unused: Vec<&ControllerRevision> = history
        .all
        .iter()
        .filter(|r| {
            let name = r.name_any();
            name != current && !in_use.contains(&name)
        })
        .collect();
    let keep = usize::try_from(limit.max(0)).unwrap_or(0);
    let api: Api<ControllerRevision> = Api::namespaced(
        client.clone(),
        &history.current.namespace().unwrap_or_default(),
    );
    for rev in unused.iter().take(unused.len().saturating_sub(keep)) {
        match api.delete(&rev.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
