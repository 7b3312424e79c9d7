//! `cargo xtask bench <area>`: builds shoal and the benchmark runner in
//! release mode and runs the benchmark; it writes `target/bench/<area>.json`.

use std::process::Command;

use anyhow::Result;

use crate::setup::{run_cmd, workspace_root};

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {
    /// The area to measure: `store` (shoal's store against etcd) or `api`
    /// (the Kubernetes API: creates, lists, watchers) or `dns` (shoal-dns
    /// against nsd with dnsperf) or `scheduler` (5,000 nodes, 10,000 and
    /// 50,000 pods bound, against Kubernetes' scheduler_perf thresholds)
    /// or `controllers` (a Deployment of 3,000 replicas created, bound,
    /// Ready and rolled, against issue 7's goal) or `footprint` (binary
    /// size, `shoal up`'s RSS and CPU idle and with the demo, the store
    /// against etcd idle) or `flows` (flow events through the agent's
    /// pipeline to an OTLP receiver, fed by `BPF_PROG_TEST_RUN`, against
    /// issue 10's goal).
    pub area: String,
}

/// Runs one benchmark area.
pub fn run(args: &Args) -> Result<()> {
    let root = workspace_root();
    if args.area == "footprint" {
        // Only shoal itself: the footprint is measured from here.
        run_cmd(
            Command::new("cargo")
                .current_dir(&root)
                .args(["build", "--release", "--bin", "shoal"]),
            "release build of shoal",
        )?;
        let shoal = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root.join("target"), |dir| root.join(dir))
            .join("release")
            .join("shoal");
        return crate::footprint::run(&shoal);
    }
    run_cmd(
        Command::new("cargo").current_dir(&root).args([
            "build",
            "--release",
            "--package",
            "shoal",
            "--package",
            "shoal-e2e",
            "--features",
            "shoal-e2e/bench",
            "--bin",
            "shoal",
            "--bin",
            "bench",
        ]),
        "release build of shoal and the benchmark runner",
    )?;
    // Where cargo put them: CARGO_TARGET_DIR if set (relative to the
    // workspace root, as cargo takes it), else target/.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(dir))
        .join("release");
    run_cmd(
        Command::new(target.join("bench"))
            .current_dir(&root)
            .arg(&args.area)
            .arg("--shoal")
            .arg(target.join("shoal")),
        &format!("benchmark {}", args.area),
    )
}
