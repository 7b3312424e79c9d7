use std::collections::HashSet;

use serde_json::{Value, json};

use super::*;

fn by_kind(kind: &str) -> Vec<Value> {
    default_objects()
        .into_iter()
        .filter(|o| o["kind"] == kind)
        .collect()
}

fn role(name: &str) -> Value {
    by_kind("ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ClusterRole {name}"))
}

#[test]
fn every_object_is_marked_as_bootstrap_policy() {
    for o in default_objects() {
        let name = &o["metadata"]["name"];
        assert_eq!(o["apiVersion"], "rbac.authorization.k8s.io/v1", "{name}");
        assert!(name.as_str().is_some_and(|n| !n.is_empty()));
        assert_eq!(
            o["metadata"]["labels"]["kubernetes.io/bootstrapping"], "rbac-defaults",
            "{name}"
        );
        assert_eq!(
            o["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"], "true",
            "{name}"
        );
    }
}

#[test]
fn the_roles_users_expect_are_there_once() {
    let roles = by_kind("ClusterRole");
    let names: Vec<&str> = roles
        .iter()
        .filter_map(|r| r["metadata"]["name"].as_str())
        .collect();
    let unique: HashSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "duplicate ClusterRole names");
    for expected in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:public-info-viewer",
        "system:discovery",
        "system:basic-user",
        "system:node",
        "system:kube-scheduler",
        "system:kube-controller-manager",
    ] {
        assert!(unique.contains(expected), "missing ClusterRole {expected}");
    }
}

#[test]
fn bindings_name_existing_roles_and_the_expected_subjects() {
    let roles: HashSet<String> = by_kind("ClusterRole")
        .iter()
        .filter_map(|r| r["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    let bindings = by_kind("ClusterRoleBinding");
    for b in &bindings {
        assert_eq!(b["roleRef"]["kind"], "ClusterRole");
        assert_eq!(b["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
        let role = b["roleRef"]["name"].as_str().unwrap_or_default();
        assert!(roles.contains(role), "binding to missing role {role}");
    }
    let subjects = |name: &str| -> Vec<(String, String)> {
        let b = bindings
            .iter()
            .find(|b| b["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no ClusterRoleBinding {name}"));
        b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s["kind"].as_str().unwrap_or_default().to_string(),
                    s["name"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let one = |kind: &str, name: &str| vec![(kind.to_string(), name.to_string())];
    assert_eq!(subjects("cluster-admin"), one("Group", "system:masters"));
    assert_eq!(
        subjects("system:discovery"),
        one("Group", "system:authenticated")
    );
    assert_eq!(
        subjects("system:basic-user"),
        one("Group", "system:authenticated")
    );
    assert!(
        subjects("system:public-info-viewer")
            .contains(&("Group".into(), "system:authenticated".into()))
    );
    assert_eq!(subjects("system:node"), one("Group", "system:nodes"));
    assert_eq!(
        subjects("system:kube-scheduler"),
        one("User", "system:kube-scheduler")
    );
    assert_eq!(
        subjects("system:kube-controller-manager"),
        one("User", "system:kube-controller-manager")
    );
}

#[test]
fn cluster_admin_may_do_anything_anywhere() {
    assert_eq!(
        role("cluster-admin")["rules"],
        json!([
            {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},
            {"verbs": ["*"], "nonResourceURLs": ["*"]},
        ])
    );
}

#[test]
fn admin_holds_edit_which_holds_view() {
    let rules = |name: &str| role(name)["rules"].as_array().cloned().unwrap_or_default();
    let (admin, edit, view) = (rules("admin"), rules("edit"), rules("view"));
    assert!(!view.is_empty());
    assert!(
        view.iter().all(|r| edit.contains(r)),
        "edit lacks a view rule"
    );
    assert!(
        edit.iter().all(|r| admin.contains(r)),
        "admin lacks an edit rule"
    );
    // What separates them: edit writes, admin grants.
    let writes_pods = |rules: &[Value]| {
        rules.iter().any(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|v| v.contains(&json!("pods")))
                && r["verbs"]
                    .as_array()
                    .is_some_and(|v| v.contains(&json!("create")))
        })
    };
    assert!(!writes_pods(&view) && writes_pods(&edit));
    let grants = |rules: &[Value]| {
        rules.iter().any(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|v| v.contains(&json!("rolebindings")))
        })
    };
    assert!(!grants(&edit) && grants(&admin));
    // Kubernetes shows the aggregation that built them.
    assert_eq!(
        role("view")["aggregationRule"]["clusterRoleSelectors"][0]["matchLabels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    assert_eq!(
        role("view")["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"],
        "true"
    );
}

#[test]
fn view_cannot_read_secrets() {
    let view = role("view");
    let reads_secrets = view["rules"].as_array().into_iter().flatten().any(|r| {
        r["resources"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("secrets")))
    });
    assert!(!reads_secrets);
}
