//! Pods run for real: a two-node lab cluster (`shoal server` + agents as
//! processes in lab hosts), driven only by kubectl and by traffic from the
//! nodes. One cluster serves every check here, in sequence, to keep CI
//! lean.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::ready;
use shoal_e2e::{
    cluster::{ClusterConfig, LabCluster},
    lab::Lab,
};

const WAIT: Duration = Duration::from_secs(60);

fn pod_json(c: &LabCluster, name: &str) -> Result<Value> {
    let out = c.kubectl_ok(&["get", "pod", name, "-o", "json"], None)?;
    serde_json::from_str(&out).context("kubectl's pod JSON")
}

/// Waits until `name` satisfies `f` on its JSON.
fn wait_pod(
    c: &mut LabCluster,
    name: &str,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Result<Value> {
    c.wait_for(&format!("pod {name}: {what}"), WAIT, |c| {
        let pod = pod_json(c, name)?;
        Ok(f(&pod).then_some(pod))
    })
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or_default()
}

fn container_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or(&Value::Null)
}

/// `GET path` on `addr` from inside lab host `i` (a thread that enters its
/// network namespace), returning the body.
fn fetch_from_node(c: &LabCluster, i: usize, addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let netns = c.host(i).netns_path();
    let host = c.host(i).name().to_owned();
    let target: std::net::SocketAddr = addr.parse().context("a socket address")?;
    let path = path.to_owned();
    std::thread::spawn(move || -> Result<String> {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))
            .with_context(|| format!("connecting to {target} from {host}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .with_context(|| format!("reading from {target} on {host}"))?;
        let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
        body.with_context(|| format!("no HTTP reply from {target}: {reply:?}"))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the fetch thread panicked"))?
}

/// `ip:port` for a socket address of either family.
fn sock(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn url(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}/")
    } else {
        format!("http://{ip}:{port}/")
    }
}

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: NAME
  labels: {app: web}
spec:
  nodeSelector: {kubernetes.io/hostname: NODE}
  containers:
  - name: httpd
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{containerPort: 8080, name: http}]
    readinessProbe:
      httpGet: {path: /, port: http}
      periodSeconds: 1
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes:
  - name: scratch
    emptyDir: {medium: Memory, sizeLimit: 1Mi}
"#;

#[test]
fn pods_run_for_real_in_a_two_node_lab_cluster() -> Result<()> {
    // With SHOAL_KEEP_CLUSTER set, a failed run leaves everything for a look.
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 2, &dir)?;
    cfg.backoff_seconds = 1;
    // Small logs rotate within the test (the kubelet's flags).
    cfg.agent_args = [
        "--container-log-max-size",
        "8Ki",
        "--container-log-max-files",
        "3",
    ]
    .map(String::from)
    .to_vec();
    let mut c = LabCluster::start(cfg)?;

    // A chatty pod whose log outgrows the limit; checked further down,
    // once the agent has had time to rotate it.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: chatty}
spec:
  nodeSelector: {kubernetes.io/hostname: node-1}
  containers:
  - name: app
    image: busybox
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo \"line $i $(printf '%0100d' 0)\"; sleep 0.01; done"]
"#,
    )?;

    // Two web pods, one per node, both address families.
    for (name, node) in [("web-a", "node-1"), ("web-b", "node-2")] {
        c.apply(&WEB.replace("NAME", name).replace("NODE", node))?;
    }
    let mut ips = Vec::new();
    for name in ["web-a", "web-b"] {
        let pod = wait_pod(&mut c, name, "Running and Ready", |p| {
            phase(p) == "Running" && ready(p)
        })?;
        let pod_ips: Vec<String> = pod["status"]["podIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str().map(str::to_owned))
            .collect();
        ensure!(
            pod_ips.len() == 2
                && pod_ips[0].starts_with("10.244.")
                && pod_ips[1].starts_with("fd00:10:244:"),
            "{name} should have an IPv4 and an IPv6 pod IP: {pod_ips:?}"
        );
        ensure!(
            pod["status"]["hostIP"]
                .as_str()
                .is_some_and(|h| h.starts_with("172.20.0.")),
            "{name}'s hostIP: {}",
            pod["status"]["hostIP"]
        );
        ips.push(pod_ips);
    }
    // From each node to the pod on the other node, over both families.
    for ip in &ips[1] {
        let body = fetch_from_node(&c, 0, &sock(ip, 8080), "/")?;
        ensure!(body.trim() == "web-b", "node-1 → web-b at {ip}: {body:?}");
    }
    for ip in &ips[0] {
        let body = fetch_from_node(&c, 1, &sock(ip, 8080), "/")?;
        ensure!(body.trim() == "web-a", "node-2 → web-a at {ip}: {body:?}");
    }

    // kubectl exec and logs reach the container through the apiserver and
    // the node's agent.
    let out = c.kubectl(
        &["exec", "web-b", "--", "sh", "-c", "hostname; exit 3"],
        None,
    )?;
    ensure!(
        out.status.code() == Some(3) && String::from_utf8_lossy(&out.stdout).trim() == "web-b",
        "kubectl exec web-b: {:?} {:?} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // kubectl port-forward reaches web-b's port through its node's agent,
    // which connects inside the pod's network namespace; two connections.
    {
        use std::io::{BufRead, BufReader};
        let mut pf = c
            .host(0)
            .command(shoal_e2e::cluster::KUBECTL)?
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .arg("--cache-dir")
            .arg(dir.join("kubectl-pf-cache"))
            .args(["port-forward", "pod/web-b", "18081:8080"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running kubectl port-forward")?;
        let mut line = String::new();
        // kubectl says so once its listener is up (or exits on an error).
        // The pipe stays open: kubectl dies of SIGPIPE if its stdout goes.
        let mut stdout = BufReader::new(pf.stdout.take().context("kubectl's stdout")?);
        stdout.read_line(&mut line)?;
        let fetched = (0..2)
            .map(|_| fetch_from_node(&c, 0, "127.0.0.1:18081", "/"))
            .collect::<Result<Vec<_>>>();
        let _ = pf.kill();
        drop(stdout);
        let out = pf.wait_with_output()?;
        let fetched = fetched.with_context(|| {
            format!(
                "through kubectl port-forward ({line:?}, {})",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        ensure!(
            line.contains("Forwarding from 127.0.0.1:18081 -> 8080")
                && fetched.iter().all(|b| b.trim() == "web-b"),
            "kubectl port-forward pod/web-b: {line:?} {fetched:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The API access volume ServiceAccount admission added is mounted:
    // the pod's namespace, the cluster CA and a bound token.
    let out = c.kubectl(
        &[
            "exec",
            "web-b",
            "--",
            "sh",
            "-c",
            "cd /var/run/secrets/kubernetes.io/serviceaccount && cat namespace && echo && grep -c 'BEGIN CERTIFICATE' ca.crt && test -s token && echo token",
        ],
        None,
    )?;
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                == ["default", "1", "token"],
        "the service account files in web-b: {:?} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Memory-backed volumes: the emptyDir with medium Memory and, as with
    // the kubelet, the projected token volume are tmpfs mounts; the
    // emptyDir's sizeLimit caps what the pod can write there.
    let out = c.kubectl(
        &[
            "exec",
            "web-b",
            "--",
            "sh",
            "-c",
            "grep -c -e ' /scratch tmpfs ' -e ' /var/run/secrets/kubernetes.io/serviceaccount tmpfs ' /proc/mounts; dd if=/dev/zero of=/scratch/f bs=1024 count=2048 2>&1 | grep -c 'No space left'",
        ],
        None,
    )?;
    ensure!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["2", "1"],
        "web-b's /scratch (emptyDir medium Memory, sizeLimit 1Mi) and token volume should be tmpfs and the 2 MiB write refused: {:?} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // An ephemeral container (`kubectl debug`) joins the running pod: it
    // shares the pod's network (the app answers on localhost), runs once,
    // and leaves the app alone; changing it afterwards is refused.
    c.kubectl_ok(
        &[
            "debug",
            "web-b",
            "--image=busybox",
            "-c",
            "dbg",
            "--",
            "sh",
            "-c",
            "wget -q -O - http://127.0.0.1:8080/",
        ],
        None,
    )?;
    let pod = wait_pod(&mut c, "web-b", "its ephemeral container finished", |p| {
        p["status"]["ephemeralContainerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == "dbg" && s["state"]["terminated"]["exitCode"] == 0)
    })?;
    ensure!(
        phase(&pod) == "Running"
            && ready(&pod)
            && container_status(&pod, "httpd")["restartCount"] == 0,
        "web-b after kubectl debug: {}",
        pod["status"]
    );
    let logs = c.kubectl_ok(&["logs", "web-b", "-c", "dbg"], None)?;
    ensure!(
        logs.trim() == "web-b",
        "kubectl logs web-b -c dbg: {logs:?}"
    );
    let out = c.kubectl(
        &[
            "patch",
            "pod",
            "web-b",
            "--subresource=ephemeralcontainers",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/ephemeralContainers/0"}]"#,
        ],
        None,
    )?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("existing ephemeral containers \"dbg\" may not be removed or changed"),
        "removing an ephemeral container: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Pod to pod across nodes, both families: the client exits 0 only if
    // both fetches return web-b's name.
    let client = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeSelector: {{kubernetes.io/hostname: node-1}}
  restartPolicy: Never
  containers:
  - name: wget
    image: busybox
    command: ["sh", "-c", "wget -q -O - {} | grep -qx web-b && wget -q -O - {} | grep -qx web-b"]
"#,
        url(&ips[1][0], 8080),
        url(&ips[1][1], 8080)
    );
    c.apply(&client)?;
    let pod = wait_pod(&mut c, "client", "finished", |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    })?;
    ensure!(
        phase(&pod) == "Succeeded",
        "pod-to-pod across nodes failed: {}",
        container_status(&pod, "wget")
    );

    // The thin path: a Deployment behind a dual-stack Service, reached by
    // name from a pod on the other node (node-local DNS behind the cluster
    // DNS ClusterIP, socket-level load balancing to the endpoints).
    c.apply(include_str!("../../../manifests/demo/web.yaml"))?;
    c.wait_for("the web Deployment's 2 pods Ready", WAIT, |c| {
        let out = c.kubectl_ok(
            &[
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ],
            None,
        )?;
        Ok((out.trim() == "2").then_some(()))
    })?;
    let svc6 = c
        .kubectl_ok(
            &[
                "get",
                "service",
                "web",
                "-o",
                "jsonpath={.spec.clusterIPs[1]}",
            ],
            None,
        )?
        .trim()
        .to_owned();
    ensure!(
        svc6.contains(':'),
        "the web Service has no IPv6 ClusterIP: {svc6:?}"
    );
    let by_name = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: by-name}}
spec:
  nodeSelector: {{kubernetes.io/hostname: node-2}}
  restartPolicy: Never
  containers:
  - name: wget
    image: busybox
    command: ["sh", "-c", "nslookup web.default.svc.cluster.local && wget -q -O - http://web/ | grep -q '^web-' && wget -q -O - http://web.default.svc.cluster.local/ | grep -q '^web-' && wget -q -O - http://[{svc6}]/ | grep -q '^web-'"]
"#
    );
    c.apply(&by_name)?;
    let pod = wait_pod(&mut c, "by-name", "finished", |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    })?;
    ensure!(
        phase(&pod) == "Succeeded",
        "a pod could not reach the web Service by name: {}\n{}",
        container_status(&pod, "wget"),
        c.kubectl(&["logs", "by-name"], None)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    );

    // All of that without a single iptables rule on any node, in either
    // backend (nft or legacy), for either family: the datapath is eBPF.
    for i in 0..2 {
        for program in [
            "iptables-save",
            "ip6tables-save",
            "iptables-legacy-save",
            "ip6tables-legacy-save",
        ] {
            let out = c.host(i).command(program)?.output().with_context(|| {
                format!(
                    "running {program} on node {} (cargo xtask setup installs iptables)",
                    i + 1
                )
            })?;
            ensure!(
                out.status.success(),
                "{program} on node {} failed: {}",
                i + 1,
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let rules: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("-A ") || l.starts_with("-N "))
                .collect();
            ensure!(
                rules.is_empty(),
                "{program} on node {} shows rules: {rules:?}",
                i + 1
            );
        }
    }

    // busybox nslookup from a pod resolves every record type the node-local
    // DNS server answers: A and AAAA of a Service, SRV, PTR, a headless
    // Service's endpoints, a pod record and an ExternalName CNAME.
    c.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web-headless}
spec:
  clusterIP: None
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: outside}
spec:
  type: ExternalName
  externalName: db.example.test
"#,
    )?;
    let svc4 = c
        .kubectl_ok(
            &[
                "get",
                "service",
                "web",
                "-o",
                "jsonpath={.spec.clusterIPs[0]}",
            ],
            None,
        )?
        .trim()
        .to_owned();
    let web_b4 = &ips[1][0];
    let dns_check = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: dns-check}}
spec:
  nodeSelector: {{kubernetes.io/hostname: node-1}}
  restartPolicy: Never
  containers:
  - name: nslookup
    image: busybox
    command:
    - sh
    - -c
    - |
      until nslookup web-headless.default.svc.cluster.local. | grep -q 'Address: 10.244.'; do sleep 0.2; done
      nslookup -type=A web.default.svc.cluster.local. | grep -q 'Address: {svc4}' || exit 21
      nslookup -type=AAAA web.default.svc.cluster.local. | grep -q 'Address: {svc6}' || exit 22
      nslookup -type=SRV _http._tcp.web.default.svc.cluster.local. | grep -q 'service = .* 80 web.default.svc.cluster.local' || exit 23
      nslookup {svc4} | grep -q 'name = web.default.svc.cluster.local' || exit 24
      nslookup -type=A {pod_name}.default.pod.cluster.local. | grep -q 'Address: {web_b4}' || exit 25
      nslookup -type=CNAME outside.default.svc.cluster.local. | grep -q 'canonical name = db.example.test' || exit 26
      nslookup -type=A nope.default.svc.cluster.local. && exit 27
      echo dns ok
"#,
        pod_name = web_b4.replace('.', "-"),
    );
    c.apply(&dns_check)?;
    let pod = wait_pod(&mut c, "dns-check", "finished", |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    })?;
    ensure!(
        phase(&pod) == "Succeeded",
        "nslookup from a pod (exit 21 A, 22 AAAA, 23 SRV, 24 PTR, 25 pod record, 26 CNAME, 27 a missing name resolved): {}",
        container_status(&pod, "nslookup")
    );
    // node-1's agent counts those queries on its metrics port.
    let metrics = fetch_from_node(
        &c,
        0,
        &sock(&c.host(0).ipv4().to_string(), 10256),
        "/metrics",
    )?;
    ensure!(
        metrics.contains("shoal_dns_queries_total{type=\"SRV\",rcode=\"NOERROR\"}")
            && metrics.contains("shoal_dns_request_duration_seconds_bucket"),
        "node-1's /metrics: {metrics}"
    );

    // An init container gates the app; ConfigMap data arrives as env and
    // files, and a changed ConfigMap reaches the running pod.
    c.apply(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: greeting}
data: {greeting: hello}
---
apiVersion: v1
kind: Pod
metadata: {name: configured}
spec:
  restartPolicy: Never
  initContainers:
  - name: gate
    image: busybox
    command: ["sh", "-c", "sleep 1; echo opened > /work/gate"]
    volumeMounts: [{name: work, mountPath: /work}]
  - name: sidecar
    image: busybox
    restartPolicy: Always
    command: ["sh", "-c", "sleep 1; echo up > /work/sidecar; trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    startupProbe:
      exec: {command: [test, -f, /work/sidecar]}
      periodSeconds: 1
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: app
    image: busybox
    env:
    - name: GREETING
      valueFrom: {configMapKeyRef: {name: greeting, key: greeting}}
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    command: ["sh", "-c", "test -f /work/sidecar || exit 4; test \"$(cat /work/gate)\" = opened && test \"$GREETING\" = hello && test \"$POD_NAME\" = configured && test \"$(cat /cfg/greeting)\" = hello || exit 3; until test \"$(cat /cfg/greeting)\" = bonjour; do sleep 0.2; done"]
    volumeMounts:
    - {name: work, mountPath: /work}
    - {name: cfg, mountPath: /cfg}
  volumes:
  - {name: work, emptyDir: {}}
  - {name: cfg, configMap: {name: greeting}}
"#,
    )?;
    let pod = wait_pod(
        &mut c,
        "configured",
        "app running after its init container",
        |p| phase(p) == "Running" || phase(p) == "Failed",
    )?;
    ensure!(
        pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed",
        "the init container did not complete first: {}",
        pod["status"]["initContainerStatuses"]
    );
    ensure!(
        phase(&pod) == "Running",
        "app failed its checks (exit 4: it started before its sidecar): {}",
        container_status(&pod, "app")
    );
    // The sidecar (an init container with restartPolicy Always) started
    // before the app and keeps running beside it.
    let sidecar = &pod["status"]["initContainerStatuses"][1];
    ensure!(
        sidecar["name"] == "sidecar"
            && sidecar["started"] == true
            && sidecar["state"]["running"].is_object(),
        "the sidecar is not running beside the app: {sidecar}"
    );
    c.kubectl_ok(
        &[
            "patch",
            "configmap",
            "greeting",
            "--type=merge",
            "-p",
            r#"{"data":{"greeting":"bonjour"}}"#,
        ],
        None,
    )?;
    let pod = wait_pod(&mut c, "configured", "sees the updated ConfigMap", |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    })?;
    ensure!(
        phase(&pod) == "Succeeded",
        "configured: {}",
        container_status(&pod, "app")
    );
    ensure!(
        pod["status"]["initContainerStatuses"][1]["state"]["terminated"].is_object(),
        "the sidecar was not stopped when the app finished: {}",
        pod["status"]["initContainerStatuses"][1]
    );

    // A failing liveness probe restarts the container; kubectl shows it.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: unhealthy}
spec:
  containers:
  - name: app
    image: busybox
    command: ["sh", "-c", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 1000"]
    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 1
      failureThreshold: 1
"#,
    )?;
    wait_pod(
        &mut c,
        "unhealthy",
        "restarted by its liveness probe",
        |p| {
            container_status(p, "app")["restartCount"]
                .as_i64()
                .unwrap_or(0)
                >= 1
        },
    )?;
    let table = c.kubectl_ok(&["get", "pod", "unhealthy", "--no-headers"], None)?;
    let restarts: i64 = table
        .split_whitespace()
        .nth(3)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    ensure!(restarts >= 1, "kubectl get pod shows no restart: {table}");

    // A memory hog is OOMKilled and reported.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: busybox
    command: ["sh", "-c", "x=0123456789; while true; do x=$x$x; done"]
    resources: {limits: {memory: 32Mi}}
"#,
    )?;
    let pod = wait_pod(&mut c, "hog", "terminated", |p| {
        !container_status(p, "hog")["state"]["terminated"].is_null()
    })?;
    ensure!(
        container_status(&pod, "hog")["state"]["terminated"]["reason"] == "OOMKilled",
        "hog: {}",
        container_status(&pod, "hog")
    );

    // The restricted pod: uid 1000, read-only root, RuntimeDefault seccomp.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: restricted}
spec:
  restartPolicy: Never
  securityContext: {runAsUser: 1000, runAsGroup: 1000, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: check
    image: busybox
    securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
    command: ["sh", "-c", "test $(id -u) = 1000 || exit 11; touch /x 2>/dev/null && exit 12; grep -q 'Seccomp:[[:space:]]*2' /proc/self/status || exit 13; echo uid=$(id -u) restricted ok"]
"#,
    )?;
    let pod = wait_pod(&mut c, "restricted", "finished", |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    })?;
    ensure!(
        phase(&pod) == "Succeeded",
        "restricted pod (exit 11: uid, 12: writable root, 13: no seccomp): {}",
        container_status(&pod, "check")
    );
    let logs = c.kubectl_ok(&["logs", "restricted"], None)?;
    ensure!(
        logs.trim() == "uid=1000 restricted ok",
        "kubectl logs restricted: {logs:?}"
    );

    // The chatty pod's log was rotated: on the node, the live file and at
    // most two rotated ones (--container-log-max-files 3), the newest
    // rotated one ending where the live one goes on; `kubectl logs` reads
    // the live file, which no longer starts at line 1.
    let pod = pod_json(&c, "chatty")?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let logs_dir = dir
        .join("node-1")
        .join("agent")
        .join("logs")
        .join(format!("default_chatty_{uid}"))
        .join("app");
    let rotated = |dir: &std::path::Path| -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("0.log."))
            .collect();
        names.sort();
        Ok(names)
    };
    c.wait_for("the chatty pod's log to rotate", WAIT, |_| {
        Ok((!rotated(&logs_dir)?.is_empty()).then_some(()))
    })?;
    let first_line = |text: &str| -> Option<u64> {
        text.lines()
            .next()?
            .strip_prefix("line ")?
            .split(' ')
            .next()?
            .parse()
            .ok()
    };
    let names = rotated(&logs_dir)?;
    ensure!(
        names.len() <= 2,
        "more rotated logs than --container-log-max-files 3 allows: {names:?}"
    );
    let live = c.kubectl_ok(&["logs", "chatty"], None)?;
    let from = first_line(&live);
    ensure!(
        from.is_some_and(|n| n > 1),
        "kubectl logs chatty starts at line {from:?}: the live log was not rotated"
    );
    let newest = std::fs::read_to_string(logs_dir.join(&names[names.len() - 1]))?;
    ensure!(
        first_line(&newest).is_some_and(|n| from.is_some_and(|f| n < f)),
        "the newest rotated log ({}) does not hold older lines than the live one (from {from:?})",
        names[names.len() - 1]
    );
    c.kubectl_ok(&["delete", "pod", "chatty", "--grace-period=0"], None)?;

    // A RuntimeClass whose handler is crun: the pod runs under crun (its
    // container is in crun's state directory on the node, not runc's).
    c.apply(
        r#"
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: crun}
handler: crun
---
apiVersion: v1
kind: Pod
metadata: {name: under-crun}
spec:
  runtimeClassName: crun
  nodeSelector: {kubernetes.io/hostname: node-1}
  containers:
  - {name: app, image: busybox, command: ["sh", "-c", "echo under crun; exec sleep 3600"]}
"#,
    )?;
    let pod = wait_pod(&mut c, "under-crun", "running", |p| {
        matches!(phase(p), "Running" | "Failed")
    })?;
    ensure!(
        phase(&pod) == "Running",
        "the crun pod: {}",
        container_status(&pod, "app")
    );
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let runtimes = dir.join("node-1").join("agent").join("runtime");
    let listed = |runtime: &str| -> Result<String> {
        let out = std::process::Command::new(runtime)
            .arg("--root")
            .arg(runtimes.join(runtime))
            .arg("list")
            .output()
            .with_context(|| format!("running {runtime} list"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (crun, runc) = (listed("crun")?, listed("runc")?);
    ensure!(
        crun.contains(uid) && !runc.contains(uid),
        "pod {uid} is not (only) crun's: crun list:\n{crun}\nrunc list:\n{runc}"
    );
    c.kubectl_ok(&["delete", "pod", "under-crun", "--grace-period=0"], None)?;

    // A hostNetwork pod shares its node's network: its pod IPs are the
    // node's addresses and it serves on them.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: on-host}
spec:
  hostNetwork: true
  nodeSelector: {kubernetes.io/hostname: node-2}
  containers:
  - name: httpd
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo on-host > /www/index.html && exec httpd -f -p 18080 -h /www"]
    readinessProbe:
      httpGet: {path: /, port: 18080}
      periodSeconds: 1
"#,
    )?;
    let pod = wait_pod(&mut c, "on-host", "Ready", ready)?;
    let node_ips = [c.host(1).ipv4().to_string(), c.host(1).ipv6().to_string()];
    let pod_ips: Vec<&str> = pod["status"]["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["ip"].as_str())
        .collect();
    ensure!(
        pod_ips == node_ips,
        "the hostNetwork pod's podIPs are {pod_ips:?}, not node-2's {node_ips:?}"
    );
    for ip in &node_ips {
        let body = fetch_from_node(&c, 0, &sock(ip, 18080), "/")?;
        ensure!(
            body.trim() == "on-host",
            "node-2 {ip}:18080 answered {body:?}"
        );
    }
    c.kubectl_ok(&["delete", "pod", "on-host", "--grace-period=0"], None)?;

    // A missing image: ErrImagePull / ImagePullBackOff naming the image.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: missing}
spec:
  containers: [{name: app, image: "example.invalid/nope:1"}]
"#,
    )?;
    let pod = wait_pod(&mut c, "missing", "waiting on its image", |p| {
        matches!(
            container_status(p, "app")["state"]["waiting"]["reason"].as_str(),
            Some("ErrImagePull" | "ImagePullBackOff")
        )
    })?;
    let message = container_status(&pod, "app")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        message.contains("example.invalid/nope:1"),
        "message: {message}"
    );

    // Killing the agent leaves pods serving; the restarted agent adopts
    // them without a restart.
    let before = pod_json(&c, "web-b")?;
    let id_before = container_status(&before, "httpd")["containerID"].clone();
    c.kill_agent(1)?;
    for ip in &ips[1] {
        let body = fetch_from_node(&c, 0, &sock(ip, 8080), "/")?;
        ensure!(
            body.trim() == "web-b",
            "web-b while its agent is down: {body:?}"
        );
    }
    c.start_agent(1)?;
    std::thread::sleep(Duration::from_secs(3));
    let after = wait_pod(&mut c, "web-b", "Ready after the agent restart", ready)?;
    ensure!(
        container_status(&after, "httpd")["containerID"] == id_before
            && container_status(&after, "httpd")["restartCount"] == 0,
        "the restarted agent restarted web-b: before {id_before}, after {}",
        container_status(&after, "httpd")
    );

    // Deleting a pod stops it and removes it, its memory-backed volumes
    // unmounted on the node (the agents share this host's mount table).
    let web_a_uid = pod_json(&c, "web-a")?["metadata"]["uid"]
        .as_str()
        .context("web-a's uid")?
        .to_string();
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| m.lines().filter(|l| l.contains(&web_a_uid)).count())
            .unwrap_or(0)
    };
    ensure!(
        mounted() >= 2,
        "web-a's tmpfs volumes should be mounted on node-1 while it runs"
    );
    c.kubectl_ok(
        &[
            "delete",
            "pod",
            "web-a",
            "--grace-period=1",
            "--wait=true",
            "--timeout=30s",
        ],
        None,
    )?;
    let out = c.kubectl(&["get", "pod", "web-a"], None)?;
    ensure!(!out.status.success(), "web-a still exists after delete");
    ensure!(
        fetch_from_node(&c, 1, &sock(&ips[0][0], 8080), "/").is_err(),
        "web-a still answers after it was deleted"
    );
    c.wait_for("web-a's tmpfs volumes unmounted", WAIT, |_| {
        let n = mounted();
        ensure!(n == 0, "{n} mounts of pod {web_a_uid} left");
        Ok(Some(()))
    })?;

    // A claim of the default local-path class: the first pod writes a
    // file, goes, and the next one, on the same node, reads it back.
    c.apply(LOCAL_PATH_CLAIM)?;
    c.apply(
        &LOCAL_PATH_POD
            .replace("NAME", "writer")
            .replace("SCRIPT", "echo kept > /data/file"),
    )?;
    let writer = wait_pod(&mut c, "writer", "Succeeded", |p| phase(p) == "Succeeded")?;
    c.kubectl_ok(
        &["delete", "pod", "writer", "--wait=true", "--timeout=30s"],
        None,
    )?;
    c.apply(
        &LOCAL_PATH_POD
            .replace("NAME", "reader")
            .replace("SCRIPT", "grep -qx kept /data/file"),
    )?;
    let reader = wait_pod(&mut c, "reader", "finished", |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    })?;
    ensure!(
        phase(&reader) == "Succeeded" && reader["spec"]["nodeName"] == writer["spec"]["nodeName"],
        "the reader should find the writer's file on its node {}: {} on {}",
        writer["spec"]["nodeName"],
        phase(&reader),
        reader["spec"]["nodeName"]
    );
    // Reclaim Delete: the claim and its last pod gone, the volume goes and
    // its node's agent removes the directory.
    let volume = c.kubectl_ok(
        &["get", "pvc", "kept", "-o", "jsonpath={.spec.volumeName}"],
        None,
    )?;
    let path = c.kubectl_ok(
        &[
            "get",
            "pv",
            volume.trim(),
            "-o",
            "jsonpath={.spec.hostPath.path}",
        ],
        None,
    )?;
    let path = std::path::PathBuf::from(path.trim());
    ensure!(
        path.join("file").is_file(),
        "{} should hold the file",
        path.display()
    );
    c.kubectl_ok(
        &["delete", "pod", "reader", "--wait=true", "--timeout=30s"],
        None,
    )?;
    c.kubectl_ok(
        &["delete", "pvc", "kept", "--wait=true", "--timeout=30s"],
        None,
    )?;
    c.wait_for("the local-path directory removed", WAIT, |_| {
        Ok((!path.exists()).then_some(()))
    })?;
    Ok(())
}

const LOCAL_PATH_CLAIM: &str = "
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: kept}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
";

const LOCAL_PATH_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: NAME}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "SCRIPT"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: kept}
"#;
