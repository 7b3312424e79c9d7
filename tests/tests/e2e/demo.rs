//! The README's walkthrough of `cargo xtask up`, replayed: the same
//! three-node lab cluster with `manifests/demo/` applied, then each
//! command the walkthrough (and `cargo xtask up`'s last lines) tells a
//! newcomer to try, from where they would run it: kubectl, curl to the
//! NodePort and to a pod IP from the machine (here a fourth lab host with
//! the machine's routes), dig against cluster DNS on node-1, scaling, and
//! the CronJob's first run.

use std::{collections::BTreeSet, net::IpAddr, process::Stdio};

use anyhow::{Context, Result, ensure};

use super::examples::{
    exec, json, manifests, ready_pods, route_pods_via_node1, until, url, wait_complete, wget_in,
};
use shoal_e2e::{
    cluster::{ClusterConfig, LabCluster},
    lab::Lab,
};

/// The demo's NodePort (`manifests/demo/web.yaml`).
const NODE_PORT: u16 = 30080;

#[test]
fn the_readme_walkthrough_of_the_demo_works() -> Result<()> {
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 4, &dir)?;
    // Three nodes as `cargo xtask up` makes; host-4 is the machine.
    cfg.agents = 3;
    let mut c = LabCluster::start(cfg)?;
    let machine = c.host(3).clone();
    route_pods_via_node1(&c, &machine)?;
    c.kubectl_ok(
        &["apply", "-f", &manifests("demo").display().to_string()],
        None,
    )?;
    // What `cargo xtask up` waits for.
    until(&mut c, "web 2/2 and db 2/2 Ready", |c| {
        Ok(ready_pods(c, "app=web")?.len() == 2 && ready_pods(c, "app=db")?.len() == 2)
    })?;
    wait_complete(&mut c, "fetch")?;

    // kubectl get nodes -o wide: three Ready nodes.
    let nodes = c.kubectl_ok(&["get", "nodes", "-o", "wide", "--no-headers"], None)?;
    let ready_nodes = nodes.lines().filter(|l| l.contains(" Ready ")).count();
    ensure!(ready_nodes == 3, "kubectl get nodes -o wide:\n{nodes}");

    // kubectl get deploy,sts,pods,svc,pvc,jobs,cronjobs -o wide.
    let all = c.kubectl_ok(
        &["get", "deploy,sts,pods,svc,pvc,jobs,cronjobs", "-o", "wide"],
        None,
    )?;
    for want in [
        "deployment.apps/web",
        "statefulset.apps/db",
        "service/web-nodeport",
        "persistentvolumeclaim/data-db-0",
        "job.batch/fetch",
        "cronjob.batch/tick",
    ] {
        ensure!(all.contains(want), "kubectl get ... lacks {want}:\n{all}");
    }
    ensure!(
        all.lines()
            .filter(|l| l.starts_with("persistentvolumeclaim/"))
            .all(|l| l.contains(" Bound ")),
        "the db claims are not Bound:\n{all}"
    );

    // curl http://<node-1>:30080/ from the machine, both families: a web
    // pod's name.
    let web: BTreeSet<String> = ready_pods(&c, "app=web")?
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let n1 = c.host(0).clone();
    for ip in [IpAddr::V4(n1.ipv4()), IpAddr::V6(n1.ipv6())] {
        c.wait_for(
            &format!("the machine → NodePort {ip}:{NODE_PORT}"),
            super::examples::WAIT,
            |_| {
                let body = wget_in(&machine, &url(ip, NODE_PORT))?;
                ensure!(
                    web.contains(&body),
                    "{ip}:{NODE_PORT} answered {body:?}, not one of {web:?}"
                );
                Ok(Some(()))
            },
        )?;
    }
    // curl http://<pod IP>:8080/ from the machine.
    let pods = json(&c, &["pods", "-l", "app=web"])?;
    for pod in pods["items"].as_array().into_iter().flatten() {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let ip: IpAddr = pod["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .parse()?;
        let body = wget_in(&machine, &url(ip, 8080))?;
        ensure!(
            body == name,
            "the machine → pod {name} at {ip}:8080 answered {body:?}"
        );
    }

    // kubectl logs job/fetch: the pod that answered http://web/.
    let fetched = c.kubectl_ok(&["logs", "job/fetch"], None)?;
    ensure!(
        web.contains(fetched.trim()),
        "kubectl logs job/fetch: {fetched:?}, not one of {web:?}"
    );

    // kubectl exec deploy/web -- wget -q -O - http://db-0.db:8080/
    let db0 = exec(
        &c,
        "deploy/web",
        "timeout 5 wget -q -O - http://db-0.db:8080/",
    )?;
    ensure!(
        db0.trim().starts_with("db-0 first started "),
        "db-0.db:8080 answered {db0:?}"
    );

    // dig +short @10.96.0.10 web.default.svc.cluster.local A ... AAAA on node-1.
    let svc = json(&c, &["service", "web"])?;
    let cluster_ips: Vec<String> = svc["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    ensure!(
        cluster_ips.len() == 2,
        "service web is not dual-stack: {}",
        svc["spec"]
    );
    let name = "web.default.svc.cluster.local";
    let out = n1
        .command("dig")?
        .args(["+short", "@10.96.0.10", name, "A", name, "AAAA"])
        .stdin(Stdio::null())
        .output()
        .context("running dig (cargo xtask setup installs dnsutils)")?;
    let dig = String::from_utf8_lossy(&out.stdout);
    let answers: BTreeSet<String> = dig.lines().map(|l| l.trim().to_owned()).collect();
    let want: BTreeSet<String> = cluster_ips.iter().cloned().collect();
    ensure!(
        out.status.success() && answers == want,
        "dig on node-1 answered {answers:?}, want web's ClusterIPs {want:?} ({})",
        String::from_utf8_lossy(&out.stderr)
    );

    // kubectl scale deploy/web --replicas 4, then curl the NodePort: four
    // names answer.
    c.kubectl_ok(&["scale", "deploy/web", "--replicas", "4"], None)?;
    until(&mut c, "web 4/4 Ready", |c| {
        Ok(ready_pods(c, "app=web")?.len() == 4)
    })?;
    let mut seen = BTreeSet::new();
    c.wait_for(
        "four web pods answer the NodePort",
        super::examples::WAIT,
        |_| {
            seen.insert(wget_in(&machine, &url(IpAddr::V4(n1.ipv4()), NODE_PORT))?);
            Ok((seen.len() == 4).then_some(()))
        },
    )?;

    // The CronJob's first run (every minute): a Job that fetched web.
    let tick = c.wait_for(
        "a Job of cronjob tick completes",
        super::examples::WAIT,
        |c| {
            let jobs = json(c, &["jobs"])?;
            Ok(jobs["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|j| {
                    j["metadata"]["ownerReferences"][0]["name"] == "tick"
                        && j["status"]["succeeded"] == 1
                })
                .and_then(|j| j["metadata"]["name"].as_str().map(str::to_owned)))
        },
    )?;
    let logs = c.kubectl_ok(&["logs", &format!("job/{tick}")], None)?;
    let pods = ready_pods(&c, "app=web")?;
    ensure!(
        pods.iter()
            .any(|p| logs.contains(p["metadata"]["name"].as_str().unwrap_or("?"))),
        "kubectl logs job/{tick}: {logs:?}"
    );
    Ok(())
}
