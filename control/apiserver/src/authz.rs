//! Who is asking and whether they may: the user a client certificate
//! names, and the authorizer every resource request passes.

mod node;
mod rbac;
mod roles;

pub use node::{NodeRestriction, node_of};
pub use rbac::Rbac;
pub use roles::default_objects;

use crate::{request::ResourceRequest, status::ApiError};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name (a certificate's CN).
    pub name: String,
    /// Groups (a certificate's O values).
    pub groups: Vec<String>,
}

/// Decides whether a user may make a request.
pub trait Authorizer: Send + Sync {
    /// `Ok` to proceed; a 403 `ApiError` in Kubernetes' words otherwise.
    fn authorize(&self, user: &User, req: &ResourceRequest) -> Result<(), ApiError>;
}

/// Kubernetes' 403 message for a refused request.
pub fn forbidden(user: &User, req: &ResourceRequest) -> ApiError {
    // Kubernetes names the group-qualified resource before the colon and
    // the resource with its subresource after it.
    let qualified = if req.group.is_empty() {
        req.resource.clone()
    } else {
        format!("{}.{}", req.resource, req.group)
    };
    let resource = match &req.subresource {
        Some(s) => format!("{}/{s}", req.resource),
        None => req.resource.clone(),
    };
    let group = format!("\"{}\"", req.group);
    let name = req
        .name
        .as_deref()
        .map(|n| format!(" \"{n}\""))
        .unwrap_or_default();
    let scope = match &req.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let mut e = ApiError::forbidden(format!(
        "{qualified}{name} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group {group} {scope}",
        user.name,
        req.verb.as_str(),
    ));
    let mut details =
        serde_json::json!({"kind": req.resource, "name": req.name.as_deref().unwrap_or("")});
    if !req.group.is_empty() {
        details["group"] = serde_json::json!(req.group);
    }
    e.details = Some(details);
    e
}
