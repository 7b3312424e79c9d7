//! `/openapi/v3`: the index of group versions and, per group version, the
//! paths and operations of its resources with the schemas of its kinds.
//! kubectl reads it to learn that the server validates fields itself
//! (`fieldValidation` on PATCH) and to `explain` fields.
//!
//! The patch-merge extensions (`x-kubernetes-patch-merge-key`,
//! `x-kubernetes-patch-strategy`, `x-kubernetes-list-type`) are not
//! there: k8s-openapi's schemas do not carry them. See `operation` for
//! how kubectl's apply is kept on Kubernetes' merge keys anyway.
//!
//! The schemas are derived, not written here: k8s-openapi's `schemars`
//! impls carry Kubernetes' names (`io.k8s.api.core.v1.Pod`), descriptions,
//! types and required fields. They are rendered once, on first use, with
//! `#/components/schemas/...` references (a described reference wrapped in
//! `allOf`, as Kubernetes serves them), and each top-level kind is marked
//! with `x-kubernetes-group-version-kind` so clients find it. Kinds without
//! a k8s-openapi type (shoal's own) get a minimal object schema.
//!
//! `/openapi/v2` is not served: kubectl reads it only as protobuf (to
//! validate Lists client-side), and without it kubectl falls back as it
//! does for any server that lacks it.

use std::{borrow::Cow, collections::BTreeMap, sync::OnceLock};

use bytes::Bytes;
use k8s_openapi::{
    Resource,
    api::{
        apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch,
        certificates::v1 as certificates, coordination::v1 as coordination, core::v1 as core,
        discovery::v1 as discovery, events::v1 as events, networking::v1 as networking,
        node::v1 as node, policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as scheduling,
        storage::v1 as storage,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings},
};
use serde_json::{Map, Value, json};
use shoal_api::{Kind, groups, kinds_in};

use crate::discovery::{KUBE_MAJOR, KUBE_MINOR};

/// Query parameters every mutating operation documents.
const WRITE_PARAMS: &[&str] = &["dryRun", "fieldManager", "fieldValidation"];

/// The v3 location of component schemas.
const V3_SCHEMAS: &str = "#/components/schemas/";

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A kind's k8s-openapi type, as the schema generator needs it.
struct Typed {
    api_version: &'static str,
    kind: &'static str,
    name: fn() -> Cow<'static, str>,
    add: fn(&mut SchemaGenerator) -> Schema,
}

fn typed<T: Resource + JsonSchema>() -> Typed {
    Typed {
        api_version: T::API_VERSION,
        kind: T::KIND,
        name: T::schema_name,
        add: |generator| generator.subschema_for::<T>(),
    }
}

/// The k8s-openapi type of every built-in kind the API serves; the group,
/// version and kind come from the type itself.
fn typed_kinds() -> Vec<Typed> {
    vec![
        typed::<core::Namespace>(),
        typed::<core::Pod>(),
        typed::<core::Binding>(),
        typed::<core::Service>(),
        typed::<core::Endpoints>(),
        typed::<core::Node>(),
        typed::<core::ConfigMap>(),
        typed::<core::Secret>(),
        typed::<core::ServiceAccount>(),
        typed::<core::PersistentVolume>(),
        typed::<core::PersistentVolumeClaim>(),
        typed::<core::Event>(),
        typed::<core::ResourceQuota>(),
        typed::<core::LimitRange>(),
        typed::<apps::Deployment>(),
        typed::<apps::ReplicaSet>(),
        typed::<apps::StatefulSet>(),
        typed::<apps::DaemonSet>(),
        typed::<apps::ControllerRevision>(),
        typed::<batch::Job>(),
        typed::<batch::CronJob>(),
        typed::<discovery::EndpointSlice>(),
        typed::<networking::Ingress>(),
        typed::<networking::IngressClass>(),
        typed::<networking::NetworkPolicy>(),
        typed::<autoscaling::HorizontalPodAutoscaler>(),
        typed::<storage::StorageClass>(),
        typed::<certificates::CertificateSigningRequest>(),
        typed::<coordination::Lease>(),
        typed::<rbac::Role>(),
        typed::<rbac::ClusterRole>(),
        typed::<rbac::RoleBinding>(),
        typed::<rbac::ClusterRoleBinding>(),
        typed::<scheduling::PriorityClass>(),
        typed::<node::RuntimeClass>(),
        typed::<policy::PodDisruptionBudget>(),
        typed::<events::Event>(),
    ]
}

/// The schema name of a kind without a k8s-openapi type, as Kubernetes
/// names custom kinds: the group reversed, then version and kind
/// (`io.shoal.v1alpha1.Foo`).
fn custom_name(kind: &Kind) -> String {
    let mut parts: Vec<&str> = kind.group.split('.').rev().collect();
    parts.push(kind.version);
    parts.push(kind.kind);
    parts.join(".")
}

/// The schemas of `kinds` and of everything they reference, each kind
/// marked with its group, version and kind. Returns the schemas and each
/// kind's schema name, in the order of `kinds`.
fn schemas(kinds: &[&Kind]) -> (Map<String, Value>, Vec<String>) {
    let typed = typed_kinds();
    let mut generator = SchemaGenerator::new(SchemaSettings::openapi3());
    let mut names = Vec::with_capacity(kinds.len());
    let mut custom = Vec::new();
    for kind in kinds {
        let api_version = kind.api_version();
        match typed
            .iter()
            .find(|t| t.api_version == api_version && t.kind == kind.kind)
        {
            Some(t) => {
                (t.add)(&mut generator);
                names.push((t.name)().into_owned());
            }
            None => {
                let metadata = generator.subschema_for::<ObjectMeta>();
                let name = custom_name(kind);
                custom.push((name.clone(), custom_schema(kind, metadata.to_value())));
                names.push(name);
            }
        }
    }
    let mut defs = generator.take_definitions(true);
    defs.extend(custom);
    for (kind, name) in kinds.iter().zip(&names) {
        if let Some(Value::Object(schema)) = defs.get_mut(name) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": kind.group, "version": kind.version, "kind": kind.kind}]),
            );
        }
    }
    (defs, names)
}

/// A kind known only by name: an object with the usual top-level fields;
/// spec and status accept anything.
fn custom_schema(kind: &Kind, metadata: Value) -> Value {
    json!({
        "description": format!("{} is a shoal object ({}).", kind.kind, kind.api_version()),
        "type": "object",
        "properties": {
            "apiVersion": {"description": "APIVersion defines the versioned schema of this representation of an object.", "type": "string"},
            "kind": {"description": "Kind is a string value representing the REST resource this object represents.", "type": "string"},
            "metadata": {"description": "Standard object's metadata.", "allOf": [metadata]},
            "spec": {"description": "Desired state.", "type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "status": {"description": "Observed state.", "type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    })
}

fn operation(kind: &Kind, verb: &str, patch: bool, schema: Option<&str>) -> Value {
    let mut op = json!({
        "operationId": format!("{verb}{}", kind.kind),
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
        "responses": {"200": {"description": "OK"}},
    });
    if let Some(schema) = schema {
        let content = json!({"application/json": {"schema": {"$ref": schema}}});
        if matches!(verb, "get" | "put" | "post" | "patch") {
            op["responses"]["200"]["content"] = content.clone();
        }
        if matches!(verb, "put" | "post") {
            op["requestBody"] = json!({"content": content, "required": true});
        }
    }
    if matches!(verb, "post" | "put" | "patch") {
        op["parameters"] = WRITE_PARAMS
            .iter()
            .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
            .collect();
    }
    if patch {
        // Strategic merge patch is accepted but not announced: kubectl
        // computes an apply patch from the schemas of the kinds that
        // announce it, and k8s-openapi's schemas lack Kubernetes' merge
        // keys (`x-kubernetes-patch-merge-key`), so every list would be
        // replaced whole. Unannounced, kubectl uses the merge keys compiled
        // into it, as for any server without them.
        let mut content = Map::new();
        for ct in [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ] {
            content.insert(ct.into(), json!({"schema": {"type": "object"}}));
        }
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

/// The v3 document of one group version, or None if no kind is served
/// there.
fn build_document(group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<&Kind> = kinds_in(group, version).collect();
    if kinds.is_empty() {
        return None;
    }
    let (schemas, names) = schemas(&kinds);
    let base = format!("/{}", gv_path(group, version));
    let mut paths = Map::new();
    for (k, name) in kinds.into_iter().zip(&names) {
        let schema = format!("{V3_SCHEMAS}{name}");
        let schema = Some(schema.as_str());
        let collection = if k.namespaced() {
            format!("{base}/namespaces/{{namespace}}/{}", k.plural)
        } else {
            format!("{base}/{}", k.plural)
        };
        paths.insert(
            collection.clone(),
            json!({
                "get": operation(k, "list", false, None),
                "post": operation(k, "post", false, schema),
                "delete": operation(k, "deletecollection", false, None),
            }),
        );
        let item = format!("{collection}/{{name}}");
        paths.insert(
            item.clone(),
            json!({
                "get": operation(k, "get", false, schema),
                "put": operation(k, "put", false, schema),
                "patch": operation(k, "patch", true, schema),
                "delete": operation(k, "delete", false, None),
            }),
        );
        for sub in k
            .subresources
            .iter()
            .filter(|s| matches!(**s, "status" | "scale"))
        {
            let schema = if *sub == "scale" { None } else { schema };
            let mut ops = json!({
                "get": operation(k, "get", false, schema),
                "put": operation(k, "put", false, schema),
                "patch": operation(k, "patch", true, schema),
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
        "components": {"schemas": schemas},
    }))
}

/// A stable hash of a document, so clients cache it until the served kinds
/// change.
fn document_hash(doc: &[u8]) -> u64 {
    // FNV-1a: tiny, and stable across builds unlike std's hasher.
    doc.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Every document, rendered once: they are large (the core group's is
/// about a megabyte) and never change while the server runs.
struct Documents {
    index: Bytes,
    by_path: BTreeMap<String, Bytes>,
}

fn documents() -> &'static Documents {
    static DOCUMENTS: OnceLock<Documents> = OnceLock::new();
    DOCUMENTS.get_or_init(|| {
        let mut by_path = BTreeMap::new();
        let mut index = Map::new();
        for (group, versions) in groups() {
            for v in versions {
                let Some(doc) = build_document(group, v) else {
                    continue;
                };
                let bytes = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
                let path = gv_path(group, v);
                let hash = document_hash(&bytes);
                index.insert(
                    path.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash:016X}")}),
                );
                by_path.insert(path, bytes);
            }
        }
        let index = json!({"paths": index});
        Documents {
            index: Bytes::from(serde_json::to_vec(&index).unwrap_or_default()),
            by_path,
        }
    })
}

/// Serves `/openapi/...` below the prefix (`v3`, `v3/api/v1`, ...) as
/// JSON bytes.
pub fn serve(rest: &str) -> Option<Bytes> {
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let docs = documents();
    match parts.as_slice() {
        ["v3"] => Some(docs.index.clone()),
        ["v3", rest @ ..] => docs.by_path.get(&rest.join("/")).cloned(),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
