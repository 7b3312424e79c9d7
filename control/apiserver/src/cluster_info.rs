//! `kube-public/cluster-info`: the ConfigMap a joining node reads before it
//! trusts anything, holding a kubeconfig with the API's address and the
//! cluster CA (kubeadm's discovery). The node checks the CA against the
//! hash it was given, so the ConfigMap is readable without credentials:
//! anonymous requests are allowed for that one object only (as Kubernetes'
//! anonymous authenticator with a path condition), and RBAC lets
//! `system:anonymous` get it, as kubeadm's
//! `kubeadm:bootstrap-signer-clusterinfo` Role does.

use base64::Engine;
use serde_json::{Value, json};

use crate::{
    authz::User,
    request::{Route, Verb},
};

/// Where the ConfigMap lives.
pub const NAMESPACE: &str = "kube-public";
/// The ConfigMap's name.
pub const NAME: &str = "cluster-info";
/// The Role (and RoleBinding) that lets anyone read it.
const ROLE: &str = "kubeadm:bootstrap-signer-clusterinfo";
/// Who an anonymous request is.
const ANONYMOUS_USER: &str = "system:anonymous";
/// The group of anonymous requests.
const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";

/// Whether `route` reads the cluster-info ConfigMap, the one thing a
/// request without credentials may do beyond health and version.
pub fn is_cluster_info_read(route: &Route) -> bool {
    matches!(route, Route::Resource(r)
        if r.verb == Verb::Get
            && r.group.is_empty()
            && r.resource == "configmaps"
            && r.namespace.as_deref() == Some(NAMESPACE)
            && r.name.as_deref() == Some(NAME)
            && r.subresource.is_none())
}

/// The user of a request without credentials.
pub fn anonymous_user() -> User {
    User {
        name: ANONYMOUS_USER.to_owned(),
        groups: vec![UNAUTHENTICATED_GROUP.to_owned()],
    }
}

/// The ConfigMap: `data.kubeconfig` names the API at `server_url` and
/// trusts `ca_pem`, with no user.
pub fn config_map(server_url: &str, ca_pem: &str) -> Value {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    certificate-authority-data: {ca}\n    server: {server_url}\ncontexts: []\ncurrent-context: \"\"\npreferences: {{}}\nusers: []\n"
    );
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "data": {"kubeconfig": kubeconfig},
    })
}

/// The Role allowing `get` of the ConfigMap and its binding to
/// `system:anonymous`, both in kube-public.
pub fn rbac_objects() -> [Value; 2] {
    let group = "rbac.authorization.k8s.io";
    [
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": ROLE, "namespace": NAMESPACE},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [NAME]}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": ROLE, "namespace": NAMESPACE},
            "roleRef": {"apiGroup": group, "kind": "Role", "name": ROLE},
            "subjects": [{"apiGroup": group, "kind": "User", "name": ANONYMOUS_USER}],
        }),
    ]
}
