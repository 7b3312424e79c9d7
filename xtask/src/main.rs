//! shoal's developer commands: `cargo xtask setup | test | lab ...`.

mod bench;
mod cluster;
mod footprint;
mod image;
mod lab;
mod proto_schema;
mod setup;
mod sidecar_image;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "shoal's developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks for building and testing shoal (idempotent).
    Setup(setup::Args),
    /// The README's test command: setup, fmt, clippy, unit and lab tests.
    Test(test::Args),
    /// A benchmark: shoal and its reference in one run; writes target/bench/<area>.json.
    Bench(bench::Args),
    /// Bare lab hosts in network namespaces: `lab up --hosts N`, `lab exec host-1 -- CMD`, `lab down`.
    Lab(lab::Args),
    /// A shoal cluster in the lab (node-1 control plane + agents), reachable
    /// from this machine, with the demo; kubeconfig at target/lab/kubeconfig.
    Up(cluster::UpArgs),
    /// Removes the lab cluster `up` made and everything it left.
    Down,
    /// Regenerates api/src/proto/schema.txt (Kubernetes' protobuf field table) from k8s-pb and k8s-openapi.
    ProtoSchema,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup(args) => setup::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Lab(args) => lab::run(&args),
        Command::Up(args) => cluster::up(&args),
        Command::Down => cluster::down(),
        Command::Bench(args) => bench::run(&args),
        Command::ProtoSchema => proto_schema::run(),
    }
}
