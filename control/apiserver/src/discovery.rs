//! What clients ask before anything else: `/version`, the group lists
//! (`/api`, `/apis`, legacy and aggregated discovery v2) and each group
//! version's resource list, all from the kinds table.

use serde_json::{Value, json};
use shoal_api::{Kind, groups, kinds_in};

use crate::resource_metrics;

/// The Kubernetes version shoal reports.
pub const KUBE_MAJOR: &str = "1";
/// The minor version: the types are k8s-openapi's v1_33.
pub const KUBE_MINOR: &str = "33";

/// The content type of aggregated discovery v2.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0+shoal-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// Whether the client asked for aggregated discovery v2.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|a| {
        let a = a.replace(' ', "");
        a.contains("g=apidiscovery.k8s.io")
            && a.contains("v=v2;")
            && !a.contains("v=v2beta1")
            && a.contains("as=APIGroupDiscoveryList")
    })
}

/// `/api` (legacy).
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    })
}

fn group_json(name: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

/// `/apis` (legacy).
pub fn group_list() -> Value {
    let mut groups: Vec<Value> = groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_json(g, &vs))
        .collect();
    groups.push(resource_metrics::group_json());
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn group(name: &str) -> Option<Value> {
    if name == resource_metrics::GROUP {
        let mut v = resource_metrics::group_json();
        v["kind"] = json!("APIGroup");
        v["apiVersion"] = json!("v1");
        return Some(v);
    }
    groups()
        .into_iter()
        .find(|(g, _)| *g == name && !g.is_empty())
        .map(|(g, vs)| {
            let mut v = group_json(g, &vs);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            v
        })
}

/// A subresource's kind and verbs as discovery lists them.
fn subresource(kind: &Kind, sub: &str) -> (Value, &'static [&'static str]) {
    let same = json!({"group": kind.group, "version": kind.version, "kind": kind.kind});
    match sub {
        "status" | "ephemeralcontainers" => (same, &["get", "patch", "update"]),
        "scale" => (
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
            &["get", "patch", "update"],
        ),
        "binding" => (
            json!({"group": "", "version": "v1", "kind": "Binding"}),
            &["create"],
        ),
        "eviction" => (
            json!({"group": "policy", "version": "v1", "kind": "Eviction"}),
            &["create"],
        ),
        "log" => (same, &["get"]),
        "exec" => (
            json!({"group": "", "version": "v1", "kind": "PodExecOptions"}),
            &["create", "get"],
        ),
        "attach" => (
            json!({"group": "", "version": "v1", "kind": "PodAttachOptions"}),
            &["create", "get"],
        ),
        "portforward" => (
            json!({"group": "", "version": "v1", "kind": "PodPortForwardOptions"}),
            &["create", "get"],
        ),
        "token" => (
            json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}),
            &["create"],
        ),
        "finalize" => (same, &["update"]),
        "proxy" => (
            json!({"group": "", "version": "v1", "kind": format!("{}ProxyOptions", kind.kind)}),
            &["create", "delete", "get", "patch", "update"],
        ),
        _ => (same, &["get"]),
    }
}

fn verbs(kind: &Kind) -> &'static [&'static str] {
    if kind.plural == "bindings" {
        &["create"]
    } else {
        VERBS
    }
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if group == resource_metrics::GROUP {
        return (version == resource_metrics::VERSION).then(resource_metrics::resource_list);
    }
    let kinds: Vec<&Kind> = kinds_in(group, version).collect();
    if kinds.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for k in kinds {
        let mut r = json!({
            "name": k.plural,
            "singularName": k.singular,
            "namespaced": k.namespaced(),
            "kind": k.kind,
            "verbs": verbs(k),
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        if !k.categories.is_empty() {
            r["categories"] = json!(k.categories);
        }
        resources.push(r);
        for sub in k.subresources {
            let (kind, verbs) = subresource(k, sub);
            let mut r = json!({
                "name": format!("{}/{sub}", k.plural),
                "singularName": "",
                "namespaced": k.namespaced(),
                "kind": kind["kind"],
                "verbs": verbs,
            });
            if kind["group"] != json!(k.group) {
                r["group"] = kind["group"].clone();
                r["version"] = kind["version"].clone();
            }
            resources.push(r);
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// Aggregated discovery v2 for the core group (`core = true`, `/api`) or
/// every other group (`/apis`).
pub fn aggregated(core: bool) -> Value {
    let mut items: Vec<Value> = groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = kinds_in(g, v)
                        .map(|k| {
                            let subs: Vec<Value> = k
                                .subresources
                                .iter()
                                .map(|s| {
                                    let (kind, verbs) = subresource(k, s);
                                    json!({"subresource": s, "responseKind": kind, "verbs": verbs})
                                })
                                .collect();
                            let mut r = json!({
                                "resource": k.plural,
                                "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
                                "scope": if k.namespaced() { "Namespaced" } else { "Cluster" },
                                "singularResource": k.singular,
                                "verbs": verbs(k),
                            });
                            if !k.short_names.is_empty() {
                                r["shortNames"] = json!(k.short_names);
                            }
                            if !k.categories.is_empty() {
                                r["categories"] = json!(k.categories);
                            }
                            if !subs.is_empty() {
                                r["subresources"] = Value::Array(subs);
                            }
                            r
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    if !core {
        items.push(resource_metrics::aggregated_json());
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests;
