//! The lab: `N` hosts, each its own network namespace and cgroup v2
//! directory, joined by a bridge that lives in a separate fabric namespace.
//!
//! Every lab namespace (hosts and fabric) has `unreachable` routes for the
//! service CIDRs and the LoadBalancer pools and no default route, so nothing
//! in the lab can reach an address outside it. Nothing is created in the
//! root network namespace.
//!
//! Names, for a lab prefix `P`:
//!
//! | what | name |
//! |---|---|
//! | fabric netns (holds bridge `br0`) | `shoal-P-fabric` |
//! | host netns (holds `eth0`) | `shoal-P-host-<i>`, `i` from 1 |
//! | bridge port of host `i` (in the fabric) | `host-<i>` |
//! | host cgroup | `<cgroup2 mount>/shoal-P/host-<i>` |
//! | host pin dir (made by the agent, removed here) | `/sys/fs/bpf/shoal/P-host-<i>` |
//!
//! A [`Lab`] removes all of it when dropped unless [`Lab::persist`] was
//! called; [`Lab::create`] first removes whatever a crashed run left under
//! the same prefix.

mod cgroup;
mod command;
mod ip;
mod mounts;
mod probe;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use probe::{Probe, ProbeServer};

/// IPv4 service CIDR; `unreachable` in every lab namespace.
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/16";
/// IPv6 service CIDR; `unreachable` in every lab namespace.
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/112";
/// IPv4 LoadBalancer pool; `unreachable` in every lab namespace.
pub const LB_POOL_V4: &str = "10.250.0.0/24";
/// IPv6 LoadBalancer pool; `unreachable` in every lab namespace.
pub const LB_POOL_V6: &str = "fd00:10:250::/120";
/// Every CIDR that gets an `unreachable` route in every lab namespace.
pub const UNREACHABLE_CIDRS: [&str; 4] = [SERVICE_CIDR_V4, SERVICE_CIDR_V6, LB_POOL_V4, LB_POOL_V6];

/// The lab's IPv4 node network; host `i` is `172.20.0.(10+i)/24`.
pub const NODE_NET_V4: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 0);
/// Prefix length of [`NODE_NET_V4`].
pub const NODE_NET_V4_LEN: u8 = 24;
/// The lab's IPv6 node network; host `i` is `fd00:172:20::<10+i in hex>/64`
/// (host-1 is `fd00:172:20::b`).
pub const NODE_NET_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x172, 0x20, 0, 0, 0, 0, 0);
/// Prefix length of [`NODE_NET_V6`].
pub const NODE_NET_V6_LEN: u8 = 64;
/// Host `i` gets host number `HOST_NUMBER_OFFSET + i` in both node networks.
pub const HOST_NUMBER_OFFSET: u8 = 10;
/// Most hosts a lab can have (host numbers stay below 255).
pub const MAX_HOSTS: usize = 200;

/// The bridge in the fabric namespace.
pub const BRIDGE: &str = "br0";
/// The interface of every host (a veth whose peer is `host-<i>` on the bridge).
pub const HOST_INTERFACE: &str = "eth0";
/// Where the agents pin their maps, one directory per node.
pub const PIN_ROOT: &str = "/sys/fs/bpf/shoal";
/// The prefix of every lab's network namespace and cgroup names.
pub const NAME_PREFIX: &str = "shoal-";
/// The prefix `cargo xtask lab` uses.
pub const DEFAULT_PREFIX: &str = "lab";
/// Longest lab prefix accepted.
pub const MAX_PREFIX_LEN: usize = 32;

const NETNS_DIR: &str = "/run/netns";
const FABRIC: &str = "fabric";

/// An error of the lab harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller is not root.
    #[error(
        "the lab needs root (it creates network namespaces and cgroups): run as root, e.g. `sudo -E cargo ...`"
    )]
    NotRoot,
    /// iproute2's `ip` could not be found.
    #[error(
        "`ip` (iproute2) was not found in PATH nor in /usr/sbin, /sbin, /usr/bin: install iproute2 (`cargo xtask setup` or `apt-get install iproute2`)"
    )]
    IpMissing,
    /// No cgroup v2 hierarchy is mounted.
    #[error(
        "no cgroup2 file system is mounted (looked in /proc/self/mountinfo and at /sys/fs/cgroup): mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    /// The lab prefix cannot be used in names.
    #[error("invalid lab prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The prefix given.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host count is out of range.
    #[error("invalid host count {hosts}: a lab has 1 to {MAX_HOSTS} hosts")]
    InvalidHostCount {
        /// The count given.
        hosts: usize,
    },
    /// No lab with this prefix exists.
    #[error(
        "no lab with prefix {prefix:?}: no network namespace named shoal-{prefix}-host-<i> exists; create one with `cargo xtask lab up --prefix {prefix}`"
    )]
    NoSuchLab {
        /// The prefix asked for.
        prefix: String,
    },
    /// The lab has no host with this name.
    #[error("lab {prefix:?} has no host {name:?}; its hosts are {hosts}")]
    NoSuchHost {
        /// The lab's prefix.
        prefix: String,
        /// The name asked for.
        name: String,
        /// The names it has.
        hosts: String,
    },
    /// A program could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line (and the failing batch line, if any).
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A file system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// The probe binary misbehaved.
    #[error("probe on {host}: {message}")]
    Probe {
        /// The lab host it ran on.
        host: String,
        /// What went wrong.
        message: String,
    },
    /// Removing a lab left something behind.
    #[error("removing lab {prefix:?} left {} problem(s): {}", problems.len(), problems.join("; "))]
    Teardown {
        /// The lab's prefix.
        prefix: String,
        /// Every piece that could not be removed, with the reason.
        problems: Vec<String>,
    },
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup/unified` on a
/// hybrid machine).
pub fn cgroup2_root() -> Result<PathBuf> {
    cgroup::mount_point()
}

/// The lab harness's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// One lab host: a network namespace with `eth0` on the lab bridge and a
/// cgroup v2 directory.
#[derive(Debug, Clone)]
pub struct Host {
    index: usize,
    name: String,
    netns: String,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
}

impl Host {
    fn new(prefix: &str, index: usize, cgroup_root: &Path) -> Host {
        let name = format!("host-{index}");
        let number = host_number(index);
        let mut v6 = NODE_NET_V6.segments();
        v6[7] = u16::from(number);
        let o = NODE_NET_V4.octets();
        Host {
            index,
            netns: format!("{NAME_PREFIX}{prefix}-{name}"),
            cgroup: cgroup_root.join(&name),
            pin_dir: Path::new(PIN_ROOT).join(format!("{prefix}-{name}")),
            ipv4: Ipv4Addr::new(o[0], o[1], o[2], number),
            ipv6: Ipv6Addr::from(v6),
            name,
        }
    }

    /// The host's number, from 1.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The host's name in the lab: `host-<i>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of its network namespace: `shoal-<prefix>-host-<i>`.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The path of its network namespace: `/run/netns/shoal-<prefix>-host-<i>`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    /// Its cgroup v2 directory: `<cgroup2>/shoal-<prefix>/host-<i>`.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Where an agent on this host pins its maps: `/sys/fs/bpf/shoal/<prefix>-host-<i>`.
    /// The lab does not create it; it removes it on teardown.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Its IPv4 address on the lab network (`172.20.0.(10+i)`, a /24).
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// Its IPv6 address on the lab network (`fd00:172:20::<10+i in hex>`, a /64).
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// `ipv4:port`.
    pub fn v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ipv4), port)
    }

    /// `[ipv6]:port`.
    pub fn v6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ipv6), port)
    }

    /// A command that runs `program` inside this host: its network namespace
    /// and its cgroup (entered between fork and exec, so no `ip netns exec`
    /// and `/sys` stays the caller's, with the cgroup2 mount visible).
    ///
    /// Fails if the host's netns or cgroup is gone.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        command::in_host(program.as_ref(), &self.netns_path(), &self.cgroup)
    }
}

/// Host `index`'s number in both node networks.
fn host_number(index: usize) -> u8 {
    u8::try_from(index)
        .ok()
        .and_then(|i| i.checked_add(HOST_NUMBER_OFFSET))
        .unwrap_or(u8::MAX)
}

/// A running lab. Dropping it removes everything it made unless
/// [`Lab::persist`] was called.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    hosts: Vec<Host>,
    cgroup_root: PathBuf,
    keep: bool,
}

/// What removing a lab removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Processes killed because they were still in a lab cgroup.
    pub killed: usize,
    /// Network namespaces deleted.
    pub netns: Vec<String>,
    /// Cgroup directories removed.
    pub cgroups: Vec<PathBuf>,
    /// Pin directories removed.
    pub pin_dirs: Vec<PathBuf>,
}

impl Removed {
    /// Whether nothing was found to remove.
    pub fn is_empty(&self) -> bool {
        self.killed == 0
            && self.netns.is_empty()
            && self.cgroups.is_empty()
            && self.pin_dirs.is_empty()
    }
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "nothing");
        }
        let mut parts = Vec::new();
        if self.killed > 0 {
            parts.push(format!("killed {} process(es)", self.killed));
        }
        if !self.netns.is_empty() {
            parts.push(format!("netns {}", self.netns.join(", ")));
        }
        let paths = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.cgroups.is_empty() {
            parts.push(format!("cgroups {}", paths(&self.cgroups)));
        }
        if !self.pin_dirs.is_empty() {
            parts.push(format!("pin dirs {}", paths(&self.pin_dirs)));
        }
        write!(f, "{}", parts.join("; "))
    }
}

impl Lab {
    /// Creates a lab of `hosts` hosts named by `prefix`, first removing any
    /// lab left behind under the same prefix. Needs root and `ip`.
    pub fn create(prefix: &str, hosts: usize) -> Result<Lab> {
        check_prefix(prefix)?;
        if hosts == 0 || hosts > MAX_HOSTS {
            return Err(Error::InvalidHostCount { hosts });
        }
        require_root()?;
        let ip = ip::Ip::find()?;
        let cgroup2 = cgroup::mount_point()?;
        remove_prefix(&ip, prefix, Some(&cgroup2))?;

        let cgroup_root = cgroup2.join(format!("{NAME_PREFIX}{prefix}"));
        let lab = Lab {
            prefix: prefix.to_owned(),
            hosts: (1..=hosts)
                .map(|i| Host::new(prefix, i, &cgroup_root))
                .collect(),
            cgroup_root,
            keep: false,
        };
        // From here on, a failure drops `lab`, which removes what was made.
        lab.build(&ip)?;
        Ok(lab)
    }

    fn build(&self, ip: &ip::Ip) -> Result<()> {
        cgroup::create(&self.cgroup_root)?;
        for host in &self.hosts {
            cgroup::create(&host.cgroup)?;
        }

        let fabric = self.fabric_netns();
        let mut add = vec![format!("netns add {fabric}")];
        add.extend(self.hosts.iter().map(|h| format!("netns add {}", h.netns)));
        ip.batch(None, &add)?;

        let mut lines = vec![
            "link set lo up".to_owned(),
            format!("link add {BRIDGE} type bridge"),
            // No link-local address: the fabric has no IPv6 address at all.
            format!("link set {BRIDGE} addrgenmode none"),
            format!("link set {BRIDGE} up"),
        ];
        lines.extend(unreachable_routes());
        ip.batch(Some(&fabric), &lines)?;

        // The veth pairs are made from inside each host's namespace with the
        // peer placed straight into the fabric, so nothing ever appears in the
        // root namespace. Hosts are independent: wire them concurrently.
        let pending = self
            .hosts
            .iter()
            .map(|host| {
                let mut lines = vec![
                    "link set lo up".to_owned(),
                    format!(
                        "link add {HOST_INTERFACE} type veth peer name {} netns {fabric}",
                        host.name
                    ),
                    format!(
                        "addr add {}/{NODE_NET_V4_LEN} dev {HOST_INTERFACE}",
                        host.ipv4
                    ),
                    format!(
                        "addr add {}/{NODE_NET_V6_LEN} dev {HOST_INTERFACE} nodad",
                        host.ipv6
                    ),
                    format!("link set {HOST_INTERFACE} up"),
                ];
                lines.extend(unreachable_routes());
                ip.spawn_batch(Some(&host.netns), &lines)
            })
            .collect::<Vec<_>>();
        let mut first_error = None;
        for batch in pending {
            if let Err(e) = batch.and_then(ip::Batch::wait) {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }

        let mut ports = Vec::new();
        for host in &self.hosts {
            ports.push(format!("link set {} master {BRIDGE}", host.name));
            ports.push(format!("link set {} addrgenmode none", host.name));
            ports.push(format!("link set {} up", host.name));
        }
        ip.batch(Some(&fabric), &ports)
    }

    /// Opens an existing lab (as made by `cargo xtask lab up`). The handle
    /// does not own it: dropping it leaves the lab running; use
    /// [`Lab::teardown`] or [`Lab::remove`] to remove it.
    pub fn attach(prefix: &str) -> Result<Lab> {
        check_prefix(prefix)?;
        require_root()?;
        let cgroup2 = cgroup::mount_point()?;
        let cgroup_root = cgroup2.join(format!("{NAME_PREFIX}{prefix}"));
        let mut indices: Vec<usize> = netns_members(prefix)?
            .into_iter()
            .filter_map(|m| match m {
                Member::Host(i) => Some(i),
                Member::Fabric => None,
            })
            .collect();
        if indices.is_empty() {
            return Err(Error::NoSuchLab {
                prefix: prefix.to_owned(),
            });
        }
        indices.sort_unstable();
        Ok(Lab {
            prefix: prefix.to_owned(),
            hosts: indices
                .into_iter()
                .map(|i| Host::new(prefix, i, &cgroup_root))
                .collect(),
            cgroup_root,
            keep: true,
        })
    }

    /// Removes everything belonging to the lab `prefix` (processes in its
    /// cgroups, its network namespaces, cgroup directories and pin
    /// directories), whether or not it is complete. Succeeds, removing
    /// nothing, if no such lab exists. Every piece is tried; failures are
    /// reported together at the end.
    pub fn remove(prefix: &str) -> Result<Removed> {
        check_prefix(prefix)?;
        require_root()?;
        let ip = ip::Ip::find()?;
        let cgroup2 = cgroup::mount_point().ok();
        remove_prefix(&ip, prefix, cgroup2.as_deref())
    }

    /// A prefix no other lab in use has: `t<pid>n<counter>`. On its first
    /// call in a process it also removes labs of this form left by test
    /// processes that no longer run.
    pub fn unique_prefix() -> String {
        static ORPHANS: Once = Once::new();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        ORPHANS.call_once(|| {
            // Without root there is nothing to clean; creating will say why.
            if require_root().is_err() {
                return;
            }
            if let Err(e) = remove_orphans() {
                eprintln!("lab: removing labs of finished test processes: {e}");
            }
        });
        format!(
            "t{}n{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The lab's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Host `i`, 1-based.
    ///
    /// # Panics
    /// If the lab has no host `i`.
    pub fn host(&self, i: usize) -> &Host {
        self.hosts.iter().find(|h| h.index == i).unwrap_or_else(|| {
            panic!(
                "lab {} has no host-{i} (it has {})",
                self.prefix,
                self.host_names()
            )
        })
    }

    /// The host named `name` (`host-<i>`).
    pub fn host_named(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| Error::NoSuchHost {
                prefix: self.prefix.clone(),
                name: name.to_owned(),
                hosts: self.host_names(),
            })
    }

    fn host_names(&self) -> String {
        self.hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// All hosts, in order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The name of the fabric namespace holding the bridge: `shoal-<prefix>-fabric`.
    pub fn fabric_netns(&self) -> String {
        format!("{NAME_PREFIX}{}-{FABRIC}", self.prefix)
    }

    /// The lab's cgroup directory, parent of the hosts' ones: `<cgroup2>/shoal-<prefix>`.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup_root
    }

    /// The root namespace's veth into this lab's fabric (see
    /// [`Lab::connect_root`]): `shoal-<prefix>`.
    pub fn root_interface(&self) -> Result<String> {
        let name = format!("{NAME_PREFIX}{}", self.prefix);
        if name.len() > 15 {
            return Err(Error::InvalidPrefix {
                prefix: self.prefix.clone(),
                reason: "connecting the root namespace needs a prefix of at most 9 characters (interface names are 15)",
            });
        }
        Ok(name)
    }

    /// Lets the machine itself reach the lab, as `cargo xtask up` needs
    /// for kubectl and for pod IPs: a veth from the root namespace into the
    /// fabric with [`ROOT_V4`]/[`ROOT_V6`], a route for each of `routes`
    /// (a CIDR via a lab host), and `unreachable` routes for the service
    /// CIDRs and LoadBalancer pools, so nothing typed on the machine for
    /// those leaves it. Everything goes with the lab.
    pub fn connect_root(&self, routes: &[(String, IpAddr)]) -> Result<()> {
        let ip = ip::Ip::find()?;
        let name = self.root_interface()?;
        let fabric = self.fabric_netns();
        let mut lines = vec![
            format!("link add {name} type veth peer name root netns {fabric}"),
            format!("addr add {ROOT_V4}/{NODE_NET_V4_LEN} dev {name}"),
            format!("addr add {ROOT_V6}/{NODE_NET_V6_LEN} dev {name} nodad"),
            format!("link set {name} up"),
        ];
        for (cidr, via) in routes {
            lines.push(format!("route replace {cidr} via {via} dev {name}"));
        }
        lines.extend(
            UNREACHABLE_CIDRS
                .iter()
                .map(|cidr| format!("route replace unreachable {cidr} proto {RTPROT_LAB_ROOT}")),
        );
        ip.batch(None, &lines)?;
        ip.batch(
            Some(&fabric),
            &[
                format!("link set root master {BRIDGE}"),
                "link set root addrgenmode none".to_owned(),
                "link set root up".to_owned(),
            ],
        )
    }

    /// Keeps the lab running after this handle is dropped.
    pub fn persist(&mut self) {
        self.keep = true;
    }

    /// Whether dropping this handle leaves the lab running.
    pub fn is_persistent(&self) -> bool {
        self.keep
    }

    /// Removes the lab now, reporting what was removed and what could not be.
    pub fn teardown(mut self) -> Result<Removed> {
        self.keep = true;
        Lab::remove(&self.prefix)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = Lab::remove(&self.prefix) {
            eprintln!("lab: {e}");
        }
    }
}

/// Whether a bpffs is mounted at `/sys/fs/bpf`, so agents can pin maps
/// under [`PIN_ROOT`] (`cargo xtask setup` mounts it).
pub fn bpffs_mounted() -> bool {
    mounts::is_mounted(Path::new("/sys/fs/bpf"), "bpf")
}

/// Enough to wait for when a command must not hang forever.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}

fn check_prefix(prefix: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidPrefix {
            prefix: prefix.to_owned(),
            reason,
        })
    };
    if prefix.is_empty() {
        return invalid("it is empty");
    }
    if prefix.len() > MAX_PREFIX_LEN {
        return invalid("it is longer than 32 characters");
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("use only a-z, 0-9 and '-'");
    }
    if prefix.starts_with('-') || prefix.ends_with('-') {
        return invalid("it starts or ends with '-'");
    }
    Ok(())
}

/// The machine's address on the lab's node network once
/// [`Lab::connect_root`] ran.
pub const ROOT_V4: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 254);
/// The machine's IPv6 address on the lab's node network.
pub const ROOT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x172, 0x20, 0, 0, 0, 0, 0xfe);
/// Route protocol of the `unreachable` routes [`Lab::connect_root`] adds
/// in the root namespace, so teardown removes exactly those.
pub const RTPROT_LAB_ROOT: u8 = 117;

fn unreachable_routes() -> impl Iterator<Item = String> {
    UNREACHABLE_CIDRS
        .iter()
        .map(|cidr| format!("route add unreachable {cidr}"))
}

/// A lab network namespace, by what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Fabric,
    Host(usize),
}

/// What `netns` (a namespace name) is in the lab `prefix`, if anything.
fn member(prefix: &str, netns: &str) -> Option<Member> {
    let rest = netns
        .strip_prefix(NAME_PREFIX)?
        .strip_prefix(prefix)?
        .strip_prefix('-')?;
    if rest == FABRIC {
        return Some(Member::Fabric);
    }
    host_index(rest.strip_prefix("host-")?).map(Member::Host)
}

/// `i` from the `<i>` of `host-<i>`: digits only, no leading zero.
fn host_index(digits: &str) -> Option<usize> {
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Names in /run/netns (none if it does not exist).
fn netns_names() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("listing", NETNS_DIR)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("listing", NETNS_DIR))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn netns_members(prefix: &str) -> Result<Vec<Member>> {
    Ok(netns_names()?
        .iter()
        .filter_map(|n| member(prefix, n))
        .collect())
}

/// Removes every piece of the lab `prefix`; see [`Lab::remove`].
fn remove_prefix(ip: &ip::Ip, prefix: &str, cgroup2: Option<&Path>) -> Result<Removed> {
    let mut removed = Removed::default();
    let mut problems = Vec::new();

    // Processes first: they may hold sockets and the namespaces open.
    if let Some(cgroup2) = cgroup2 {
        let root = cgroup2.join(format!("{NAME_PREFIX}{prefix}"));
        cgroup::remove_tree(&root, &mut removed, &mut problems);
    }
    // Container runtimes inside the lab (a lab cluster's pods) also make
    // the same path in every cgroup v1 hierarchy of a hybrid machine.
    for v1 in cgroup::v1_mount_points() {
        let root = v1.join(format!("{NAME_PREFIX}{prefix}"));
        cgroup::remove_tree(&root, &mut removed, &mut problems);
    }

    match netns_names() {
        Ok(names) => {
            let mut names: Vec<String> = names
                .into_iter()
                .filter(|n| member(prefix, n).is_some())
                .collect();
            names.sort();
            if !names.is_empty() {
                let lines: Vec<String> =
                    names.iter().map(|n| format!("netns delete {n}")).collect();
                if let Err(e) = ip.batch_force(None, &lines) {
                    problems.push(e.to_string());
                }
                // Report what is really gone, whatever ip said.
                let left = netns_names().unwrap_or_default();
                removed
                    .netns
                    .extend(names.into_iter().filter(|n| !left.contains(n)));
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    unmount_empty_netns_dir();
    remove_root_routes(ip, prefix);

    remove_pin_dirs(prefix, &mut removed, &mut problems);

    if problems.is_empty() {
        Ok(removed)
    } else {
        Err(Error::Teardown {
            prefix: prefix.to_owned(),
            problems,
        })
    }
}

/// The root namespace's `unreachable` routes go once no lab is connected
/// to it any more (they are shared by every connected lab).
fn remove_root_routes(ip: &ip::Ip, prefix: &str) {
    let mine = format!("{NAME_PREFIX}{prefix}");
    let connected = std::fs::read_dir("/sys/class/net").is_ok_and(|d| {
        d.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(NAME_PREFIX) && name != mine
        })
    });
    if !connected {
        let lines: Vec<String> = UNREACHABLE_CIDRS
            .iter()
            .map(|cidr| format!("route del unreachable {cidr} proto {RTPROT_LAB_ROOT}"))
            .collect();
        // Nothing to flush is not a failure.
        let _ = ip.batch_force(None, &lines);
    }
}

/// `ip netns add` makes /run/netns a shared mount of itself and leaves it
/// there; take it away again once no namespace is left in it. A plain
/// (not lazy) unmount fails with EBUSY while anyone's namespace is mounted
/// inside, so this never hides another namespace.
fn unmount_empty_netns_dir() {
    let is_empty = std::fs::read_dir(NETNS_DIR).is_ok_and(|mut d| d.next().is_none());
    if is_empty && mounts::is_mount_point(Path::new(NETNS_DIR)) {
        // EBUSY and EINVAL only mean someone else is using it or it went away.
        let _ = nix::mount::umount(NETNS_DIR);
    }
}

fn remove_pin_dirs(prefix: &str, removed: &mut Removed, problems: &mut Vec<String>) {
    let root = Path::new(PIN_ROOT);
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            problems.push(io_error("listing", root)(e).to_string());
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("-host-"))
            .and_then(host_index)
            .is_some();
        if !ours {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed.pin_dirs.push(path),
            Err(e) => problems.push(io_error("removing pin dir", path)(e).to_string()),
        }
    }
    // Only if it became empty; ENOTEMPTY means another lab's agent uses it.
    if !removed.pin_dirs.is_empty() {
        let _ = std::fs::remove_dir(root);
    }
}

/// Removes labs `t<pid>n<k>` (see [`Lab::unique_prefix`]) whose process is gone.
fn remove_orphans() -> Result<()> {
    let mut prefixes: Vec<String> = netns_names()?
        .iter()
        .filter_map(|n| {
            let rest = n.strip_prefix(NAME_PREFIX)?;
            let end = rest.find('-')?;
            Some(rest[..end].to_owned())
        })
        .collect();
    if let Ok(cgroup2) = cgroup::mount_point()
        && let Ok(entries) = std::fs::read_dir(&cgroup2)
    {
        prefixes.extend(entries.flatten().filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(NAME_PREFIX)
                .map(str::to_owned)
        }));
    }
    prefixes.sort();
    prefixes.dedup();
    let mut problems = Vec::new();
    for prefix in prefixes {
        let Some(pid) = test_prefix_pid(&prefix) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Err(e) = Lab::remove(&prefix) {
            problems.push(e.to_string());
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Teardown {
            prefix: "t*".to_owned(),
            problems,
        })
    }
}

/// The pid in a prefix made by [`Lab::unique_prefix`].
fn test_prefix_pid(prefix: &str) -> Option<u32> {
    let (pid, counter) = prefix.strip_prefix('t')?.split_once('n')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(counter) {
        return None;
    }
    pid.parse().ok()
}

/// Polls `done` every millisecond until it holds or `limit` passes.
pub(crate) fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests;
