//! `cargo xtask lab`: bare lab hosts in network namespaces (see
//! `shoal_e2e::lab`).

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::time::Instant;

use anyhow::{Context, Result};
use shoal_e2e::lab::{self, Lab};

/// Arguments of `cargo xtask lab`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(clap::Subcommand)]
enum LabCommand {
    /// Create the lab (replacing one with the same prefix) and leave it running.
    Up {
        /// How many hosts: host-1..host-N.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Names the lab's namespaces and cgroups: shoal-<prefix>-host-<i>.
        #[arg(long, default_value = lab::DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Run a command inside a host (its netns and cgroup); exits with its code.
    Exec {
        /// The lab's prefix.
        #[arg(long, default_value = lab::DEFAULT_PREFIX)]
        prefix: String,
        /// The host: host-1, host-2, ...
        host: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// Remove the lab and everything in it; succeeds if there is none.
    Down {
        /// The lab's prefix.
        #[arg(long, default_value = lab::DEFAULT_PREFIX)]
        prefix: String,
    },
}

/// Runs `cargo xtask lab`.
pub fn run(args: &Args) -> Result<()> {
    match &args.command {
        LabCommand::Up { hosts, prefix } => up(prefix, *hosts),
        LabCommand::Exec {
            prefix,
            host,
            command,
        } => exec(prefix, host, command),
        LabCommand::Down { prefix } => down(prefix),
    }
}

fn up(prefix: &str, hosts: usize) -> Result<()> {
    let start = Instant::now();
    let mut lab = Lab::create(prefix, hosts).with_context(|| format!("creating lab {prefix:?}"))?;
    lab.persist();
    println!(
        "lab {prefix:?} is up: {hosts} host(s) in {} ms, bridge {} in netns {}",
        start.elapsed().as_millis(),
        lab::BRIDGE,
        lab.fabric_netns()
    );
    for host in lab.hosts() {
        println!(
            "  {:<8} {}/{} {}/{}  netns {}  cgroup {}",
            host.name(),
            host.ipv4(),
            lab::NODE_NET_V4_LEN,
            host.ipv6(),
            lab::NODE_NET_V6_LEN,
            host.netns(),
            host.cgroup().display()
        );
    }
    println!(
        "unreachable in every lab namespace: {}",
        lab::UNREACHABLE_CIDRS.join(", ")
    );
    let flag = if prefix == lab::DEFAULT_PREFIX {
        String::new()
    } else {
        format!(" --prefix {prefix}")
    };
    println!("run a command:  cargo xtask lab exec{flag} host-1 -- ip -br addr");
    println!("tear it down:   cargo xtask lab down{flag}");
    Ok(())
}

fn exec(prefix: &str, host: &str, command: &[OsString]) -> Result<()> {
    let lab = Lab::attach(prefix)?;
    let host = lab.host_named(host)?;
    let (program, args) = command
        .split_first()
        .context("no command given after `--`")?;
    let status = host
        .command(program)?
        .args(args)
        .status()
        .with_context(|| format!("running {program:?} on {}", host.name()))?;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    std::process::exit(code)
}

fn down(prefix: &str) -> Result<()> {
    let removed = Lab::remove(prefix).with_context(|| format!("removing lab {prefix:?}"))?;
    if removed.is_empty() {
        println!("no lab {prefix:?}: nothing to remove");
    } else {
        println!("removed lab {prefix:?}: {removed}");
    }
    Ok(())
}
