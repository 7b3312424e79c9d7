//! Secrets encrypted at rest, and service accounts that sign in with the
//! tokens `kubectl create token` gets them.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::ControlPlane;

const PASSWORD: &str = "s3cr3t-hunter2";
/// `PASSWORD` as a Secret's `data` holds it.
const PASSWORD_B64: &str = "czNjcjN0LWh1bnRlcjI=";

async fn etcd(cp: &ControlPlane) -> Result<etcd_client::Client> {
    Ok(etcd_client::Client::connect([format!("http://{}", cp.store_addr)], None).await?)
}

async fn raw_value(etcd: &mut etcd_client::Client, key: &str) -> Result<Vec<u8>> {
    let resp = etcd.get(key, None).await?;
    let kv = resp
        .kvs()
        .first()
        .with_context(|| format!("{key} is not in the store"))?;
    Ok(kv.value().to_vec())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_stored_encrypted_and_read_back_in_the_clear() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let config = cp
        .dir()
        .join("pki")
        .join(shoal_apiserver::ENCRYPTION_CONFIG_FILE);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&config)?.permissions());
    ensure!(
        mode & 0o077 == 0,
        "{} is readable by others: {mode:o}",
        config.display()
    );

    // kubectl's imperative `create secret` sends protobuf, which the API
    // does not read yet: the Secret goes in as YAML.
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: db, namespace: default}}\nstringData: {{password: {PASSWORD}}}\n"
    );
    cp.ok(&["create", "-f", "-"], Some(&secret)).await?;
    let mut etcd = etcd(&cp).await?;
    let stored = raw_value(&mut etcd, "/registry/secrets/default/db").await?;
    ensure!(
        stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"),
        "the stored Secret lacks the aesgcm prefix: {}",
        String::from_utf8_lossy(&stored[..stored.len().min(40)])
    );
    ensure!(
        !contains(&stored, PASSWORD)
            && !contains(&stored, PASSWORD_B64)
            && !contains(&stored, "\"db\""),
        "the stored Secret leaks its contents: {}",
        String::from_utf8_lossy(&stored)
    );
    // Other kinds stay plain JSON.
    let ns = raw_value(&mut etcd, "/registry/namespaces/default").await?;
    ensure!(ns.starts_with(b"{"), "a namespace was encrypted");

    let data = cp
        .ok(
            &["get", "secret", "db", "-o", "jsonpath={.data.password}"],
            None,
        )
        .await?;
    ensure!(data == PASSWORD_B64, "kubectl get secret: {data:?}");
    // The watch cache decrypts too: a list at resourceVersion=0 is served from it.
    let cached: Value = serde_json::from_str(
        &cp.ok(
            &[
                "get",
                "--raw",
                "/api/v1/namespaces/default/secrets?resourceVersion=0",
            ],
            None,
        )
        .await?,
    )?;
    let from_cache = cached["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["metadata"]["name"] == "db")
        .map(|s| s["data"]["password"].clone());
    ensure!(
        from_cache == Some(Value::from(PASSWORD_B64)),
        "the watch cache: {cached}"
    );

    // A Secret written before encryption was turned on still reads.
    let legacy = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"legacy","namespace":"default","uid":"0b6c6f2e-legacy","creationTimestamp":"2024-01-01T00:00:00Z"},"type":"Opaque","data":{"k":"djE="}}"#;
    etcd.put("/registry/secrets/default/legacy", legacy, None)
        .await?;
    let k = cp
        .ok(
            &["get", "secret", "legacy", "-o", "jsonpath={.data.k}"],
            None,
        )
        .await?;
    ensure!(k == "djE=", "plain Secret: {k:?}");

    // Rewriting every Secret, the rotation's step: the plain one is
    // encrypted now; one already under the current key is left alone.
    let all = cp.ok(&["get", "secrets", "-A", "-o", "json"], None).await?;
    let revision = |resp: etcd_client::GetResponse| resp.kvs().first().map(|kv| kv.mod_revision());
    let db_rev = revision(etcd.get("/registry/secrets/default/db", None).await?);
    // kubectl validates a List against /openapi/v2, which is not served yet.
    cp.ok(&["replace", "--validate=false", "-f", "-"], Some(&all))
        .await?;
    let rewritten = raw_value(&mut etcd, "/registry/secrets/default/legacy").await?;
    ensure!(
        rewritten.starts_with(b"k8s:enc:aesgcm:v1:key1:"),
        "kubectl replace left the plain Secret plain"
    );
    ensure!(
        revision(etcd.get("/registry/secrets/default/db", None).await?) == db_rev,
        "kubectl replace rewrote a Secret already under the current key"
    );
    let k = cp
        .ok(
            &["get", "secret", "legacy", "-o", "jsonpath={.data.k}"],
            None,
        )
        .await?;
    ensure!(k == "djE=", "the rewritten Secret: {k:?}");

    // A damaged ciphertext is a 500 naming the key; nothing else breaks.
    let mut damaged = stored.clone();
    if let Some(last) = damaged.last_mut() {
        *last ^= 0x01;
    }
    etcd.put("/registry/secrets/default/db", damaged, None)
        .await?;
    let out = cp.kubectl(&["get", "secret", "db"], None).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && err.contains("InternalError")
            && err.contains("/registry/secrets/default/db")
            && err.contains("\"key1\""),
        "reading a damaged Secret: {err}"
    );
    cp.ok(&["get", "--raw", "/readyz"], None).await?;
    let k = cp
        .ok(
            &["get", "secret", "legacy", "-o", "jsonpath={.data.k}"],
            None,
        )
        .await?;
    ensure!(k == "djE=", "after the damaged read: {k:?}");
    cp.ok(&["delete", "secret", "legacy"], None).await?;
    cp.stop().await
}

async fn stderr_of(cp: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = cp.kubectl_as(kubeconfig, args, None).await?;
    ensure!(!out.status.success(), "kubectl {args:?} succeeded");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Flips one character of a token's signature.
fn tampered(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    if let Some(c) = chars.last_mut() {
        *c = if *c == 'A' { 'B' } else { 'A' };
    }
    let i = chars.len().saturating_sub(10);
    if let Some(c) = chars.get_mut(i) {
        *c = if *c == 'x' { 'y' } else { 'x' };
    }
    chars.into_iter().collect()
}

/// kubectl's words for a 401 whose Status it read. (Through `get pods` its
/// discovery fails first and it says "(the server has asked for the client
/// to provide credentials)", as it does against Kubernetes.)
const UNAUTHORIZED: &str = "error: You must be logged in to the server (Unauthorized)";
const LOGGED_OUT: &str = "error: You must be logged in to the server (";
const PODS: &str = "/api/v1/namespaces/default/pods";

/// Checks that `kubeconfig`'s token is refused with a 401.
async fn refused(cp: &ControlPlane, kubeconfig: &Path, what: &str) -> Result<()> {
    let err = stderr_of(cp, kubeconfig, &["get", "pods"]).await?;
    ensure!(err.contains(LOGGED_OUT), "{what}, get pods: {err}");
    let err = stderr_of(cp, kubeconfig, &["get", "--raw", PODS]).await?;
    ensure!(err.contains(UNAUTHORIZED), "{what}, get --raw: {err}");
    Ok(())
}

// kubectl's imperative `create serviceaccount|rolebinding|configmap` send
// protobuf, which the API does not read yet: these go in as YAML.
const SERVICE_ACCOUNT: &str =
    "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: robot, namespace: default}\n";
const VIEW_BINDING: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: robot-view, namespace: default}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects:\n- {kind: ServiceAccount, name: robot, namespace: default}\n";
const CONFIG_MAP: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: default}\ndata: {a: b}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_signs_in_with_its_token_and_meets_rbac() -> Result<()> {
    let cp = ControlPlane::start().await?;
    cp.ok(&["create", "-f", "-"], Some(SERVICE_ACCOUNT)).await?;

    // kubectl create token (a protobuf TokenRequest).
    let token = cp.ok(&["create", "token", "robot"], None).await?;
    let token = token.trim();
    ensure!(token.split('.').count() == 3, "not a JWT: {token}");
    let robot = cp.token_kubeconfig("robot", token, "default")?;

    let err = stderr_of(&cp, &robot, &["get", "pods"]).await?;
    ensure!(
        err.contains("pods is forbidden: User \"system:serviceaccount:default:robot\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
        "unbound service account: {err}"
    );
    cp.ok(&["create", "-f", "-"], Some(VIEW_BINDING)).await?;
    let out = cp.kubectl_as(&robot, &["get", "pods"], None).await?;
    ensure!(
        out.status.success(),
        "view bound to the service account: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cp
        .kubectl_as(&robot, &["create", "-f", "-"], Some(CONFIG_MAP))
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "a view binding let the service account create"
    );
    ensure!(
        err.contains(
            "User \"system:serviceaccount:default:robot\" cannot create resource \"configmaps\""
        ),
        "view is read-only: {err}"
    );

    // A tampered token is refused outright, on every path.
    let forged = cp.token_kubeconfig("forged", &tampered(token), "default")?;
    refused(&cp, &forged, "tampered token").await?;
    // With a client certificate too, the certificate decides.
    let out = cp
        .kubectl(
            &[
                "--token",
                &tampered(token),
                "get",
                "pods",
                "-n",
                "kube-system",
            ],
            None,
        )
        .await?;
    ensure!(
        out.status.success(),
        "the admin certificate with a bad token: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A TokenRequest as JSON, with its options.
    let request = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":1200,"audiences":["https://kubernetes.default.svc.cluster.local","vault"]}}"#;
    let reply: Value = serde_json::from_str(
        &cp.ok(
            &[
                "create",
                "--raw",
                "/api/v1/namespaces/default/serviceaccounts/robot/token",
                "-f",
                "-",
            ],
            Some(request),
        )
        .await?,
    )?;
    ensure!(
        reply["kind"] == "TokenRequest"
            && reply["spec"]["expirationSeconds"] == 1200
            && reply["spec"]["audiences"][1] == "vault"
            && reply["status"]["expirationTimestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
        "TokenRequest reply: {reply}"
    );
    let json_token = reply["status"]["token"]
        .as_str()
        .context("no status.token")?;
    let out = cp
        .kubectl_as(
            &cp.token_kubeconfig("robot2", json_token, "default")?,
            &["get", "pods"],
            None,
        )
        .await?;
    ensure!(
        out.status.success(),
        "the JSON-issued token: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Validation, and a service account that does not exist.
    let out = cp
        .kubectl(&["create", "token", "robot", "--duration=5m"], None)
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes"),
        "five minutes: {err}"
    );
    let out = cp.kubectl(&["create", "token", "ghost"], None).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("serviceaccounts \"ghost\" not found"),
        "missing account: {err}"
    );

    // A token bound to a pod lives as long as the pod.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: worker, namespace: default}\nspec:\n  serviceAccountName: robot\n  containers: [{name: c, image: busybox}]\n";
    cp.ok(&["create", "-f", "-"], Some(pod)).await?;
    let bound = cp
        .ok(
            &[
                "create",
                "token",
                "robot",
                "--bound-object-kind=Pod",
                "--bound-object-name=worker",
            ],
            None,
        )
        .await?;
    let bound = cp.token_kubeconfig("bound", bound.trim(), "default")?;
    let out = cp.kubectl_as(&bound, &["get", "pods"], None).await?;
    ensure!(
        out.status.success(),
        "pod-bound token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cp.ok(&["delete", "pod", "worker"], None).await?;
    refused(&cp, &bound, "token of a deleted pod").await?;

    // Deleting the account revokes its tokens; a new one of the same name
    // does not bring them back.
    cp.ok(&["delete", "serviceaccount", "robot"], None).await?;
    refused(&cp, &robot, "token of a deleted account").await?;
    cp.ok(&["create", "-f", "-"], Some(SERVICE_ACCOUNT)).await?;
    refused(&cp, &robot, "token of a recreated account").await?;
    cp.stop().await
}
