//! The workload controllers held together in a real lab cluster: three
//! nodes, node-3's agent joining late. A DaemonSet follows the nodes as
//! they join; then, side by side, a Deployment is rolled to a new template
//! and back under a client that must see no failed request, a StatefulSet
//! with per-pod claims scales 0→3→1→3 keeping its data, a failing Job
//! stops at its backoff limit and a CronJob runs Jobs and keeps its
//! history. Everything is driven and checked through kubectl, as a user
//! would.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::ready;
use shoal_e2e::{
    cluster::{ClusterConfig, LabCluster},
    lab::Lab,
};

const WAIT: Duration = Duration::from_secs(90);

fn json(c: &LabCluster, args: &[&str]) -> Result<Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&c.kubectl_ok(&full, None)?).context("kubectl's JSON")
}

fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list["items"].as_array().into_iter().flatten()
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn has_condition(obj: &Value, kind: &str) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

/// Polls `check` until it returns `Some`; fails after `limit` naming
/// `what`, what `check` last said and the ends of the cluster's logs.
/// (`LabCluster::wait_for` wants `&mut`, which the flows running side by
/// side cannot have.)
fn poll<T>(
    c: &LabCluster,
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: not within {limit:?} (last: {last})\n{}",
                c.logs_tail(25)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// What the flows look at in a pod.
#[derive(Debug)]
struct PodView {
    name: String,
    node: String,
    phase: String,
    ready: bool,
    terminating: bool,
}

/// `kubectl get pods -l SELECTOR`.
fn pods(c: &LabCluster, selector: &str) -> Result<Vec<PodView>> {
    let list = json(c, &["pods", "-l", selector])?;
    Ok(items(&list)
        .map(|p| PodView {
            name: name(p).to_owned(),
            node: p["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            phase: p["status"]["phase"].as_str().unwrap_or_default().to_owned(),
            ready: ready(p),
            terminating: !p["metadata"]["deletionTimestamp"].is_null(),
        })
        .collect())
}

fn table(c: &LabCluster, args: &[&str]) -> String {
    match c.kubectl(args, None) {
        Ok(o) => format!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("$ kubectl {}: {e:#}", args.join(" ")),
    }
}

const DAEMONSET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: every-node}
spec:
  selector: {matchLabels: {app: every-node}}
  template:
    metadata: {labels: {app: every-node}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: sleep
        image: busybox
        command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
"#;

/// A DaemonSet runs one pod on each of the two nodes with an agent; when
/// node-3's agent starts, the DaemonSet gets a pod there too.
fn daemonset_follows_nodes(c: &mut LabCluster) -> Result<()> {
    c.apply(DAEMONSET)?;
    let on_nodes = |c: &LabCluster| -> Result<Vec<String>> {
        let mut nodes: Vec<String> = pods(c, "app=every-node")?
            .into_iter()
            .filter(|p| p.phase == "Running" && p.ready && !p.terminating)
            .map(|p| p.node)
            .collect();
        nodes.sort();
        Ok(nodes)
    };
    let two = ["node-1", "node-2"];
    poll(
        c,
        "the DaemonSet's pods Ready on node-1 and node-2",
        WAIT,
        || Ok((on_nodes(c)? == two).then_some(())),
    )
    .with_context(|| table(c, &["get", "pods", "-l", "app=every-node", "-o", "wide"]))?;

    c.start_agent(2)?;
    c.wait_ready_nodes(WAIT)?;
    let three = ["node-1", "node-2", "node-3"];
    poll(
        c,
        "a DaemonSet pod Ready on node-3 once it joined",
        WAIT,
        || Ok((on_nodes(c)? == three).then_some(())),
    )
    .with_context(|| table(c, &["get", "pods", "-l", "app=every-node", "-o", "wide"]))?;
    poll(c, "the DaemonSet's status counting 3 nodes", WAIT, || {
        let ds = json(c, &["daemonset", "every-node"])?;
        let s = &ds["status"];
        Ok((s["desiredNumberScheduled"] == 3
            && s["currentNumberScheduled"] == 3
            && s["numberReady"] == 3)
            .then_some(()))
    })
    .with_context(|| table(c, &["get", "daemonset", "every-node", "-o", "yaml"]))?;
    Ok(())
}

/// A Deployment of busybox httpd serving `<version> <pod>`; its readiness
/// probe keeps a pod out of the Service until httpd answers. The server
/// stops at once on SIGTERM, as most do, so, as in Kubernetes, a preStop
/// sleep keeps it serving while its endpoint is withdrawn from every
/// node's load balancer; without it a client meets the odd refused
/// connection to a pod that has just stopped.
const ROLL: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: roll}
spec:
  replicas: 3
  selector: {matchLabels: {app: roll}}
  template:
    metadata: {labels: {app: roll}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: httpd
        image: busybox
        env: [{name: VERSION, value: v1}]
        command:
        - sh
        - -c
        - |
          mkdir -p /www && echo "$VERSION $(hostname)" > /www/index.html
          httpd -f -p 8080 -h /www & pid=$!
          trap 'kill $pid; exit 0' TERM
          wait
        ports: [{containerPort: 8080, name: http}]
        readinessProbe:
          httpGet: {path: /, port: http}
          periodSeconds: 1
        lifecycle:
          preStop:
            sleep: {seconds: 3}
---
apiVersion: v1
kind: Service
metadata: {name: roll}
spec:
  selector: {app: roll}
  ports: [{port: 80, targetPort: http}]
"#;

/// Fetches the Service by name in a loop, one line per request: `ok
/// <version> <pod>` or `FAIL <exit code> <time>`; stops when /tmp/stop
/// exists.
const CLIENT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: roll-client}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: wget
    image: busybox
    command:
    - sh
    - -c
    - |
      until test -f /tmp/stop; do
        if out=$(timeout 5 wget -q -O - http://roll/ 2>&1); then echo "ok $out"; else echo "FAIL $? $(date +%T) $out"; fi
        sleep 0.05
      done
      echo done
"#;

/// The client's answers so far: (ok lines, FAIL lines).
fn client_log(c: &LabCluster) -> Result<(Vec<String>, Vec<String>)> {
    let log = c.kubectl_ok(&["logs", "roll-client"], None)?;
    let ok = log
        .lines()
        .filter(|l| l.starts_with("ok "))
        .map(str::to_owned)
        .collect();
    let failed = log
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .map(str::to_owned)
        .collect();
    Ok((ok, failed))
}

/// Waits until the client's last 10 answers, all after `after` answers,
/// come from `version`.
fn wait_served(c: &LabCluster, version: &str, after: usize) -> Result<usize> {
    poll(
        c,
        &format!("the Service serving only {version}"),
        WAIT,
        || {
            let (ok, _) = client_log(c)?;
            let recent = ok.iter().skip(after).rev().take(10);
            let done = ok.len() >= after + 10
                && recent
                    .clone()
                    .all(|l| l.starts_with(&format!("ok {version} ")));
            Ok(done.then_some(ok.len()))
        },
    )
}

/// (ReplicaSet name, revision, VERSION of its template, replicas).
fn replica_sets(c: &LabCluster) -> Result<Vec<(String, String, String, i64)>> {
    let list = json(c, &["replicasets", "-l", "app=roll"])?;
    let mut out: Vec<_> = items(&list)
        .map(|rs| {
            (
                name(rs).to_owned(),
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                rs["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                rs["spec"]["replicas"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Rolls the Deployment to v2 and back under the client's requests: the
/// served version follows, the ReplicaSets carry Kubernetes' revisions
/// (the rolled-back-to one becomes revision 3) and not one request fails.
fn deployment_rolls_without_a_failed_request(c: &LabCluster) -> Result<()> {
    c.apply(ROLL)?;
    c.kubectl_ok(
        &["rollout", "status", "deployment/roll", "--timeout=120s"],
        None,
    )?;
    c.apply(CLIENT)?;
    poll(c, "roll-client running", WAIT, || {
        let pod = json(c, &["pod", "roll-client"])?;
        Ok((pod["status"]["phase"] == "Running").then_some(()))
    })?;
    let seen = wait_served(c, "v1", 0).context("before the rollout")?;

    c.kubectl_ok(&["set", "env", "deployment/roll", "VERSION=v2"], None)?;
    c.kubectl_ok(
        &["rollout", "status", "deployment/roll", "--timeout=120s"],
        None,
    )
    .with_context(|| table(c, &["get", "rs,pods", "-l", "app=roll", "-o", "wide"]))?;
    let seen = wait_served(c, "v2", seen).context("after the rollout to v2")?;
    let sets = replica_sets(c)?;
    ensure!(
        sets.len() == 2
            && sets[0].1 == "1"
            && sets[0].2 == "v1"
            && sets[0].3 == 0
            && sets[1].1 == "2"
            && sets[1].2 == "v2"
            && sets[1].3 == 3,
        "after the rollout: want the v1 ReplicaSet at revision 1 scaled to 0 and the v2 one at revision 2 with 3 replicas; (name, revision, VERSION, replicas): {sets:?}"
    );

    c.kubectl_ok(&["rollout", "undo", "deployment/roll"], None)?;
    c.kubectl_ok(
        &["rollout", "status", "deployment/roll", "--timeout=120s"],
        None,
    )
    .with_context(|| table(c, &["get", "rs,pods", "-l", "app=roll", "-o", "wide"]))?;
    wait_served(c, "v1", seen).context("after the rollout undo")?;
    let undone = replica_sets(c)?;
    ensure!(
        undone.len() == 2
            && undone[0] == (sets[1].0.clone(), "2".into(), "v2".into(), 0)
            && undone[1] == (sets[0].0.clone(), "3".into(), "v1".into(), 3),
        "after rollout undo: want the v2 ReplicaSet {} at revision 2 scaled to 0 and the first one {} back as revision 3 with 3 replicas; (name, revision, VERSION, replicas): {undone:?}",
        sets[1].0,
        sets[0].0
    );
    let d = json(c, &["deployment", "roll"])?;
    ensure!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3",
        "the Deployment's revision after the undo: {}",
        d["metadata"]["annotations"]
    );
    let history = c.kubectl_ok(&["rollout", "history", "deployment/roll"], None)?;
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    ensure!(
        revisions == ["2", "3"],
        "kubectl rollout history should list revisions 2 and 3:\n{history}"
    );

    c.kubectl_ok(&["exec", "roll-client", "--", "touch", "/tmp/stop"], None)?;
    poll(c, "roll-client finished", WAIT, || {
        let pod = json(c, &["pod", "roll-client"])?;
        Ok((pod["status"]["phase"] == "Succeeded").then_some(()))
    })?;
    let (ok, failed) = client_log(c)?;
    let versions: BTreeSet<&str> = ok
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let served_by: BTreeSet<&str> = ok
        .iter()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    ensure!(
        failed.is_empty(),
        "{} of {} requests to the roll Service failed during the rollout and undo:\n{}\n{}\n{}",
        failed.len(),
        ok.len() + failed.len(),
        failed
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        table(c, &["get", "events", "--sort-by=.lastTimestamp"]),
        c.logs_tail(30)
    );
    ensure!(
        versions == BTreeSet::from(["v1", "v2"]) && served_by.len() >= 6,
        "the client should have been served by 3 v1 pods and 3 v2 pods; versions {versions:?}, pods {served_by:?}"
    );
    Ok(())
}

const STATEFULSET: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80, name: web}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 0
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: busybox
        command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 64Mi}}
"#;

/// Scales the StatefulSet to `replicas` and waits until exactly
/// web-0..web-<replicas-1> are Running and Ready, checking on every look
/// that a pod never exists before its predecessor is Ready.
fn scale_statefulset(c: &LabCluster, replicas: usize) -> Result<()> {
    c.kubectl_ok(
        &[
            "scale",
            "statefulset",
            "web",
            &format!("--replicas={replicas}"),
        ],
        None,
    )?;
    let want: Vec<String> = (0..replicas).map(|i| format!("web-{i}")).collect();
    poll(
        c,
        &format!("StatefulSet web at {replicas} Ready pods"),
        WAIT,
        || {
            let now = pods(c, "app=web")?;
            for PodView { name: pod, .. } in &now {
                let ordinal: usize = pod
                    .strip_prefix("web-")
                    .and_then(|o| o.parse().ok())
                    .with_context(|| format!("a StatefulSet pod named {pod}"))?;
                if ordinal > 0 && ordinal < replicas {
                    let before = format!("web-{}", ordinal - 1);
                    let ready_before = now
                        .iter()
                        .any(|p| p.name == before && p.ready && !p.terminating);
                    ensure!(
                        ready_before,
                        "{pod} exists while {before} is not Ready (OrderedReady): {now:?}"
                    );
                }
            }
            let mut up: Vec<String> = now
                .iter()
                .filter(|p| p.phase == "Running" && p.ready && !p.terminating)
                .map(|p| p.name.clone())
                .collect();
            up.sort();
            Ok((up == want && now.len() == replicas).then_some(()))
        },
    )
    .with_context(|| table(c, &["get", "pods,pvc", "-l", "app=web", "-o", "wide"]))
}

/// The StatefulSet's claims: name → (phase, volume).
fn claims(c: &LabCluster) -> Result<Vec<(String, String, String)>> {
    let list = json(c, &["pvc", "-l", "app=web"])?;
    let mut out: Vec<_> = items(&list)
        .map(|p| {
            (
                name(p).to_owned(),
                p["status"]["phase"].as_str().unwrap_or_default().to_owned(),
                p["spec"]["volumeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A StatefulSet with a headless Service and a claim per pod on the
/// default local-path class: 0→3 in order, each pod writes its own name to
/// its volume, →1 keeps every claim, →3 again and each pod reads back its
/// own file from its own claim.
fn statefulset_keeps_its_claims(c: &LabCluster) -> Result<()> {
    c.apply(STATEFULSET)?;
    scale_statefulset(c, 3)?;
    let bound = claims(c)?;
    let names: Vec<&str> = bound.iter().map(|b| b.0.as_str()).collect();
    ensure!(
        names == ["data-web-0", "data-web-1", "data-web-2"]
            && bound.iter().all(|b| b.1 == "Bound" && !b.2.is_empty()),
        "each StatefulSet pod should have its own Bound claim: {bound:?}"
    );
    let volumes: BTreeSet<&str> = bound.iter().map(|b| b.2.as_str()).collect();
    ensure!(volumes.len() == 3, "the claims share volumes: {bound:?}");
    for i in 0..3 {
        let pod = format!("web-{i}");
        c.kubectl_ok(
            &["exec", &pod, "--", "sh", "-c", "hostname > /data/owner"],
            None,
        )?;
    }

    scale_statefulset(c, 1)?;
    let kept = claims(c)?;
    ensure!(
        kept == bound,
        "scaling down should keep every claim (persistentVolumeClaimRetentionPolicy Retain): before {bound:?}, after {kept:?}"
    );

    scale_statefulset(c, 3)?;
    for i in 0..3 {
        let pod = format!("web-{i}");
        let owner = c.kubectl_ok(&["exec", &pod, "--", "cat", "/data/owner"], None)?;
        ensure!(
            owner.trim() == pod,
            "{pod} should read back its own file from data-{pod}: {owner:?}"
        );
    }
    ensure!(
        claims(c)? == bound,
        "scaling back up should reuse the claims {bound:?}"
    );
    Ok(())
}

const FAILING_JOB: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: fails}
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: fail
        image: busybox
        command: ["sh", "-c", "echo failing; exit 1"]
"#;

/// A Job whose pod exits 1, with backoffLimit 2: three pods fail, then the
/// Job is Failed with BackoffLimitExceeded and starts no more.
fn job_stops_at_its_backoff_limit(c: &LabCluster) -> Result<()> {
    c.apply(FAILING_JOB)?;
    c.kubectl_ok(
        &[
            "wait",
            "--for=condition=Failed",
            "job/fails",
            "--timeout=150s",
        ],
        None,
    )
    .with_context(|| table(c, &["get", "job,pods", "-l", "job-name=fails"]))?;
    let job = json(c, &["job", "fails"])?;
    let failed = job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Failed");
    ensure!(
        failed.is_some_and(|f| f["reason"] == "BackoffLimitExceeded"),
        "job fails: want condition Failed reason BackoffLimitExceeded: {}",
        job["status"]
    );
    ensure!(
        job["status"]["failed"] == 3 && job["status"]["active"].as_i64().unwrap_or(0) == 0,
        "job fails: want 3 failed pods and none active: {}",
        job["status"]
    );
    // Nothing more starts after the Job failed.
    std::thread::sleep(Duration::from_secs(3));
    let all = pods(c, "job-name=fails")?;
    ensure!(
        all.len() == 3 && all.iter().all(|p| p.phase == "Failed"),
        "job fails should leave exactly 3 Failed pods: {all:?}"
    );
    let logs = c.kubectl_ok(&["logs", &all[0].name], None)?;
    ensure!(
        logs.trim() == "failing",
        "kubectl logs {}: {logs:?}",
        all[0].name
    );
    Ok(())
}

const CRONJOB: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "*/1 * * * *"
  successfulJobsHistoryLimit: 2
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: tick
            image: busybox
            command: ["sh", "-c", "echo tick"]
"#;

/// The CronJob's Jobs: (name, complete).
fn ticks(c: &LabCluster) -> Result<Vec<(String, bool)>> {
    let list = json(c, &["jobs"])?;
    let mut out: Vec<_> = items(&list)
        .filter(|j| {
            j["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["kind"] == "CronJob" && o["name"] == "tick")
        })
        .map(|j| (name(j).to_owned(), has_condition(j, "Complete")))
        .collect();
    out.sort();
    Ok(out)
}

/// A CronJob every minute with successfulJobsHistoryLimit 2: its first
/// scheduled Job succeeds and sets lastScheduleTime and
/// lastSuccessfulTime; two more Jobs run from it (`kubectl create job
/// --from`, so the test need not wait two more minutes) and the oldest
/// finished Job is deleted, leaving 2.
fn cronjob_runs_and_keeps_its_history(c: &LabCluster) -> Result<()> {
    let scheduled = poll(
        c,
        "the CronJob's first scheduled Job complete",
        Duration::from_secs(150),
        || {
            let cj = json(c, &["cronjob", "tick"])?;
            let done = ticks(c)?.into_iter().find(|(_, complete)| *complete);
            let times = !cj["status"]["lastScheduleTime"].is_null()
                && !cj["status"]["lastSuccessfulTime"].is_null();
            Ok(done.filter(|_| times).map(|(name, _)| name))
        },
    )
    .with_context(|| table(c, &["get", "cronjob,jobs,pods"]))?;
    let minutes: i64 = scheduled
        .strip_prefix("tick-")
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("a scheduled Job named tick-<minutes>: {scheduled}"))?;
    let cj = json(c, &["cronjob", "tick"])?;
    let last = cj["status"]["lastScheduleTime"]
        .as_str()
        .unwrap_or_default();
    let last_minutes = last
        .parse::<k8s_openapi::jiff::Timestamp>()
        .map(|t| t.as_second() / 60)
        .with_context(|| format!("lastScheduleTime {last:?}"))?;
    ensure!(
        last_minutes >= minutes,
        "lastScheduleTime {last} is before the scheduled Job {scheduled}"
    );

    for manual in ["tick-manual-1", "tick-manual-2"] {
        c.kubectl_ok(&["create", "job", manual, "--from=cronjob/tick"], None)?;
        c.kubectl_ok(
            &[
                "wait",
                "--for=condition=Complete",
                &format!("job/{manual}"),
                "--timeout=60s",
            ],
            None,
        )?;
    }
    // Three finished Jobs, a limit of 2: the oldest, the scheduled one, goes.
    let kept = poll(
        c,
        "the CronJob keeping its 2 newest finished Jobs",
        WAIT,
        || {
            let now = ticks(c)?;
            let finished: Vec<String> = now.into_iter().filter(|j| j.1).map(|j| j.0).collect();
            Ok((finished.len() == 2 && !finished.contains(&scheduled)).then_some(finished))
        },
    )
    .with_context(|| table(c, &["get", "jobs"]))?;
    ensure!(
        kept.iter().any(|j| j == "tick-manual-2"),
        "the newest finished Job tick-manual-2 should be kept: {kept:?}"
    );
    Ok(())
}

#[test]
fn workload_controllers_hold_together_in_a_lab_cluster() -> Result<()> {
    // With SHOAL_KEEP_CLUSTER set, a failed run leaves everything for a look.
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 3, &dir)?;
    cfg.agents = 2;
    cfg.backoff_seconds = 1;
    // Twice the agents' 10 s Lease renewal, so a loaded machine does not
    // flap nodes.
    cfg.server_args = vec!["--node-monitor-grace-period".into(), "20s".into()];
    let mut c = LabCluster::start(cfg)?;

    // The CronJob's minute starts now, while the DaemonSet waits for node-3.
    c.apply(CRONJOB)?;
    daemonset_follows_nodes(&mut c).context("DaemonSet")?;

    let c = &c;
    let results: Vec<(&str, Result<()>)> = std::thread::scope(|s| {
        type Flow = fn(&LabCluster) -> Result<()>;
        let flows: Vec<(&str, Flow)> = vec![
            (
                "Deployment rollout",
                deployment_rolls_without_a_failed_request,
            ),
            ("StatefulSet", statefulset_keeps_its_claims),
            ("Job", job_stops_at_its_backoff_limit),
            ("CronJob", cronjob_runs_and_keeps_its_history),
        ];
        let handles: Vec<_> = flows
            .into_iter()
            .map(|(what, flow)| (what, s.spawn(move || flow(c))))
            .collect();
        handles
            .into_iter()
            .map(|(what, h)| {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the flow panicked")));
                (what, r)
            })
            .collect()
    });
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|(what, r)| r.err().map(|e| format!("{what}: {e:#}")))
        .collect();
    ensure!(failed.is_empty(), "{}", failed.join("\n\n"));
    Ok(())
}
