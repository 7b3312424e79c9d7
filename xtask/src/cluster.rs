//! `cargo xtask up` / `cargo xtask down`: a shoal cluster in the lab (see
//! `shoal_e2e::cluster`), reachable from this machine, with the demo
//! applied.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use shoal_e2e::{
    cluster::{self, ClusterConfig, LabCluster},
    lab::{self, Lab},
};

use crate::setup::{self, run_cmd, workspace_root};
use crate::sidecar_image;

/// The lab prefix of the cluster `up` makes.
const PREFIX: &str = "up";

/// Arguments of `cargo xtask up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// How many nodes (node-1 runs the control plane too).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Build and run the debug binary (faster to build, slower to run).
    #[arg(long)]
    debug: bool,
    /// Control-plane members: 1, or 3 (node-1 to node-3 each run a `shoal
    /// server`, joined with a token; every agent is given all of them and
    /// the kubeconfig has a context per member).
    #[arg(long, default_value_t = 1)]
    servers: usize,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn state_dir() -> PathBuf {
    target_dir().join("lab")
}

/// Runs `cargo xtask up`.
pub fn up(args: &UpArgs) -> Result<()> {
    let started = Instant::now();
    if !setup::is_complete() {
        setup::run(&setup::Args::default())?;
    }
    ensure!(
        (1..=9).contains(&args.nodes),
        "--nodes {} is out of range: give 1 to 9 (one lab host each)",
        args.nodes
    );
    ensure!(
        args.servers % 2 == 1 && args.servers <= args.nodes,
        "--servers {} must be odd (a store quorum) and at most --nodes {}: give 1, or 3 with 3 or more nodes",
        args.servers,
        args.nodes
    );
    let profile = if args.debug { "debug" } else { "release" };
    println!("==> building shoal ({profile}; the first build takes a few minutes)");
    let mut build = Command::new("cargo");
    build.current_dir(workspace_root()).args([
        "build",
        "--bin",
        "shoal",
        "--bin",
        sidecar_image::BINARY_NAME,
    ]);
    if !args.debug {
        build.arg("--release");
    }
    let step = Instant::now();
    run_cmd(&mut build, "building shoal")?;
    println!("    built in {:.0} s", step.elapsed().as_secs_f64());
    let shoal = target_dir().join(profile).join("shoal");
    let sidecar = target_dir().join(profile).join(sidecar_image::BINARY_NAME);
    let archive = sidecar_image::write_if_stale(&sidecar, &sidecar.with_extension("oci.tar"))?;
    println!(
        "==> sidecar image {} in {} (every node's image store gets it)",
        sidecar_image::REFERENCE,
        archive.display()
    );

    let dir = state_dir().join("cluster");
    if Lab::attach(PREFIX).is_ok() || dir.exists() {
        println!("==> removing the previous lab cluster");
        cluster::remove(PREFIX, &dir, &shoal)?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    let agents = (1..=args.nodes)
        .map(|i| format!("node-{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let servers = (1..=args.servers)
        .map(|i| format!("node-{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "==> starting {} node(s) in lab namespaces: shoal server on {servers}, agents on {agents}; waiting for the nodes to be Ready",
        args.nodes
    );
    // Not ClusterConfig::new: it looks for a debug binary next to this
    // program's, which a release-only machine does not have.
    let cfg = ClusterConfig {
        prefix: PREFIX.to_owned(),
        nodes: args.nodes,
        agents: args.nodes,
        shoal,
        dir: dir.clone(),
        backoff_seconds: 10,
        capacity_cpu: "4".to_owned(),
        capacity_memory: "8Gi".to_owned(),
        server_args: Vec::new(),
        agent_args: Vec::new(),
        env: Vec::new(),
        servers: args.servers,
    };
    let mut c = LabCluster::start(cfg).with_context(|| {
        format!(
            "starting the lab cluster failed (the lab is removed again); each process's log is under {}/node-*/ (server.log, agent.log); `cargo xtask up` again starts from scratch",
            dir.display()
        )
    })?;
    let n1 = c.host(0).clone();
    c.lab().connect_root(&[
        ("10.244.0.0/16".to_owned(), n1.ipv4().into()),
        ("fd00:10:244::/56".to_owned(), n1.ipv6().into()),
    ])?;
    let kubeconfig = state_dir().join("kubeconfig");
    std::fs::copy(&c.kubeconfig, &kubeconfig)
        .with_context(|| format!("copying the kubeconfig to {}", kubeconfig.display()))?;
    if args.servers > 1 {
        add_member_contexts(&kubeconfig, &c.api_urls())?;
    }
    println!(
        "    {} node(s) Ready at {:.1} s; API at https://{}, reached from this machine through {} ({})",
        args.nodes,
        started.elapsed().as_secs_f64(),
        n1.v4(cluster::API_PORT),
        c.lab().root_interface()?,
        lab::ROOT_V4
    );

    let demo = workspace_root().join("manifests").join("demo");
    ensure!(
        demo.is_dir(),
        "{} is missing: run `cargo xtask up` from a shoal checkout",
        demo.display()
    );
    println!("==> applying the demo ({})", demo.display());
    c.kubectl_ok(&["apply", "-f", &demo.display().to_string()], None)?;
    // Kept even if the demo does not come up, so the user can look.
    c.persist();
    wait_demo(&mut c, started)?;

    let k = kubeconfig.display();
    let (v4, v6) = (n1.ipv4(), n1.ipv6());
    let pod_ip = c
        .kubectl_ok(
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[0].status.podIP}",
            ],
            None,
        )
        .unwrap_or_default();
    let pod_ip = if pod_ip.trim().is_empty() {
        "<a web pod's IP>".to_owned()
    } else {
        pod_ip.trim().to_owned()
    };
    println!();
    println!(
        "shoal is up in {:.0} s with the demo (manifests/demo/). Try:",
        started.elapsed().as_secs_f64()
    );
    for (cmd, why) in [
        (format!("export KUBECONFIG={k}"), ""),
        ("kubectl get nodes -o wide".to_owned(), ""),
        (
            "kubectl get deploy,sts,pods,svc,pvc,jobs,cronjobs -o wide".to_owned(),
            "",
        ),
        (
            format!("curl http://{v4}:{DEMO_NODE_PORT}/"),
            "the web NodePort from this machine: a web pod's name",
        ),
        (
            format!("curl -g http://[{v6}]:{DEMO_NODE_PORT}/"),
            "the same over IPv6",
        ),
        (
            format!("curl http://{pod_ip}:8080/"),
            "pod IPs are routed from this machine",
        ),
        (
            "kubectl logs job/fetch".to_owned(),
            "the client Job fetched http://web/ by name",
        ),
        (
            "kubectl exec deploy/web -- wget -q -O - http://db-0.db:8080/".to_owned(),
            "a StatefulSet pod by its DNS name",
        ),
        (
            format!(
                "cargo xtask lab exec --prefix {PREFIX} host-1 -- dig +short @10.96.0.10 web.default.svc.cluster.local A web.default.svc.cluster.local AAAA"
            ),
            "cluster DNS, from node-1",
        ),
        (
            "kubectl scale deploy/web --replicas 4".to_owned(),
            "then curl the NodePort a few times",
        ),
        (
            format!("cargo xtask lab exec --prefix {PREFIX} host-2 -- ip -br addr"),
            "a node's view",
        ),
        ("cargo xtask down".to_owned(), "removes all of it"),
    ]
    .into_iter()
    .chain((args.servers > 1).then(|| {
        (
            "kubectl --context node-2 get nodes".to_owned(),
            "the same API through another member (one context per member)",
        )
    }))
    {
        if why.is_empty() {
            println!("  {cmd}");
        } else {
            println!("  {cmd:<60} # {why}");
        }
    }
    println!(
        "Logs: {}/node-*/agent.log, {}/node-1/server.log",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Adds a cluster and a context named after each member (`node-1`, ...)
/// to `kubeconfig`, with its CA and admin user: kubectl takes one server
/// per cluster entry and does not fail over, so when a member is down
/// `kubectl --context node-2` reaches another. The current context stays
/// node-1's.
fn add_member_contexts(kubeconfig: &Path, urls: &[String]) -> Result<()> {
    let kubectl = |args: &[&str]| -> Result<String> {
        let out = Command::new(cluster::KUBECTL)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .with_context(|| format!("running {}", cluster::KUBECTL))?;
        ensure!(
            out.status.success(),
            "kubectl {args:?} on {}: {}",
            kubeconfig.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let ca = kubectl(&[
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ])?;
    let user = kubectl(&["config", "view", "-o", "jsonpath={.users[0].name}"])?;
    ensure!(
        !ca.is_empty() && !user.is_empty(),
        "{} names no cluster CA or user",
        kubeconfig.display()
    );
    for (i, url) in urls.iter().enumerate() {
        let name = format!("node-{}", i + 1);
        kubectl(&["config", "set-cluster", &name, "--server", url])?;
        kubectl(&[
            "config",
            "set",
            &format!("clusters.{name}.certificate-authority-data"),
            &ca,
        ])?;
        kubectl(&[
            "config",
            "set-context",
            &name,
            "--cluster",
            &name,
            "--user",
            &user,
        ])?;
    }
    Ok(())
}

/// The demo's NodePort (`manifests/demo/web.yaml`).
const DEMO_NODE_PORT: u16 = 30080;

/// Waits until the demo's web and db pods are Ready and its fetch Job has
/// completed, printing progress whenever it changes.
fn wait_demo(c: &mut LabCluster, started: Instant) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last = String::new();
    loop {
        let pods = c.kubectl_ok(
            &[
                "get",
                "pods",
                "-o",
                "jsonpath={range .items[*]}{.metadata.labels.app} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ],
            None,
        )?;
        let count = |app: &str| {
            let of_app = pods.lines().filter(|l| l.starts_with(&format!("{app} ")));
            let (mut ready, mut total) = (0, 0);
            for l in of_app {
                total += 1;
                ready += usize::from(l.ends_with(" True"));
            }
            (ready, total)
        };
        let (web, web_total) = count("web");
        let (db, _) = count("db");
        let fetch = c.kubectl_ok(
            &[
                "get",
                "job",
                "fetch",
                "-o",
                "jsonpath={.status.succeeded} {.status.failed}",
            ],
            None,
        )?;
        let fetched = fetch.split_whitespace().next() == Some("1");
        let now = format!(
            "web {web}/2 ready, db {db}/2 ready, fetch job {}",
            if fetched { "complete" } else { "running" }
        );
        if now != last {
            println!(
                "    {:>5.1} s  demo: {now}",
                started.elapsed().as_secs_f64()
            );
            last = now;
        }
        if web == 2 && web_total == 2 && db == 2 && fetched {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the demo was not ready in 240 s ({last}); the cluster is left running for a look: `KUBECONFIG={} kubectl get pods -o wide` and `kubectl describe pod` say why, `cargo xtask down` removes it; the processes' logs end with:\n{}",
            state_dir().join("kubeconfig").display(),
            c.logs_tail(20)
        );
        c.check_alive().with_context(|| {
            format!(
                "while the demo came up; the rest is left running for a look (`cargo xtask down` removes it); the processes' logs end with:\n{}",
                c.logs_tail(30)
            )
        })?;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Runs `cargo xtask down`.
pub fn down() -> Result<()> {
    let dir = state_dir().join("cluster");
    let shoal = ["release", "debug"]
        .iter()
        .map(|p| target_dir().join(p).join("shoal"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| Path::new("shoal").to_path_buf());
    if Lab::attach(PREFIX).is_err() && !dir.exists() {
        println!("no lab cluster: nothing to remove");
        return Ok(());
    }
    cluster::remove(PREFIX, &dir, &shoal)?;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(state_dir().join("kubeconfig"));
    println!(
        "removed the lab cluster (lab {PREFIX:?}, {}, routes from this machine)",
        lab::UNREACHABLE_CIDRS.join(", ")
    );
    Ok(())
}
