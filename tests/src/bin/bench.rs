//! The benchmark runner behind `cargo xtask bench <area>`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Parser;

#[derive(Parser)]
#[command(about = "shoal's benchmarks; each writes <out>/<area>.json")]
struct Args {
    /// The area: `store`, `api`, `dataplane`, `dns`, `pods`, `scheduler` or
    /// `controllers`.
    area: String,
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

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = match args.area.as_str() {
        "store" => runtime.block_on(shoal_e2e::bench::store::run(
            args.shoal.as_deref(),
            &args.work,
        ))?,
        "api" => runtime.block_on(shoal_e2e::bench::api::run(
            args.shoal.as_deref(),
            &args.work,
        ))?,
        "dataplane" => shoal_e2e::bench::dataplane::run()?,
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
        other => {
            bail!(
                "unknown benchmark area {other:?}; known: store, api, dataplane, dns, pods, scheduler, controllers"
            )
        }
    };
    shoal_e2e::bench::report(&args.area, &rows, &args.out)
}
