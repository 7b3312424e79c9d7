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
    let profile = if args.debug { "debug" } else { "release" };
    println!("==> building shoal ({profile})");
    let mut build = Command::new("cargo");
    build
        .current_dir(workspace_root())
        .args(["build", "--bin", "shoal"]);
    if !args.debug {
        build.arg("--release");
    }
    run_cmd(&mut build, "building shoal")?;
    let shoal = target_dir().join(profile).join("shoal");

    let dir = state_dir().join("cluster");
    if Lab::attach(PREFIX).is_ok() || dir.exists() {
        println!("==> removing the previous lab cluster");
        cluster::remove(PREFIX, &dir, &shoal)?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("==> starting {} node(s) in lab namespaces", args.nodes);
    let mut cfg = ClusterConfig::new(PREFIX, args.nodes, &dir)?;
    cfg.shoal = shoal;
    let mut c = LabCluster::start(cfg).context("starting the lab cluster")?;
    let n1 = c.host(0);
    c.lab().connect_root(&[
        ("10.244.0.0/16".to_owned(), n1.ipv4().into()),
        ("fd00:10:244::/56".to_owned(), n1.ipv6().into()),
    ])?;
    let kubeconfig = state_dir().join("kubeconfig");
    std::fs::copy(&c.kubeconfig, &kubeconfig)
        .with_context(|| format!("copying the kubeconfig to {}", kubeconfig.display()))?;
    println!(
        "    nodes Ready in {:.1} s; API at https://{}",
        started.elapsed().as_secs_f64(),
        n1.v4(cluster::API_PORT)
    );

    let demo = workspace_root().join("manifests").join("demo");
    if demo.is_dir() {
        println!("==> applying the demo ({})", demo.display());
        c.kubectl_ok(&["apply", "-f", &demo.display().to_string()], None)?;
        wait_demo(&mut c)?;
    }
    c.persist();
    let k = kubeconfig.display();
    println!();
    println!(
        "shoal is up ({:.0} s). Try:",
        started.elapsed().as_secs_f64()
    );
    println!("  export KUBECONFIG={k}");
    println!("  kubectl get nodes -o wide");
    println!("  kubectl get pods -A -o wide");
    println!(
        "  curl http://<a pod IP from above>:8080/      # pod IPs are routed from this machine"
    );
    println!("  cargo xtask lab exec --prefix {PREFIX} host-2 -- ip -br addr   # a node's view");
    println!(
        "  logs: {}/node-*/agent.log, {}/node-1/server.log",
        dir.display(),
        dir.display()
    );
    println!("  cargo xtask down                              # removes all of it");
    Ok(())
}

/// Waits until every pod of the default namespace is Ready, printing
/// progress.
fn wait_demo(c: &mut LabCluster) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = c.kubectl_ok(
            &[
                "get",
                "pods",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ],
            None,
        )?;
        let total = out.lines().count();
        let ready = out
            .lines()
            .filter(|l| l.ends_with(" True") || l.contains(" Succeeded"))
            .count();
        println!("    demo: {ready}/{total} pods ready");
        if total > 0 && ready == total {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the demo was not ready in 180 s:\n{out}\n{}",
            c.logs_tail(20)
        );
        c.check_alive()?;
        std::thread::sleep(Duration::from_secs(2));
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
