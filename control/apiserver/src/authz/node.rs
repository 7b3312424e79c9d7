//! What a node may change, as Kubernetes' Node authorizer and
//! NodeRestriction admission decide it for requests made with a node's
//! client certificate (user `system:node:<name>`, group `system:nodes`):
//! its own Node and Node status, the status of pods bound to it (and
//! deleting them), its own Lease in `kube-node-lease`. Anything else a
//! node asks is left to RBAC's `system:node` role.

use std::sync::Arc;

use serde_json::Value;

use crate::{
    authz::User,
    request::{ResourceRequest, Verb},
    status::ApiError,
    watch_cache::{ResourceCache, WatchCache},
};

/// The group every node's certificate carries.
const NODES_GROUP: &str = "system:nodes";
/// How a node's user name starts: `system:node:<name>`.
const NODE_USER_PREFIX: &str = "system:node:";
/// The namespace of node heartbeats.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node-scoped checks, over the pods the watch cache holds.
pub struct NodeRestriction {
    pods: Option<(Arc<ResourceCache>, String)>,
}

/// The node a user is, when it is one.
pub fn node_of(user: &User) -> Option<&str> {
    let name = user.name.strip_prefix(NODE_USER_PREFIX)?;
    (!name.is_empty() && user.groups.iter().any(|g| g == NODES_GROUP)).then_some(name)
}

impl NodeRestriction {
    /// Checks over the pods `cache` holds.
    pub fn new(cache: &WatchCache) -> Self {
        let pods = shoal_api::find_resource("", "v1", "pods")
            .and_then(|kind| Some((cache.get(kind)?.clone(), kind.storage_prefix())));
        Self { pods }
    }

    /// `Ok` unless node `node` asks to change something that is another
    /// node's; then a 403 naming both.
    pub fn check(&self, node: &str, req: &ResourceRequest) -> Result<(), ApiError> {
        let writes = matches!(
            req.verb,
            Verb::Create | Verb::Update | Verb::Patch | Verb::Delete | Verb::DeleteCollection
        );
        if !writes {
            return Ok(());
        }
        let name = req.name.as_deref();
        match (req.group.as_str(), req.resource.as_str()) {
            ("", "nodes") => match name {
                Some(n) if n != node => Err(refuse(
                    req,
                    format!("node \"{node}\" is not allowed to modify node \"{n}\""),
                )),
                None if req.verb == Verb::DeleteCollection => Err(refuse(
                    req,
                    format!("node \"{node}\" is not allowed to delete nodes"),
                )),
                _ => Ok(()),
            },
            ("coordination.k8s.io", "leases")
                if req.namespace.as_deref() == Some(NODE_LEASE_NAMESPACE) =>
            {
                match name {
                    Some(n) if n != node => Err(refuse(
                        req,
                        format!("node \"{node}\" is not allowed to modify lease \"{n}\""),
                    )),
                    None if req.verb == Verb::DeleteCollection => Err(refuse(
                        req,
                        format!("node \"{node}\" is not allowed to delete leases"),
                    )),
                    _ => Ok(()),
                }
            }
            ("", "pods") => self.check_pod(node, req),
            _ => Ok(()),
        }
    }

    /// Pod status writes and deletes: only pods bound to the node.
    fn check_pod(&self, node: &str, req: &ResourceRequest) -> Result<(), ApiError> {
        let status = req.subresource.as_deref() == Some("status");
        let delete = req.subresource.is_none() && req.verb == Verb::Delete;
        if req.verb == Verb::DeleteCollection {
            return Err(refuse(
                req,
                format!("node \"{node}\" is not allowed to delete pods in bulk"),
            ));
        }
        if !status && !delete {
            return Ok(());
        }
        let (Some(ns), Some(name)) = (req.namespace.as_deref(), req.name.as_deref()) else {
            return Ok(());
        };
        let what = if status {
            "update pod status"
        } else {
            "delete pods"
        };
        let bound = match &self.pods {
            Some((cache, prefix)) => match cache.list(&format!("{prefix}{ns}/{name}")) {
                Some((items, _)) => items
                    .iter()
                    .find(|e| {
                        e.value.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
                    })
                    .map(|e| {
                        e.value
                            .pointer("/spec/nodeName")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    }),
                None => {
                    return Err(refuse(
                        req,
                        format!(
                            "node \"{node}\" can only {what} for pods with spec.nodeName set to itself, and the apiserver's pod cache is still loading; try again"
                        ),
                    ));
                }
            },
            None => None,
        };
        match bound {
            // A pod that is not there: the store answers 404.
            None => Ok(()),
            Some(bound) if bound == node => Ok(()),
            Some(_) => Err(refuse(
                req,
                format!(
                    "node \"{node}\" can only {what} for pods with spec.nodeName set to itself"
                ),
            )),
        }
    }
}

/// Kubernetes' NodeRestriction refusal: `<resource> "<name>" is forbidden:
/// <reason>`.
fn refuse(req: &ResourceRequest, reason: String) -> ApiError {
    let qualified = if req.group.is_empty() {
        req.resource.clone()
    } else {
        format!("{}.{}", req.resource, req.group)
    };
    let name = req
        .name
        .as_deref()
        .map(|n| format!(" \"{n}\""))
        .unwrap_or_default();
    let mut e = ApiError::forbidden(format!("{qualified}{name} is forbidden: {reason}"));
    let mut details =
        serde_json::json!({"kind": req.resource, "name": req.name.as_deref().unwrap_or("")});
    if !req.group.is_empty() {
        details["group"] = serde_json::json!(req.group);
    }
    e.details = Some(details);
    e
}
