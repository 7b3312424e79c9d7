//! `cargo xtask test`: the README's test command and what `.ci/run` runs.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::setup::{self, run_cmd, workspace_root};

/// Arguments of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo fmt --check` and clippy (for a quick local loop).
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments passed to `cargo test` (e.g. a test name filter).
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

/// Setup if needed, fmt, clippy (host crates and the eBPF crate on its own
/// target), then every test, the lab tests included (they need root).
pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    if setup::is_complete() {
        println!("==> setup: everything present");
    } else {
        setup::run(&setup::Args::default())?;
    }
    let root = workspace_root();
    if !args.no_lint {
        timed("cargo fmt --check", || {
            run_cmd(
                Command::new("cargo")
                    .current_dir(&root)
                    .args(["fmt", "--all", "--check"]),
                "formatting (run `cargo fmt --all`)",
            )
        })?;
        timed("clippy (host crates)", || {
            run_cmd(
                Command::new("cargo").current_dir(&root).args([
                    "clippy",
                    "--all-targets",
                    "--all-features",
                    "--",
                    "-D",
                    "warnings",
                ]),
                "clippy",
            )
        })?;
        timed("clippy (eBPF programs, bpfel-unknown-none)", || {
            run_cmd(
                Command::new("cargo")
                    .current_dir(&root)
                    .env("RUSTC_BOOTSTRAP", "1")
                    .args([
                        "clippy",
                        "--package",
                        "shoal-ebpf",
                        "--target",
                        "bpfel-unknown-none",
                        "-Z",
                        "build-std=core",
                        "--release",
                        "--target-dir",
                        "target/ebpf-clippy",
                        "--",
                        "-D",
                        "warnings",
                    ]),
                "clippy on the eBPF crate",
            )
        })?;
    }
    let mut totals = Totals::default();
    let outcome = timed("tests (unit and lab)", || {
        run_tests(
            Command::new("cargo")
                .current_dir(&root)
                .args(["test", "--all-features", "--no-fail-fast"])
                .args(&args.cargo_test_args),
            &mut totals,
        )
    });
    println!(
        "xtask test: {:.0} s; {} test binaries",
        started.elapsed().as_secs_f64(),
        totals.binaries
    );
    // One closing line for every runner: `N passed, N failed, N skipped`.
    println!(
        "summary: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if outcome.is_err() {
        report_disk_and_memory(&root);
    }
    outcome?;
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    binaries: u64,
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds one libtest closing line:
    /// `test result: ok. 8 passed; 0 failed; 0 ignored; 0 measured; ...`.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test`, echoing its output as it comes and adding up the
/// per-binary results.
fn run_tests(cmd: &mut Command, totals: &mut Totals) -> Result<()> {
    let line = setup::describe(cmd);
    println!("    $ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("tests: could not start `{line}`"))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut out = std::io::stdout();
    for l in BufReader::new(stdout).lines() {
        let l = l.context("reading cargo test output")?;
        totals.add(&l);
        let _ = writeln!(out, "{l}");
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("tests: `{line}` failed with {status}");
    }
    Ok(())
}

/// A build that dies of a full disk shows up as a linker killed by SIGBUS,
/// which names neither: print what was free when the tests failed.
fn report_disk_and_memory(root: &std::path::Path) {
    for (what, cmd, args) in [
        ("disk", "df", &["-h", "."][..]),
        ("disk", "df", &["-h", "/tmp"][..]),
        ("memory", "free", &["-m"][..]),
    ] {
        match Command::new(cmd).current_dir(root).args(args).output() {
            Ok(out) => println!(
                "    {what} when the tests failed (`{cmd} {}`):\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            ),
            Err(e) => println!("    could not run `{cmd}`: {e}"),
        }
    }
}

fn timed(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let started = Instant::now();
    println!("==> {name}");
    f()?;
    println!("    ({:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}
