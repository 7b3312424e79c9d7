//! Printers for shoal's own kinds (`shoal.io/v1alpha1`).

use serde_json::Value;

use super::fields::{map_at, str_at};
use super::{AGE, Clock, Column, NAME, Printer, name, no_conditions};
use crate::identity::{NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};
use crate::kinds::Kind;

/// The printer for a shoal kind.
pub(super) fn printer(kind: &Kind) -> Option<&'static Printer> {
    match (kind.group, kind.kind) {
        ("shoal.io", "Identity") => Some(&IDENTITY),
        _ => None,
    }
}

static IDENTITY: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Namespace",
            "The namespace of the pods holding this identity.",
        ),
        Column::string(
            "Labels",
            "The pods' security-relevant labels (namespace labels with -o wide).",
        ),
        AGE,
        Column::string("Namespace Labels", "The labels of the pods' namespace.").wide(),
    ],
    cells: identity_cells,
    conditions: no_conditions,
};

fn identity_cells(obj: &Value, clock: &Clock) -> Vec<Value> {
    let mut pod = Vec::new();
    let mut namespace_labels = Vec::new();
    if let Some(labels) = map_at(obj, "/securityLabels") {
        for (k, v) in labels {
            let v = v.as_str().unwrap_or("");
            if k == NAMESPACE_LABEL {
                continue;
            }
            match k.strip_prefix(NAMESPACE_LABELS_PREFIX) {
                Some(k) => namespace_labels.push(format!("{k}={v}")),
                None => pod.push(format!("{k}={v}")),
            }
        }
    }
    let joined = |list: Vec<String>| {
        if list.is_empty() {
            "<none>".to_string()
        } else {
            list.join(",")
        }
    };
    let namespace = str_at(obj, &format!("/securityLabels/{NAMESPACE_LABEL}"));
    vec![
        name(obj),
        Value::from(if namespace.is_empty() {
            "<none>"
        } else {
            namespace
        }),
        Value::from(joined(pod)),
        clock.age(obj),
        Value::from(joined(namespace_labels)),
    ]
}
