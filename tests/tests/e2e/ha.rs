//! A highly available cluster as the issue describes it: three
//! control-plane members joined with a token (`shoal server --join`) and
//! two workers given every server (`shoal agent --server A,B,C`), driven
//! only through kubectl and HTTP from pods and nodes. In one lab: a
//! Deployment scales 3→10→2 with its endpoints following; its dual-stack
//! Service answers by both ClusterIPs from every worker and from a pod; it
//! is rolled to a new template and back (`kubectl rollout undo`) under a
//! client loop that must see no failed request and that keeps running
//! while the store's leader is SIGKILLed (the API answers through another
//! member within seconds, the Leases of the scheduler and controllers
//! move, no object is lost); a container that exits is restarted in its
//! pod; then a worker's agent is SIGKILLed and its pods come back Ready on
//! the other worker once their 2 s toleration of the unreachable taint is
//! over.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::{
    examples::{url, wget_in},
    ready,
    roles::{
        Role, WAIT, join_line, kubectl, listing, node_args, node_ready, reset, server_args,
        store_leads, wait_for,
    },
};
use shoal_e2e::{
    cluster::shoal_binary,
    lab::{Host, Lab},
};

/// Control-plane members (lab hosts 1 to 3) and workers (hosts 4 and 5).
const MEMBERS: usize = 3;
const WORKERS: [&str; 2] = ["node-4", "node-5"];

/// How long a worker's Lease (renewed every 2 s in the lab) may go
/// unrenewed before its node is unreachable: short, with room for a
/// loaded machine.
const GRACE: &str = "10s";

/// busybox httpd serving `<VERSION> <pod>`, Ready once it answers; a
/// preStop sleep keeps it serving while its endpoint is withdrawn (see
/// workloads.rs). It tolerates its node being unreachable or not ready for
/// 2 s only, so the test need not wait out the default 300 s.
const WEB: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ha}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: ha}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
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
metadata: {name: web, namespace: ha}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-dual, namespace: ha}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#;

/// Fetches the Service by name in a loop, one line per request (`ok
/// <version> <pod>` or `FAIL ...`), until /tmp/stop exists.
const CLIENT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: ha}
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
        if out=$(timeout 5 wget -q -O - http://web/ 2>&1); then echo "ok $out"; else echo "FAIL $? $(date +%T) $out"; fi
        sleep 0.05
      done
      echo done
"#;

/// The API as one member serves it: kubectl inside that member's host with
/// the kubeconfig it wrote.
#[derive(Clone)]
struct Api {
    host: Host,
    kubeconfig: PathBuf,
}

impl Api {
    fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl(&self.host, &self.kubeconfig, args, None)
    }

    fn apply(&self, yaml: &str) -> Result<String> {
        kubectl(
            &self.host,
            &self.kubeconfig,
            &["apply", "-f", "-"],
            Some(yaml),
        )
    }

    /// `kubectl get ARGS -n ha -o json`.
    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut full = vec!["get", "-n", "ha"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl(&full)?).context("kubectl's JSON")
    }

    /// `kubectl get ARGS -o wide` for failure messages.
    fn table(&self, args: &[&str]) -> String {
        let mut full = vec!["get", "-n", "ha", "-o", "wide"];
        full.extend_from_slice(args);
        match self.kubectl(&full) {
            Ok(t) => format!("$ kubectl {}\n{t}", full.join(" ")),
            Err(e) => format!("$ kubectl {}: {e:#}", full.join(" ")),
        }
    }
}

fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list["items"].as_array().into_iter().flatten()
}

/// What the test looks at in a web pod.
struct WebPod {
    node: String,
    ip: String,
    /// Running and Ready.
    ready: bool,
    terminating: bool,
}

/// The web pods.
fn web_pods(api: &Api) -> Result<Vec<WebPod>> {
    let list = api.json(&["pods", "-l", "app=web"])?;
    Ok(items(&list)
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            WebPod {
                node: s(&p["spec"]["nodeName"]),
                ip: s(&p["status"]["podIP"]),
                ready: p["status"]["phase"] == "Running" && ready(p),
                terminating: !p["metadata"]["deletionTimestamp"].is_null(),
            }
        })
        .collect())
}

/// The IPv4 addresses the Service's EndpointSlices mark ready.
fn ready_endpoints(api: &Api) -> Result<BTreeSet<String>> {
    let list = api.json(&["endpointslices", "-l", "kubernetes.io/service-name=web"])?;
    Ok(items(&list)
        .filter(|s| s["addressType"] == "IPv4")
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .filter(|e| e["conditions"]["ready"] != false)
        .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect())
}

/// Waits until the Deployment has exactly `n` pods, all Running and Ready
/// on `nodes`, and the Service's ready endpoints are exactly their
/// addresses; pods being deleted count against it unless they are on a
/// node in `lost` (whose agent cannot confirm their end).
fn web_settles(
    api: &Api,
    roles: &mut [&mut Role],
    n: usize,
    nodes: &[&str],
    lost: &[&str],
) -> Result<Vec<String>> {
    wait_for(
        roles,
        &format!("deployment web: {n} pods Ready on {nodes:?}, endpoints following"),
        WAIT,
        || {
            let pods = web_pods(api)?;
            let live: Vec<_> = pods.iter().filter(|p| !p.terminating).collect();
            let leftover = pods
                .iter()
                .any(|p| p.terminating && !lost.contains(&p.node.as_str()));
            if live.len() != n
                || leftover
                || !live
                    .iter()
                    .all(|p| p.ready && nodes.contains(&p.node.as_str()) && !p.ip.is_empty())
            {
                return Ok(None);
            }
            let ips: BTreeSet<String> = live.iter().map(|p| p.ip.clone()).collect();
            Ok((ready_endpoints(api)? == ips)
                .then(|| live.iter().map(|p| p.node.clone()).collect()))
        },
    )
    .with_context(|| api.table(&["pods,endpointslices"]))
}

/// The client's answers so far: (ok lines, FAIL lines).
fn client_log(api: &Api) -> Result<(Vec<String>, Vec<String>)> {
    let log = api.kubectl(&["logs", "-n", "ha", "client"])?;
    let pick = |p: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.starts_with(p))
            .map(str::to_owned)
            .collect()
    };
    Ok((pick("ok "), pick("FAIL")))
}

/// Waits until the client's last 10 answers, all after its first `after`,
/// come from `version`; the number of answers by then.
fn served(api: &Api, roles: &mut [&mut Role], version: &str, after: usize) -> Result<usize> {
    wait_for(
        roles,
        &format!("the Service serving only {version}"),
        WAIT,
        || {
            let (ok, _) = client_log(api)?;
            let done = ok.len() >= after + 10
                && ok
                    .iter()
                    .skip(after)
                    .rev()
                    .take(10)
                    .all(|l| l.starts_with(&format!("ok {version} ")));
            Ok(done.then_some(ok.len()))
        },
    )
}

/// kube-system's Leases: (name, holder).
fn lease_holders(api: &Api) -> Result<Vec<(String, String)>> {
    let out = api.kubectl(&[
        "get",
        "leases",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.holderIdentity}{\"\\n\"}{end}",
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, h)| (n.to_owned(), h.to_owned()))
        .collect())
}

/// What must survive losing a control-plane member (pods are left out:
/// the Deployment replaces them as it rolls).
const KINDS: &str = "namespaces,configmaps,secrets,services,serviceaccounts,deployments,nodes";

#[test]
fn three_members_and_two_workers_scale_roll_and_survive_losing_a_member_and_an_agent() -> Result<()>
{
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    let lab =
        Lab::create(&Lab::unique_prefix(), MEMBERS + WORKERS.len()).context("creating the lab")?;
    let hosts: Vec<Host> = (1..=MEMBERS + WORKERS.len())
        .map(|i| lab.host(i).clone())
        .collect();
    let member = |i: usize| format!("cp{}", i + 1);
    let api_of = |i: usize| Api {
        host: hosts[i].clone(),
        kubeconfig: dir.join(member(i)).join("kubeconfig"),
    };
    let args = |i: usize| {
        [
            server_args(&hosts[i], &dir, &member(i)),
            vec!["--node-monitor-grace-period".into(), GRACE.into()],
        ]
        .concat()
    };

    let mut servers = vec![Role::new("cp1", &dir, args(0))];
    servers[0].start(&hosts[0])?;
    let readyz = |i: usize| {
        let api = api_of(i);
        Ok(
            (api.kubeconfig.is_file() && api.kubectl(&["get", "--raw", "/readyz"]).is_ok())
                .then_some(()),
        )
    };
    wait_for(&mut [&mut servers[0]], "cp1's API", WAIT, || readyz(0))?;
    let out = hosts[0]
        .command(shoal_binary()?)?
        .args(["token", "create", "--server-join", "--kubeconfig"])
        .arg(&api_of(0).kubeconfig)
        .stdin(Stdio::null())
        .output()?;
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "shoal token create --server-join: {printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server_join = join_line(&printed, "shoal server ")?;
    let mut agent_join = join_line(&printed, "shoal agent ")?;
    for (i, host) in hosts.iter().enumerate().take(MEMBERS).skip(1) {
        let mut role = Role::new(&member(i), &dir, [args(i), server_join.clone()].concat());
        role.start(host)?;
        wait_for(
            &mut [&mut role],
            &format!("{}'s API", member(i)),
            WAIT,
            || readyz(i),
        )?;
        servers.push(role);
    }
    // Every worker is given every member.
    let pos = agent_join
        .iter()
        .position(|a| a == "--server")
        .context("no --server in the agent's join command")?;
    agent_join[pos + 1] = hosts[..MEMBERS]
        .iter()
        .map(|h| format!("https://{}", h.v4(6443)))
        .collect::<Vec<_>>()
        .join(",");
    let agent_dir = |w: usize| dir.join(WORKERS[w]);
    let mut agents = Vec::new();
    for (w, name) in WORKERS.iter().enumerate() {
        let host = &hosts[MEMBERS + w];
        let mut agent = Role::new(
            name,
            &dir,
            [
                vec![
                    "agent".to_owned(),
                    "--data-dir".into(),
                    agent_dir(w).display().to_string(),
                ],
                agent_join.clone(),
                node_args(host, name)?,
            ]
            .concat(),
        );
        agent.start(host)?;
        agents.push(agent);
    }

    let result = scenario(&api_of, &hosts[MEMBERS..], &mut servers, &mut agents);
    for role in agents.iter_mut().chain(servers.iter_mut()) {
        role.stop(Duration::from_secs(5));
    }
    let mut cleaned = Ok(());
    for w in 0..WORKERS.len() {
        cleaned = cleaned.and(reset(&hosts[MEMBERS + w], &agent_dir(w)));
    }
    result.and(cleaned)
}

fn scenario(
    api_of: &dyn Fn(usize) -> Api,
    workers: &[Host],
    servers: &mut [Role],
    agents: &mut [Role],
) -> Result<()> {
    let api = api_of(0);
    for name in WORKERS {
        wait_for(
            &mut agents.iter_mut().collect::<Vec<_>>(),
            &format!("{name} Ready"),
            WAIT,
            || node_ready(&api.host, &api.kubeconfig, name),
        )?;
    }
    let mut all: Vec<&mut Role> = servers.iter_mut().chain(agents.iter_mut()).collect();

    // Scale 3 → 10 → 2: the pods really run, the endpoints follow.
    api.apply(WEB)?;
    let started = Instant::now();
    web_settles(&api, &mut all, 3, &WORKERS, &[])?;
    api.kubectl(&["scale", "-n", "ha", "deployment/web", "--replicas=10"])?;
    let on = web_settles(&api, &mut all, 10, &WORKERS, &[])?;
    ensure!(
        WORKERS.iter().all(|w| on.iter().any(|n| n == w)),
        "10 replicas should spread over both workers: {on:?}"
    );
    api.kubectl(&["scale", "-n", "ha", "deployment/web", "--replicas=2"])?;
    web_settles(&api, &mut all, 2, &WORKERS, &[])?;
    let scaled = started.elapsed();

    // Rolled to v2 and back under a client that must see no failure.
    api.apply(CLIENT)?;
    wait_for(&mut all, "pod ha/client running", WAIT, || {
        let pod = api.json(&["pod", "client"])?;
        Ok((pod["status"]["phase"] == "Running").then_some(()))
    })?;
    let seen = served(&api, &mut all, "v1", 0).context("before the rollout")?;
    // A dual-stack Service over the same pods answers by its ClusterIPs,
    // IPv4 and IPv6, from every worker and from a pod (the client asks the
    // single-stack one by name).
    let svc = api.json(&["service", "web-dual"])?;
    let ips: Vec<IpAddr> = svc["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str()?.parse().ok())
        .collect();
    ensure!(
        ips.iter().any(IpAddr::is_ipv4) && ips.iter().any(IpAddr::is_ipv6),
        "service ha/web-dual (PreferDualStack) should have an IPv4 and an IPv6 ClusterIP: {}",
        svc["spec"]
    );
    for ip in &ips {
        let url = url(*ip, 80);
        for host in workers {
            let body = wget_in(host, &url)?;
            ensure!(
                body.starts_with("v1 web-"),
                "{} → {url} answered {body:?}",
                host.name()
            );
        }
        let body = api.kubectl(&[
            "exec", "-n", "ha", "client", "--", "timeout", "5", "wget", "-q", "-O", "-", &url,
        ])?;
        ensure!(
            body.starts_with("v1 web-"),
            "pod client → {url} answered {body:?}"
        );
    }
    let rollout_status = [
        "rollout",
        "status",
        "-n",
        "ha",
        "deployment/web",
        "--timeout=120s",
    ];
    api.kubectl(&["set", "env", "-n", "ha", "deployment/web", "VERSION=v2"])?;
    api.kubectl(&rollout_status)
        .with_context(|| api.table(&["rs,pods"]))?;
    let seen = served(&api, &mut all, "v2", seen).context("after the rollout to v2")?;
    api.kubectl(&["rollout", "undo", "-n", "ha", "deployment/web"])?;
    api.kubectl(&rollout_status)
        .with_context(|| api.table(&["rs,pods"]))?;
    let seen = served(&api, &mut all, "v1", seen).context("after rollout undo")?;
    web_settles(&api, &mut all, 2, &WORKERS, &[])?;

    // SIGKILL the store's leader while the client keeps asking.
    let leader = (0..MEMBERS)
        .find(|&i| {
            let a = api_of(i);
            a.kubeconfig
                .parent()
                .is_some_and(|dir| store_leads(&a.host, dir).unwrap_or(false))
        })
        .context("no member's store says it leads")?;
    let survivor = api_of((leader + 1) % MEMBERS);
    let killed_name = format!("cp{}", leader + 1);
    let holders = lease_holders(&api)?;
    let before = listing(&api.host, &api.kubeconfig, KINDS)?;
    drop(all);
    servers[leader].kill();
    let killed = Instant::now();
    let mut rest: Vec<&mut Role> = servers
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, r)| r)
        .chain(agents.iter_mut())
        .collect();
    wait_for(
        &mut rest,
        &format!("the API through another member after {killed_name} died"),
        WAIT,
        || {
            Ok(survivor
                .kubectl(&["get", "deployments", "-n", "ha"])
                .is_ok()
                .then_some(()))
        },
    )?;
    let answered = killed.elapsed();
    ensure!(
        answered < Duration::from_secs(30),
        "the API answered {answered:?} after the store leader {killed_name} was killed"
    );
    let after = listing(&survivor.host, &survivor.kubeconfig, KINDS)?;
    ensure!(
        after == before,
        "objects differ after {killed_name} was killed:\nonly before: {:?}\nonly after: {:?}",
        before
            .iter()
            .filter(|o| !after.contains(o))
            .collect::<Vec<_>>(),
        after
            .iter()
            .filter(|o| !before.contains(o))
            .collect::<Vec<_>>()
    );
    // The scheduler and controllers the dead member led are taken over:
    // their Leases move to a surviving member (joined members are named in
    // their holder identity; the first one, started without --join, by the
    // host name) and a scale-up is carried out.
    let alive: Vec<String> = (0..MEMBERS)
        .filter(|&i| i != leader)
        .map(|i| format!("cp{}_", i + 1))
        .collect();
    let by_survivor = |holder: &str| alive.iter().any(|a| holder.starts_with(a.as_str()));
    let led: Vec<String> = holders
        .iter()
        .filter(|(_, h)| !by_survivor(h))
        .map(|(n, _)| n.clone())
        .collect();
    wait_for(
        &mut rest,
        &format!("the Leases {killed_name} held ({led:?}) taken over"),
        WAIT,
        || {
            let now = lease_holders(&survivor)?;
            Ok(now.iter().all(|(_, h)| by_survivor(h)).then_some(()))
        },
    )
    .with_context(|| format!("kube-system Leases before: {holders:?}"))?;
    survivor.kubectl(&["scale", "-n", "ha", "deployment/web", "--replicas=4"])?;
    web_settles(&survivor, &mut rest, 4, &WORKERS, &[])?;
    let failover = killed.elapsed();

    // The client saw every request answered, through both rollouts and
    // the loss of a member.
    survivor.kubectl(&["exec", "-n", "ha", "client", "--", "touch", "/tmp/stop"])?;
    wait_for(&mut rest, "pod ha/client finished", WAIT, || {
        let pod = survivor.json(&["pod", "client"])?;
        Ok((pod["status"]["phase"] == "Succeeded").then_some(()))
    })?;
    let (ok, failed) = client_log(&survivor)?;
    ensure!(
        failed.is_empty(),
        "{} of {} requests to the web Service failed:\n{}",
        failed.len(),
        ok.len() + failed.len(),
        failed
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        ok.len() > seen,
        "the client answered nothing after the rollouts ({} answers)",
        ok.len()
    );

    // A container that exits is restarted in its pod, which is Ready again.
    let pods = survivor.json(&["pods", "-l", "app=web"])?;
    let victim = items(&pods)
        .find(|p| p["metadata"]["deletionTimestamp"].is_null())
        .context("no web pod")?;
    let name = victim["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let restarts = victim["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(0);
    // The exec session ends with its container (exit code 137 at times):
    // what counts is the restart.
    let _ = survivor.kubectl(&["exec", "-n", "ha", &name, "--", "kill", "1"]);
    wait_for(
        &mut rest,
        &format!("pod ha/{name}'s container restarted and Ready"),
        WAIT,
        || {
            let pod = survivor.json(&["pod", &name])?;
            let count = pod["status"]["containerStatuses"][0]["restartCount"]
                .as_i64()
                .unwrap_or(0);
            Ok((count == restarts + 1 && ready(&pod)).then_some(()))
        },
    )?;
    web_settles(&survivor, &mut rest, 4, &WORKERS, &[])?;

    // SIGKILL the agent of the worker with most web pods: the node turns
    // Unknown and tainted, its pods are evicted after their toleration and
    // the Deployment runs them all Ready on the other worker.
    let pods = web_pods(&survivor)?;
    let count = |w: &str| pods.iter().filter(|p| p.node == w).count();
    let lost = if count(WORKERS[0]) >= count(WORKERS[1]) {
        0
    } else {
        1
    };
    let kept = 1 - lost;
    let lost_name = WORKERS[lost];
    drop(rest);
    agents[lost].kill();
    let agent_killed = Instant::now();
    let mut rest: Vec<&mut Role> = servers
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, r)| r)
        .chain(std::iter::once(&mut agents[kept]))
        .collect();
    wait_for(
        &mut rest,
        &format!("{lost_name} Ready=Unknown with the unreachable NoExecute taint"),
        WAIT,
        || {
            let node: Value = serde_json::from_str(
                &survivor.kubectl(&["get", "node", lost_name, "-o", "json"])?,
            )?;
            let unknown = node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["type"] == "Ready" && k["status"] == "Unknown");
            let tainted = node["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| {
                    t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"
                });
            Ok((unknown && tainted).then_some(()))
        },
    )?;
    let not_ready = agent_killed.elapsed();
    web_settles(&survivor, &mut rest, 4, &[WORKERS[kept]], &[lost_name])?;
    let moved = agent_killed.elapsed();
    let events = survivor.json(&["events"])?;
    ensure!(
        items(&events).any(|e| e["reason"] == "TaintManagerEviction"),
        "no TaintManagerEviction event in namespace ha after {lost_name} was lost"
    );
    eprintln!(
        "scaled 3→10→2 in {scaled:?}; {} requests, none failed; store leader {killed_name} killed: API back in {answered:?}, Leases {led:?} moved and 4 replicas Ready in {failover:?}; {lost_name}'s agent killed: Unknown in {not_ready:?}, pods Ready on {} in {moved:?}",
        ok.len(),
        WORKERS[kept]
    );
    Ok(())
}
