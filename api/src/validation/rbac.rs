//! RBAC objects: rules that name verbs and resources, bindings that point
//! at a role they cannot later swap.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::meta;
use super::names::{self, NameRule};
use super::path::Path;
use super::{FieldError, go_value};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn meta_checks(new: &ObjectMeta, old: Option<&ObjectMeta>) -> Vec<FieldError> {
    let path = Path::new("metadata");
    let mut errs = Vec::new();
    if let Some(old) = old {
        errs.extend(meta::validate_object_meta_update(new, old, &path));
    }
    errs.extend(meta::validate_object_meta(
        new,
        NameRule::PathSegment,
        &path,
    ));
    errs
}

/// `ValidatePolicyRule`.
fn validate_rule(rule: &PolicyRule, namespaced: bool, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if rule.verbs.is_empty() {
        errs.push(FieldError::required(
            &path.child("verbs"),
            "verbs must contain at least one value",
        ));
    }
    let urls = rule.non_resource_urls.as_deref().unwrap_or_default();
    let nonempty = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
    if !urls.is_empty() {
        let value = go_value::string_slice(Some(urls));
        if namespaced {
            errs.push(FieldError::invalid(
                &path.child("nonResourceURLs"),
                value.clone(),
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if nonempty(&rule.api_groups) || nonempty(&rule.resources) || nonempty(&rule.resource_names)
        {
            errs.push(FieldError::invalid(
                &path.child("nonResourceURLs"),
                value,
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        return errs;
    }
    if !nonempty(&rule.api_groups) {
        errs.push(FieldError::required(
            &path.child("apiGroups"),
            "resource rules must supply at least one api group",
        ));
    }
    if !nonempty(&rule.resources) {
        errs.push(FieldError::required(
            &path.child("resources"),
            "resource rules must supply at least one resource",
        ));
    }
    errs
}

/// A Role on create or update.
pub(crate) fn validate_role(role: &Role, old: Option<&Role>) -> Vec<FieldError> {
    let mut errs = meta_checks(&role.metadata, old.map(|o| &o.metadata));
    for (i, rule) in role.rules.iter().flatten().enumerate() {
        errs.extend(validate_rule(rule, true, &Path::new("rules").index(i)));
    }
    errs
}

/// A ClusterRole on create or update; an aggregated role's rules are
/// filled in by its controller.
pub(crate) fn validate_cluster_role(
    role: &ClusterRole,
    old: Option<&ClusterRole>,
) -> Vec<FieldError> {
    let mut errs = meta_checks(&role.metadata, old.map(|o| &o.metadata));
    for (i, rule) in role.rules.iter().flatten().enumerate() {
        errs.extend(validate_rule(rule, false, &Path::new("rules").index(i)));
    }
    errs
}

fn validate_role_ref(role_ref: &RoleRef, kinds: &[&str]) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let path = Path::new("roleRef");
    if role_ref.api_group != RBAC_GROUP {
        errs.push(FieldError::not_supported(
            &path.child("apiGroup"),
            &role_ref.api_group,
            &[RBAC_GROUP],
        ));
    }
    if !kinds.contains(&role_ref.kind.as_str()) {
        errs.push(FieldError::not_supported(
            &path.child("kind"),
            &role_ref.kind,
            kinds,
        ));
    }
    if role_ref.name.is_empty() {
        errs.push(FieldError::required(&path.child("name"), ""));
    } else {
        for msg in names::path_segment_name(&role_ref.name, false) {
            errs.push(FieldError::invalid_str(
                &path.child("name"),
                &role_ref.name,
                msg,
            ));
        }
    }
    errs
}

fn validate_subject(s: &Subject, namespaced: bool, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if s.name.is_empty() {
        errs.push(FieldError::required(&path.child("name"), ""));
    }
    let group = s.api_group.as_deref().unwrap_or_default();
    match s.kind.as_str() {
        "ServiceAccount" => {
            if !s.name.is_empty() {
                for msg in names::dns1123_subdomain(&s.name) {
                    errs.push(FieldError::invalid_str(&path.child("name"), &s.name, msg));
                }
            }
            if !group.is_empty() {
                errs.push(FieldError::not_supported(
                    &path.child("apiGroup"),
                    group,
                    &[""],
                ));
            }
            if !namespaced && s.namespace.as_deref().unwrap_or_default().is_empty() {
                errs.push(FieldError::required(&path.child("namespace"), ""));
            }
        }
        "User" | "Group" => {
            if group != RBAC_GROUP {
                errs.push(FieldError::not_supported(
                    &path.child("apiGroup"),
                    group,
                    &[RBAC_GROUP],
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            &path.child("kind"),
            other,
            &["ServiceAccount", "User", "Group"],
        )),
    }
    errs
}

fn role_ref_change(new: &RoleRef, old: Option<&RoleRef>) -> Option<FieldError> {
    let old = old?;
    (new != old).then(|| {
        FieldError::invalid(
            &Path::new("roleRef"),
            format!(
                "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
                go_value::quote(&new.api_group),
                go_value::quote(&new.kind),
                go_value::quote(&new.name)
            ),
            "cannot change roleRef",
        )
    })
}

/// A RoleBinding on create or update.
pub(crate) fn validate_role_binding(
    rb: &RoleBinding,
    old: Option<&RoleBinding>,
) -> Vec<FieldError> {
    let mut errs = meta_checks(&rb.metadata, old.map(|o| &o.metadata));
    errs.extend(validate_role_ref(&rb.role_ref, &["Role", "ClusterRole"]));
    for (i, s) in rb.subjects.iter().flatten().enumerate() {
        errs.extend(validate_subject(s, true, &Path::new("subjects").index(i)));
    }
    errs.extend(role_ref_change(&rb.role_ref, old.map(|o| &o.role_ref)));
    errs
}

/// A ClusterRoleBinding on create or update.
pub(crate) fn validate_cluster_role_binding(
    rb: &ClusterRoleBinding,
    old: Option<&ClusterRoleBinding>,
) -> Vec<FieldError> {
    let mut errs = meta_checks(&rb.metadata, old.map(|o| &o.metadata));
    errs.extend(validate_role_ref(&rb.role_ref, &["ClusterRole"]));
    for (i, s) in rb.subjects.iter().flatten().enumerate() {
        errs.extend(validate_subject(s, false, &Path::new("subjects").index(i)));
    }
    errs.extend(role_ref_change(&rb.role_ref, old.map(|o| &o.role_ref)));
    errs
}
