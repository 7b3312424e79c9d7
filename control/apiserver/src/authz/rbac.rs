//! Kubernetes RBAC over the watch cache: a request is allowed when a
//! ClusterRoleBinding, or a RoleBinding in the request's namespace, binds
//! the user (by name, group or service account) to a role with a rule
//! covering it. Members of `system:masters` skip the check, as Kubernetes'
//! superuser bypass does.
//!
//! Decisions read the cached objects' JSON in place: no role is copied or
//! converted per request, and only roles a matching binding names are
//! looked at.

use std::sync::Arc;

use serde_json::Value;

use crate::{
    authz::{Authorizer, NodeRestriction, User, forbidden, node_of},
    request::ResourceRequest,
    status::ApiError,
    watch_cache::{Entry, ResourceCache, WatchCache},
};

/// The API group of the RBAC kinds.
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// The group allowed everything without consulting any binding.
const MASTERS_GROUP: &str = "system:masters";
/// The group every authenticated user is in.
const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// How a service account's user name starts:
/// `system:serviceaccount:<namespace>:<name>`.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Kubernetes RBAC, reading Roles, ClusterRoles and their bindings from
/// the watch cache.
pub struct Rbac {
    /// What nodes may change, checked before their RBAC role.
    nodes: NodeRestriction,
    cluster_roles: Option<Source>,
    roles: Option<Source>,
    cluster_bindings: Option<Source>,
    bindings: Option<Source>,
}

/// One RBAC resource's cache and its key prefix, looked up once.
struct Source {
    cache: Arc<ResourceCache>,
    prefix: String,
}

impl Source {
    /// The objects under the prefix, or in `ns` alone; `None` while the
    /// cache loads.
    fn list(&self, ns: Option<&str>) -> Option<Vec<Arc<Entry>>> {
        let items = match ns {
            Some(ns) => self.cache.list(&format!("{}{ns}/", self.prefix)),
            None => self.cache.list(&self.prefix),
        };
        items.map(|(items, _)| items)
    }
}

impl Rbac {
    /// An authorizer over the RBAC objects `cache` holds.
    pub fn new(cache: Arc<WatchCache>) -> Self {
        let source = |plural: &str| {
            let kind = shoal_api::find_resource(RBAC_GROUP, "v1", plural)?;
            Some(Source {
                cache: cache.get(kind)?.clone(),
                prefix: kind.storage_prefix(),
            })
        };
        Self {
            nodes: NodeRestriction::new(&cache),
            cluster_roles: source("clusterroles"),
            roles: source("roles"),
            cluster_bindings: source("clusterrolebindings"),
            bindings: source("rolebindings"),
        }
    }

    /// Authorizes a non-resource request (`/api`, `/apis/...`, `/version`,
    /// `/healthz`, `/openapi/...`, `/metrics`) against `nonResourceURLs`
    /// rules. `verb` is the lowercased HTTP method, as Kubernetes names it
    /// for paths (`get`, `post`, `head`...).
    pub fn authorize_path(&self, user: &User, verb: &str, path: &str) -> Result<(), ApiError> {
        if is_master(user) {
            return Ok(());
        }
        let target = Target::Path { verb, path };
        let decision = self.with_policy(None, |policy| decide(user, None, &target, policy));
        match decision {
            Decision::Allowed => Ok(()),
            Decision::Denied(errors) => Err(path_forbidden(user, verb, path, &errors)),
        }
    }

    /// Lists what a decision in `namespace` reads and hands it to `f`.
    fn with_policy<R>(
        &self,
        namespace: Option<&str>,
        f: impl FnOnce(&Policy<'_, Arc<Entry>>) -> R,
    ) -> R {
        let mut loading = false;
        let mut list = |source: &Option<Source>, ns: Option<&str>| {
            let items = source.as_ref().map_or(Some(Vec::new()), |s| s.list(ns));
            loading |= items.is_none();
            items.unwrap_or_default()
        };
        let cluster_bindings = list(&self.cluster_bindings, None);
        // Only bindings and roles of the request's namespace can apply;
        // a cluster-scoped request reads none.
        let (bindings, roles) = match namespace {
            Some(ns) => (list(&self.bindings, Some(ns)), list(&self.roles, Some(ns))),
            None => (Vec::new(), Vec::new()),
        };
        let cluster_roles = list(&self.cluster_roles, None);
        f(&Policy {
            cluster_roles: &cluster_roles,
            roles: &roles,
            cluster_bindings: &cluster_bindings,
            bindings: &bindings,
            loading,
        })
    }
}

impl Authorizer for Rbac {
    fn authorize(&self, user: &User, req: &ResourceRequest) -> Result<(), ApiError> {
        if is_master(user) {
            return Ok(());
        }
        if let Some(node) = node_of(user) {
            self.nodes.check(node, req)?;
        }
        let namespace = rbac_namespace(req);
        self.with_policy(namespace, |policy| check(user, req, policy))
    }
}

/// An RBAC object as a decision reads it: a cached entry, or bare JSON in
/// tests.
trait Object {
    /// The object's JSON.
    fn object(&self) -> &Value;
}

impl Object for Value {
    fn object(&self) -> &Value {
        self
    }
}

impl Object for Arc<Entry> {
    fn object(&self) -> &Value {
        &self.value
    }
}

/// The RBAC objects one decision reads.
struct Policy<'a, O> {
    cluster_roles: &'a [O],
    /// Roles; only those in a binding's own namespace are used for it.
    roles: &'a [O],
    cluster_bindings: &'a [O],
    /// RoleBindings; only those in the request's namespace apply.
    bindings: &'a [O],
    /// Some cache had not loaded: a denial may be a false one.
    loading: bool,
}

/// What is asked for.
enum Target<'a> {
    /// A resource verb.
    Resource {
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        subresource: Option<&'a str>,
        name: Option<&'a str>,
    },
    /// A verb on a path outside the resource API.
    Path { verb: &'a str, path: &'a str },
}

/// The outcome of a decision.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Allowed,
    /// Denied, with the errors Kubernetes reports as the reason (roles that
    /// bindings name but that do not exist).
    Denied(Vec<String>),
}

/// Decides a resource request and words a denial as Kubernetes does.
fn check<O: Object>(
    user: &User,
    req: &ResourceRequest,
    policy: &Policy<'_, O>,
) -> Result<(), ApiError> {
    let namespace = rbac_namespace(req);
    let target = Target::Resource {
        verb: req.verb.as_str(),
        group: &req.group,
        resource: &req.resource,
        subresource: req.subresource.as_deref(),
        name: req.name.as_deref(),
    };
    match decide(user, namespace, &target, policy) {
        Decision::Allowed => Ok(()),
        Decision::Denied(errors) => {
            let mut err = if namespace == req.namespace.as_deref() {
                forbidden(user, req)
            } else {
                // The message names the namespace RBAC judged in.
                let mut req = req.clone();
                req.namespace = namespace.map(str::to_string);
                forbidden(user, &req)
            };
            if let Some(reason) = reason(&errors, policy.loading) {
                err.message = format!("{}: {reason}", err.message);
            }
            Err(err)
        }
    }
}

/// The namespace RBAC judges a request in. Kubernetes takes a namespace's
/// own name as the namespace of requests for it, so a RoleBinding in `demo`
/// granting `get namespaces` lets its subject read namespace `demo`.
fn rbac_namespace(req: &ResourceRequest) -> Option<&str> {
    match (&req.namespace, &req.name) {
        (None, Some(name)) if req.group.is_empty() && req.resource == "namespaces" => Some(name),
        (ns, _) => ns.as_deref(),
    }
}

/// Whether any binding that applies to `user` grants `target` in
/// `namespace`, following Kubernetes' rule resolver: ClusterRoleBindings
/// first, then the namespace's RoleBindings.
fn decide<O: Object>(
    user: &User,
    namespace: Option<&str>,
    target: &Target<'_>,
    policy: &Policy<'_, O>,
) -> Decision {
    if is_master(user) {
        return Decision::Allowed;
    }
    let mut errors = Vec::new();
    let cluster = policy.cluster_bindings.iter().map(|b| (b.object(), None));
    let local = namespace.into_iter().flat_map(|ns| {
        policy
            .bindings
            .iter()
            .map(Object::object)
            .filter(move |b| str_at(b, "/metadata/namespace") == Some(ns))
            .map(move |b| (b, Some(ns)))
    });
    for (binding, binding_ns) in cluster.chain(local) {
        let applies = array(binding, "subjects").any(|s| subject_matches(s, user, binding_ns));
        if !applies {
            continue;
        }
        match role_rules(binding, binding_ns, policy) {
            Ok(rules) => {
                if rules.iter().any(|rule| rule_allows(rule, target)) {
                    return Decision::Allowed;
                }
            }
            Err(e) => errors.push(e),
        }
    }
    Decision::Denied(errors)
}

/// The rules of the role `binding` refers to, or Kubernetes' error for a
/// missing one.
fn role_rules<'a, O: Object>(
    binding: &Value,
    binding_ns: Option<&str>,
    policy: &Policy<'a, O>,
) -> Result<&'a [Value], String> {
    let kind = str_at(binding, "/roleRef/kind").unwrap_or_default();
    let name = str_at(binding, "/roleRef/name").unwrap_or_default();
    let role = match kind {
        "ClusterRole" => policy
            .cluster_roles
            .iter()
            .map(Object::object)
            .find(|r| str_at(r, "/metadata/name") == Some(name))
            .ok_or_else(|| format!("clusterrole.{RBAC_GROUP} \"{name}\" not found"))?,
        // A ClusterRoleBinding naming a Role finds none: Roles live in
        // namespaces and it has none.
        "Role" => policy
            .roles
            .iter()
            .map(Object::object)
            .find(|r| {
                binding_ns.is_some()
                    && str_at(r, "/metadata/namespace") == binding_ns
                    && str_at(r, "/metadata/name") == Some(name)
            })
            .ok_or_else(|| format!("role.{RBAC_GROUP} \"{name}\" not found"))?,
        other => return Err(format!("unsupported role reference kind: \"{other}\"")),
    };
    Ok(role
        .get("rules")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice))
}

/// Whether a binding's subject is `user`. A service account subject
/// without a namespace means one in the binding's namespace.
fn subject_matches(subject: &Value, user: &User, binding_ns: Option<&str>) -> bool {
    let name = str_at(subject, "/name").unwrap_or_default();
    match str_at(subject, "/kind") {
        Some("User") => user.name == name,
        Some("Group") => in_group(user, name),
        Some("ServiceAccount") => {
            let ns = str_at(subject, "/namespace")
                .filter(|ns| !ns.is_empty())
                .or(binding_ns);
            let Some(ns) = ns else { return false };
            user.name
                .strip_prefix(SERVICE_ACCOUNT_PREFIX)
                .and_then(|rest| rest.split_once(':'))
                == Some((ns, name))
        }
        _ => false,
    }
}

/// Group membership: the certificate's groups plus `system:authenticated`,
/// which every authenticated user is in.
fn in_group(user: &User, group: &str) -> bool {
    group == AUTHENTICATED_GROUP || user.groups.iter().any(|g| g == group)
}

fn is_master(user: &User) -> bool {
    user.groups.iter().any(|g| g == MASTERS_GROUP)
}

/// Kubernetes' `RuleAllows`: verb, then API group, resource and name for
/// a resource request, or the path for a non-resource one.
fn rule_allows(rule: &Value, target: &Target<'_>) -> bool {
    match *target {
        Target::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
        } => {
            has(rule, "verbs", |v| v == "*" || v == verb)
                && has(rule, "apiGroups", |g| g == "*" || g == group)
                && has(rule, "resources", |r| {
                    resource_matches(r, resource, subresource)
                })
                && names_match(rule, name)
        }
        Target::Path { verb, path } => {
            has(rule, "verbs", |v| v == "*" || v == verb)
                && has(rule, "nonResourceURLs", |u| url_matches(u, path))
        }
    }
}

/// `*`; the resource, or `resource/subresource` for a subresource; or
/// `*/subresource`.
fn resource_matches(rule: &str, resource: &str, subresource: Option<&str>) -> bool {
    if rule == "*" {
        return true;
    }
    match subresource {
        None => rule == resource,
        Some(sub) => {
            rule.split_once('/') == Some((resource, sub)) || rule.strip_prefix("*/") == Some(sub)
        }
    }
}

/// A rule without `resourceNames` covers every object; one with them only
/// requests naming one, so never a list or a create.
fn names_match(rule: &Value, name: Option<&str>) -> bool {
    let mut names = array(rule, "resourceNames")
        .filter_map(Value::as_str)
        .peekable();
    if names.peek().is_none() {
        return true;
    }
    name.is_some_and(|n| names.any(|r| r == n))
}

/// `*`, the path itself, or a prefix ending in `*`.
fn url_matches(rule: &str, path: &str) -> bool {
    rule == "*"
        || rule == path
        || (rule.ends_with('*') && path.starts_with(rule.trim_end_matches('*')))
}

/// Kubernetes' 403 for a path: `forbidden: User "x" cannot get path "/apis"`.
fn path_forbidden(user: &User, verb: &str, path: &str, errors: &[String]) -> ApiError {
    let mut message = format!(
        "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
        user.name
    );
    if let Some(reason) = reason(errors, false) {
        message = format!("{message}: {reason}");
    }
    ApiError::forbidden(message)
}

/// The reason Kubernetes appends to a denial: the broken references it
/// met, aggregated as Go's `utilerrors.NewAggregate` prints them.
fn reason(errors: &[String], loading: bool) -> Option<String> {
    let mut errors = errors.to_vec();
    if loading {
        errors.push("the authorization cache is still loading; retry shortly".into());
    }
    match errors.as_slice() {
        [] => None,
        [one] => Some(format!("RBAC: {one}")),
        many => Some(format!("RBAC: [{}]", many.join(", "))),
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn array<'a>(v: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    v.get(field).and_then(Value::as_array).into_iter().flatten()
}

/// Whether the string list `field` of `rule` has an entry `pred` accepts.
fn has(rule: &Value, field: &str, pred: impl Fn(&str) -> bool) -> bool {
    array(rule, field).filter_map(Value::as_str).any(pred)
}

#[cfg(test)]
mod tests;
