//! ConfigMaps, Secrets, Namespaces and Leases.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::FieldError;
use super::meta;
use super::names::{self, NameRule};
use super::path::Path;

/// ConfigMaps and Secrets are held whole in memory by every kubelet that
/// mounts them (`MaxSecretSize`).
const MAX_DATA_SIZE: usize = 1024 * 1024;
/// Finalizers that need no domain prefix.
const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];
const IMMUTABLE_MSG: &str = "field is immutable when `immutable` is set";

fn meta_checks(new: &ObjectMeta, old: Option<&ObjectMeta>, rule: NameRule) -> Vec<FieldError> {
    let path = Path::new("metadata");
    let mut errs = Vec::new();
    if let Some(old) = old {
        errs.extend(meta::validate_object_meta_update(new, old, &path));
    }
    errs.extend(meta::validate_object_meta(new, rule, &path));
    errs
}

fn check_keys<'a>(keys: impl Iterator<Item = &'a String>, path: &Path, errs: &mut Vec<FieldError>) {
    for key in keys {
        for msg in names::config_map_key(key) {
            errs.push(FieldError::invalid_str(&path.key(key), key, msg));
        }
    }
}

/// A ConfigMap on create or update.
pub(crate) fn validate_config_map(cm: &ConfigMap, old: Option<&ConfigMap>) -> Vec<FieldError> {
    let mut errs = meta_checks(&cm.metadata, old.map(|o| &o.metadata), NameRule::Subdomain);
    if let Some(old) = old.filter(|o| o.immutable == Some(true)) {
        if cm.immutable != Some(true) {
            errs.push(FieldError::forbidden(
                &Path::new("immutable"),
                IMMUTABLE_MSG,
            ));
        }
        if cm.data.clone().unwrap_or_default() != old.data.clone().unwrap_or_default() {
            errs.push(FieldError::forbidden(&Path::new("data"), IMMUTABLE_MSG));
        }
        if cm.binary_data.clone().unwrap_or_default() != old.binary_data.clone().unwrap_or_default()
        {
            errs.push(FieldError::forbidden(
                &Path::new("binaryData"),
                IMMUTABLE_MSG,
            ));
        }
    }
    let data = cm.data.as_ref();
    let binary = cm.binary_data.as_ref();
    let data_path = Path::new("data");
    check_keys(
        data.into_iter().flatten().map(|(k, _)| k),
        &data_path,
        &mut errs,
    );
    for key in data.into_iter().flatten().map(|(k, _)| k) {
        if binary.is_some_and(|b| b.contains_key(key)) {
            errs.push(FieldError::invalid_str(
                &data_path.key(key),
                key,
                "duplicate of key present in binaryData",
            ));
        }
    }
    check_keys(
        binary.into_iter().flatten().map(|(k, _)| k),
        &Path::new("binaryData"),
        &mut errs,
    );
    let total: usize = data
        .into_iter()
        .flatten()
        .map(|(_, v)| v.len())
        .sum::<usize>()
        + binary
            .into_iter()
            .flatten()
            .map(|(_, v)| v.0.len())
            .sum::<usize>();
    if total > MAX_DATA_SIZE {
        errs.push(FieldError::too_long(&Path::new(""), MAX_DATA_SIZE));
    }
    errs
}

fn data_eq(
    a: Option<&BTreeMap<String, ByteString>>,
    b: Option<&BTreeMap<String, ByteString>>,
) -> bool {
    a.cloned().unwrap_or_default() == b.cloned().unwrap_or_default()
}

/// A Secret on create or update. `stringData` was merged into `data` by
/// `apply_defaults`, as Kubernetes merges it while decoding.
pub(crate) fn validate_secret(secret: &Secret, old: Option<&Secret>) -> Vec<FieldError> {
    let mut errs = meta_checks(
        &secret.metadata,
        old.map(|o| &o.metadata),
        NameRule::Subdomain,
    );
    let data_path = Path::new("data");
    let data = secret.data.as_ref();
    check_keys(
        data.into_iter().flatten().map(|(k, _)| k),
        &data_path,
        &mut errs,
    );
    let total: usize = data.into_iter().flatten().map(|(_, v)| v.0.len()).sum();
    if total > MAX_DATA_SIZE {
        errs.push(FieldError::too_long(&data_path, MAX_DATA_SIZE));
    }
    let has = |k: &str| data.is_some_and(|d| d.contains_key(k));
    let ty = secret.type_.as_deref().unwrap_or("Opaque");
    match ty {
        "kubernetes.io/service-account-token" => {
            let name = secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/service-account.name"))
                .map(String::as_str)
                .unwrap_or_default();
            if name.is_empty() {
                errs.push(FieldError::required(
                    &Path::new("metadata")
                        .child("annotations")
                        .key("kubernetes.io/service-account.name"),
                    "",
                ));
            }
        }
        "kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson" => {
            let key = if ty == "kubernetes.io/dockercfg" {
                ".dockercfg"
            } else {
                ".dockerconfigjson"
            };
            match data.and_then(|d| d.get(key)) {
                None => errs.push(FieldError::required(&data_path.key(key), "")),
                Some(bytes) => {
                    if let Err(e) = serde_json::from_slice::<
                        serde_json::Map<String, serde_json::Value>,
                    >(&bytes.0)
                    {
                        errs.push(FieldError::invalid_str(
                            &data_path.key(key),
                            "<secret contents redacted>",
                            e.to_string(),
                        ));
                    }
                }
            }
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            errs.push(FieldError::required(&data_path.key("username"), ""));
            errs.push(FieldError::required(&data_path.key("password"), ""));
        }
        "kubernetes.io/ssh-auth"
            if data
                .and_then(|d| d.get("ssh-privatekey"))
                .is_none_or(|v| v.0.is_empty()) =>
        {
            errs.push(FieldError::required(&data_path.key("ssh-privatekey"), ""));
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if !has(key) {
                    errs.push(FieldError::required(&data_path.key(key), ""));
                }
            }
        }
        _ => {}
    }
    if let Some(old) = old {
        let old_ty = old.type_.as_deref().unwrap_or("Opaque");
        if ty != old_ty {
            errs.push(FieldError::invalid_str(
                &Path::new("type"),
                ty,
                "field is immutable",
            ));
        }
        if old.immutable == Some(true) {
            if secret.immutable != Some(true) {
                errs.push(FieldError::forbidden(
                    &Path::new("immutable"),
                    IMMUTABLE_MSG,
                ));
            }
            if !data_eq(secret.data.as_ref(), old.data.as_ref()) {
                errs.push(FieldError::forbidden(&data_path, IMMUTABLE_MSG));
            }
        }
    }
    errs
}

/// A Namespace on create or update.
pub(crate) fn validate_namespace(ns: &Namespace, old: Option<&Namespace>) -> Vec<FieldError> {
    let mut errs = meta_checks(&ns.metadata, old.map(|o| &o.metadata), NameRule::Label);
    let path = Path::new("spec").child("finalizers");
    for f in ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .into_iter()
        .flatten()
    {
        for msg in names::qualified_name(f) {
            errs.push(FieldError::invalid_str(&path, f, msg));
        }
        if !f.contains('/') && !STANDARD_FINALIZERS.contains(&f.as_str()) {
            errs.push(FieldError::invalid_str(
                &path,
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
    errs
}

/// A Lease on create or update.
pub(crate) fn validate_lease(lease: &Lease, old: Option<&Lease>) -> Vec<FieldError> {
    let mut errs = meta_checks(
        &lease.metadata,
        old.map(|o| &o.metadata),
        NameRule::Subdomain,
    );
    let Some(spec) = &lease.spec else { return errs };
    let path = Path::new("spec");
    if let Some(d) = spec.lease_duration_seconds.filter(|d| *d <= 0) {
        errs.push(FieldError::invalid(
            &path.child("leaseDurationSeconds"),
            d.to_string(),
            "must be greater than 0",
        ));
    }
    if let Some(t) = spec.lease_transitions.filter(|t| *t < 0) {
        errs.push(FieldError::invalid(
            &path.child("leaseTransitions"),
            t.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    if let Some(s) = spec.strategy.as_deref()
        && s != "OldestEmulationVersion"
    {
        errs.push(FieldError::not_supported(
            &path.child("strategy"),
            s,
            &["OldestEmulationVersion"],
        ));
    }
    if spec
        .preferred_holder
        .as_deref()
        .is_some_and(|h| !h.is_empty())
        && spec.strategy.as_deref().unwrap_or_default().is_empty()
    {
        errs.push(FieldError::forbidden(
            &path.child("preferredHolder"),
            "preferredHolder can only be set when strategy is set",
        ));
    }
    errs
}
