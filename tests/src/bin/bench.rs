//! The benchmark runner behind `cargo xtask bench <area>`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use shoal_e2e::bench::{dataplane_traffic, flows};

#[derive(Parser)]
#[command(
    about = "shoal's benchmarks; each writes <out>/<area>.json",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    /// The area: `store`, `api`, `dataplane`, `dns`, `pods`, `scheduler`,
    /// `controllers` or `flows`.
    #[arg(required = true)]
    area: Option<String>,
    /// A piece of a benchmark that runs inside a lab host.
    #[command(subcommand)]
    helper: Option<Helper>,
    /// The `shoal` binary to measure; without it only the reference runs.
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Where the JSON goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Scratch space for data directories.
    #[arg(long, default_value = "target/bench/work")]
    work: PathBuf,
}

/// Processes the dataplane benchmark starts inside lab hosts.
#[derive(Subcommand)]
enum Helper {
    /// A backend server (answers each connection's request, then closes).
    #[command(hide = true)]
    DataplaneServe(dataplane_traffic::ServeArgs),
    /// The load generator (prints one JSON line).
    #[command(hide = true)]
    DataplaneLoad(dataplane_traffic::LoadArgs),
    /// One run of the flow pipeline benchmark (prints one JSON line).
    #[command(hide = true)]
    FlowsPipeline(flows::PipelineArgs),
}

fn main() -> Result<()> {
    let args = Args::parse();
    let area = match (args.helper, args.area) {
        (Some(Helper::DataplaneServe(a)), _) => match dataplane_traffic::serve(&a)? {},
        (Some(Helper::DataplaneLoad(a)), _) => return dataplane_traffic::load(&a),
        (Some(Helper::FlowsPipeline(a)), _) => return flows::pipeline(&a),
        (None, Some(area)) => area,
        (None, None) => bail!("give a benchmark area"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = match area.as_str() {
        "store" => runtime.block_on(shoal_e2e::bench::store::run(
            args.shoal.as_deref(),
            &args.work,
        ))?,
        "api" => runtime.block_on(shoal_e2e::bench::api::run(
            args.shoal.as_deref(),
            &args.work,
        ))?,
        "dataplane" => {
            let mut rows = shoal_e2e::bench::dataplane::run()?;
            rows.extend(
                runtime.block_on(shoal_e2e::bench::dataplane_propagation::run(
                    args.shoal.as_deref(),
                    &args.work,
                ))?,
            );
            rows
        }
        "dns" => runtime.block_on(shoal_e2e::bench::dns::run(
            args.shoal.as_deref(),
            &args.work,
        ))?,
        "pods" => runtime.block_on(shoal_e2e::bench::pods::run(
            args.shoal.as_deref(),
            &args.work,
        ))?,
        "scheduler" => runtime.block_on(shoal_e2e::bench::scheduler::run(
            args.shoal.as_deref(),
            &args.work,
        ))?,
        "controllers" => runtime.block_on(shoal_e2e::bench::controllers::run(
            args.shoal.as_deref(),
            &args.work,
        ))?,
        "flows" => flows::run()?,
        other => {
            bail!(
                "unknown benchmark area {other:?}; known: store, api, dataplane, dns, pods, scheduler, controllers, flows"
            )
        }
    };
    shoal_e2e::bench::report(&area, &rows, &args.out)
}
