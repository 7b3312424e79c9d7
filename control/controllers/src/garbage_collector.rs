//! The garbage collector: dependents whose owners are all gone are deleted
//! (background cascading deletion), an owner deleted with
//! `propagationPolicy: Orphan` has its dependents released before it goes
//! (the `orphan` finalizer), and one deleted with `Foreground` has its
//! dependents deleted first (the `foregroundDeletion` finalizer).
//!
//! Like Kubernetes' collector it keeps a graph of every object's owner
//! references from watches of every resource it can list, and acts only
//! once every watch has listed. An owner missing from the graph is looked
//! up in the API before its dependents are deleted, so a lagging watch
//! never deletes the dependent of a live owner.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::Duration,
};

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams, Preconditions},
    core::{DynamicObject, GroupVersionKind},
    discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// The finalizer that makes an owner release its dependents.
pub const ORPHAN_FINALIZER: &str = "orphan";
/// The finalizer that makes an owner wait for its dependents' deletion.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// How often every object is looked at again (the safety net), and how
/// soon a failed step is retried.
const RESYNC: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(1);
/// How long to wait before discovering the API again after a failure.
const DISCOVERY_RETRY: Duration = Duration::from_secs(2);

/// One object in the graph.
#[derive(Clone, Debug)]
struct Node {
    resource: usize,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

/// What the watches report.
enum Change {
    Listed(usize),
    Apply(usize, Box<DynamicObject>),
    Delete(Box<DynamicObject>),
}

/// What a step for one object found.
enum Outcome {
    Done,
    Retry,
}

struct Collector {
    client: Client,
    discovery: Discovery,
    resources: Vec<(ApiResource, ApiCapabilities)>,
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, BTreeSet<String>>,
    dirty: BTreeSet<String>,
}

/// Runs the collector until the task is dropped.
pub async fn run(client: Client) {
    let discovery = loop {
        match Discovery::new(client.clone()).run().await {
            Ok(d) => break d,
            Err(e) => {
                warn!("garbage collector: discovering the API's resources: {e}; retrying");
                tokio::time::sleep(DISCOVERY_RETRY).await;
            }
        }
    };
    let mut resources = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.supports_operation(verbs::LIST)
                && caps.supports_operation(verbs::WATCH)
                && caps.supports_operation(verbs::DELETE)
            {
                resources.push((ar, caps));
            }
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (i, (ar, _)) in resources.iter().enumerate() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stream = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            let mut listing = Vec::new();
            let mut first_error = true;
            while let Some(event) = stream.next().await {
                let sent = match event {
                    Ok(Event::Init) => {
                        listing.clear();
                        Ok(())
                    }
                    Ok(Event::InitApply(obj)) => {
                        listing.push(obj);
                        Ok(())
                    }
                    Ok(Event::InitDone) => listing
                        .drain(..)
                        .try_for_each(|o| tx.send(Change::Apply(i, Box::new(o))))
                        .and_then(|()| tx.send(Change::Listed(i))),
                    Ok(Event::Apply(obj)) => tx.send(Change::Apply(i, Box::new(obj))),
                    Ok(Event::Delete(obj)) => tx.send(Change::Delete(Box::new(obj))),
                    Err(e) => {
                        debug!("garbage collector: a watch failed: {e}");
                        // A kind that cannot be listed must not hold the
                        // collector back: owners are checked in the API
                        // before anything is deleted anyway.
                        if first_error {
                            first_error = false;
                            tx.send(Change::Listed(i))
                        } else {
                            Ok(())
                        }
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut gc = Collector {
        client,
        discovery,
        resources,
        nodes: HashMap::new(),
        dependents: HashMap::new(),
        dirty: BTreeSet::new(),
    };
    let mut listed: HashSet<usize> = HashSet::new();
    let mut resync = tokio::time::interval(RESYNC);
    let mut retry = tokio::time::interval(RETRY);
    let mut later: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            change = rx.recv() => {
                let Some(change) = change else { return };
                let mut next = Some(change);
                // Take in everything already queued before acting.
                while let Some(change) = next {
                    if let Change::Listed(i) = change {
                        listed.insert(i);
                    } else {
                        gc.observe(change);
                    }
                    next = rx.try_recv().ok();
                }
            }
            _ = resync.tick() => {
                let all: Vec<String> = gc.nodes.keys().cloned().collect();
                gc.dirty.extend(all);
            }
            _ = retry.tick() => gc.dirty.append(&mut later),
        }
        if listed.len() < gc.resources.len() {
            continue;
        }
        let dirty = std::mem::take(&mut gc.dirty);
        for uid in dirty {
            if let Outcome::Retry = gc.process(&uid).await {
                later.insert(uid);
            }
        }
    }
}

impl Collector {
    /// Updates the graph with one change and marks what it may affect.
    fn observe(&mut self, change: Change) {
        match change {
            Change::Listed(_) => {}
            Change::Apply(resource, obj) => {
                let Some(uid) = obj.uid() else { return };
                let node = Node {
                    resource,
                    namespace: obj.namespace(),
                    name: obj.name_any(),
                    owners: obj.owner_references().to_vec(),
                    deleting: obj.metadata.deletion_timestamp.is_some(),
                    finalizers: obj.finalizers().to_vec(),
                };
                if let Some(old) = self.nodes.get(&uid) {
                    for o in &old.owners {
                        if let Some(set) = self.dependents.get_mut(&o.uid) {
                            set.remove(&uid);
                        }
                    }
                }
                for o in &node.owners {
                    self.dependents
                        .entry(o.uid.clone())
                        .or_default()
                        .insert(uid.clone());
                    // An owner waiting for its dependents may be done now.
                    self.dirty.insert(o.uid.clone());
                }
                if !node.owners.is_empty() || node.deleting {
                    self.dirty.insert(uid.clone());
                }
                self.nodes.insert(uid, node);
            }
            Change::Delete(obj) => {
                let Some(uid) = obj.uid() else { return };
                if let Some(node) = self.nodes.remove(&uid) {
                    for o in &node.owners {
                        if let Some(set) = self.dependents.get_mut(&o.uid) {
                            set.remove(&uid);
                        }
                        self.dirty.insert(o.uid.clone());
                    }
                }
                if let Some(deps) = self.dependents.get(&uid) {
                    self.dirty.extend(deps.iter().cloned());
                }
            }
        }
    }

    fn api_for(&self, resource: usize, namespace: Option<&str>) -> Option<Api<DynamicObject>> {
        let (ar, caps) = self.resources.get(resource)?;
        Some(match (namespace, &caps.scope) {
            (Some(ns), Scope::Namespaced) => Api::namespaced_with(self.client.clone(), ns, ar),
            _ => Api::all_with(self.client.clone(), ar),
        })
    }

    /// Whether an owner is really gone: the API has no object of its kind
    /// and name with its uid (a watch may merely lag).
    async fn owner_gone(&self, owner: &OwnerReference, namespace: Option<&str>) -> Option<bool> {
        let (group, version) = owner
            .api_version
            .split_once('/')
            .unwrap_or(("", owner.api_version.as_str()));
        let Some((ar, caps)) =
            self.discovery
                .resolve_gvk(&GroupVersionKind::gvk(group, version, &owner.kind))
        else {
            // A kind the API does not serve cannot own anything live.
            return Some(true);
        };
        let api: Api<DynamicObject> = match (namespace, caps.scope) {
            (Some(ns), Scope::Namespaced) => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        };
        match api.get_opt(&owner.name).await {
            Ok(None) => Some(true),
            Ok(Some(obj)) => Some(obj.uid().as_deref() != Some(owner.uid.as_str())),
            Err(e) => {
                debug!(
                    "garbage collector: looking up owner {}/{}: {e}",
                    owner.kind, owner.name
                );
                None
            }
        }
    }

    async fn process(&mut self, uid: &str) -> Outcome {
        let Some(node) = self.nodes.get(uid).cloned() else {
            return Outcome::Done;
        };
        let Some(api) = self.api_for(node.resource, node.namespace.as_deref()) else {
            return Outcome::Done;
        };
        if node.deleting {
            if node.finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
                return self.orphan_dependents(uid, &node, &api).await;
            }
            if node.finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
                return self.delete_dependents_first(uid, &node, &api).await;
            }
        }
        if node.owners.is_empty() || node.deleting {
            return Outcome::Done;
        }
        // Owners the graph does not hold are checked against the API.
        let mut gone = Vec::new();
        for owner in &node.owners {
            if self.nodes.contains_key(&owner.uid) {
                continue;
            }
            match self.owner_gone(owner, node.namespace.as_deref()).await {
                Some(true) => gone.push(owner.uid.clone()),
                Some(false) => {}
                None => return Outcome::Retry,
            }
        }
        if gone.is_empty() {
            return Outcome::Done;
        }
        if gone.len() == node.owners.len() {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_string()),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            return match api.delete(&node.name, &dp).await {
                Ok(_) => {
                    info!(object = %describe(&node), "garbage collector: deleted a dependent whose owners are gone");
                    Outcome::Done
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Outcome::Done,
                Err(e) => {
                    warn!("garbage collector: deleting {}: {e}", describe(&node));
                    Outcome::Retry
                }
            };
        }
        // Some owners remain: only the references to the gone ones go.
        self.edit(&api, &node, |obj| {
            if let Some(refs) = obj.metadata.owner_references.as_mut() {
                refs.retain(|r| !gone.contains(&r.uid));
            }
        })
        .await
    }

    /// An owner deleted with propagationPolicy Orphan: its dependents
    /// lose their reference to it, then the `orphan` finalizer goes.
    async fn orphan_dependents(&self, uid: &str, node: &Node, api: &Api<DynamicObject>) -> Outcome {
        for dep in self.dependents.get(uid).into_iter().flatten() {
            let Some(dep_node) = self.nodes.get(dep) else {
                continue;
            };
            let Some(dep_api) = self.api_for(dep_node.resource, dep_node.namespace.as_deref())
            else {
                continue;
            };
            let owner = uid.to_string();
            if let Outcome::Retry = self
                .edit(&dep_api, dep_node, |obj| {
                    if let Some(refs) = obj.metadata.owner_references.as_mut() {
                        refs.retain(|r| r.uid != owner);
                    }
                })
                .await
            {
                return Outcome::Retry;
            }
        }
        let outcome = self
            .edit(api, node, |obj| {
                if let Some(f) = obj.metadata.finalizers.as_mut() {
                    f.retain(|f| f != ORPHAN_FINALIZER);
                }
            })
            .await;
        if let Outcome::Done = outcome {
            info!(object = %describe(node), "garbage collector: orphaned the dependents of a deleted owner");
        }
        outcome
    }

    /// An owner deleted with propagationPolicy Foreground: its dependents
    /// are deleted first; once none is left the `foregroundDeletion`
    /// finalizer goes.
    async fn delete_dependents_first(
        &self,
        uid: &str,
        node: &Node,
        api: &Api<DynamicObject>,
    ) -> Outcome {
        let deps: Vec<String> = self
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let mut waiting = false;
        for dep in deps {
            let Some(dep_node) = self.nodes.get(&dep) else {
                continue;
            };
            waiting = true;
            if dep_node.deleting {
                continue;
            }
            let Some(dep_api) = self.api_for(dep_node.resource, dep_node.namespace.as_deref())
            else {
                continue;
            };
            // Dependents go in the foreground too, so the chain empties
            // from the leaves up.
            match dep_api
                .delete(&dep_node.name, &DeleteParams::foreground())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    warn!("garbage collector: deleting {}: {e}", describe(dep_node));
                    return Outcome::Retry;
                }
            }
        }
        if waiting {
            // The dependents' deletions mark this owner again.
            return Outcome::Done;
        }
        self.edit(api, node, |obj| {
            if let Some(f) = obj.metadata.finalizers.as_mut() {
                f.retain(|f| f != FOREGROUND_FINALIZER);
            }
        })
        .await
    }

    /// Reads the object, changes it and writes it back (a conflict means
    /// another writer won: the next event looks again).
    async fn edit(
        &self,
        api: &Api<DynamicObject>,
        node: &Node,
        change: impl Fn(&mut DynamicObject),
    ) -> Outcome {
        let mut obj = match api.get_opt(&node.name).await {
            Ok(Some(obj)) => obj,
            Ok(None) => return Outcome::Done,
            Err(e) => {
                warn!("garbage collector: reading {}: {e}", describe(node));
                return Outcome::Retry;
            }
        };
        change(&mut obj);
        match api.replace(&node.name, &PostParams::default(), &obj).await {
            Ok(_) => Outcome::Done,
            Err(kube::Error::Api(s)) if s.code == 404 => Outcome::Done,
            Err(kube::Error::Api(s)) if s.code == 409 => Outcome::Retry,
            Err(e) => {
                warn!("garbage collector: updating {}: {e}", describe(node));
                Outcome::Retry
            }
        }
    }
}

fn describe(node: &Node) -> String {
    match &node.namespace {
        Some(ns) => format!("{ns}/{}", node.name),
        None => node.name.clone(),
    }
}
