//! Kubernetes' validation of objects before they are stored: field errors
//! worded as Kubernetes words them, the 422 message built from them, the
//! per-kind checks on create and update, and strict decoding's unknown
//! fields (`fieldValidation=Strict|Warn`).
//!
//! `validate` expects an object that `apply_defaults` has already filled in,
//! as Kubernetes validates after defaulting; fields that defaulting fills are
//! still only checked when present, so a caller that skips defaulting does
//! not get spurious "Required value" errors.

mod batch;
mod config;
mod cron;
mod go_value;
mod meta;
mod names;
mod path;
mod pod;
pub mod quantity;
mod rbac;
mod service;
mod strict;
mod workloads;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Kind;
use names::NameRule;
use path::Path;

pub use strict::{strict_error_message, unknown_fields};

/// The kinds of field error Kubernetes reports (`field.ErrorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldErrorKind {
    /// A reference to something that does not exist (`Not found`).
    NotFound,
    /// A required field is missing (`Required value`).
    Required,
    /// A value that must be unique is repeated (`Duplicate value`).
    Duplicate,
    /// A value is malformed or out of range (`Invalid value`).
    Invalid,
    /// A value is not one of an enumerated set (`Unsupported value`).
    NotSupported,
    /// A field may not be set or changed here (`Forbidden`).
    Forbidden,
    /// A value is longer than allowed (`Too long`).
    TooLong,
    /// A list has more items than allowed (`Too many`).
    TooMany,
}

impl FieldErrorKind {
    /// The cause `reason` in a `metav1.Status` (`FieldValueInvalid`...).
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotFound => "FieldValueNotFound",
            Self::Required => "FieldValueRequired",
            Self::Duplicate => "FieldValueDuplicate",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
        }
    }

    /// The words that open the message (`Invalid value`).
    pub fn label(self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::Required => "Required value",
            Self::Duplicate => "Duplicate value",
            Self::Invalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
        }
    }
}

/// One problem with one field, displayed as Kubernetes displays it:
/// `spec.containers[0].image: Required value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {}", self.body())]
pub struct FieldError {
    /// The field's path: `spec.containers[0].name`, `data[key]`.
    pub field: String,
    /// What kind of problem.
    pub kind: FieldErrorKind,
    /// The offending value as Kubernetes prints it: strings quoted (`"Foo"`),
    /// numbers bare (`70000`), structures in Go syntax. `None` where
    /// Kubernetes prints no value.
    pub value: Option<String>,
    /// What is wrong, in Kubernetes' words; may be empty.
    pub detail: String,
}

impl FieldError {
    /// The cause `reason` in a `metav1.Status`.
    pub fn reason(&self) -> &'static str {
        self.kind.reason()
    }

    /// The message without the field, as a `metav1.Status` cause carries it:
    /// `Invalid value: "Foo": a lowercase RFC 1123 ...`.
    pub fn body(&self) -> String {
        let shows_value = !matches!(
            self.kind,
            FieldErrorKind::Required | FieldErrorKind::Forbidden | FieldErrorKind::TooLong
        );
        let mut s = match (&self.value, shows_value) {
            (Some(v), true) => format!("{}: {v}", self.kind.label()),
            _ => self.kind.label().to_string(),
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }

    fn new(
        path: &Path,
        kind: FieldErrorKind,
        value: Option<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            field: path.to_string(),
            kind,
            value,
            detail: detail.into(),
        }
    }

    pub(crate) fn required(path: &Path, detail: impl Into<String>) -> Self {
        Self::new(path, FieldErrorKind::Required, None, detail)
    }

    /// `value` is already rendered (see `go_value`).
    pub(crate) fn invalid(
        path: &Path,
        value: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(path, FieldErrorKind::Invalid, Some(value.into()), detail)
    }

    /// An invalid string value, quoted as Go quotes it.
    pub(crate) fn invalid_str(path: &Path, value: &str, detail: impl Into<String>) -> Self {
        Self::invalid(path, go_value::quote(value), detail)
    }

    pub(crate) fn duplicate(path: &Path, value: impl Into<String>) -> Self {
        Self::new(path, FieldErrorKind::Duplicate, Some(value.into()), "")
    }

    pub(crate) fn not_found(path: &Path, value: &str) -> Self {
        Self::new(
            path,
            FieldErrorKind::NotFound,
            Some(go_value::quote(value)),
            "",
        )
    }

    pub(crate) fn forbidden(path: &Path, detail: impl Into<String>) -> Self {
        Self::new(path, FieldErrorKind::Forbidden, None, detail)
    }

    pub(crate) fn too_long(path: &Path, max_bytes: usize) -> Self {
        let unit = if max_bytes == 1 { "byte" } else { "bytes" };
        Self::new(
            path,
            FieldErrorKind::TooLong,
            None,
            format!("may not be more than {max_bytes} {unit}"),
        )
    }

    /// A string outside `valid`, listed as Kubernetes lists them.
    pub(crate) fn not_supported(path: &Path, value: &str, valid: &[&str]) -> Self {
        let detail = if valid.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = valid.iter().map(|v| go_value::quote(v)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(
            path,
            FieldErrorKind::NotSupported,
            Some(go_value::quote(value)),
            detail,
        )
    }
}

/// Checks `obj` (already defaulted) as Kubernetes' validation does for its
/// kind: on create when `old` is `None`, on update against the stored `old`.
/// Kinds without their own rules get the object metadata checks.
pub fn validate(kind: &Kind, obj: &Value, old: Option<&Value>) -> Result<(), Vec<FieldError>> {
    let errs = match validate_kind(kind, obj, old) {
        Ok(errs) => errs,
        Err(decode) => vec![decode],
    };
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

fn validate_kind(
    kind: &Kind,
    obj: &Value,
    old: Option<&Value>,
) -> Result<Vec<FieldError>, FieldError> {
    use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batchv1, core::v1 as core};
    Ok(match (kind.group, kind.kind) {
        ("", "Pod") => pod::validate_pod(&decode::<core::Pod>(obj)?, decode_old(old).as_ref()),
        ("", "Service") => {
            service::validate_service(&decode::<core::Service>(obj)?, decode_old(old).as_ref())
        }
        ("", "ConfigMap") => config::validate_config_map(&decode(obj)?, decode_old(old).as_ref()),
        ("", "Secret") => config::validate_secret(&decode(obj)?, decode_old(old).as_ref()),
        ("", "Namespace") => config::validate_namespace(&decode(obj)?, decode_old(old).as_ref()),
        ("apps", "Deployment") => workloads::validate_deployment(
            &decode::<apps::Deployment>(obj)?,
            selector_present(obj),
            decode_old(old).as_ref(),
        ),
        ("apps", "ReplicaSet") => workloads::validate_replica_set(
            &decode::<apps::ReplicaSet>(obj)?,
            selector_present(obj),
            decode_old(old).as_ref(),
        ),
        ("apps", "StatefulSet") => workloads::validate_stateful_set(
            &decode::<apps::StatefulSet>(obj)?,
            selector_present(obj),
            decode_old(old).as_ref(),
        ),
        ("apps", "DaemonSet") => workloads::validate_daemon_set(
            &decode::<apps::DaemonSet>(obj)?,
            selector_present(obj),
            decode_old(old).as_ref(),
        ),
        ("batch", "Job") => {
            batch::validate_job(&decode::<batchv1::Job>(obj)?, decode_old(old).as_ref())
        }
        ("batch", "CronJob") => {
            batch::validate_cron_job(&decode::<batchv1::CronJob>(obj)?, decode_old(old).as_ref())
        }
        ("coordination.k8s.io", "Lease") => {
            config::validate_lease(&decode(obj)?, decode_old(old).as_ref())
        }
        ("rbac.authorization.k8s.io", "Role") => {
            rbac::validate_role(&decode(obj)?, decode_old(old).as_ref())
        }
        ("rbac.authorization.k8s.io", "ClusterRole") => {
            rbac::validate_cluster_role(&decode(obj)?, decode_old(old).as_ref())
        }
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            rbac::validate_role_binding(&decode(obj)?, decode_old(old).as_ref())
        }
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            rbac::validate_cluster_role_binding(&decode(obj)?, decode_old(old).as_ref())
        }
        ("shoal.io", "Identity") => {
            let mut errs = meta::validate_generic(kind, obj, old);
            errs.extend(validate_identity(obj, old));
            errs
        }
        _ => meta::validate_generic(kind, obj, old),
    })
}

/// An Identity's name is its number and its label set never changes: the
/// dataplane of every node has compiled policy against both.
fn validate_identity(obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    use crate::identity;
    let mut errs = Vec::new();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !name.is_empty() && identity::parse_name(name).is_none() {
        errs.push(FieldError {
            field: "metadata.name".to_string(),
            kind: FieldErrorKind::Invalid,
            value: Some(go_value::quote(name)),
            detail: format!(
                "must be the identity's number, {} to {} without leading zeros",
                identity::MIN,
                identity::MAX
            ),
        });
    }
    let labels = identity::labels_of(obj);
    if labels.is_none() {
        errs.push(FieldError {
            field: identity::LABELS_FIELD.to_string(),
            kind: FieldErrorKind::Required,
            value: None,
            detail: "a map of label keys to string values".to_string(),
        });
    }
    if let (Some(old), Some(labels)) = (old, labels)
        && identity::labels_of(old).is_some_and(|o| o != labels)
    {
        errs.push(FieldError {
            field: identity::LABELS_FIELD.to_string(),
            kind: FieldErrorKind::Invalid,
            value: None,
            detail: "field is immutable".to_string(),
        });
    }
    errs
}

/// Whether `spec.selector` is in the object at all.
fn selector_present(obj: &Value) -> bool {
    obj.pointer("/spec/selector").is_some_and(|s| !s.is_null())
}

/// The rule for `metadata.name` of a kind.
pub(crate) fn name_rule(kind: &Kind) -> NameRule {
    match (kind.group, kind.kind) {
        ("", "Namespace") | ("apps", "StatefulSet") => NameRule::Label,
        ("", "Service") => NameRule::Dns1035,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

/// The typed form of `obj`. Go's decoder reads `null` as "unset", so nulls
/// are dropped first; `apiVersion` and `kind` were checked by the caller.
pub(crate) fn decode<T: DeserializeOwned>(obj: &Value) -> Result<T, FieldError> {
    let mut input = obj.clone();
    strip_nulls(&mut input);
    if let Some(map) = input.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    serde_path_to_error::deserialize(&input).map_err(|e| {
        let path = e.path().to_string();
        let detail = e.into_inner().to_string();
        FieldError {
            field: if path == "." { String::new() } else { path },
            kind: FieldErrorKind::Invalid,
            value: None,
            detail,
        }
    })
}

/// The stored object on update; a stored object that no longer decodes only
/// loses the update checks, the new object is still checked in full.
fn decode_old<T: DeserializeOwned>(old: Option<&Value>) -> Option<T> {
    old.and_then(|o| decode(o).ok())
}

/// Removes object members whose value is `null`, at every depth.
pub(crate) fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Kubernetes' 422 message: `Pod "web" is invalid: [a, b]`, without the
/// brackets for a single error, repeated messages shown once. Kinds outside
/// the core group are qualified: `Deployment.apps "web" is invalid: ...`.
pub fn invalid_message(kind: &Kind, name: &str, errors: &[FieldError]) -> String {
    let qualified = if kind.group.is_empty() {
        kind.kind.to_string()
    } else {
        format!("{}.{}", kind.kind, kind.group)
    };
    let mut seen: Vec<String> = Vec::new();
    for e in errors {
        let msg = e.to_string();
        if !seen.contains(&msg) {
            seen.push(msg);
        }
    }
    let body = match seen.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    format!("{qualified} {} is invalid: {body}", go_value::quote(name))
}

#[cfg(test)]
mod tests;
