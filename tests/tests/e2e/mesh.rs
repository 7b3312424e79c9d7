//! The mesh's sidecar injection in a lab cluster: a labelled namespace's
//! pods get `shoal-sidecar` (from the image every node's store was given)
//! as a native sidecar, which gets the pod's SPIFFE certificate from the
//! mesh CA in `shoal server`; an opted-out pod gets nothing; without the
//! eBPF capture the app's traffic is what it was; the app stops before its
//! sidecar.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::ready;
use shoal_e2e::{
    cluster::{ClusterConfig, LabCluster, SIDECAR_IMAGE},
    lab::Lab,
};

const WAIT: Duration = Duration::from_secs(120);
const NS: &str = "meshed";

#[test]
fn injected_sidecar_gets_the_pods_identity_and_leaves_its_traffic_alone() -> Result<()> {
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    let cfg = ClusterConfig::new(&Lab::unique_prefix(), 2, &dir)?;
    let mut c = LabCluster::start(cfg)?;
    c.sidecar_binary()
        .context("the injected sidecar's image is built from it")?;
    for node in ["node-1", "node-2"] {
        let images = std::process::Command::new(shoal_e2e::cluster::shoal_binary()?)
            .args(["image", "ls", "--data-dir"])
            .arg(dir.join(node).join("agent"))
            .output()?;
        let listed = String::from_utf8_lossy(&images.stdout);
        ensure!(
            listed.contains(SIDECAR_IMAGE),
            "{node}'s image store should hold {SIDECAR_IMAGE}: {listed}"
        );
    }

    // The app says on SIGTERM whether its sidecar still answers, into a
    // hostPath directory the test reads.
    let stop_dir = dir.join("stop-report");
    std::fs::create_dir_all(&stop_dir)?;
    c.kubectl_ok(&["create", "namespace", NS], None)?;
    c.kubectl_ok(&["label", "namespace", NS, "shoal.io/inject=enabled"], None)?;
    c.apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      # Away from node-1, where the mesh CA runs: the sidecar reaches it
      # across the lab fabric.
      nodeName: node-2
      terminationGracePeriodSeconds: 20
      volumes:
      - {{name: report, hostPath: {{path: {stop}, type: Directory}}}}
      containers:
      - name: app
        image: busybox
        volumeMounts: [{{name: report, mountPath: /report}}]
        command: ["sh", "-c", "mkdir -p /www && echo plain-app-answer > /www/index.html && httpd -p 8080 -h /www && trap 'timeout 5 wget -q -O /report/at-app-stop http://127.0.0.1:15020/ready || echo sidecar-gone > /report/at-app-stop; exit 0' TERM && while true; do sleep 0.2; done"]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: opted-out
  namespace: {NS}
  annotations: {{shoal.io/inject: "false"}}
spec:
  containers:
  - {{name: app, image: busybox, command: ["sleep", "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default}}
spec:
  nodeName: node-1
  containers:
  - {{name: app, image: busybox, command: ["sleep", "3600"]}}
"#,
        stop = stop_dir.display()
    ))?;

    // The Deployment's pod: the sidecar first among the init containers,
    // restartPolicy Always, started and ready, the app running.
    let pod = c.wait_for("web's pod Running and Ready", WAIT, |c| {
        let out = c.kubectl_ok(
            &["get", "pods", "-n", NS, "-l", "app=web", "-o", "json"],
            None,
        )?;
        let list: Value = serde_json::from_str(&out)?;
        Ok(list["items"]
            .as_array()
            .and_then(|items| items.first())
            .filter(|p| p["status"]["phase"] == "Running" && ready(p))
            .cloned())
    })?;
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let sidecar = &pod["spec"]["initContainers"][0];
    ensure!(
        sidecar["name"] == "shoal-sidecar"
            && sidecar["restartPolicy"] == "Always"
            && sidecar["image"] == SIDECAR_IMAGE,
        "web's pod should have shoal-sidecar ({SIDECAR_IMAGE}, restartPolicy Always) as its first init container: {}",
        pod["spec"]["initContainers"]
    );
    let status = &pod["status"]["initContainerStatuses"][0];
    ensure!(
        status["name"] == "shoal-sidecar"
            && status["started"] == true
            && status["ready"] == true
            && status["state"]["running"].is_object(),
        "the sidecar should be running, started and ready: {status}"
    );
    ensure!(
        pod["status"]["containerStatuses"][0]["state"]["running"].is_object(),
        "the app should run: {}",
        pod["status"]["containerStatuses"]
    );

    // Its /ready names the certificate it holds: the pod's service account.
    let answer = c.kubectl_ok(
        &[
            "exec",
            "-n",
            NS,
            &name,
            "-c",
            "app",
            "--",
            "wget",
            "-q",
            "-O",
            "-",
            "http://127.0.0.1:15020/ready",
        ],
        None,
    )?;
    let want = format!("ready: spiffe://cluster.local/ns/{NS}/sa/default");
    ensure!(
        answer.trim() == want,
        "the sidecar's /ready should say {want:?}: {answer:?}"
    );

    // No capture yet: the app still serves plain HTTP through its Service
    // to an unmeshed client.
    let ip = c.kubectl_ok(
        &[
            "get",
            "svc",
            "web",
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    )?;
    c.wait_for("client Running", WAIT, |c| {
        let out = c.kubectl_ok(
            &["get", "pod", "client", "-o", "jsonpath={.status.phase}"],
            None,
        )?;
        Ok((out == "Running").then_some(()))
    })?;
    let url = format!("http://{}/", ip.trim());
    let body = c.wait_for("the app's answer through its Service", WAIT, |c| {
        let out = c.kubectl(
            &[
                "exec", "client", "--", "timeout", "5", "wget", "-q", "-O", "-", &url,
            ],
            None,
        )?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })?;
    ensure!(
        body.trim() == "plain-app-answer",
        "GET {url} should be the app's page: {body:?}"
    );

    // The opted-out pod has no sidecar.
    let out = c.kubectl_ok(&["get", "pod", "opted-out", "-n", NS, "-o", "json"], None)?;
    let opted_out: Value = serde_json::from_str(&out)?;
    let names: Vec<&str> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| opted_out["spec"][k].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    ensure!(
        names == ["app"],
        "the pod annotated shoal.io/inject: \"false\" should have only its app: {names:?}"
    );

    // Deleting the pod stops the app first: its TERM handler still finds
    // the sidecar answering.
    c.kubectl_ok(&["delete", "pod", "-n", NS, &name, "--wait=false"], None)?;
    let report = stop_dir.join("at-app-stop");
    let said = c.wait_for("the app's report at its stop", WAIT, |_| {
        Ok(std::fs::read_to_string(&report)
            .ok()
            .filter(|s| !s.is_empty()))
    })?;
    ensure!(
        said.trim() == want,
        "when the app got SIGTERM its sidecar should still have answered {want:?}: {said:?}"
    );
    Ok(())
}
