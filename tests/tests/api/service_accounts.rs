//! Service accounts as a user meets them with kubectl: every namespace has
//! the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap (both
//! restored when deleted or changed), a legacy token Secret is filled with
//! a token that signs in until the Secret goes and is deleted with its
//! service account, and pods get the API access volume from admission (or
//! not, when automounting is off), naming only service accounts that exist.

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::{
    ControlPlane,
    endpointslice::{get_json, wait_for},
};

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n";
const TOKEN_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn uid(v: &Value) -> String {
    v.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// A Secret's `data[key]`, decoded (kubectl's jsonpath prints base64).
async fn secret_data(cp: &ControlPlane, name: &str, key: &str) -> Result<String> {
    let escaped = key.replace('.', "\\.");
    let b64 = cp
        .ok(
            &[
                "get",
                "secret",
                name,
                "-n",
                "team",
                "-o",
                &format!("jsonpath={{.data.{escaped}}}"),
            ],
            None,
        )
        .await?;
    let out = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(b64.trim().as_bytes())?;
            }
            child.wait_with_output()
        })
        .context("running base64 -d")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_get_the_default_account_and_the_root_ca() -> Result<()> {
    let cp = ControlPlane::start().await?;
    cp.ok(&["apply", "-f", "-"], Some(NAMESPACE)).await?;
    let sa = wait_for(
        &cp,
        &["serviceaccounts", "-n", "team"],
        "the default ServiceAccount in a new namespace",
        |list| match list["items"].as_array() {
            Some(items) if items.iter().any(|i| i["metadata"]["name"] == "default") => Ok(()),
            _ => Err("no default".into()),
        },
    )
    .await?;
    let first = sa["items"]
        .as_array()
        .and_then(|i| i.iter().find(|i| i["metadata"]["name"] == "default"))
        .map(uid)
        .unwrap_or_default();
    cp.ok(&["get", "sa", "default", "-n", "team"], None).await?;
    cp.ok(&["delete", "sa", "default", "-n", "team"], None)
        .await?;
    wait_for(
        &cp,
        &["sa", "default", "-n", "team", "--ignore-not-found"],
        "the default ServiceAccount made again after its deletion",
        |sa| {
            if !uid(sa).is_empty() && uid(sa) != first {
                Ok(())
            } else {
                Err("not yet recreated".into())
            }
        },
    )
    .await?;

    let ca = std::fs::read_to_string(cp.dir().join("pki").join(shoal_ca::CA_CERT_FILE))?;
    let has_ca = |cm: &Value| {
        if cm.pointer("/data/ca.crt").and_then(Value::as_str) == Some(ca.as_str()) {
            Ok(())
        } else {
            Err(format!("data: {}", cm["data"]))
        }
    };
    let args = [
        "configmap",
        "kube-root-ca.crt",
        "-n",
        "team",
        "--ignore-not-found",
    ];
    wait_for(&cp, &args, "kube-root-ca.crt with the cluster CA", has_ca).await?;
    for ns in ["default", "kube-system"] {
        let cm = get_json(&cp, &["configmap", "kube-root-ca.crt", "-n", ns]).await?;
        ensure!(has_ca(&cm).is_ok(), "kube-root-ca.crt in {ns}: {cm}");
    }
    cp.ok(
        &[
            "patch",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "team",
            "--type=merge",
            "-p",
            r#"{"data":{"ca.crt":"not a CA"}}"#,
        ],
        None,
    )
    .await?;
    wait_for(
        &cp,
        &args,
        "kube-root-ca.crt restored after an edit",
        has_ca,
    )
    .await?;
    cp.ok(
        &["delete", "configmap", "kube-root-ca.crt", "-n", "team"],
        None,
    )
    .await?;
    wait_for(
        &cp,
        &args,
        "kube-root-ca.crt restored after deletion",
        has_ca,
    )
    .await?;
    cp.stop().await
}

const ROBOT: &str =
    "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: robot, namespace: team}\n";
const ROBOT_TOKEN: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: robot-token\n  namespace: team\n  annotations: {kubernetes.io/service-account.name: robot}\ntype: kubernetes.io/service-account-token\n";
const VIEW_BINDING: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: robot-view, namespace: team}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects:\n- {kind: ServiceAccount, name: robot, namespace: team}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_token_secret_is_filled_signs_in_and_goes_with_its_account() -> Result<()> {
    let cp = ControlPlane::start().await?;
    cp.ok(&["apply", "-f", "-"], Some(NAMESPACE)).await?;
    cp.ok(&["apply", "-f", "-"], Some(ROBOT)).await?;
    cp.ok(&["apply", "-f", "-"], Some(VIEW_BINDING)).await?;
    cp.ok(&["apply", "-f", "-"], Some(ROBOT_TOKEN)).await?;
    let secret = wait_for(
        &cp,
        &["secret", "robot-token", "-n", "team"],
        "the token Secret filled by the token controller",
        |s| {
            let data = &s["data"];
            if ["token", "ca.crt", "namespace"].iter().all(|k| {
                data.get(*k)
                    .and_then(Value::as_str)
                    .is_some_and(|v| !v.is_empty())
            }) {
                Ok(())
            } else {
                Err(format!("data keys: {data}"))
            }
        },
    )
    .await?;
    let robot = get_json(&cp, &["sa", "robot", "-n", "team"]).await?;
    ensure!(
        secret.pointer("/metadata/annotations/kubernetes.io~1service-account.uid")
            == robot.pointer("/metadata/uid"),
        "the Secret names its account's uid: {secret}"
    );
    ensure!(secret_data(&cp, "robot-token", "namespace").await? == "team");
    let ca = std::fs::read_to_string(cp.dir().join("pki").join(shoal_ca::CA_CERT_FILE))?;
    ensure!(secret_data(&cp, "robot-token", "ca.crt").await? == ca);
    let token = secret_data(&cp, "robot-token", "token").await?;
    ensure!(token.split('.').count() == 3, "not a JWT: {token}");

    // The token signs in as the service account, and RBAC applies.
    let kubeconfig = cp.token_kubeconfig("robot", &token, "team")?;
    let out = cp.kubectl_as(&kubeconfig, &["get", "pods"], None).await?;
    ensure!(
        out.status.success(),
        "the legacy token with view bound: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cp
        .kubectl_as(&kubeconfig, &["get", "pods", "-n", "default"], None)
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("User \"system:serviceaccount:team:robot\" cannot list resource \"pods\""),
        "outside its binding: {err}"
    );
    // kubectl --token with no other credentials in the kubeconfig.
    let bare = cp.token_kubeconfig("bare", "placeholder", "team")?;
    let out = cp
        .kubectl_as(&bare, &["--token", &token, "get", "pods"], None)
        .await?;
    ensure!(
        out.status.success(),
        "kubectl --token: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleting the Secret revokes the token.
    cp.ok(&["delete", "secret", "robot-token", "-n", "team"], None)
        .await?;
    let out = cp.kubectl_as(&kubeconfig, &["get", "pods"], None).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("You must be logged in to the server"),
        "a token whose Secret is gone: {err}"
    );

    // A token Secret goes with its service account.
    cp.ok(&["apply", "-f", "-"], Some(ROBOT_TOKEN)).await?;
    wait_for(
        &cp,
        &["secret", "robot-token", "-n", "team"],
        "the token Secret filled again",
        |s| match s.pointer("/data/token") {
            Some(_) => Ok(()),
            None => Err("no token".into()),
        },
    )
    .await?;
    cp.ok(&["delete", "sa", "robot", "-n", "team"], None)
        .await?;
    wait_for(
        &cp,
        &["secrets", "-n", "team"],
        "the token Secret deleted with its ServiceAccount",
        |list| match list["items"].as_array() {
            Some(items) if items.iter().any(|i| i["metadata"]["name"] == "robot-token") => {
                Err("still there".into())
            }
            _ => Ok(()),
        },
    )
    .await?;
    cp.stop().await
}

fn pod(name: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: team}}\nspec:\n{spec_extra}  initContainers: [{{name: init, image: busybox}}]\n  containers: [{{name: app, image: busybox}}, {{name: side, image: busybox}}]\n"
    )
}

/// The names of a pod's `kube-api-access-*` volumes.
fn access_volumes(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .filter(|n| n.starts_with("kube-api-access-"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_as_an_existing_account_with_its_api_access_volume() -> Result<()> {
    let cp = ControlPlane::start().await?;
    cp.ok(&["apply", "-f", "-"], Some(NAMESPACE)).await?;
    // Created right after its namespace: admission waits for the default
    // account as Kubernetes' does.
    cp.ok(&["apply", "-f", "-"], Some(&pod("web", ""))).await?;
    let web = get_json(&cp, &["pod", "web", "-n", "team"]).await?;
    ensure!(web["spec"]["serviceAccountName"] == "default", "{web}");
    let volumes = access_volumes(&web);
    ensure!(volumes.len() == 1, "one access volume: {volumes:?}");
    let name = &volumes[0];
    ensure!(name.len() == "kube-api-access-".len() + 5, "{name}");
    let volume = web["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name.as_str()))
        .cloned()
        .unwrap_or_default();
    let sources = &volume["projected"]["sources"];
    ensure!(
        sources[0]["serviceAccountToken"]
            == serde_json::json!({"expirationSeconds": 3607, "path": "token"}),
        "token source: {volume}"
    );
    ensure!(
        sources[1]["configMap"]
            == serde_json::json!({"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}),
        "CA source: {volume}"
    );
    ensure!(
        sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] == "metadata.namespace"
            && sources[2]["downwardAPI"]["items"][0]["path"] == "namespace",
        "namespace source: {volume}"
    );
    for pointer in [
        "/spec/initContainers/0",
        "/spec/containers/0",
        "/spec/containers/1",
    ] {
        let mounts = web
            .pointer(&format!("{pointer}/volumeMounts"))
            .cloned()
            .unwrap_or_default();
        ensure!(
            mounts
                == serde_json::json!([{"name": name, "mountPath": TOKEN_MOUNT, "readOnly": true}]),
            "{pointer}: {mounts}"
        );
    }

    // Automounting off on the pod, or on its service account.
    cp.ok(
        &["apply", "-f", "-"],
        Some(&pod("quiet", "  automountServiceAccountToken: false\n")),
    )
    .await?;
    let quiet = get_json(&cp, &["pod", "quiet", "-n", "team"]).await?;
    ensure!(
        access_volumes(&quiet).is_empty()
            && quiet
                .pointer("/spec/containers/0/volumeMounts")
                .is_none_or(|m| m.as_array().is_some_and(Vec::is_empty)),
        "automountServiceAccountToken: false on the pod: {quiet}"
    );
    cp.ok(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: batch, namespace: team}\nautomountServiceAccountToken: false\n"),
    )
    .await?;
    cp.ok(
        &["apply", "-f", "-"],
        Some(&pod("cron", "  serviceAccountName: batch\n")),
    )
    .await?;
    let cron = get_json(&cp, &["pod", "cron", "-n", "team"]).await?;
    ensure!(
        cron["spec"]["serviceAccountName"] == "batch" && access_volumes(&cron).is_empty(),
        "automountServiceAccountToken: false on the account: {cron}"
    );

    // A service account that does not exist.
    let out = cp
        .kubectl(
            &["apply", "-f", "-"],
            Some(&pod("lost", "  serviceAccountName: ghost\n")),
        )
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && err.contains("Error from server (Forbidden)")
            && err.contains(
                "pods \"lost\" is forbidden: error looking up service account team/ghost: serviceaccount \"ghost\" not found"
            ),
        "a pod naming a missing service account: {err}"
    );
    cp.stop().await
}
