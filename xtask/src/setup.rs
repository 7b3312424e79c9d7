//! `cargo xtask setup`: installs what a fresh machine lacks, skips what is
//! there, and names the missing piece and the failed command when it fails.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::image;

/// Debian packages the build, the tests and the lab need, with why.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "iproute2",
        "`ip` builds the lab's namespaces, veths and routes",
    ),
    (
        "busybox-static",
        "the `busybox` image and tools inside lab hosts",
    ),
    ("runc", "the OCI runtime that runs pod containers"),
    ("crun", "the faster OCI runtime, measured against runc"),
    ("bpftool", "inspecting loaded eBPF programs and pinned maps"),
    ("dnsutils", "`dig` for DNS tests"),
    (
        "nsd",
        "the upstream in the DNS tests and the reference server in `cargo xtask bench dns`",
    ),
    ("dnsperf", "the load generator of `cargo xtask bench dns`"),
    (
        "iptables",
        "the kube-proxy-shaped reference of `cargo xtask bench dataplane` (loaded only inside a lab namespace)",
    ),
    (
        "nftables",
        "`nft list ruleset`, with which the service tests check that nothing writes nftables rules",
    ),
    ("gcc", "C code in crates such as ring"),
    (
        "protobuf-compiler",
        "`protoc` for the etcd v3 and Raft .proto files",
    ),
    (
        "libprotobuf-dev",
        "google/protobuf/*.proto that etcd-client's build imports",
    ),
    (
        "etcd-client",
        "`etcdctl` 3.4, the real client the store is tested with",
    ),
    (
        "openssl",
        "`openssl s_client`, which shows the TLS alert the store sends a client without a certificate",
    ),
    (
        "etcd-server",
        "etcd 3.4, the reference the store benchmark measures against",
    ),
    (
        "docker-registry",
        "the distribution registry v2 the image pull tests run on loopback",
    ),
];

/// The bpf-linker release that links eBPF objects for this toolchain.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The Python Kubernetes client the API tests drive (its major follows the
/// Kubernetes minor the API server reports, 1.33).
const PYTHON_KUBERNETES_VERSION: &str = "33.1.0";

/// Where bpffs is mounted; pinning needs it.
const BPFFS: &str = "/sys/fs/bpf";

/// Arguments of `cargo xtask setup`.
#[derive(clap::Args, Default)]
pub struct Args {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    pub check: bool,
}

/// Runs every step in order; each one checks first and skips what is present.
pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let missing = [
        step("Debian packages", || apt_packages(args.check))?,
        step("rust-src for the eBPF target", || rust_src(args.check))?,
        step("bpf-linker", || bpf_linker(args.check))?,
        step("Python Kubernetes client", || python_kubernetes(args.check))?,
        step("bpffs at /sys/fs/bpf", || bpffs(args.check))?,
        step("cgroup v2", cgroup2)?,
        step("busybox image", || busybox_image(args.check))?,
    ];
    if args.check && missing.iter().any(|m| *m) {
        bail!("setup: pieces are missing; run `cargo xtask setup`");
    }
    println!("setup: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Whether `cargo xtask setup --check` would pass, without printing.
pub fn is_complete() -> bool {
    missing_apt_packages().is_ok_and(|m| m.is_empty())
        && rust_src_path().is_ok_and(|p| p.exists())
        && bpf_linker_current().unwrap_or(false)
        && python_kubernetes_current().unwrap_or(false)
        && bpffs_mounted().unwrap_or(false)
        && busybox_image_current().unwrap_or(false)
}

/// Runs one step, printing its name and how long it took. Returns whether
/// something was missing.
fn step(name: &str, f: impl FnOnce() -> Result<bool>) -> Result<bool> {
    let started = Instant::now();
    println!("==> {name}");
    let missing = f().with_context(|| format!("setup step `{name}` failed"))?;
    let took = started.elapsed().as_secs_f64();
    if took > 1.0 {
        println!("    ({took:.1} s)");
    }
    Ok(missing)
}

fn missing_apt_packages() -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for (name, _) in APT_PACKAGES {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", name])
            .output()
            .context("running dpkg-query (is this a Debian machine?)")?;
        let status = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !status.contains("install ok installed") {
            missing.push(*name);
        }
    }
    Ok(missing)
}

fn apt_packages(check: bool) -> Result<bool> {
    let missing = missing_apt_packages()?;
    if missing.is_empty() {
        println!("    present: {}", names(APT_PACKAGES));
        return Ok(false);
    }
    for (name, why) in APT_PACKAGES.iter().filter(|(n, _)| missing.contains(n)) {
        println!("    missing: {name} ({why})");
    }
    if check {
        return Ok(true);
    }
    require_root("installing Debian packages")?;
    run_cmd(
        Command::new("apt-get").args(["update", "-q", "-o", "DPkg::Lock::Timeout=300"]),
        "apt package lists",
    )?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("Debian packages {}", missing.join(", ")),
    )?;
    if missing.contains(&"nsd") && std::path::Path::new("/run/systemd/system").exists() {
        // Debian starts nsd as a system service on port 53; the DNS tests and
        // the benchmark run their own nsd on loopback ports instead.
        run_cmd(
            Command::new("systemctl").args(["disable", "--now", "nsd.service"]),
            "stopping the nsd system service",
        )?;
    }
    if missing.contains(&"docker-registry") && std::path::Path::new("/run/systemd/system").exists()
    {
        // Debian starts the registry as a system service on :5000 of every
        // interface; the tests run their own on loopback ports instead.
        run_cmd(
            Command::new("systemctl").args(["disable", "--now", "docker-registry.service"]),
            "stopping the docker-registry system service",
        )?;
    }
    Ok(true)
}

fn names(list: &[(&str, &str)]) -> String {
    list.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

fn sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running `rustc --print sysroot`")?;
    if !out.status.success() {
        bail!("`rustc --print sysroot` failed");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn rust_src_path() -> Result<PathBuf> {
    Ok(sysroot()?.join("lib/rustlib/src/rust/library/core"))
}

fn rust_src(check: bool) -> Result<bool> {
    if rust_src_path()?.exists() {
        println!("    present");
        return Ok(false);
    }
    println!("    missing: rust-src (core's source, for -Z build-std=core)");
    if check {
        return Ok(true);
    }
    run_cmd(
        Command::new("rustup").args(["component", "add", "rust-src"]),
        "rust-src",
    )?;
    Ok(true)
}

/// `rustc -vV`, which names the toolchain and its LLVM.
fn rustc_version() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running `rustc -vV`")?;
    if !out.status.success() {
        bail!("`rustc -vV` failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// Records which toolchain bpf-linker was built against; it links LLVM
/// dynamically and must be rebuilt when the toolchain changes.
fn bpf_linker_stamp() -> Result<PathBuf> {
    Ok(cargo_home()?.join("shoal/bpf-linker.stamp"))
}

fn bpf_linker_current() -> Result<bool> {
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let stamp = fs::read_to_string(bpf_linker_stamp()?).unwrap_or_default();
    Ok(works && stamp == stamp_text(&rustc_version()?))
}

fn stamp_text(rustc: &str) -> String {
    format!("bpf-linker {BPF_LINKER_VERSION}\n{rustc}")
}

fn bpf_linker(check: bool) -> Result<bool> {
    if bpf_linker_current()? {
        println!("    present: bpf-linker {BPF_LINKER_VERSION}, built for this toolchain");
        return Ok(false);
    }
    println!("    missing: bpf-linker {BPF_LINKER_VERSION} built against this toolchain's LLVM");
    if check {
        return Ok(true);
    }
    let rustc = rustc_version()?;
    let llvm_major = rustc
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("`rustc -vV` does not name its LLVM version")?
        .to_owned();
    // bpf-linker links libLLVM; point it at the toolchain's own copy so the
    // LLVM major matches rustc's without a system LLVM.
    let sysroot_lib = sysroot()?.join("lib");
    let libllvm = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so"))
        })
        .with_context(|| format!("no libLLVM*.so in {}", sysroot_lib.display()))?;
    let prefix = cargo_home()?.join("shoal/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let link = prefix_lib.join("libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    println!(
        "    building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        libllvm.display()
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", sysroot_lib.display()),
            ),
        "bpf-linker",
    )?;
    let stamp = bpf_linker_stamp()?;
    fs::write(&stamp, stamp_text(&rustc))
        .with_context(|| format!("writing {}", stamp.display()))?;
    if !bpf_linker_current()? {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` fails; is {}/bin on PATH?",
            cargo_home()?.display()
        );
    }
    Ok(true)
}

/// The virtualenv holding the Python Kubernetes client; the API tests run
/// its `bin/python3` (kept out of the system Python, which may be managed
/// by Debian).
fn python_venv() -> Result<PathBuf> {
    Ok(cargo_home()?.join("shoal/python"))
}

fn python_kubernetes_current() -> Result<bool> {
    let python = python_venv()?.join("bin/python3");
    let out = Command::new(&python)
        .args(["-c", "import kubernetes; print(kubernetes.__version__)"])
        .output();
    Ok(out.is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == PYTHON_KUBERNETES_VERSION
    }))
}

fn python_kubernetes(check: bool) -> Result<bool> {
    let venv = python_venv()?;
    if python_kubernetes_current()? {
        println!(
            "    present: kubernetes {PYTHON_KUBERNETES_VERSION} in {}",
            venv.display()
        );
        return Ok(false);
    }
    println!(
        "    missing: the Python `kubernetes` {PYTHON_KUBERNETES_VERSION} client in {} (the API tests drive it)",
        venv.display()
    );
    if check {
        return Ok(true);
    }
    if !venv.join("bin/python3").exists() {
        run_cmd(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "Python virtualenv (Debian's python3 needs the python3-venv package)",
        )?;
    }
    run_cmd(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("kubernetes=={PYTHON_KUBERNETES_VERSION}")),
        "Python kubernetes client",
    )?;
    if !python_kubernetes_current()? {
        bail!(
            "kubernetes {PYTHON_KUBERNETES_VERSION} was installed but `{}/bin/python3 -c 'import kubernetes'` fails",
            venv.display()
        );
    }
    Ok(true)
}

/// Where the busybox image archive lives: the agent imports it into its
/// image store when the store lacks `busybox`.
fn busybox_archive() -> Result<PathBuf> {
    Ok(cargo_home()?.join(image::ARCHIVE_UNDER_CARGO_HOME))
}

/// Builds the image in memory and compares it with the archive on disk: the
/// build is reproducible, so equal bytes mean current (about 0.2 s).
fn busybox_image_current() -> Result<bool> {
    let built = image::build_busybox(Path::new(image::BUSYBOX_BINARY))?;
    Ok(fs::read(busybox_archive()?).is_ok_and(|on_disk| on_disk == built.archive))
}

fn busybox_image(check: bool) -> Result<bool> {
    let path = busybox_archive()?;
    if !Path::new(image::BUSYBOX_BINARY).exists() {
        println!(
            "    missing: {} (Debian's busybox-static), which the image is built from",
            image::BUSYBOX_BINARY
        );
        if check {
            return Ok(true);
        }
        bail!(
            "{} is missing after the Debian packages step; install busybox-static",
            image::BUSYBOX_BINARY
        );
    }
    let built = image::build_busybox(Path::new(image::BUSYBOX_BINARY))?;
    if fs::read(&path).is_ok_and(|on_disk| on_disk == built.archive) {
        println!(
            "    present: BusyBox {} as {} in {}",
            built.version,
            built.references.join(", "),
            path.display()
        );
        return Ok(false);
    }
    println!(
        "    missing or stale: {} (BusyBox {} from {})",
        path.display(),
        built.version,
        image::BUSYBOX_BINARY
    );
    if check {
        return Ok(true);
    }
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Write beside and rename, so a reader never sees half an archive.
    let partial = path.with_extension("tar.partial");
    fs::write(&partial, &built.archive)
        .with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, &path)
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
    println!(
        "    wrote {} ({} KiB): {}",
        path.display(),
        built.archive.len() / 1024,
        built.references.join(", ")
    );
    Ok(true)
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, point, fstype) = (f.next(), f.next(), f.next());
        point == Some(BPFFS) && fstype == Some("bpf")
    }))
}

fn bpffs(check: bool) -> Result<bool> {
    if bpffs_mounted()? {
        println!("    present");
        return Ok(false);
    }
    println!("    missing: bpffs is not mounted at {BPFFS} (pinned maps need it)");
    if check {
        return Ok(true);
    }
    require_root("mounting bpffs")?;
    run_cmd(
        Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]),
        "bpffs mount",
    )?;
    Ok(true)
}

fn cgroup2() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let found = mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, point, fstype) = (f.next(), f.next(), f.next());
        (fstype == Some("cgroup2")).then(|| point.unwrap_or_default().to_owned())
    });
    match found {
        Some(point) => {
            println!("    present at {point}");
            Ok(false)
        }
        None => bail!(
            "no cgroup2 mount: the lab and cgroup eBPF programs need one; \
             mount it with `mount -t cgroup2 none /sys/fs/cgroup/unified`"
        ),
    }
}

fn require_root(what: &str) -> Result<()> {
    if nix_is_root() {
        Ok(())
    } else {
        bail!("{what} needs root; run `sudo cargo xtask setup`")
    }
}

fn nix_is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Runs a command with its output streamed (progress on long steps); on
/// failure names the piece and the exact command.
pub fn run_cmd(cmd: &mut Command, piece: &str) -> Result<()> {
    let line = describe(cmd);
    println!("    $ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("{piece}: could not start `{line}`"))?;
    if !status.success() {
        bail!("{piece}: `{line}` failed with {status}");
    }
    Ok(())
}

/// The command line, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
