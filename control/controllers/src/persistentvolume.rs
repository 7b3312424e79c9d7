//! The PersistentVolume controller, as Kubernetes' persistent volume
//! binder does it: a Pending claim is bound to the smallest Available
//! volume that fits (storageClassName, accessModes, volumeMode, capacity ≥
//! request, selector, or the volume named by `spec.volumeName` / pre-bound
//! by `claimRef`), both sides written (`pv.spec.claimRef`,
//! `pvc.spec.volumeName`, phases, the bind-completed and
//! bound-by-controller annotations); a volume whose claim is gone is
//! Released, then deleted (reclaimPolicy Delete) or kept (Retain).
//!
//! It is also shoal's local-path provisioner: a claim of a StorageClass
//! whose provisioner is [`LOCAL_PATH_PROVISIONER`] waits for its first
//! consumer; once the scheduler has chosen a node
//! (`volume.kubernetes.io/selected-node`), a volume is made for it — a
//! `hostPath` directory `<root>/<pv-name>` on that node (the root is the
//! node's [`LOCAL_PATH_ROOT_ANNOTATION`], which the agent sets to
//! `<data-dir>/storage`, else [`DEFAULT_LOCAL_PATH_ROOT`]) with node
//! affinity for that node — and bound to it. The agent creates the
//! directory when it mounts it.

use std::{collections::HashSet, time::Duration};

use futures_util::{FutureExt, StreamExt, stream};
use k8s_openapi::{
    api::{
        core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod},
        storage::v1::StorageClass,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::{Selector, SelectorExt},
    runtime::reflector::Store,
};
use serde_json::json;
use tracing::{info, warn};

use crate::{control_loop::reflect, events};

/// The provisioner name of shoal's local-path StorageClass.
pub const LOCAL_PATH_PROVISIONER: &str = "shoal.io/local-path";
/// Where local-path volumes live on a node whose agent did not say.
pub const DEFAULT_LOCAL_PATH_ROOT: &str = "/var/lib/shoal/storage";
/// The Node annotation in which the agent names its local-path root.
pub const LOCAL_PATH_ROOT_ANNOTATION: &str = "storage.shoal.io/local-path-root";
/// The claim annotation the scheduler sets for WaitForFirstConsumer.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The finalizer admission puts on every claim (StorageObjectInUseProtection).
const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const COMPONENT: &str = "persistentvolume-controller";
/// How soon after a change everything is looked at again.
const PERIOD: Duration = Duration::from_millis(200);
/// The safety net when nothing changes.
const RESYNC: Duration = Duration::from_secs(15);

/// Runs the controller until the task is dropped.
pub async fn run(client: Client) {
    let (claims, claim_events) = reflect(Api::<PersistentVolumeClaim>::all(client.clone()));
    let (volumes, volume_events) = reflect(Api::<PersistentVolume>::all(client.clone()));
    let (classes, class_events) = reflect(Api::<StorageClass>::all(client.clone()));
    let (nodes, node_events) = reflect(Api::<Node>::all(client.clone()));
    let (pods, pod_events) = reflect(Api::<Pod>::all(client.clone()));
    let deleting = claims.clone();
    // A pod going matters only to a claim being deleted that it held.
    let pod_events = pod_events.map(move |_| {
        deleting
            .state()
            .iter()
            .any(|c| c.metadata.deletion_timestamp.is_some())
    });
    let mut watches = stream::select_all([
        claim_events.map(|_| true).boxed(),
        volume_events.map(|_| true).boxed(),
        class_events.map(|_| true).boxed(),
        // Nodes matter only for a root path; their heartbeats must not
        // make every volume be looked at again.
        node_events.map(|_| false).boxed(),
        pod_events.boxed(),
    ]);
    let mut tick = tokio::time::interval(PERIOD);
    let mut dirty = true;
    let mut last = tokio::time::Instant::now();
    let reported = std::sync::Mutex::new(HashSet::new());
    loop {
        tokio::select! {
            e = watches.next() => match e {
                None => return,
                Some(changed) => dirty |= changed,
            },
            _ = tick.tick() => {
                let loaded = claims.wait_until_ready().now_or_never().is_some()
                    && volumes.wait_until_ready().now_or_never().is_some()
                    && classes.wait_until_ready().now_or_never().is_some()
                    && nodes.wait_until_ready().now_or_never().is_some()
                    && pods.wait_until_ready().now_or_never().is_some();
                if loaded && (dirty || last.elapsed() > RESYNC) {
                    dirty = false;
                    last = tokio::time::Instant::now();
                    let ctx = Ctx { client: &client, claims: &claims, volumes: &volumes, classes: &classes, nodes: &nodes, pods: &pods, reported: &reported };
                    dirty |= ctx.sync().await;
                }
            }
        }
    }
}

struct Ctx<'a> {
    client: &'a Client,
    claims: &'a Store<PersistentVolumeClaim>,
    volumes: &'a Store<PersistentVolume>,
    classes: &'a Store<StorageClass>,
    nodes: &'a Store<Node>,
    pods: &'a Store<Pod>,
    /// Events already recorded (claim uid, reason, message): a claim
    /// that keeps waiting is not reported on every pass.
    reported: &'a std::sync::Mutex<HashSet<String>>,
}

/// What to do with a Pending claim.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Bind it to this volume.
    Bind(String),
    /// Make a local-path volume on this node.
    Provision(String),
    /// Wait for a pod to use it (WaitForFirstConsumer).
    WaitForConsumer,
    /// Nothing fits: a Warning event with this reason and message.
    Fail(&'static str, String),
}

fn claim_key(c: &PersistentVolumeClaim) -> String {
    format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any())
}

fn class_of_claim(c: &PersistentVolumeClaim) -> &str {
    c.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn class_of_volume(v: &PersistentVolume) -> &str {
    v.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn phase_of_volume(v: &PersistentVolume) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn requested(c: &PersistentVolumeClaim) -> u64 {
    c.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| shoal_scheduler::plugins::bytes(&q.0))
        .unwrap_or(0)
}

fn capacity(v: &PersistentVolume) -> Option<u64> {
    v.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| shoal_scheduler::plugins::bytes(&q.0))
}

/// Whether `v`'s claimRef names `c` (by namespace and name, and uid when
/// both have one).
fn refers_to(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.namespace.as_deref() == c.namespace().as_deref()
        && r.name.as_deref() == Some(c.name_any().as_str())
        && match (r.uid.as_deref(), c.metadata.uid.as_deref()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

fn selector_matches(sel: Option<&LabelSelector>, v: &PersistentVolume) -> bool {
    let Some(sel) = sel else { return true };
    match Selector::try_from(sel.clone()) {
        Ok(s) => s.matches(v.labels()),
        Err(_) => false,
    }
}

/// Whether volume `v` can serve claim `c`, pre-binding aside.
fn fits(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    let (Some(vs), Some(cs)) = (v.spec.as_ref(), c.spec.as_ref()) else {
        return false;
    };
    let modes = vs.access_modes.clone().unwrap_or_default();
    let mode = |m: &Option<String>| m.clone().unwrap_or_else(|| "Filesystem".into());
    class_of_volume(v) == class_of_claim(c)
        && cs.access_modes.iter().flatten().all(|m| modes.contains(m))
        && mode(&vs.volume_mode) == mode(&cs.volume_mode)
        && capacity(v).is_some_and(|cap| cap >= requested(c))
        && selector_matches(cs.selector.as_ref(), v)
}

/// The volume a Pending claim should be bound to, as Kubernetes'
/// findMatchingVolume picks it: the volume its `volumeName` names, else one
/// pre-bound to it by `claimRef`, else the smallest Available unclaimed
/// volume that fits. `taken` are volumes bound earlier in this pass.
pub(crate) fn find_volume<'a>(
    c: &PersistentVolumeClaim,
    volumes: impl Iterator<Item = &'a PersistentVolume> + Clone,
    taken: &HashSet<String>,
) -> Option<&'a PersistentVolume> {
    // A new volume is Pending (as the API creates it) until a pass makes
    // it Available; a provisioned one is bound straight from Pending.
    let free = |v: &&PersistentVolume| {
        !taken.contains(&v.name_any())
            && v.metadata.deletion_timestamp.is_none()
            && matches!(phase_of_volume(v), "" | "Pending" | "Available")
    };
    if let Some(name) = c
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|n| !n.is_empty())
    {
        return volumes.clone().find(|v| {
            v.name_any() == name
                && free(v)
                && (refers_to(v, c) || v.spec.as_ref().is_some_and(|s| s.claim_ref.is_none()))
        });
    }
    if let Some(v) = volumes
        .clone()
        .filter(free)
        .find(|v| refers_to(v, c) && fits(v, c))
    {
        return Some(v);
    }
    volumes
        .filter(free)
        .filter(|v| v.spec.as_ref().is_some_and(|s| s.claim_ref.is_none()))
        .filter(|v| fits(v, c))
        .min_by_key(|v| capacity(v).unwrap_or(u64::MAX))
}

/// What to do with Pending claim `c`, given the volumes and its class.
pub(crate) fn decide<'a>(
    c: &PersistentVolumeClaim,
    volumes: impl Iterator<Item = &'a PersistentVolume> + Clone,
    class: Option<&StorageClass>,
    taken: &HashSet<String>,
) -> Decision {
    let class_name = class_of_claim(c);
    let wait =
        class.is_some_and(|k| k.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
    let selected = c
        .annotations()
        .get(SELECTED_NODE)
        .filter(|n| !n.is_empty())
        .cloned();
    let named = c
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    // A delayed claim is bound only once a pod's node is known.
    if wait && selected.is_none() && !named {
        return Decision::WaitForConsumer;
    }
    if let Some(v) = find_volume(c, volumes, taken) {
        return Decision::Bind(v.name_any());
    }
    if named {
        return Decision::Fail(
            "FailedBinding",
            "volume named by spec.volumeName is not available".into(),
        );
    }
    match class {
        None if class_name.is_empty() => Decision::Fail(
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set".into(),
        ),
        None => Decision::Fail(
            "ProvisioningFailed",
            format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
        ),
        Some(k) if k.provisioner == LOCAL_PATH_PROVISIONER => match selected {
            Some(node) => Decision::Provision(node),
            None => Decision::Fail(
                "ProvisioningFailed",
                format!(
                    "storageclass \"{class_name}\": provisioner {LOCAL_PATH_PROVISIONER} makes node-local volumes and needs volumeBindingMode WaitForFirstConsumer"
                ),
            ),
        },
        Some(k) => Decision::Fail(
            "ExternalProvisioning",
            format!(
                "waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator",
                k.provisioner
            ),
        ),
    }
}

/// The volume the local-path provisioner makes for claim `c` on `node`.
pub(crate) fn local_path_volume(
    c: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
    hostname: &str,
    root: &str,
) -> serde_json::Value {
    let uid = c.metadata.uid.clone().unwrap_or_default();
    let name = format!("pvc-{uid}");
    let spec = c.spec.clone().unwrap_or_default();
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map_or_else(|| "0".to_string(), |q| q.0.clone());
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {PROVISIONED_BY: LOCAL_PATH_PROVISIONER, SELECTED_NODE: node},
        },
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
            "storageClassName": class.metadata.name,
            "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            "hostPath": {"path": format!("{}/{name}", root.trim_end_matches('/')), "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]},
            ]}]}},
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": c.namespace(), "name": c.name_any(), "uid": uid,
            },
        },
    })
}

impl Ctx<'_> {
    /// One pass over every claim and volume; true if something failed
    /// and the pass should run again soon.
    async fn sync(&self) -> bool {
        let mut failed = false;
        let mut taken = HashSet::new();
        let volumes = self.volumes.state();
        let mut claims = self.claims.state();
        claims.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        });
        for c in &claims {
            if let Err(e) = self.claim(c, &volumes, &mut taken).await {
                failed = true;
                warn!(claim = %claim_key(c), "persistentvolume: {e}");
            }
        }
        for v in &volumes {
            if let Err(e) = self.volume(v).await {
                failed = true;
                warn!(volume = %v.name_any(), "persistentvolume: {e}");
            }
        }
        failed
    }

    async fn claim(
        &self,
        c: &PersistentVolumeClaim,
        volumes: &[std::sync::Arc<PersistentVolume>],
        taken: &mut HashSet<String>,
    ) -> Result<(), kube::Error> {
        if c.metadata.deletion_timestamp.is_some() {
            return self.release_protection(c).await;
        }
        let bound_to = c
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| !n.is_empty());
        let bind_done = c.annotations().contains_key(BIND_COMPLETED);
        if let Some(name) = &bound_to
            && bind_done
        {
            let v = volumes.iter().find(|v| v.name_any() == *name);
            let phase = match v {
                Some(v) if refers_to(v, c) => "Bound",
                _ => "Lost",
            };
            if phase == "Bound" {
                taken.insert(name.clone());
            }
            return self.claim_phase(c, phase, v.map(|v| &**v)).await;
        }
        let class_name = class_of_claim(c);
        let class = (!class_name.is_empty())
            .then(|| {
                self.classes
                    .state()
                    .into_iter()
                    .find(|k| k.name_any() == class_name)
            })
            .flatten();
        match decide(c, volumes.iter().map(|v| &**v), class.as_deref(), taken) {
            Decision::Bind(name) => {
                taken.insert(name.clone());
                if let Some(v) = volumes.iter().find(|v| v.name_any() == name) {
                    self.bind(c, v).await?;
                }
            }
            Decision::Provision(node) => {
                if let Some(class) = &class {
                    self.provision(c, class, &node).await?;
                }
            }
            Decision::WaitForConsumer => {
                if self.first_report(c, "WaitForFirstConsumer", "") {
                    events::normal(
                        self.client,
                        COMPONENT,
                        c,
                        "WaitForFirstConsumer",
                        "waiting for first consumer to be created before binding",
                    )
                    .await;
                }
                self.claim_phase(c, "Pending", None).await?;
            }
            Decision::Fail(reason, message) => {
                if self.first_report(c, reason, &message) {
                    if reason == "ExternalProvisioning" {
                        events::normal(self.client, COMPONENT, c, reason, &message).await;
                    } else {
                        events::warning(self.client, COMPONENT, c, reason, &message).await;
                    }
                }
                self.claim_phase(c, "Pending", None).await?;
            }
        }
        Ok(())
    }

    /// Lets a deleted claim go once no pod that is not finished uses it.
    async fn release_protection(&self, c: &PersistentVolumeClaim) -> Result<(), kube::Error> {
        let finalizers = c.finalizers();
        if !finalizers.iter().any(|f| f == PVC_PROTECTION) {
            return Ok(());
        }
        let ns = c.namespace().unwrap_or_default();
        let name = c.name_any();
        let in_use = self.pods.state().iter().any(|p| {
            p.namespace().as_deref() == Some(ns.as_str())
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
                && p.spec
                    .as_ref()
                    .and_then(|s| s.volumes.as_ref())
                    .is_some_and(|v| {
                        v.iter().any(|v| {
                            v.persistent_volume_claim
                                .as_ref()
                                .is_some_and(|c| c.claim_name == name)
                        })
                    })
        });
        if in_use {
            return Ok(());
        }
        let rest: Vec<&String> = finalizers.iter().filter(|f| *f != PVC_PROTECTION).collect();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        // The resourceVersion makes a finalizer added meanwhile a conflict,
        // not a loss.
        let patch = json!({"metadata": {
            "finalizers": rest,
            "resourceVersion": c.resource_version(),
        }});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether this event about `c` is new (and now recorded as reported).
    fn first_report(&self, c: &PersistentVolumeClaim, reason: &str, message: &str) -> bool {
        let key = format!(
            "{}/{reason}/{message}",
            c.metadata.uid.as_deref().unwrap_or_default()
        );
        self.reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key)
    }

    /// Writes the claim's phase (with the volume's capacity and access
    /// modes when Bound) unless it already says so.
    async fn claim_phase(
        &self,
        c: &PersistentVolumeClaim,
        phase: &str,
        v: Option<&PersistentVolume>,
    ) -> Result<(), kube::Error> {
        if c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase) {
            return Ok(());
        }
        let mut status = json!({"phase": phase});
        if phase == "Bound"
            && let Some(vs) = v.and_then(|v| v.spec.as_ref())
        {
            status["capacity"] = json!(vs.capacity);
            status["accessModes"] = json!(vs.access_modes);
        }
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &c.namespace().unwrap_or_default());
        api.patch_status(
            &c.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
        if phase == "Lost" {
            events::warning(
                self.client,
                COMPONENT,
                c,
                "ClaimLost",
                "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
            )
            .await;
        }
        Ok(())
    }

    /// Binds both sides: the volume's claimRef first (with the cached
    /// resourceVersion, so a stale cache loses the race), then the claim.
    async fn bind(
        &self,
        c: &PersistentVolumeClaim,
        v: &PersistentVolume,
    ) -> Result<(), kube::Error> {
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let mut v = v.clone();
        if !refers_to(&v, c)
            || v.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|r| r.uid.as_ref())
                .is_none()
        {
            let spec = v.spec.get_or_insert_with(Default::default);
            spec.claim_ref = Some(k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: c.namespace(),
                name: Some(c.name_any()),
                uid: c.metadata.uid.clone(),
                resource_version: c.metadata.resource_version.clone(),
                ..Default::default()
            });
            v.annotations_mut()
                .insert(BOUND_BY_CONTROLLER.into(), "yes".into());
            v = pvs
                .replace(&v.name_any(), &PostParams::default(), &v)
                .await?;
        }
        if phase_of_volume(&v) != "Bound" {
            pvs.patch_status(
                &v.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Bound"}})),
            )
            .await?;
        }
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &c.namespace().unwrap_or_default());
        let mut annotations = serde_json::Map::new();
        annotations.insert(BIND_COMPLETED.into(), json!("yes"));
        let named = c
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        if !named {
            annotations.insert(BOUND_BY_CONTROLLER.into(), json!("yes"));
        }
        let bound = claims
            .patch(
                &c.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": {"annotations": annotations},
                    "spec": {"volumeName": v.name_any()},
                })),
            )
            .await?;
        info!(claim = %claim_key(c), volume = %v.name_any(), "persistentvolume: bound");
        self.claim_phase(&bound, "Bound", Some(&v)).await
    }

    /// Makes the local-path volume for `c` on `node`, already bound to it
    /// by claimRef; the next pass binds the claim.
    async fn provision(
        &self,
        c: &PersistentVolumeClaim,
        class: &StorageClass,
        node: &str,
    ) -> Result<(), kube::Error> {
        let found = self
            .nodes
            .state()
            .into_iter()
            .find(|n| n.name_any() == node);
        let hostname = found
            .as_ref()
            .and_then(|n| n.labels().get("kubernetes.io/hostname").cloned())
            .unwrap_or_else(|| node.to_string());
        let root = found
            .as_ref()
            .and_then(|n| n.annotations().get(LOCAL_PATH_ROOT_ANNOTATION).cloned())
            .unwrap_or_else(|| DEFAULT_LOCAL_PATH_ROOT.to_string());
        let body = local_path_volume(c, class, node, &hostname, &root);
        let pv: PersistentVolume = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        match pvs.create(&PostParams::default(), &pv).await {
            Ok(pv) => {
                let message = format!(
                    "Successfully provisioned volume {} on node {node}",
                    pv.name_any()
                );
                events::normal(self.client, COMPONENT, c, "ProvisioningSucceeded", &message).await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A volume's phase from its claim: Available without one, Bound to a
    /// claim that exists, else Released and reclaimed by its policy.
    async fn volume(&self, v: &PersistentVolume) -> Result<(), kube::Error> {
        if v.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let claim_ref = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        let phase = phase_of_volume(v);
        let policy = v
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            .unwrap_or("Retain");
        // Released and kept: an administrator decides what comes next.
        if phase == "Released" && policy != "Delete" {
            return Ok(());
        }
        let want = match claim_ref {
            None => "Available",
            Some(r) => {
                let key = format!(
                    "{}/{}",
                    r.namespace.as_deref().unwrap_or(""),
                    r.name.as_deref().unwrap_or("")
                );
                let claim = self
                    .claims
                    .state()
                    .into_iter()
                    .find(|c| claim_key(c) == key);
                match claim {
                    // Pre-bound, its claim not made yet, or not yet written.
                    _ if r.uid.is_none() => "Available",
                    Some(c) if c.metadata.uid == r.uid => {
                        if phase == "Released" {
                            "Released"
                        } else if c.spec.as_ref().and_then(|s| s.volume_name.as_deref())
                            == Some(v.name_any().as_str())
                        {
                            "Bound"
                        } else {
                            // Bound on our side only so far.
                            return Ok(());
                        }
                    }
                    // The claim is gone: confirm with the API before
                    // releasing (the cache may lag).
                    _ => {
                        let api: Api<PersistentVolumeClaim> = Api::namespaced(
                            self.client.clone(),
                            r.namespace.as_deref().unwrap_or(""),
                        );
                        match api.get_opt(r.name.as_deref().unwrap_or("")).await? {
                            Some(c) if c.metadata.uid == r.uid => return Ok(()),
                            _ => "Released",
                        }
                    }
                }
            }
        };
        if want == "Released" && policy == "Delete" {
            info!(volume = %v.name_any(), "persistentvolume: claim gone, deleting (reclaimPolicy Delete)");
            return match pvs.delete(&v.name_any(), &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e),
            };
        }
        if phase != want {
            pvs.patch_status(
                &v.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": want}})),
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
