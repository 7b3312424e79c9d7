//! kubectl's everyday commands against shoal's API.

use anyhow::{Result, ensure};
use serde_json::Value;

use super::ControlPlane;

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
  labels: {app: web, tier: front}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        command: ["httpd", "-f", "-p", "8080"]
        ports:
        - containerPort: 8080
      - name: sidecar
        image: busybox:1.36
        command: ["sleep", "1d"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: demo
data:
  greeting: hello
"#;

fn json(s: &str) -> Result<Value> {
    Ok(serde_json::from_str(s)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_edit_and_reapply_like_a_user() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let out = cp.ok(&["apply", "-f", "-"], Some(APP)).await?;
    for line in [
        "namespace/demo created",
        "deployment.apps/web created",
        "service/web created",
        "configmap/web-config created",
    ] {
        ensure!(out.contains(line), "apply said {out:?}, not {line:?}");
    }
    // The server's defaults and the dual-stack allocation are visible.
    let svc = json(
        &cp.ok(&["get", "svc", "web", "-n", "demo", "-o", "json"], None)
            .await?,
    )?;
    let ips: Vec<&str> = svc["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        ips.len() == 2,
        "a PreferDualStack service gets two cluster IPs, got {ips:?}"
    );
    ensure!(
        ips[0].starts_with("10.96.") && ips[1].starts_with("fd00:10:96::"),
        "IPs outside the service CIDRs: {ips:?}"
    );
    ensure!(
        svc["spec"]["ports"][0]["protocol"] == "TCP",
        "port protocol not defaulted: {svc}"
    );
    let wide = cp
        .ok(&["get", "deploy", "-n", "demo", "-o", "wide"], None)
        .await?;
    ensure!(
        wide.contains("CONTAINERS") && wide.contains("web,sidecar") && wide.contains("app=web"),
        "{wide}"
    );

    // Apply again after an edit: one container removed, an image bumped,
    // a label dropped. kubectl sends a strategic merge patch.
    let edited = APP
        .replace("labels: {app: web, tier: front}", "labels: {app: web}")
        .replace("image: busybox:1.36\n        command: [\"httpd\"", "image: busybox:1.37\n        command: [\"httpd\"")
        .replace("      - name: sidecar\n        image: busybox:1.36\n        command: [\"sleep\", \"1d\"]\n", "");
    let out = cp.ok(&["apply", "-f", "-"], Some(&edited)).await?;
    ensure!(
        out.contains("deployment.apps/web configured") && out.contains("service/web unchanged"),
        "{out}"
    );
    let d = json(
        &cp.ok(&["get", "deploy", "web", "-n", "demo", "-o", "json"], None)
            .await?,
    )?;
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        containers.len() == 1 && containers[0]["image"] == "busybox:1.37",
        "containers after re-apply: {containers:?}"
    );
    ensure!(
        d["metadata"]["labels"].get("tier").is_none(),
        "the removed label is still there: {}",
        d["metadata"]["labels"]
    );
    ensure!(
        d["metadata"]["generation"] == 2,
        "generation follows the spec: {}",
        d["metadata"]["generation"]
    );
    ensure!(
        d["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == "25%",
        "deployment defaults missing"
    );

    // Server-side apply of the same file.
    let out = cp
        .ok(&["apply", "--server-side", "-f", "-"], Some(&edited))
        .await?;
    ensure!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );

    // scale, label, annotate, yaml output, describe.
    cp.ok(&["scale", "deploy/web", "-n", "demo", "--replicas=3"], None)
        .await?;
    let replicas = cp
        .ok(
            &[
                "get",
                "deploy",
                "web",
                "-n",
                "demo",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
            None,
        )
        .await?;
    ensure!(replicas == "3", "scale did not stick: {replicas}");
    cp.ok(
        &["label", "cm", "web-config", "-n", "demo", "color=blue"],
        None,
    )
    .await?;
    cp.ok(
        &["annotate", "cm", "web-config", "-n", "demo", "note=hi"],
        None,
    )
    .await?;
    let labelled = cp
        .ok(
            &["get", "cm", "-n", "demo", "-l", "color=blue", "-o", "name"],
            None,
        )
        .await?;
    ensure!(
        labelled.trim() == "configmap/web-config",
        "label selector: {labelled:?}"
    );
    let yaml = cp
        .ok(
            &["get", "cm", "web-config", "-n", "demo", "-o", "yaml"],
            None,
        )
        .await?;
    ensure!(
        yaml.contains("note: hi") && yaml.contains("greeting: hello"),
        "{yaml}"
    );
    let described = cp
        .ok(&["describe", "deploy", "web", "-n", "demo"], None)
        .await?;
    ensure!(
        described.contains("Replicas:") && described.contains("busybox:1.37"),
        "{described}"
    );

    // delete, then the object is gone.
    cp.ok(&["delete", "cm", "web-config", "-n", "demo"], None)
        .await?;
    let gone = cp
        .kubectl(&["get", "cm", "web-config", "-n", "demo"], None)
        .await?;
    let err = String::from_utf8_lossy(&gone.stderr);
    ensure!(
        !gone.status.success() && err.contains("configmaps \"web-config\" not found"),
        "{err}"
    );
    cp.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_shows_changes_as_they_happen() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let mut watch = tokio::process::Command::new(super::KUBECTL)
        .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
        .arg(format!(
            "--cache-dir={}",
            cp.dir().join("cache-watch").display()
        ))
        .args([
            "get",
            "configmaps",
            "-n",
            "default",
            "-w",
            "--output-watch-events",
            "--request-timeout=20s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    cp.ok(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {a: b}\n"),
    )
    .await?;
    cp.ok(&["label", "cm", "watched", "x=y"], None).await?;
    cp.ok(&["delete", "cm", "watched"], None).await?;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    watch.start_kill()?;
    let out = watch.wait_with_output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let events: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("watched"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    ensure!(
        events == ["ADDED", "MODIFIED", "DELETED"],
        "kubectl -w printed {text:?}"
    );
    cp.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_status_kubectl_shows_and_nothing_is_written() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let cases = [
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: strict}\ndata: {a: b}\nbogus: 1\n",
            "strict decoding error: unknown field \"bogus\"",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n",
            "metadata.name: Invalid value: \"Bad_Name\"",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: noimage}\nspec:\n  containers:\n  - name: c\n",
            "spec.containers[0].image: Required value",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: badport}\nspec:\n  ports:\n  - port: 70000\n",
            "spec.ports[0].port: Invalid value: 70000",
        ),
    ];
    for (manifest, want) in cases {
        let out = cp.kubectl(&["apply", "-f", "-"], Some(manifest)).await?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains(want),
            "for {manifest:?} kubectl said {err:?}, wanted {want:?}"
        );
    }
    let names = cp
        .ok(&["get", "cm,pods,svc", "-n", "default", "-o", "name"], None)
        .await?;
    ensure!(
        !names.contains("strict") && !names.contains("noimage") && !names.contains("badport"),
        "a refused object was written: {names}"
    );
    // A stale update conflicts instead of overwriting.
    cp.ok(
        &[
            "create",
            "configmap",
            "-n",
            "default",
            "cm1",
            "--from-literal=a=1",
            "--dry-run=client",
            "-o",
            "json",
        ],
        None,
    )
    .await
    .and_then(|j| Ok(serde_json::from_str::<Value>(&j)?))?;
    cp.ok(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm1}\ndata: {a: '1'}\n"),
    )
    .await?;
    let mut live = json(&cp.ok(&["get", "cm", "cm1", "-o", "json"], None).await?)?;
    cp.ok(&["label", "cm", "cm1", "bump=1"], None).await?;
    live["data"]["a"] = "stale".into();
    let out = cp
        .kubectl(&["replace", "-f", "-"], Some(&live.to_string()))
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("the object has been modified"),
        "a stale replace gave {err:?}"
    );
    cp.stop().await
}
