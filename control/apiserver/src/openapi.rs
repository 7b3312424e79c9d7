//! `/openapi/v3`: the index of group versions and, per group version, the
//! paths and operations of its resources. kubectl reads it to learn that
//! the server validates fields itself (`fieldValidation` on PATCH) and
//! which kinds take strategic merge patches. Schemas are not served yet,
//! so `kubectl explain` has nothing to show.

use serde_json::{Map, Value, json};
use shoal_api::{Kind, groups, kinds_in};

use crate::discovery::{KUBE_MAJOR, KUBE_MINOR};

/// Query parameters every mutating operation documents.
const WRITE_PARAMS: &[&str] = &["dryRun", "fieldManager", "fieldValidation"];

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group version's document is.
pub fn index() -> Value {
    let mut paths = Map::new();
    for (group, versions) in groups() {
        for v in versions {
            let path = gv_path(group, v);
            let hash = document_hash(group, v);
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash:016X}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// A stable hash of a group version's document, so clients cache it until
/// the served kinds change.
fn document_hash(group: &str, version: &str) -> u64 {
    let doc = document(group, version)
        .map(|d| d.to_string())
        .unwrap_or_default();
    // FNV-1a: tiny, and stable across builds unlike std's hasher.
    doc.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn operation(kind: &Kind, verb: &str, patch: bool) -> Value {
    let mut op = json!({
        "operationId": format!("{verb}{}", kind.kind),
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
        "responses": {"200": {"description": "OK"}},
    });
    if matches!(verb, "post" | "put" | "patch") {
        op["parameters"] = WRITE_PARAMS
            .iter()
            .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
            .collect();
    }
    if patch {
        let mut content = Map::new();
        for ct in [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
        ] {
            content.insert(ct.into(), json!({"schema": {"type": "object"}}));
        }
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`.
pub fn document(group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<&Kind> = kinds_in(group, version).collect();
    if kinds.is_empty() {
        return None;
    }
    let base = format!("/{}", gv_path(group, version));
    let mut paths = Map::new();
    for k in kinds {
        let collection = if k.namespaced() {
            format!("{base}/namespaces/{{namespace}}/{}", k.plural)
        } else {
            format!("{base}/{}", k.plural)
        };
        paths.insert(
            collection.clone(),
            json!({
                "get": operation(k, "list", false),
                "post": operation(k, "post", false),
                "delete": operation(k, "deletecollection", false),
            }),
        );
        let item = format!("{collection}/{{name}}");
        paths.insert(
            item.clone(),
            json!({
                "get": operation(k, "get", false),
                "put": operation(k, "put", false),
                "patch": operation(k, "patch", true),
                "delete": operation(k, "delete", false),
            }),
        );
        for sub in k
            .subresources
            .iter()
            .filter(|s| matches!(**s, "status" | "scale"))
        {
            let mut ops = json!({
                "get": operation(k, "get", false),
                "put": operation(k, "put", false),
                "patch": operation(k, "patch", true),
            });
            if *sub == "scale" {
                for op in ["get", "put", "patch"] {
                    ops[op]["x-kubernetes-group-version-kind"] =
                        json!({"group": "autoscaling", "version": "v1", "kind": "Scale"});
                }
            }
            paths.insert(format!("{item}/{sub}"), ops);
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0")},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// Serves `/openapi/...` below the prefix (`v3`, `v3/api/v1`, ...).
pub fn serve(rest: &str) -> Option<Value> {
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        ["v3"] => Some(index()),
        ["v3", "api", v] => document("", v),
        ["v3", "apis", g, v] => document(g, v),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
