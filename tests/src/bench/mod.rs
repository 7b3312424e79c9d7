//! Benchmarks (`cargo xtask bench <area>`): each measures shoal and its
//! reference in the same run, prints a table with ratios and writes
//! `target/bench/<area>.json` in the shape DESIGN.md gives.

pub mod api;
pub mod controllers;
pub mod dataplane;
pub mod dataplane_propagation;
pub mod dataplane_traffic;
pub mod dns;
mod fleet;
pub mod flows;
pub mod pods;
pub mod scheduler;
pub mod store;

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use serde::Serialize;

/// Latencies and errors of one case.
pub struct Summary {
    sorted: Vec<Duration>,
    /// Failed requests (or, for watches, events that never arrived).
    pub errors: u64,
    elapsed: Duration,
}

impl Summary {
    /// Sorts the latencies.
    pub fn new(mut latencies: Vec<Duration>, errors: u64, elapsed: Duration) -> Self {
        latencies.sort_unstable();
        Self {
            sorted: latencies,
            errors,
            elapsed,
        }
    }

    /// Successful operations per second.
    pub fn rate(&self) -> f64 {
        self.sorted.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Median latency in milliseconds.
    pub fn p50_ms(&self) -> f64 {
        percentile(&self.sorted, 0.50)
    }

    /// 99th-percentile latency in milliseconds.
    pub fn p99_ms(&self) -> f64 {
        percentile(&self.sorted, 0.99)
    }
}

/// The `q` quantile of sorted latencies, in milliseconds (NaN if empty).
pub fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// One row of a benchmark's JSON and table.
#[derive(Serialize, Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub case: String,
    /// Which figure.
    pub metric: String,
    /// Its unit.
    pub unit: String,
    /// shoal's figure.
    pub shoal: f64,
    /// The reference's figure.
    pub reference: f64,
    /// The reference's name.
    pub reference_name: String,
    /// ≥ 1 means shoal is ahead, whichever way "better" points.
    pub ratio: f64,
    /// "higher" or "lower".
    pub better: &'static str,
    /// Lowest and highest of shoal's runs, where the figure is a median.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shoal_spread: Option<[f64; 2]>,
    /// Lowest and highest of the reference's runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_spread: Option<[f64; 2]>,
}

impl Row {
    /// A higher-is-better row (throughput): ratio = shoal / reference.
    pub fn higher(
        case: &str,
        metric: &str,
        unit: &str,
        shoal: f64,
        reference: f64,
        name: &str,
    ) -> Self {
        Self::new(
            case,
            metric,
            unit,
            shoal,
            reference,
            name,
            "higher",
            shoal / reference,
        )
    }

    /// A lower-is-better row (latency): ratio = reference / shoal.
    pub fn lower(
        case: &str,
        metric: &str,
        unit: &str,
        shoal: f64,
        reference: f64,
        name: &str,
    ) -> Self {
        Self::new(
            case,
            metric,
            unit,
            shoal,
            reference,
            name,
            "lower",
            reference / shoal,
        )
    }

    /// The same row with the spread (min, max) of the runs behind both
    /// medians.
    pub fn with_spread(mut self, shoal: [f64; 2], reference: [f64; 2]) -> Self {
        self.shoal_spread = Some(shoal);
        self.reference_spread = Some(reference);
        self
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "private constructor behind two named ones"
    )]
    fn new(
        case: &str,
        metric: &str,
        unit: &str,
        shoal: f64,
        reference: f64,
        name: &str,
        better: &'static str,
        ratio: f64,
    ) -> Self {
        Self {
            case: case.to_owned(),
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            shoal,
            reference,
            reference_name: name.to_owned(),
            ratio,
            better,
            shoal_spread: None,
            reference_spread: None,
        }
    }
}

#[derive(Serialize)]
struct Report<'a> {
    area: &'a str,
    machine: String,
    rows: &'a [Row],
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .unwrap_or(0);
    format!(
        "{cpus} cores, {} GiB, Linux {}",
        mem_kb / (1024 * 1024),
        kernel.trim()
    )
}

/// Prints the table and writes `<out_dir>/<area>.json`.
pub fn report(area: &str, rows: &[Row], out_dir: &Path) -> Result<()> {
    println!(
        "{:<52} {:>10} {:>6} {:>12} {:>12} {:>7}",
        "case", "metric", "unit", "shoal", "reference", "ratio"
    );
    for r in rows {
        println!(
            "{:<52} {:>10} {:>6} {:>12.2} {:>12.2} {:>6.2}x",
            r.case, r.metric, r.unit, r.shoal, r.reference, r.ratio
        );
    }
    if let Some(r) = rows.first() {
        println!(
            "reference: {}; ratio >= 1 means shoal is ahead",
            r.reference_name
        );
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let path = out_dir.join(format!("{area}.json"));
    let json = serde_json::to_string_pretty(&Report {
        area,
        machine: machine(),
        rows,
    })?;
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
