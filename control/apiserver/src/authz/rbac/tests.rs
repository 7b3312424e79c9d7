use serde_json::{Value, json};

use super::*;
use crate::{authz::default_objects, request::Verb};

/// The bootstrap policy plus the objects a test adds.
struct Cluster {
    cluster_roles: Vec<Value>,
    roles: Vec<Value>,
    cluster_bindings: Vec<Value>,
    bindings: Vec<Value>,
}

impl Cluster {
    fn new() -> Self {
        let mut c = Self {
            cluster_roles: Vec::new(),
            roles: Vec::new(),
            cluster_bindings: Vec::new(),
            bindings: Vec::new(),
        };
        for o in default_objects() {
            c.add(o);
        }
        c
    }

    fn add(&mut self, o: Value) -> &mut Self {
        match o["kind"].as_str() {
            Some("ClusterRole") => self.cluster_roles.push(o),
            Some("Role") => self.roles.push(o),
            Some("ClusterRoleBinding") => self.cluster_bindings.push(o),
            Some("RoleBinding") => self.bindings.push(o),
            other => panic!("not an RBAC kind: {other:?}"),
        }
        self
    }

    fn policy(&self) -> Policy<'_, Value> {
        Policy {
            cluster_roles: &self.cluster_roles,
            roles: &self.roles,
            cluster_bindings: &self.cluster_bindings,
            bindings: &self.bindings,
            loading: false,
        }
    }

    fn check(&self, user: &User, req: &ResourceRequest) -> Result<(), ApiError> {
        check(user, req, &self.policy())
    }

    fn may(&self, user: &User, req: &ResourceRequest) -> bool {
        self.check(user, req).is_ok()
    }

    fn path(&self, user: &User, verb: &str, path: &str) -> Result<(), ApiError> {
        let target = Target::Path { verb, path };
        match decide(user, None, &target, &self.policy()) {
            Decision::Allowed => Ok(()),
            Decision::Denied(errors) => Err(path_forbidden(user, verb, path, &errors)),
        }
    }
}

fn user(name: &str, groups: &[&str]) -> User {
    User {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn jane() -> User {
    user("jane", &[])
}

/// `verb` on `group`/`resource` in `ns`; `name` and `sub` narrow it.
fn req(verb: Verb, group: &str, resource: &str, ns: Option<&str>) -> ResourceRequest {
    ResourceRequest {
        verb,
        group: group.into(),
        version: "v1".into(),
        namespace: ns.map(str::to_string),
        resource: resource.into(),
        name: None,
        subresource: None,
    }
}

fn named(mut r: ResourceRequest, name: &str) -> ResourceRequest {
    r.name = Some(name.into());
    r
}

fn sub(mut r: ResourceRequest, name: &str, subresource: &str) -> ResourceRequest {
    r.name = Some(name.into());
    r.subresource = Some(subresource.into());
    r
}

fn pods(verb: Verb, ns: &str) -> ResourceRequest {
    req(verb, "", "pods", Some(ns))
}

fn subject(kind: &str, name: &str) -> Value {
    match kind {
        "ServiceAccount" => json!({"kind": kind, "name": name}),
        _ => json!({"kind": kind, "apiGroup": "rbac.authorization.k8s.io", "name": name}),
    }
}

fn role_binding(ns: &str, name: &str, role_kind: &str, role: &str, subjects: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": subjects,
    })
}

fn cluster_binding(name: &str, role: &str, subjects: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

fn role(ns: &str, name: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": ns},
        "rules": rules,
    })
}

fn cluster_role(name: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": rules,
    })
}

#[test]
fn masters_may_do_anything_without_any_binding() {
    let empty = Cluster {
        cluster_roles: Vec::new(),
        roles: Vec::new(),
        cluster_bindings: Vec::new(),
        bindings: Vec::new(),
    };
    let admin = user("shoal-admin", &["system:masters"]);
    assert!(empty.may(&admin, &pods(Verb::DeleteCollection, "kube-system")));
    assert!(empty.may(&admin, &req(Verb::Create, "", "nodes", None)));
    assert!(empty.path(&admin, "get", "/metrics").is_ok());
    assert!(!empty.may(&jane(), &pods(Verb::Get, "default")));
}

#[test]
fn a_user_without_bindings_is_refused_in_kubernetes_words() {
    let c = Cluster::new();
    let err = c
        .check(&jane(), &pods(Verb::List, "default"))
        .expect_err("jane holds no role");
    assert_eq!(err.code, 403);
    assert_eq!(err.reason, "Forbidden");
    assert_eq!(
        err.message,
        r#"pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace "default""#
    );
    let err = c
        .check(&jane(), &req(Verb::List, "", "nodes", None))
        .expect_err("nodes need a ClusterRoleBinding");
    assert_eq!(
        err.message,
        r#"nodes is forbidden: User "jane" cannot list resource "nodes" in API group "" at the cluster scope"#
    );
}

#[test]
fn view_reads_pods_but_cannot_create_them() {
    let mut c = Cluster::new();
    c.add(cluster_binding(
        "jane-view",
        "view",
        vec![subject("User", "jane")],
    ));
    for verb in [Verb::Get, Verb::List, Verb::Watch] {
        assert!(c.may(&jane(), &pods(verb, "default")), "{verb:?}");
    }
    // Cluster-wide: a ClusterRoleBinding covers every namespace at once.
    assert!(c.may(&jane(), &req(Verb::List, "", "pods", None)));
    let err = c
        .check(&jane(), &pods(Verb::Create, "default"))
        .expect_err("view does not write");
    assert_eq!(
        err.message,
        r#"pods is forbidden: User "jane" cannot create resource "pods" in API group "" in the namespace "default""#
    );
    assert!(!c.may(
        &jane(),
        &named(req(Verb::Get, "", "secrets", Some("default")), "db")
    ));
    assert!(c.may(
        &jane(),
        &req(Verb::List, "apps", "deployments", Some("default"))
    ));
}

#[test]
fn a_role_binding_to_edit_grants_writes_in_its_namespace_only() {
    let mut c = Cluster::new();
    c.add(role_binding(
        "demo",
        "jane-edit",
        "ClusterRole",
        "edit",
        vec![subject("User", "jane")],
    ));
    assert!(c.may(&jane(), &pods(Verb::Create, "demo")));
    assert!(c.may(
        &jane(),
        &req(Verb::Create, "apps", "deployments", Some("demo"))
    ));
    assert!(c.may(
        &jane(),
        &named(req(Verb::Delete, "", "secrets", Some("demo")), "db")
    ));
    assert!(!c.may(&jane(), &pods(Verb::Create, "default")));
    // A namespace's binding says nothing about all namespaces together.
    assert!(!c.may(&jane(), &req(Verb::List, "", "pods", None)));
    assert!(!c.may(&jane(), &req(Verb::List, "", "nodes", None)));
    // edit does not grant: roles and rolebindings are admin's.
    assert!(!c.may(
        &jane(),
        &req(
            Verb::Create,
            "rbac.authorization.k8s.io",
            "rolebindings",
            Some("demo")
        )
    ));
}

#[test]
fn a_namespaced_view_binding_lets_the_user_read_that_namespace() {
    let mut c = Cluster::new();
    c.add(role_binding(
        "demo",
        "jane-view",
        "ClusterRole",
        "view",
        vec![subject("User", "jane")],
    ));
    assert!(c.may(
        &jane(),
        &named(req(Verb::Get, "", "namespaces", None), "demo")
    ));
    let err = c
        .check(
            &jane(),
            &named(req(Verb::Get, "", "namespaces", None), "prod"),
        )
        .expect_err("no binding in prod");
    assert_eq!(
        err.message,
        r#"namespaces "prod" is forbidden: User "jane" cannot get resource "namespaces" in API group "" in the namespace "prod""#
    );
    assert!(!c.may(&jane(), &req(Verb::List, "", "namespaces", None)));
}

#[test]
fn resource_names_narrow_a_rule_to_those_objects() {
    let mut c = Cluster::new();
    c.add(role(
        "demo",
        "app-config-reader",
        json!([{
            "verbs": ["get", "update"],
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["app-config"],
        }]),
    ));
    c.add(role_binding(
        "demo",
        "jane-config",
        "Role",
        "app-config-reader",
        vec![subject("User", "jane")],
    ));
    let cm = |verb| req(verb, "", "configmaps", Some("demo"));
    assert!(c.may(&jane(), &named(cm(Verb::Get), "app-config")));
    assert!(c.may(&jane(), &named(cm(Verb::Update), "app-config")));
    assert!(!c.may(&jane(), &named(cm(Verb::Get), "other")));
    // Lists and creates name no object, so a named rule never covers them.
    assert!(!c.may(&jane(), &cm(Verb::List)));
    assert!(!c.may(&jane(), &cm(Verb::Create)));
    // The Role lives in demo: the same name elsewhere is not it.
    assert!(!c.may(
        &jane(),
        &named(req(Verb::Get, "", "configmaps", Some("prod")), "app-config")
    ));
}

#[test]
fn subresources_are_granted_by_name() {
    let mut c = Cluster::new();
    c.add(role_binding(
        "demo",
        "jane-view",
        "ClusterRole",
        "view",
        vec![subject("User", "jane")],
    ));
    assert!(c.may(&jane(), &sub(pods(Verb::Get, "demo"), "web", "log")));
    let err = c
        .check(&jane(), &sub(pods(Verb::Create, "demo"), "web", "exec"))
        .expect_err("view has no exec");
    assert!(err.message.ends_with(
        r#"is forbidden: User "jane" cannot create resource "pods/exec" in API group "" in the namespace "demo""#
    ));

    // A rule on the resource is not one on its subresources, and
    // `*/scale` covers scale of anything.
    c.add(role(
        "demo",
        "scaler",
        json!([
            {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["update"], "apiGroups": ["apps"], "resources": ["*/scale"]},
        ]),
    ));
    let bob = user("bob", &[]);
    c.add(role_binding(
        "demo",
        "bob",
        "Role",
        "scaler",
        vec![subject("User", "bob")],
    ));
    assert!(c.may(&bob, &named(pods(Verb::Get, "demo"), "web")));
    assert!(!c.may(&bob, &sub(pods(Verb::Get, "demo"), "web", "log")));
    let deploy = req(Verb::Update, "apps", "deployments", Some("demo"));
    assert!(c.may(&bob, &sub(deploy.clone(), "web", "scale")));
    assert!(!c.may(&bob, &sub(deploy.clone(), "web", "status")));
    assert!(!c.may(&bob, &named(deploy, "web")));
}

#[test]
fn wildcard_api_groups_and_verbs_match_any() {
    let mut c = Cluster::new();
    c.add(cluster_role(
        "deployment-reader",
        json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["deployments"]}]),
    ));
    c.add(cluster_binding(
        "devs-deployments",
        "deployment-reader",
        vec![subject("Group", "devs")],
    ));
    let dev = user("sam", &["devs"]);
    assert!(c.may(&dev, &req(Verb::Delete, "apps", "deployments", Some("x"))));
    assert!(c.may(&dev, &req(Verb::List, "extensions", "deployments", None)));
    assert!(!c.may(&dev, &req(Verb::List, "apps", "replicasets", None)));
    // A rule naming the core group does not cover named groups.
    c.add(cluster_role(
        "core-pods",
        json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["*"]}]),
    ));
    c.add(cluster_binding(
        "devs-core",
        "core-pods",
        vec![subject("Group", "devs")],
    ));
    assert!(c.may(&dev, &named(pods(Verb::Get, "x"), "web")));
    assert!(!c.may(
        &dev,
        &named(req(Verb::Get, "batch", "jobs", Some("x")), "j")
    ));
    // The err message names the group for grouped resources.
    let err = c
        .check(&jane(), &req(Verb::List, "apps", "deployments", Some("x")))
        .expect_err("jane is no dev");
    assert!(
        err.message
            .contains(r#"in API group "apps" in the namespace "x""#)
    );
}

#[test]
fn service_account_subjects_match_their_user_name() {
    let mut c = Cluster::new();
    // No namespace on the subject: the binding's own.
    c.add(role_binding(
        "ci",
        "builder-edit",
        "ClusterRole",
        "edit",
        vec![subject("ServiceAccount", "builder")],
    ));
    let builder = user("system:serviceaccount:ci:builder", &[]);
    let imposter = user("system:serviceaccount:other:builder", &[]);
    assert!(c.may(&builder, &pods(Verb::Create, "ci")));
    assert!(!c.may(&imposter, &pods(Verb::Create, "ci")));
    assert!(!c.may(&user("builder", &[]), &pods(Verb::Create, "ci")));

    // A ClusterRoleBinding must say which namespace the account is in.
    c.add(cluster_binding(
        "monitor-view",
        "view",
        vec![json!({"kind": "ServiceAccount", "name": "monitor"})],
    ));
    let monitor = user("system:serviceaccount:obs:monitor", &[]);
    assert!(!c.may(&monitor, &pods(Verb::List, "default")));
    c.add(cluster_binding(
        "monitor-view-2",
        "view",
        vec![json!({"kind": "ServiceAccount", "name": "monitor", "namespace": "obs"})],
    ));
    assert!(c.may(&monitor, &pods(Verb::List, "default")));
}

#[test]
fn a_cluster_role_from_a_role_binding_applies_in_that_namespace() {
    let mut c = Cluster::new();
    c.add(cluster_role(
        "pod-reader",
        json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]),
    ));
    c.add(role_binding(
        "demo",
        "jane-pods",
        "ClusterRole",
        "pod-reader",
        vec![subject("User", "jane")],
    ));
    assert!(c.may(&jane(), &pods(Verb::List, "demo")));
    assert!(!c.may(&jane(), &pods(Verb::List, "default")));
    assert!(!c.may(&jane(), &req(Verb::List, "", "pods", None)));
}

#[test]
fn a_binding_to_a_missing_role_is_named_in_the_denial() {
    let mut c = Cluster::new();
    c.add(role_binding(
        "demo",
        "jane-ghost",
        "ClusterRole",
        "ghost",
        vec![subject("User", "jane")],
    ));
    let err = c
        .check(&jane(), &pods(Verb::List, "demo"))
        .expect_err("ghost does not exist");
    assert_eq!(
        err.message,
        r#"pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace "demo": RBAC: clusterrole.rbac.authorization.k8s.io "ghost" not found"#
    );
    c.add(role_binding(
        "demo",
        "jane-gone",
        "Role",
        "gone",
        vec![subject("User", "jane")],
    ));
    let err = c
        .check(&jane(), &pods(Verb::List, "demo"))
        .expect_err("neither exists");
    assert!(err.message.ends_with(
        r#"RBAC: [clusterrole.rbac.authorization.k8s.io "ghost" not found, role.rbac.authorization.k8s.io "gone" not found]"#
    ));
    // A broken binding for someone else says nothing to jane.
    let bob = user("bob", &[]);
    let err = c
        .check(&bob, &pods(Verb::List, "demo"))
        .expect_err("bob has nothing");
    assert!(!err.message.contains("RBAC:"));
}

#[test]
fn every_authenticated_user_may_discover_but_not_scrape() {
    let c = Cluster::new();
    for path in [
        "/api",
        "/api/v1",
        "/apis",
        "/apis/apps/v1",
        "/version",
        "/healthz",
        "/readyz",
        "/livez",
        "/openapi/v2",
        "/openapi/v3/apis/apps/v1",
    ] {
        assert!(c.path(&jane(), "get", path).is_ok(), "{path}");
    }
    let err = c
        .path(&jane(), "get", "/metrics")
        .expect_err("metrics are for monitoring");
    assert_eq!(err.code, 403);
    assert_eq!(
        err.message,
        r#"forbidden: User "jane" cannot get path "/metrics""#
    );
    let err = c
        .path(&jane(), "post", "/apis")
        .expect_err("discovery is read-only");
    assert_eq!(
        err.message,
        r#"forbidden: User "jane" cannot post path "/apis""#
    );
    // Individual health checks may say more than ok: monitoring only.
    assert!(c.path(&jane(), "get", "/healthz/etcd").is_err());
    let prometheus = user("prometheus", &["system:monitoring"]);
    assert!(c.path(&prometheus, "get", "/metrics").is_ok());
    assert!(c.path(&prometheus, "get", "/healthz/etcd").is_ok());
    // Path rules grant no resources, and resource rules no paths.
    assert!(!c.may(&prometheus, &pods(Verb::List, "default")));
}

#[test]
fn every_authenticated_user_may_review_their_own_access() {
    let c = Cluster::new();
    let review = req(
        Verb::Create,
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        None,
    );
    assert!(c.may(&jane(), &review));
    assert!(!c.may(
        &jane(),
        &req(
            Verb::Create,
            "authorization.k8s.io",
            "subjectaccessreviews",
            None
        )
    ));
}

#[test]
fn system_components_hold_their_bootstrap_roles() {
    let c = Cluster::new();
    let node = user("system:node:worker-1", &["system:nodes"]);
    assert!(c.may(&node, &req(Verb::Watch, "", "pods", None)));
    assert!(c.may(
        &node,
        &req(Verb::List, "discovery.k8s.io", "endpointslices", None)
    ));
    assert!(c.may(
        &node,
        &sub(req(Verb::Patch, "", "nodes", None), "worker-1", "status")
    ));
    assert!(c.may(&node, &sub(pods(Verb::Update, "demo"), "web", "status")));
    assert!(c.may(&node, &named(pods(Verb::Delete, "demo"), "web")));
    assert!(c.may(
        &node,
        &named(
            req(
                Verb::Update,
                "coordination.k8s.io",
                "leases",
                Some("kube-node-lease")
            ),
            "worker-1"
        )
    ));
    assert!(c.may(&node, &req(Verb::Create, "", "events", Some("demo"))));
    assert!(!c.may(
        &node,
        &req(Verb::Create, "apps", "deployments", Some("demo"))
    ));
    assert!(!c.may(
        &node,
        &named(req(Verb::Delete, "", "nodes", None), "worker-2")
    ));

    let scheduler = user("system:kube-scheduler", &[]);
    assert!(c.may(
        &scheduler,
        &sub(pods(Verb::Create, "demo"), "web", "binding")
    ));
    assert!(c.may(
        &scheduler,
        &named(
            req(
                Verb::Update,
                "coordination.k8s.io",
                "leases",
                Some("kube-system")
            ),
            "kube-scheduler"
        )
    ));
    assert!(!c.may(
        &scheduler,
        &named(
            req(
                Verb::Update,
                "coordination.k8s.io",
                "leases",
                Some("kube-system")
            ),
            "other"
        )
    ));
    assert!(!c.may(
        &scheduler,
        &named(req(Verb::Get, "", "secrets", Some("demo")), "db")
    ));

    let kcm = user("system:kube-controller-manager", &[]);
    assert!(c.may(&kcm, &req(Verb::Watch, "apps", "replicasets", None)));
    assert!(c.may(&kcm, &req(Verb::List, "batch", "jobs", None)));
    assert!(!c.may(
        &kcm,
        &req(Verb::Create, "apps", "replicasets", Some("demo"))
    ));
}

#[test]
fn a_cache_still_loading_says_so_in_the_denial() {
    let c = Cluster::new();
    let mut policy = c.policy();
    policy.loading = true;
    let err = check(&jane(), &pods(Verb::List, "default"), &policy).expect_err("no binding");
    assert!(
        err.message
            .ends_with("RBAC: the authorization cache is still loading; retry shortly")
    );
}
