//! A restricted user meets RBAC the way Kubernetes words it.

use anyhow::{Context, Result, ensure};

use super::ControlPlane;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_user_is_refused_until_a_role_binding_allows_it() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let ca = shoal_ca::ClusterCa::load(&cp.dir().join("pki")).context("loading the cluster CA")?;
    let jane = ca.issue_client("jane", &["developers"])?;
    let kubeconfig = cp.dir().join("jane.kubeconfig");
    shoal_ca::Kubeconfig::new(&format!("https://{}", cp.addr), &jane, "jane").write(&kubeconfig)?;

    // Nothing bound yet: even reading pods is refused.
    let out = cp
        .kubectl_as(&kubeconfig, &["get", "pods", "-n", "default"], None)
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
        "unbound user: {err}"
    );

    let bind = |name: &str, role: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}, namespace: default}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}\nsubjects:\n- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: jane}}\n"
        )
    };
    cp.ok(&["apply", "-f", "-"], Some(&bind("jane-view", "view")))
        .await?;
    let out = cp
        .kubectl_as(&kubeconfig, &["get", "pods", "-n", "default"], None)
        .await?;
    ensure!(
        out.status.success(),
        "view allows list: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: janes, namespace: default}\ndata: {a: b}\n";
    let out = cp
        .kubectl_as(&kubeconfig, &["create", "-f", "-"], Some(cm))
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("configmaps is forbidden: User \"jane\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"default\""),
        "view user creating: {err}"
    );
    // Another namespace stays closed.
    let out = cp
        .kubectl_as(&kubeconfig, &["get", "pods", "-n", "kube-system"], None)
        .await?;
    ensure!(!out.status.success(), "the binding leaked into kube-system");

    cp.ok(&["apply", "-f", "-"], Some(&bind("jane-edit", "edit")))
        .await?;
    let out = cp
        .kubectl_as(&kubeconfig, &["create", "-f", "-"], Some(cm))
        .await?;
    ensure!(
        out.status.success(),
        "edit allows create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cp.stop().await
}
