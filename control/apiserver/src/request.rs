//! What a request asks for: Kubernetes' request-info rules turning a path
//! and method into (verb, group, version, namespace, resource, name,
//! subresource), and the query parameters the REST verbs take.

use std::time::Duration;

use crate::status::ApiError;

/// The REST verb, as RBAC names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

impl Verb {
    /// The name RBAC rules use.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// A request for a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRequest {
    /// What is done.
    pub verb: Verb,
    /// API group; empty for core.
    pub group: String,
    /// Version.
    pub version: String,
    /// Namespace from the path, if any.
    pub namespace: Option<String>,
    /// Resource (plural).
    pub resource: String,
    /// Object name, if the path names one.
    pub name: Option<String>,
    /// Subresource, if any.
    pub subresource: Option<String>,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A resource verb.
    Resource(ResourceRequest),
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1` or `/apis/<group>/<version>`.
    ResourceList(String, String),
    /// `/version`.
    Version,
    /// `/healthz`, `/livez`, `/readyz` (and their sub-checks).
    Health(String),
    /// `/openapi/v2` or `/openapi/v3[/...]`.
    OpenApi(String),
    /// `/metrics`.
    Metrics,
}

/// Namespace subresources that stay on the namespace object itself.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Resolves a path and method the way Kubernetes' `RequestInfoResolver` does.
pub fn route(method: &http::Method, path: &str, query: &Query) -> Result<Route, ApiError> {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let (group, version, rest) = match parts.as_slice() {
        [] => return Err(ApiError::no_route(path)),
        ["version"] => return Ok(Route::Version),
        ["metrics"] => return Ok(Route::Metrics),
        [h, ..] if matches!(*h, "healthz" | "livez" | "readyz") => {
            return Ok(Route::Health(parts.join("/")));
        }
        ["openapi", ..] => return Ok(Route::OpenApi(parts[1..].join("/"))),
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["api", v] => return Ok(Route::ResourceList(String::new(), v.to_string())),
        ["apis", g] => return Ok(Route::Group(g.to_string())),
        ["apis", g, v] => return Ok(Route::ResourceList(g.to_string(), v.to_string())),
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return Err(ApiError::no_route(path)),
    };
    let mut rest: &[&str] = rest;
    let mut namespace = None;
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        namespace = Some(rest[1].to_string());
        if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
            rest = &rest[2..];
        }
    }
    let (resource, name, subresource) = match rest {
        [r] => (r.to_string(), None, None),
        [r, n] => (r.to_string(), Some(n.to_string()), None),
        [r, n, s] => (r.to_string(), Some(n.to_string()), Some(s.to_string())),
        // Proxy paths carry more segments; the subresource is the third.
        [r, n, s, ..] => (r.to_string(), Some(n.to_string()), Some(s.to_string())),
        _ => return Err(ApiError::no_route(path)),
    };
    // `/api/v1/namespaces/<name>` names the namespace itself.
    if resource == "namespaces" {
        namespace = None;
    }
    let verb = match (method, &name) {
        (&http::Method::GET, Some(_)) | (&http::Method::HEAD, Some(_)) => Verb::Get,
        (&http::Method::GET, None) | (&http::Method::HEAD, None) if query.watch => Verb::Watch,
        (&http::Method::GET, None) | (&http::Method::HEAD, None) => Verb::List,
        (&http::Method::POST, _) => Verb::Create,
        (&http::Method::PUT, _) => Verb::Update,
        (&http::Method::PATCH, _) => Verb::Patch,
        (&http::Method::DELETE, Some(_)) => Verb::Delete,
        (&http::Method::DELETE, None) => Verb::DeleteCollection,
        _ => {
            return Err(ApiError::method_not_supported(&resource, method.as_str()));
        }
    };
    Ok(Route::Resource(ResourceRequest {
        verb,
        group,
        version,
        namespace,
        resource,
        name,
        subresource,
    }))
}

/// The query parameters of the REST verbs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `watch=true`.
    pub watch: bool,
    /// `labelSelector`.
    pub label_selector: Option<String>,
    /// `fieldSelector`.
    pub field_selector: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub resource_version_match: Option<String>,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// `limit`.
    pub limit: Option<i64>,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `allowWatchBookmarks`.
    pub allow_bookmarks: bool,
    /// `sendInitialEvents`.
    pub send_initial_events: Option<bool>,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `fieldValidation` (`Ignore`, `Warn`, `Strict`).
    pub field_validation: Option<String>,
    /// `fieldManager`.
    pub field_manager: Option<String>,
    /// `force` (server-side apply).
    pub force: bool,
    /// `propagationPolicy`.
    pub propagation_policy: Option<String>,
    /// `gracePeriodSeconds`.
    pub grace_period: Option<i64>,
    /// `includeObject` for Table responses.
    pub include_object: Option<String>,
}

impl Query {
    /// Parses a query string; a malformed number names the parameter.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut q = Query::default();
        let Some(raw) = raw else { return Ok(q) };
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            let v = v.into_owned();
            let int = |name: &str| -> Result<i64, ApiError> {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid value for query parameter {name}: {v:?} is not an integer"
                    ))
                })
            };
            // Kubernetes' rule: anything but 0, f and false (in any case)
            // is true, so Python's `watch=True` watches.
            let flag =
                !(v == "0" || v.eq_ignore_ascii_case("f") || v.eq_ignore_ascii_case("false"));
            match k.as_ref() {
                "watch" => q.watch = flag,
                "labelSelector" => q.label_selector = Some(v).filter(|s| !s.is_empty()),
                "fieldSelector" => q.field_selector = Some(v).filter(|s| !s.is_empty()),
                "resourceVersion" => q.resource_version = Some(v).filter(|s| !s.is_empty()),
                "resourceVersionMatch" => {
                    q.resource_version_match = Some(v).filter(|s| !s.is_empty())
                }
                "timeoutSeconds" => {
                    q.timeout = Some(Duration::from_secs(int("timeoutSeconds")?.max(0) as u64))
                }
                "limit" => q.limit = Some(int("limit")?).filter(|l| *l > 0),
                "continue" => q.continue_token = Some(v).filter(|s| !s.is_empty()),
                "allowWatchBookmarks" => q.allow_bookmarks = flag,
                "sendInitialEvents" => q.send_initial_events = Some(flag),
                "dryRun" => q.dry_run = !v.is_empty(),
                "fieldValidation" => q.field_validation = Some(v),
                "fieldManager" => q.field_manager = Some(v),
                "force" => q.force = flag,
                "propagationPolicy" => q.propagation_policy = Some(v),
                "gracePeriodSeconds" => q.grace_period = Some(int("gracePeriodSeconds")?),
                "includeObject" => q.include_object = Some(v),
                _ => {}
            }
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests;
