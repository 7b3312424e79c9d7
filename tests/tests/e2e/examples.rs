//! `manifests/examples/`, every file applied to one lab cluster (two nodes
//! and a third lab host as the outside machine, with the routes `cargo
//! xtask up` gives the machine) and checked as a user would check it: pods
//! Ready, Services answering from a pod, a node and outside, Jobs complete,
//! a CronJob run by hand, claims bound, DNS names resolving. A file without
//! a check here fails the test, so every example stays covered.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::ready;
use shoal_e2e::{
    cluster::{ClusterConfig, LabCluster},
    lab::{self, Host, Lab},
};

pub(super) const WAIT: Duration = Duration::from_secs(120);

/// What a user checks after applying one example.
type Check = fn(&mut LabCluster, &Host) -> Result<()>;

/// Every file of `manifests/examples/` and its check.
const CHECKS: &[(&str, Check)] = &[
    ("deployment-service.yaml", deployment_service),
    ("dual-stack-service.yaml", dual_stack_service),
    ("nodeport.yaml", nodeport),
    ("loadbalancer.yaml", loadbalancer),
    ("job.yaml", job),
    ("cronjob.yaml", cronjob),
    ("statefulset.yaml", statefulset),
    ("daemonset.yaml", daemonset),
    ("config-and-secret.yaml", config_and_secret),
    ("probes.yaml", probes),
    ("hpa.yaml", hpa),
    ("rolling-update.yaml", rolling_update),
    ("canary.yaml", canary),
    ("bin-packing.yaml", bin_packing),
    ("network-policy.yaml", network_policy),
];

/// The repository's `manifests/<sub>` directory.
pub(super) fn manifests(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("manifests")
        .join(sub)
}

/// `kubectl get ARGS -o json`.
pub(super) fn json(c: &LabCluster, args: &[&str]) -> Result<Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&c.kubectl_ok(&full, None)?).context("kubectl's JSON")
}

/// `kubectl exec TARGET -- sh -c SCRIPT`: its stdout, or an error with
/// what it printed.
pub(super) fn exec(c: &LabCluster, target: &str, script: &str) -> Result<String> {
    c.kubectl_ok(&["exec", target, "--", "sh", "-c", script], None)
}

/// `busybox wget -O - URL` run inside lab host `host` (a node's own
/// network namespace and cgroup, or the outside machine): the body.
pub(super) fn wget_in(host: &Host, url: &str) -> Result<String> {
    let out = host
        .command("timeout")?
        // busybox wget's own -T crashes (Debian's busybox-static 1.35).
        .args(["5", "busybox", "wget", "-q", "-O", "-", url])
        .stdin(Stdio::null())
        .output()
        .context("running busybox wget (cargo xtask setup installs busybox-static)")?;
    ensure!(
        out.status.success(),
        "wget {url} from {} failed: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `http://ADDR:PORT/` with IPv6 literals bracketed.
pub(super) fn url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{port}/"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}/"),
    }
}

/// Gives lab host `outside` what `cargo xtask up` gives the machine: routes
/// to every pod network through node-1 (which forwards to the others).
pub(super) fn route_pods_via_node1(c: &LabCluster, outside: &Host) -> Result<()> {
    let n1 = c.host(0);
    ip_in(
        outside,
        &[
            "route",
            "replace",
            "10.244.0.0/16",
            "via",
            &n1.ipv4().to_string(),
        ],
    )?;
    ip_in(
        outside,
        &[
            "-6",
            "route",
            "replace",
            "fd00:10:244::/56",
            "via",
            &n1.ipv6().to_string(),
        ],
    )
}

fn ip_in(host: &Host, args: &[&str]) -> Result<()> {
    let out = host
        .command("ip")?
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "ip {args:?} on {} failed: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Polls `check` until it returns true (errors count as "not yet").
pub(super) fn until(
    c: &mut LabCluster,
    what: &str,
    check: impl Fn(&LabCluster) -> Result<bool>,
) -> Result<()> {
    c.wait_for(what, WAIT, |c| Ok(check(c)?.then_some(())))
}

/// Pods matching `selector` that are Ready.
pub(super) fn ready_pods(c: &LabCluster, selector: &str) -> Result<Vec<Value>> {
    let pods = json(c, &["pods", "-l", selector])?;
    Ok(pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| ready(p) && p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect())
}

/// The file names under `manifests/examples/`.
fn example_files() -> Result<BTreeSet<String>> {
    let dir = manifests("examples");
    let mut names = BTreeSet::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            names.insert(name);
        }
    }
    Ok(names)
}

#[test]
fn every_example_works_as_its_comment_says_in_one_lab_cluster() -> Result<()> {
    let files = example_files()?;
    let checked: BTreeSet<String> = CHECKS.iter().map(|(f, _)| (*f).to_owned()).collect();
    let unchecked: Vec<&String> = files.difference(&checked).collect();
    let missing: Vec<&String> = checked.difference(&files).collect();
    ensure!(
        unchecked.is_empty() && missing.is_empty(),
        "manifests/examples/ and tests/tests/e2e/examples.rs disagree: files without a check {unchecked:?}, checks without a file {missing:?}"
    );

    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 3, &dir)?;
    // host-3 runs no agent: it is the machine outside the cluster.
    cfg.agents = 2;
    let mut c = LabCluster::start(cfg)?;
    let outside = c.host(2).clone();
    route_pods_via_node1(&c, &outside)?;
    c.kubectl_ok(
        &["apply", "-f", &manifests("examples").display().to_string()],
        None,
    )?;
    for (file, check) in CHECKS {
        check(&mut c, &outside).with_context(|| format!("manifests/examples/{file}"))?;
    }
    Ok(())
}

fn deployment_service(c: &mut LabCluster, outside: &Host) -> Result<()> {
    until(c, "deployment hello: 2 pods Ready", |c| {
        Ok(ready_pods(c, "app=hello")?.len() == 2)
    })?;
    // From a pod, by name: every replica answers eventually.
    let mut seen = BTreeSet::new();
    c.wait_for(
        "both hello pods answer http://hello/ from a pod",
        WAIT,
        |c| {
            let body = exec(c, "deploy/hello", "timeout 5 wget -q -O - http://hello/")?;
            seen.insert(body.trim().to_owned());
            Ok((seen.len() == 2 && seen.iter().all(|n| n.starts_with("hello-"))).then_some(()))
        },
    )?;
    // From a node, by ClusterIP; from outside, a pod IP through the lab route.
    let svc = json(c, &["service", "hello"])?;
    let ip: IpAddr = svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("service hello has no clusterIP: {}", svc["spec"]))?;
    let node = c.host(1).clone();
    let body = wget_in(&node, &url(ip, 80))?;
    ensure!(
        body.starts_with("hello-"),
        "node-2 → {ip}:80 answered {body:?}"
    );
    for pod in ready_pods(c, "app=hello")? {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        for ip in pod["status"]["podIPs"].as_array().into_iter().flatten() {
            let ip: IpAddr = ip["ip"].as_str().unwrap_or_default().parse()?;
            let body = wget_in(outside, &url(ip, 8080))?;
            ensure!(
                body == name,
                "outside → pod {name} at {ip}:8080 answered {body:?}"
            );
        }
    }
    Ok(())
}

fn dual_stack_service(c: &mut LabCluster, _outside: &Host) -> Result<()> {
    until(c, "pod dual Ready", |c| {
        Ok(ready_pods(c, "app=dual")?.len() == 1)
    })?;
    let svc = json(c, &["service", "dual"])?;
    let ips: Vec<IpAddr> = svc["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str()?.parse().ok())
        .collect();
    ensure!(
        ips.len() == 2 && ips[0].is_ipv6() && ips[1].is_ipv4(),
        "service dual should have an IPv6 then an IPv4 ClusterIP: {}",
        svc["spec"]
    );
    let node = c.host(0).clone();
    for ip in &ips {
        c.wait_for(&format!("node-1 → dual at {ip}"), WAIT, |_| {
            Ok((wget_in(&node, &url(*ip, 80))? == "dual-stack").then_some(()))
        })?;
    }
    let answer = exec(c, "dual", "nslookup dual.default.svc.cluster.local")?;
    for ip in &ips {
        ensure!(
            answer.contains(&ip.to_string()),
            "nslookup dual from a pod does not list {ip}:\n{answer}"
        );
    }
    Ok(())
}

fn nodeport(c: &mut LabCluster, outside: &Host) -> Result<()> {
    until(c, "pod np-web Ready", |c| {
        Ok(ready_pods(c, "app=np-web")?.len() == 1)
    })?;
    let nodes = [c.host(0).clone(), c.host(1).clone()];
    for node in &nodes {
        for ip in [IpAddr::V4(node.ipv4()), IpAddr::V6(node.ipv6())] {
            c.wait_for(&format!("outside → NodePort {ip}:30090"), WAIT, |_| {
                Ok((wget_in(outside, &url(ip, 30090))? == "nodeport").then_some(()))
            })?;
        }
    }
    Ok(())
}

fn loadbalancer(c: &mut LabCluster, outside: &Host) -> Result<()> {
    until(c, "pod lb-web Ready", |c| {
        Ok(ready_pods(c, "app=lb-web")?.len() == 1)
    })?;
    let ips: Vec<IpAddr> = c.wait_for("lb-web's ingress IPs of both families", WAIT, |c| {
        let svc = json(c, &["service", "lb-web"])?;
        let ips: Vec<IpAddr> = svc["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str()?.parse().ok())
            .collect();
        Ok((ips.iter().any(IpAddr::is_ipv4) && ips.iter().any(IpAddr::is_ipv6)).then_some(ips))
    })?;
    // A machine on the node network with on-link routes to the pools.
    ip_in(
        outside,
        &["route", "replace", lab::LB_POOL_V4, "dev", "eth0"],
    )?;
    ip_in(
        outside,
        &["-6", "route", "replace", lab::LB_POOL_V6, "dev", "eth0"],
    )?;
    for ip in ips {
        c.wait_for(&format!("outside → LoadBalancer {ip}:80"), WAIT, |_| {
            Ok((wget_in(outside, &url(ip, 80))? == "loadbalancer").then_some(()))
        })?;
    }
    Ok(())
}

/// Waits until job `name` has condition Complete.
pub(super) fn wait_complete(c: &mut LabCluster, name: &str) -> Result<Value> {
    c.wait_for(&format!("job {name} Complete"), WAIT, |c| {
        let job = json(c, &["job", name])?;
        let conditions = job["status"]["conditions"].as_array().cloned();
        if conditions
            .iter()
            .flatten()
            .any(|c| c["type"] == "Failed" && c["status"] == "True")
        {
            bail!("job {name} failed: {}", job["status"]);
        }
        let complete = conditions
            .iter()
            .flatten()
            .any(|c| c["type"] == "Complete" && c["status"] == "True");
        Ok(complete.then_some(job))
    })
}

fn job(c: &mut LabCluster, _outside: &Host) -> Result<()> {
    let job = wait_complete(c, "shards")?;
    ensure!(
        job["status"]["succeeded"] == 3,
        "job shards: succeeded should be 3: {}",
        job["status"]
    );
    let logs = c.kubectl_ok(&["logs", "-l", "job-name=shards", "--tail", "-1"], None)?;
    let lines: BTreeSet<&str> = logs.lines().map(str::trim).collect();
    for i in 0..3 {
        ensure!(
            lines.contains(format!("shard {i} of 3 done").as_str()),
            "the logs of job shards lack shard {i}:\n{logs}"
        );
    }
    Ok(())
}

fn cronjob(c: &mut LabCluster, _outside: &Host) -> Result<()> {
    c.kubectl_ok(
        &["create", "job", "--from=cronjob/nightly", "nightly-now"],
        None,
    )?;
    wait_complete(c, "nightly-now")?;
    let logs = c.kubectl_ok(&["logs", "job/nightly-now"], None)?;
    ensure!(
        logs.trim().starts_with("nightly report from nightly-now-"),
        "kubectl logs job/nightly-now: {logs:?}"
    );
    let job = json(c, &["job", "nightly-now"])?;
    ensure!(
        job["metadata"]["ownerReferences"][0]["name"] == "nightly",
        "job nightly-now should be owned by cronjob nightly: {}",
        job["metadata"]
    );
    Ok(())
}

fn statefulset(c: &mut LabCluster, _outside: &Host) -> Result<()> {
    until(c, "statefulset kv: kv-0 and kv-1 Ready", |c| {
        Ok(ready_pods(c, "app=kv")?.len() == 2)
    })?;
    let claims = json(c, &["pvc"])?;
    let bound: BTreeMap<&str, &str> = claims["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?,
                p["status"]["phase"].as_str()?,
            ))
        })
        .collect();
    for claim in ["data-kv-0", "data-kv-1"] {
        ensure!(
            bound.get(claim) == Some(&"Bound"),
            "claim {claim} is not Bound: {bound:?}"
        );
    }
    let read = |c: &LabCluster| exec(c, "kv-1", "timeout 5 wget -q -O - http://kv-0.kv:8080/");
    let before = read(c)?;
    ensure!(
        before.starts_with("kv-0 "),
        "kv-1 → http://kv-0.kv:8080/ answered {before:?}"
    );
    let uid = json(c, &["pod", "kv-0"])?["metadata"]["uid"].clone();
    c.kubectl_ok(&["delete", "pod", "kv-0", "--wait=false"], None)?;
    c.wait_for("kv-0 made again and Ready", WAIT, |c| {
        let pod = json(c, &["pod", "kv-0"])?;
        Ok((pod["metadata"]["uid"] != uid && ready(&pod)).then_some(()))
    })?;
    c.wait_for("kv-0 answers again with what it wrote first", WAIT, |c| {
        let after = read(c)?;
        ensure!(
            after == before,
            "kv-0 lost its volume's content across a restart: {before:?} then {after:?}"
        );
        Ok(Some(()))
    })
}

fn daemonset(c: &mut LabCluster, _outside: &Host) -> Result<()> {
    until(c, "daemonset node-info: a Ready pod on each node", |c| {
        let nodes: BTreeSet<String> = ready_pods(c, "app=node-info")?
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
            .collect();
        Ok(nodes.len() == 2)
    })?;
    for pod in ready_pods(c, "app=node-info")? {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let logs = c.kubectl_ok(&["logs", name], None)?;
        ensure!(
            logs.trim() == format!("running on {node}"),
            "pod {name} on {node} logged {logs:?}"
        );
    }
    Ok(())
}

fn config_and_secret(c: &mut LabCluster, _outside: &Host) -> Result<()> {
    until(c, "pod config-reader Ready", |c| {
        Ok(ready(&json(c, &["pod", "config-reader"])?))
    })?;
    let out = exec(
        c,
        "config-reader",
        "echo \"$GREETING|$PASSWORD|$(cat /etc/app/greeting)|$(cat /etc/secret/password)\"",
    )?;
    let want =
        "hello from a ConfigMap|s3cr3t-from-a-Secret|hello from a ConfigMap|s3cr3t-from-a-Secret";
    ensure!(
        out.trim() == want,
        "config-reader sees {out:?}, not {want:?}"
    );
    Ok(())
}

fn probes(c: &mut LabCluster, _outside: &Host) -> Result<()> {
    until(c, "pod probed Ready", |c| {
        Ok(ready(&json(c, &["pod", "probed"])?))
    })?;
    let pod = json(c, &["pod", "probed"])?;
    let status = &pod["status"]["containerStatuses"][0];
    ensure!(
        status["restartCount"] == 0,
        "pod probed should be Ready with no restart: {status}"
    );
    Ok(())
}

fn hpa(c: &mut LabCluster, _outside: &Host) -> Result<()> {
    until(
        c,
        "the HPA scales deployment autoscaled to its minimum, 2",
        |c| Ok(ready_pods(c, "app=autoscaled")?.len() == 2),
    )?;
    c.wait_for(
        "hpa autoscaled reports the pods' CPU utilization",
        WAIT,
        |c| {
            let hpa = json(c, &["hpa", "autoscaled"])?;
            let current = &hpa["status"]["currentMetrics"][0]["resource"]["current"];
            Ok(current["averageUtilization"].is_number().then_some(()))
        },
    )
}

/// `kubectl exec deploy/rolling -- wget http://rolling/` until every
/// answer of a few in a row starts with `version`.
fn rolling_serves(c: &mut LabCluster, version: &str) -> Result<()> {
    c.wait_for(
        &format!("http://rolling/ answering {version} only"),
        WAIT,
        |c| {
            let out = exec(
                c,
                "deploy/rolling",
                "for i in 1 2 3 4 5 6; do timeout 5 wget -q -O - http://rolling/; done",
            )?;
            let lines: Vec<&str> = out.lines().collect();
            Ok((lines.len() == 6
                && lines
                    .iter()
                    .all(|l| l.starts_with(&format!("{version} rolling-"))))
            .then_some(()))
        },
    )
}

fn rolling_update(c: &mut LabCluster, _outside: &Host) -> Result<()> {
    until(c, "deployment rolling: 3 pods Ready", |c| {
        Ok(ready_pods(c, "app=rolling")?.len() == 3)
    })?;
    rolling_serves(c, "v1")?;
    let status = ["rollout", "status", "deployment/rolling", "--timeout=120s"];
    c.kubectl_ok(&["set", "env", "deployment/rolling", "VERSION=v2"], None)?;
    c.kubectl_ok(&status, None)?;
    rolling_serves(c, "v2")?;
    c.kubectl_ok(&["rollout", "undo", "deployment/rolling"], None)?;
    c.kubectl_ok(&status, None)?;
    rolling_serves(c, "v1")?;
    let history = c.kubectl_ok(&["rollout", "history", "deployment/rolling"], None)?;
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    ensure!(
        revisions == ["2", "3"],
        "kubectl rollout history deployment/rolling should list revisions 2 and 3 (the undo made revision 1 the new 3):\n{history}"
    );
    let pods = ready_pods(c, "app=rolling")?;
    ensure!(
        pods.len() == 3,
        "deployment rolling should be back at 3 Ready pods: {}",
        pods.len()
    );
    Ok(())
}

fn canary(c: &mut LabCluster, _outside: &Host) -> Result<()> {
    until(c, "shop: 3 stable and 1 canary pod Ready", |c| {
        Ok(ready_pods(c, "app=shop,track=stable")?.len() == 3
            && ready_pods(c, "app=shop,track=canary")?.len() == 1)
    })?;
    until(c, "service shop: 4 ready endpoints", |c| {
        let slices = json(
            c,
            &["endpointslices", "-l", "kubernetes.io/service-name=shop"],
        )?;
        let ready = slices["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["addressType"] == "IPv4")
            .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
            .filter(|e| e["conditions"]["ready"] != false)
            .count();
        Ok(ready == 4)
    })?;
    let out = exec(
        c,
        "deploy/shop-stable",
        "for i in $(seq 60); do timeout 5 wget -q -O - http://shop/; done",
    )?;
    let tracks: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let canary = tracks.iter().filter(|t| **t == "canary").count();
    let stable = tracks.iter().filter(|t| **t == "stable").count();
    // One endpoint in four: 15 of 60 expected; 1 to 30 allows for chance
    // (both bounds are far outside what a fair pick gives).
    ensure!(
        tracks.len() == 60 && stable + canary == 60 && (1..=30).contains(&canary),
        "60 requests to http://shop/ should reach both tracks, about one in four the canary; stable {stable}, canary {canary}, answers:\n{out}"
    );
    Ok(())
}

fn bin_packing(c: &mut LabCluster, _outside: &Host) -> Result<()> {
    until(c, "deployment packed: 3 pods Ready", |c| {
        Ok(ready_pods(c, "app=packed")?.len() == 3)
    })?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for pod in ready_pods(c, "app=packed")? {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        *per_node.entry(node.to_owned()).or_default() += 1;
    }
    ensure!(
        per_node.values().all(|&n| n <= 2) && per_node.len() >= 2,
        "three 1500m pods on 4-CPU nodes: at most two per node, on at least two nodes; placed {per_node:?}"
    );
    let message = c.wait_for(
        "pod too-big Pending with a FailedScheduling event",
        WAIT,
        |c| {
            let pod = json(c, &["pod", "too-big"])?;
            ensure!(
                pod["spec"]["nodeName"].is_null() && pod["status"]["phase"] == "Pending",
                "pod too-big (64 CPUs) was placed: {}",
                pod["spec"]["nodeName"]
            );
            let events = json(
                c,
                &["events", "--field-selector", "involvedObject.name=too-big"],
            )?;
            Ok(events["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["reason"] == "FailedScheduling")
                .and_then(|e| e["message"].as_str().map(str::to_owned)))
        },
    )?;
    ensure!(
        message.starts_with("0/") && message.contains("Insufficient cpu"),
        "too-big's FailedScheduling event should say no node has the CPU: {message:?}"
    );
    let described = c.kubectl_ok(&["describe", "pod", "too-big"], None)?;
    ensure!(
        described.contains("FailedScheduling") && described.contains("Insufficient cpu"),
        "kubectl describe pod too-big should show the FailedScheduling event:\n{described}"
    );
    Ok(())
}

fn network_policy(c: &mut LabCluster, _outside: &Host) -> Result<()> {
    until(c, "pods guarded, friend and stranger Ready", |c| {
        Ok(["guarded", "friend", "stranger"]
            .iter()
            .map(|p| json(c, &["pod", p]))
            .collect::<Result<Vec<_>>>()?
            .iter()
            .all(ready))
    })?;
    let fetch = |c: &LabCluster, from: &str| -> Result<Option<String>> {
        let out = c.kubectl(
            &[
                "exec",
                from,
                "--",
                "sh",
                "-c",
                "timeout 3 wget -q -O - http://guarded/",
            ],
            None,
        )?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    };
    c.wait_for("friend → http://guarded/ answered", WAIT, |c| {
        Ok(fetch(c, "friend")?.filter(|b| b == "guarded"))
    })?;
    // The agents program the policy shortly after it is stored: from then
    // on every new connection from stranger is dropped.
    c.wait_for("stranger → http://guarded/ dropped", WAIT, |c| {
        Ok(fetch(c, "stranger")?.is_none().then_some(()))
    })?;
    for _ in 0..2 {
        ensure!(
            fetch(c, "stranger")?.is_none(),
            "stranger reached guarded again after being dropped"
        );
        ensure!(
            fetch(c, "friend")?.as_deref() == Some("guarded"),
            "friend no longer reaches guarded"
        );
    }
    Ok(())
}
