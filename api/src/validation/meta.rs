//! Object metadata: names, labels, annotations, owner references and
//! finalizers on create; identity fields on update.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::Value;

use super::names::{self, NameRule};
use super::path::Path;
use super::{FieldError, go_value};
use crate::Kind;

/// Annotations share one budget per object (`TotalAnnotationSizeLimitB`).
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

const FIELD_IMMUTABLE: &str = "field is immutable";

/// `ValidateObjectMeta`. Names generated from `generateName` are filled in
/// before validation by the apiserver, so a missing name with a
/// `generateName` passes here.
pub(crate) fn validate_object_meta(
    meta: &ObjectMeta,
    rule: NameRule,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let generate_name = meta.generate_name.as_deref().unwrap_or_default();
    if !generate_name.is_empty() {
        for msg in rule.check(generate_name, true) {
            errs.push(FieldError::invalid_str(
                &path.child("generateName"),
                generate_name,
                msg,
            ));
        }
    }
    match meta.name.as_deref().unwrap_or_default() {
        "" if generate_name.is_empty() => {
            errs.push(FieldError::required(
                &path.child("name"),
                "name or generateName is required",
            ));
        }
        "" => {}
        name => {
            for msg in rule.check(name, false) {
                errs.push(FieldError::invalid_str(&path.child("name"), name, msg));
            }
        }
    }
    if let Some(ns) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        for msg in names::dns1123_label(ns) {
            errs.push(FieldError::invalid_str(&path.child("namespace"), ns, msg));
        }
    }
    if let Some(generation) = meta.generation.filter(|g| *g < 0) {
        errs.push(FieldError::invalid(
            &path.child("generation"),
            generation.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    errs.extend(validate_labels(meta.labels.as_ref(), &path.child("labels")));
    errs.extend(validate_annotations(
        meta.annotations.as_ref(),
        &path.child("annotations"),
    ));
    errs.extend(validate_owner_references(
        meta,
        &path.child("ownerReferences"),
    ));
    for finalizer in meta.finalizers.iter().flatten() {
        for msg in names::qualified_name(finalizer) {
            errs.push(FieldError::invalid_str(
                &path.child("finalizers"),
                finalizer,
                msg,
            ));
        }
    }
    errs
}

/// `ValidateLabels`: keys are qualified names, values label values.
pub(crate) fn validate_labels(
    labels: Option<&BTreeMap<String, String>>,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in labels.into_iter().flatten() {
        for msg in names::qualified_name(k) {
            errs.push(FieldError::invalid_str(path, k, msg));
        }
        for msg in names::label_value(v) {
            errs.push(FieldError::invalid_str(path, v, msg));
        }
    }
    errs
}

/// `ValidateAnnotations`: keys are qualified names (case-insensitively), and
/// all keys and values together fit in 256 KiB.
pub(crate) fn validate_annotations(
    annotations: Option<&BTreeMap<String, String>>,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut total = 0usize;
    for (k, v) in annotations.into_iter().flatten() {
        for msg in names::qualified_name(&k.to_lowercase()) {
            errs.push(FieldError::invalid_str(path, k, msg));
        }
        total += k.len() + v.len();
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(FieldError::too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
    errs
}

fn validate_owner_references(meta: &ObjectMeta, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut controller: Option<String> = None;
    for r in meta.owner_references.iter().flatten() {
        let version = r.api_version.rsplit('/').next().unwrap_or_default();
        if version.is_empty() {
            errs.push(FieldError::invalid_str(
                &path.child("apiVersion"),
                &r.api_version,
                "version must not be empty",
            ));
        }
        if r.kind.is_empty() {
            errs.push(FieldError::invalid_str(
                &path.child("kind"),
                &r.kind,
                "must not be empty",
            ));
        }
        if r.name.is_empty() {
            errs.push(FieldError::invalid_str(
                &path.child("name"),
                &r.name,
                "must not be empty",
            ));
        }
        if r.uid.is_empty() {
            errs.push(FieldError::invalid_str(
                &path.child("uid"),
                &r.uid,
                "must not be empty",
            ));
        }
        if r.controller == Some(true) {
            let current = format!("{}/{}", r.kind, r.name);
            match &controller {
                Some(first) => errs.push(FieldError::invalid(
                    path,
                    "[]v1.OwnerReference{...}",
                    format!(
                        "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {current}"
                    ),
                )),
                None => controller = Some(current),
            }
        }
    }
    errs
}

/// `ValidateObjectMetaUpdate`: the identity of an object never changes.
/// Fields the update leaves out are carried over from the stored object by
/// the apiserver, so only values that are present are compared.
pub(crate) fn validate_object_meta_update(
    new: &ObjectMeta,
    old: &ObjectMeta,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let pairs = [
        ("name", new.name.as_deref(), old.name.as_deref()),
        (
            "namespace",
            new.namespace.as_deref(),
            old.namespace.as_deref(),
        ),
        ("uid", new.uid.as_deref(), old.uid.as_deref()),
    ];
    for (field, n, o) in pairs {
        if let Some(n) = n.filter(|n| !n.is_empty())
            && n != o.unwrap_or_default()
        {
            errs.push(FieldError::invalid_str(
                &path.child(field),
                n,
                FIELD_IMMUTABLE,
            ));
        }
    }
    if let Some(n) = &new.creation_timestamp
        && old.creation_timestamp.as_ref().is_some_and(|o| o.0 != n.0)
    {
        errs.push(FieldError::invalid(
            &path.child("creationTimestamp"),
            go_value::quote(&n.0.to_string()),
            FIELD_IMMUTABLE,
        ));
    }
    errs
}

/// `ValidateImmutableField` for a label selector.
pub(crate) fn immutable_selector(
    new: Option<&LabelSelector>,
    old: Option<&LabelSelector>,
    path: &Path,
) -> Option<FieldError> {
    if selector_eq(new, old) {
        return None;
    }
    let value = new.map_or_else(go_value::null, go_value::label_selector);
    Some(FieldError::invalid(path, value, FIELD_IMMUTABLE))
}

/// Semantic equality: an empty map or list equals a missing one.
fn selector_eq(a: Option<&LabelSelector>, b: Option<&LabelSelector>) -> bool {
    let norm = |s: Option<&LabelSelector>| {
        s.map(|s| {
            (
                s.match_labels.clone().unwrap_or_default(),
                s.match_expressions.clone().unwrap_or_default(),
            )
        })
    };
    norm(a) == norm(b)
}

/// `ValidateLabelSelector`.
pub(crate) fn validate_label_selector(sel: &LabelSelector, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let p = path.child("matchExpressions").index(i);
        let has_values = req.values.as_ref().is_some_and(|v| !v.is_empty());
        match req.operator.as_str() {
            "In" | "NotIn" => {
                if !has_values {
                    errs.push(FieldError::required(
                        &p.child("values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if has_values {
                    errs.push(FieldError::forbidden(
                        &p.child("values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            op => errs.push(FieldError::invalid_str(
                &p.child("operator"),
                op,
                "not a valid selector operator",
            )),
        }
        for msg in names::qualified_name(&req.key) {
            errs.push(FieldError::invalid_str(&p.child("key"), &req.key, msg));
        }
        for v in req.values.iter().flatten() {
            for msg in names::label_value(v) {
                errs.push(FieldError::invalid_str(&p.child("values").index(0), v, msg));
            }
        }
    }
    errs.extend(validate_labels(
        sel.match_labels.as_ref(),
        &path.child("matchLabels"),
    ));
    errs
}

/// Whether `labels` satisfy `sel`; `None` when the selector cannot be
/// evaluated (an unknown operator), as `LabelSelectorAsSelector` fails.
pub(crate) fn selector_matches(
    sel: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> Option<bool> {
    let get = |k: &str| labels.and_then(|l| l.get(k));
    for (k, v) in sel.match_labels.iter().flatten() {
        if get(k) != Some(v) {
            return Some(false);
        }
    }
    for req in sel.match_expressions.iter().flatten() {
        let values = req.values.as_deref().unwrap_or_default();
        let ok = match req.operator.as_str() {
            "In" => get(&req.key).is_some_and(|v| values.contains(v)),
            "NotIn" => get(&req.key).is_none_or(|v| !values.contains(v)),
            "Exists" => get(&req.key).is_some(),
            "DoesNotExist" => get(&req.key).is_none(),
            _ => return None,
        };
        if !ok {
            return Some(false);
        }
    }
    Some(true)
}

/// Metadata checks for kinds without rules of their own.
pub(crate) fn validate_generic(kind: &Kind, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let path = Path::new("metadata");
    let meta_of = |o: &Value| -> Result<ObjectMeta, FieldError> {
        let raw = o
            .get("metadata")
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        super::decode(&raw).map_err(|mut e| {
            e.field = if e.field.is_empty() {
                "metadata".into()
            } else {
                format!("metadata.{}", e.field)
            };
            e
        })
    };
    let meta = match meta_of(obj) {
        Ok(m) => m,
        Err(e) => return vec![e],
    };
    let mut errs = Vec::new();
    if let Some(old_meta) = old.and_then(|o| meta_of(o).ok()) {
        errs.extend(validate_object_meta_update(&meta, &old_meta, &path));
    }
    errs.extend(validate_object_meta(&meta, super::name_rule(kind), &path));
    errs
}
