//! Real containers, run by runc and crun from the busybox image that
//! `cargo xtask setup` builds (the test builds it with the same code, from
//! Debian's busybox-static, into a temporary store). Needs root, runc,
//! crun and overlayfs; uses no network.

#[path = "../../../xtask/src/image.rs"]
mod busybox_image;

use std::{
    path::{Path, PathBuf},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use shoal_runtime::{
    Bundle, CgroupMounts, ContainerSpec, ExecRequest, ExitEvent, ExitStatus, ExitWatcher, Image,
    ImageError, ImageStore, LogOptions, Mount, Namespace, Resources, Runtime, RuntimeError,
    Seccomp, Status, User, read_log, resolve_process,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// The busybox archive, built once per test binary.
fn archive() -> Result<&'static [u8]> {
    static ARCHIVE: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    let built = ARCHIVE.get_or_init(|| {
        busybox_image::build_busybox(Path::new(busybox_image::BUSYBOX_BINARY))
            .map(|b| b.archive)
            .map_err(|e| format!("{e:#} (run `cargo xtask setup`)"))
    });
    match built {
        Ok(a) => Ok(a),
        Err(e) => bail!("building the busybox image: {e}"),
    }
}

static FIXTURES: AtomicU32 = AtomicU32::new(0);

/// A temporary image store, runtime root and cgroup parent; whatever a
/// test leaves behind is deleted on drop.
struct Fixture {
    runtime: Runtime,
    image: Image,
    watcher: ExitWatcher,
    exits: UnboundedReceiver<ExitEvent>,
    /// `/shoal-test-<pid>-<n>`: every container's cgroup is below it.
    cgroup_parent: String,
    containers: Vec<String>,
    bundles: Vec<Bundle>,
    // Last: dropped after the bundles are unmounted.
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(binary: &str) -> Result<Fixture> {
        use std::os::unix::fs::MetadataExt;
        ensure!(
            std::fs::metadata("/proc/self")?.uid() == 0,
            "these tests run containers and need root"
        );
        shoal_runtime::set_subreaper().context("PR_SET_CHILD_SUBREAPER")?;
        let dir = tempfile::tempdir()?;
        let archive_path = dir.path().join("busybox.oci.tar");
        std::fs::write(&archive_path, archive()?)?;
        let store = ImageStore::open(&dir.path().join("images"))?;
        store.import(&archive_path)?;
        let image = store.resolve("busybox")?;
        let (watcher, exits) = ExitWatcher::start(Duration::from_millis(200));
        let n = FIXTURES.fetch_add(1, Ordering::Relaxed);
        Ok(Fixture {
            runtime: Runtime::new(binary, dir.path().join("runtime")),
            image,
            watcher,
            exits,
            cgroup_parent: format!("/shoal-test-{}-{n}", std::process::id()),
            containers: Vec::new(),
            bundles: Vec::new(),
            dir,
        })
    }

    /// A container spec running `command` the way the agent builds one.
    fn spec(&self, id: &str, command: &[&str]) -> Result<ContainerSpec> {
        let command: Vec<String> = command.iter().map(|s| (*s).to_owned()).collect();
        let process = resolve_process(id, self.image.config(), &command, &[], &[], Some(id))?;
        let mut spec = ContainerSpec::new(id, self.image.rootfs()?, process.args);
        spec.env = process.env;
        spec.hostname = Some(id.to_owned());
        spec.cgroups_path = Some(format!("{}/pod-1/{id}", self.cgroup_parent));
        Ok(spec)
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{id}.log"))
    }

    /// Writes the bundle, creates, watches and starts the container.
    async fn run(&mut self, spec: &ContainerSpec) -> Result<u32> {
        self.start(spec, true).await
    }

    async fn start(&mut self, spec: &ContainerSpec, watch: bool) -> Result<u32> {
        let bundle = Bundle::write(&self.dir.path().join("bundles").join(&spec.id), spec)?;
        self.bundles.push(bundle.clone());
        let pid = self
            .runtime
            .create(&spec.id, &bundle, &self.log_path(&spec.id))
            .await?;
        self.containers.push(spec.id.clone());
        if watch {
            self.watcher
                .watch(&spec.id, pid, spec.cgroups_path.as_deref());
        }
        self.runtime.start(&spec.id).await?;
        Ok(pid)
    }

    async fn wait_exit(&mut self, id: &str, timeout: Duration) -> Result<ExitEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.exits.recv()).await {
                Ok(Some(e)) if e.id == id => return Ok(e),
                Ok(Some(_)) => continue,
                Ok(None) => bail!("the exit watcher stopped"),
                Err(_) => bail!("container {id} did not exit within {timeout:?}"),
            }
        }
    }

    async fn log(&self, id: &str) -> Result<String> {
        let chunk = read_log(&self.log_path(id), &LogOptions::default()).await?;
        Ok(String::from_utf8_lossy(&chunk.data).into_owned())
    }

    /// Deletes the containers, unmounts the bundles and removes the cgroups,
    /// failing if anything is left.
    async fn cleanup(mut self) -> Result<()> {
        for id in std::mem::take(&mut self.containers) {
            match self.runtime.delete(&id, true).await {
                Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for b in std::mem::take(&mut self.bundles) {
            b.remove()?;
        }
        let left = self.runtime.list().await?;
        ensure!(
            left.is_empty(),
            "containers left in the runtime root: {left:?}"
        );
        CgroupMounts::detect()?
            .remove(&self.cgroup_parent)
            .with_context(|| format!("removing the test cgroups {}", self.cgroup_parent))?;
        Ok(())
    }
}

impl Drop for Fixture {
    /// After a failed test: force-delete what is left, on a thread of its
    /// own (this may run inside the test's runtime).
    fn drop(&mut self) {
        if self.containers.is_empty() && self.bundles.is_empty() {
            return;
        }
        let containers = std::mem::take(&mut self.containers);
        let bundles = std::mem::take(&mut self.bundles);
        let binary = self.runtime.binary().to_path_buf();
        let root = self.runtime.root().to_path_buf();
        let parent = self.cgroup_parent.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let runtime = Runtime::new(binary, root);
                for id in containers {
                    let _ = runtime.delete(&id, true).await;
                }
            });
            for b in bundles {
                let _ = b.remove();
            }
            if let Ok(c) = CgroupMounts::detect() {
                let _ = c.remove(&parent);
            }
        })
        .join();
    }
}

fn contains(haystack: &str, needle: &str) -> Result<()> {
    ensure!(
        haystack.contains(needle),
        "expected {needle:?} in {haystack:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_and_both_streams_reach_the_log() -> Result<()> {
    let mut f = Fixture::new("runc").await?;
    let spec = f.spec("logs", &["sh", "-c", "echo hello; echo err >&2; exit 3"])?;
    f.run(&spec).await?;
    let exit = f.wait_exit("logs", Duration::from_secs(10)).await?;
    ensure!(exit.status == ExitStatus::Exited(3), "{exit:?}");
    ensure!(
        exit.status.code() == Some(3) && !exit.oom_killed,
        "{exit:?}"
    );
    ensure!(
        f.log("logs").await? == "hello\nerr\n",
        "log: {:?}",
        f.log("logs").await?
    );
    let tail = read_log(
        &f.log_path("logs"),
        &LogOptions {
            tail_lines: Some(1),
            ..LogOptions::default()
        },
    )
    .await?;
    ensure!(tail.data == b"err\n", "tail: {:?}", tail.data);

    let state = f.runtime.state("logs").await?;
    ensure!(state.status == Status::Stopped, "{state:?}");
    f.runtime.delete("logs", false).await?;
    match f.runtime.state("logs").await {
        Err(RuntimeError::NotFound { id, .. }) => ensure!(id == "logs"),
        other => bail!("state after delete: {other:?}"),
    }
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_container_runs_as_uid_1000_read_only_under_seccomp() -> Result<()> {
    let mut f = Fixture::new("runc").await?;
    let data = f.dir.path().join("data");
    std::fs::create_dir(&data)?;
    std::fs::write(data.join("hello"), "from the host\n")?;
    let script = "id -u; id -G; touch /x; grep Seccomp: /proc/self/status; \
                  echo ok > /tmp/f && cat /tmp/f; cat /data/hello; touch /data/y; \
                  unshare -U true || echo unshare refused";
    let mut spec = f.spec("restricted", &["sh", "-c", script])?;
    spec.user = User {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![2000],
    };
    spec.read_only_rootfs = true;
    spec.seccomp = Seccomp::RuntimeDefault;
    spec.mounts.push(Mount::tmpfs("/tmp", Some(1 << 20)));
    spec.mounts.push(Mount::bind("/data", &data, true));
    f.run(&spec).await?;
    let exit = f.wait_exit("restricted", Duration::from_secs(10)).await?;
    let log = f.log("restricted").await?;
    ensure!(exit.status == ExitStatus::Exited(0), "{exit:?}; log: {log}");
    let lines: Vec<&str> = log.lines().collect();
    ensure!(lines.first() == Some(&"1000"), "id -u: {log}");
    ensure!(lines.get(1) == Some(&"1000 2000"), "id -G: {log}");
    contains(&log, "touch: /x: Read-only file system")?;
    contains(&log, "Seccomp:\t2")?;
    contains(&log, "ok\nfrom the host\n")?;
    contains(&log, "touch: /data/y: Read-only file system")?;
    contains(
        &log,
        "unshare: unshare(0x10000000): Operation not permitted",
    )?;
    contains(&log, "unshare refused")?;
    // Mount points went into the container's upper directory, not into the
    // image every container shares.
    ensure!(
        !f.image.rootfs()?.join("data").exists(),
        "the shared image was modified"
    );

    // The same command unconfined: user namespaces are allowed again, so
    // it was the profile that refused them.
    let mut open = f.spec(
        "unconfined",
        &["sh", "-c", "unshare -U true && echo unshare ok"],
    )?;
    open.user = spec.user.clone();
    open.seccomp = Seccomp::Unconfined;
    f.run(&open).await?;
    let exit = f.wait_exit("unconfined", Duration::from_secs(10)).await?;
    let log = f.log("unconfined").await?;
    ensure!(exit.status == ExitStatus::Exited(0), "{exit:?}; log: {log}");
    contains(&log, "unshare ok")?;
    f.cleanup().await
}

/// A network namespace made for one test, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new() -> Result<NetNs> {
        let name = format!("shoal-rt-test-{}", std::process::id());
        let ip = |args: &[&str]| -> Result<()> {
            let out = std::process::Command::new("ip").args(args).output()?;
            ensure!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        ip(&["netns", "add", &name])?;
        let ns = NetNs(name);
        ip(&[
            "-n",
            &ns.0,
            "link",
            "add",
            "shoaltest0",
            "type",
            "veth",
            "peer",
            "name",
            "shoaltest1",
        ])?;
        Ok(ns)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_the_pod_netns_with_default_or_privileged_capabilities() -> Result<()> {
    let mut f = Fixture::new("runc").await?;
    let netns = NetNs::new()?;
    let status = "grep -E '^(CapEff|Seccomp):' /proc/self/status";
    let mut spec = f.spec(
        "pod-ctr",
        &["sh", "-c", &format!("hostname; grep -o shoaltest0 /proc/net/dev; {status}; mount -t tmpfs none /tmp || echo no mount")],
    )?;
    spec.hostname = Some("web-0".into());
    spec.namespaces.network = Namespace::Join(netns.path());
    f.run(&spec).await?;
    let exit = f.wait_exit("pod-ctr", Duration::from_secs(10)).await?;
    let log = f.log("pod-ctr").await?;
    ensure!(exit.status == ExitStatus::Exited(0), "{exit:?}; log: {log}");
    // Kubernetes' default capabilities, as Docker's are: 0xa80425fb.
    contains(
        &log,
        "web-0\nshoaltest0\nCapEff:\t00000000a80425fb\nSeccomp:\t2\n",
    )?;
    contains(&log, "no mount")?;

    let mut privileged = f.spec(
        "privileged",
        &[
            "sh",
            "-c",
            &format!("{status}; mount -t tmpfs none /tmp && echo mounted"),
        ],
    )?;
    privileged.privileged = true;
    f.run(&privileged).await?;
    let exit = f.wait_exit("privileged", Duration::from_secs(10)).await?;
    let log = f.log("privileged").await?;
    ensure!(exit.status == ExitStatus::Exited(0), "{exit:?}; log: {log}");
    // Every capability the node itself has (a sandboxed host may lack some).
    let status = std::fs::read_to_string("/proc/self/status")?;
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .context("no CapBnd in /proc/self/status")?
        .trim();
    contains(
        &log,
        &format!("CapEff:\t{bounding}\nSeccomp:\t0\nmounted\n"),
    )?;
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_oom_killed() -> Result<()> {
    let mut f = Fixture::new("runc").await?;
    let mut spec = f.spec(
        "hog",
        &["sh", "-c", "x=0123456789; while true; do x=$x$x; done"],
    )?;
    spec.resources = Resources::from_kubernetes(None, None, Some(16 << 20));
    spec.resources.pids_limit = Some(64);
    f.run(&spec).await?;
    let exit = f.wait_exit("hog", Duration::from_secs(20)).await?;
    ensure!(exit.oom_killed, "not reported as OOM-killed: {exit:?}");
    ensure!(exit.status == ExitStatus::Signaled(9), "{exit:?}");
    ensure!(exit.status.code() == Some(137));
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{}/pod-1/hog/memory.limit_in_bytes",
        f.cgroup_parent
    ))?;
    ensure!(limit.trim() == (16u64 << 20).to_string(), "limit {limit}");
    let pids = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/pids{}/pod-1/hog/pids.max",
        f.cgroup_parent
    ))?;
    ensure!(pids.trim() == "64", "pids.max {pids}");
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_into_a_running_container() -> Result<()> {
    let mut f = Fixture::new("runc").await?;
    let mut spec = f.spec("sleeper", &["sleep", "1000"])?;
    spec.user = User {
        uid: 1000,
        gid: 1000,
        additional_gids: Vec::new(),
    };
    spec.env.push("FROM_SPEC=spec".into());
    f.run(&spec).await?;

    let exec = |args: &[&str], env: &[&str], timeout: Option<Duration>| ExecRequest {
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        env: env.iter().map(|s| (*s).to_owned()).collect(),
        timeout,
    };
    let out = f
        .runtime
        .exec(
            "sleeper",
            &exec(
                &[
                    "sh",
                    "-c",
                    "echo out $FROM_SPEC $EXTRA; id -u; echo err >&2; exit 7",
                ],
                &["EXTRA=extra"],
                None,
            ),
        )
        .await?;
    ensure!(out.exit_code == 7, "{out:?}");
    ensure!(
        out.stdout == b"out spec extra\n1000\n",
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    ensure!(
        out.stderr == b"err\n",
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );

    match f.runtime.exec("sleeper", &exec(&["nope"], &[], None)).await {
        Err(RuntimeError::Failed { message, .. }) => contains(&message, "nope")?,
        other => bail!("exec of a missing binary: {other:?}"),
    }

    let started = Instant::now();
    match f
        .runtime
        .exec(
            "sleeper",
            &exec(&["sleep", "30"], &[], Some(Duration::from_millis(300))),
        )
        .await
    {
        Err(RuntimeError::ExecTimeout { .. }) => {}
        other => bail!("exec past its timeout: {other:?}"),
    }
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "timeout took {:?}",
        started.elapsed()
    );

    f.runtime.kill("sleeper", Signal::SIGKILL).await?;
    let exit = f.wait_exit("sleeper", Duration::from_secs(10)).await?;
    ensure!(exit.status == ExitStatus::Signaled(9), "{exit:?}");
    match f.runtime.exec("sleeper", &exec(&["true"], &[], None)).await {
        Err(RuntimeError::NotRunning { .. }) => {}
        other => bail!("exec into a stopped container: {other:?}"),
    }
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_trapping_container_and_pid1_needs_sigkill() -> Result<()> {
    let mut f = Fixture::new("runc").await?;
    let trap = f.spec(
        "trapper",
        &[
            "sh",
            "-c",
            "trap 'echo got TERM; exit 143' TERM; echo ready; sleep 1000 & wait",
        ],
    )?;
    f.run(&trap).await?;
    let plain = f.spec("plain", &["sleep", "1000"])?;
    f.run(&plain).await?;
    // Let the shell install its trap.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f.log("trapper").await?.contains("ready") {
        ensure!(
            Instant::now() < deadline,
            "the trapping shell never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    f.runtime.kill("trapper", Signal::SIGTERM).await?;
    f.runtime.kill("plain", Signal::SIGTERM).await?;
    let exit = f.wait_exit("trapper", Duration::from_secs(10)).await?;
    ensure!(exit.status == ExitStatus::Exited(143), "{exit:?}");
    contains(&f.log("trapper").await?, "got TERM")?;
    f.runtime.delete("trapper", false).await?;
    ensure!(matches!(
        f.runtime.state("trapper").await,
        Err(RuntimeError::NotFound { .. })
    ));

    // sleep as PID 1 has no handler, so SIGTERM does nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(f.runtime.state("plain").await?.status == Status::Running);
    f.runtime.kill("plain", Signal::SIGKILL).await?;
    let exit = f.wait_exit("plain", Duration::from_secs(10)).await?;
    ensure!(exit.status == ExitStatus::Signaled(9), "{exit:?}");
    f.runtime.delete("plain", false).await?;
    ensure!(f.runtime.list().await?.is_empty());
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crun_runs_a_container_in_the_pod_cgroups() -> Result<()> {
    let mut f = Fixture::new("crun").await?;
    let mut spec = f.spec(
        "crunner",
        &[
            "sh",
            "-c",
            "echo from crun; cat /proc/self/cgroup; sleep 1000",
        ],
    )?;
    spec.resources = Resources::from_kubernetes(Some(100), Some(200), Some(32 << 20));
    f.run(&spec).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f.log("crunner").await?.contains("memory:") {
        ensure!(
            Instant::now() < deadline,
            "no output from crun's container: {:?}",
            f.log("crunner").await?
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = f.log("crunner").await?;
    contains(&log, "from crun")?;
    let path = format!("{}/pod-1/crunner", f.cgroup_parent);
    contains(&log, &format!("memory:{path}"))?;
    if CgroupMounts::detect()?.is_hybrid() {
        // Joined the container's cgroup2 directory too.
        contains(&log, &format!("0::{path}"))?;
    }
    let quota = std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{path}/cpu.cfs_quota_us"))?;
    ensure!(quota.trim() == "20000", "cpu quota {quota}");

    let out = f
        .runtime
        .exec(
            "crunner",
            &ExecRequest {
                args: vec!["sh".into(), "-c".into(), "echo exec ok; exit 4".into()],
                ..ExecRequest::default()
            },
        )
        .await?;
    ensure!(
        (out.exit_code, out.stdout.as_slice()) == (4, &b"exec ok\n"[..]),
        "{out:?}"
    );
    let missing = ExecRequest {
        args: vec!["nope".into()],
        ..ExecRequest::default()
    };
    match f.runtime.exec("crunner", &missing).await {
        Err(RuntimeError::Failed { message, .. }) => contains(&message, "nope")?,
        other => bail!("crun exec of a missing binary: {other:?}"),
    }
    f.runtime.kill("crunner", Signal::SIGKILL).await?;
    let exit = f.wait_exit("crunner", Duration::from_secs(10)).await?;
    ensure!(exit.status == ExitStatus::Signaled(9), "{exit:?}");
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_reports_containers_that_stopped_unwatched() -> Result<()> {
    let mut f = Fixture::new("runc").await?;
    let quick = f.spec("quick", &["true"])?;
    f.run(&quick).await?;
    f.wait_exit("quick", Duration::from_secs(10)).await?;
    // Started by the agent before it restarted: nothing watches it yet.
    let long = f.spec("long", &["sleep", "1000"])?;
    f.start(&long, false).await?;

    // A new watcher, as after an agent restart.
    let (watcher, mut exits) = ExitWatcher::start(Duration::from_millis(100));
    let recovered = watcher.recover(&f.runtime).await?;
    let running: Vec<&str> = recovered.running.iter().map(|s| s.id.as_str()).collect();
    ensure!(running == ["long"], "running: {running:?}");
    ensure!(recovered.exited.len() == 1, "{:?}", recovered.exited);
    let quick_exit = &recovered.exited[0];
    ensure!(
        quick_exit.id == "quick" && quick_exit.status == ExitStatus::Unknown,
        "{quick_exit:?}"
    );
    ensure!(!quick_exit.oom_killed);

    f.runtime.kill("long", Signal::SIGKILL).await?;
    let exit = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match exits.recv().await {
                Some(e) if e.id == "long" => return Some(e),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await?
    .context("the recovered watcher stopped")?;
    ensure!(exit.status.code() == Some(137), "{exit:?}");
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_store_normalises_references_and_survives_reopening() -> Result<()> {
    ensure!(busybox_image::ARCHIVE_UNDER_CARGO_HOME == shoal_runtime::BUSYBOX_ARCHIVE);
    ensure!(busybox_image::REFERENCE == shoal_runtime::BUSYBOX_REFERENCE);
    let built = busybox_image::build_busybox(Path::new(busybox_image::BUSYBOX_BINARY))?;
    ensure!(
        built.archive == archive()?,
        "the busybox archive is not reproducible"
    );

    let dir = tempfile::tempdir()?;
    let archive_path = dir.path().join("busybox.oci.tar");
    std::fs::write(&archive_path, &built.archive)?;
    let store_dir = dir.path().join("store");
    let store = ImageStore::open(&store_dir)?;
    let imported = store.import_if_missing("busybox", &archive_path)?;
    let mut names: Vec<String> = imported.iter().map(|r| r.reference.clone()).collect();
    names.sort();
    let mut want = built.references.clone();
    want.sort();
    ensure!(names == want, "imported {names:?}, want {want:?}");
    ensure!(
        store
            .import_if_missing("busybox", &archive_path)?
            .is_empty()
    );

    let versioned = format!(
        "busybox:{}",
        built
            .version
            .split('.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
    );
    let digest = store
        .resolve("docker.io/library/busybox:latest")?
        .digest()
        .to_owned();
    for r in [
        "busybox",
        "busybox:latest",
        "library/busybox",
        "docker.io/library/busybox",
        "docker.io/library/busybox:latest",
        versioned.as_str(),
        digest.as_str(),
    ] {
        let image = store.resolve(r)?;
        ensure!(
            image.digest() == digest,
            "{r} resolved to {}",
            image.digest()
        );
    }
    let image = store.resolve("busybox")?;
    ensure!(image.reference() == "docker.io/library/busybox:latest");
    ensure!(image.config().cmd == ["sh"]);
    ensure!(image.config().env.iter().any(|e| e.starts_with("PATH=")));
    ensure!(store.resolve(&format!("busybox@{digest}"))?.digest() == digest);

    for missing in ["nginx", "docker.io/library/nginx:1.27", "busybox:0.1"] {
        match store.resolve(missing) {
            Err(e @ ImageError::NotFound { .. }) => {
                contains(&e.to_string(), &format!("{missing:?}"))?;
                contains(&e.to_string(), "shoal image import")?;
            }
            other => bail!("{missing}: {other:?}"),
        }
    }
    ensure!(matches!(
        store.resolve("BusyBox"),
        Err(ImageError::Reference(_))
    ));

    let rootfs = image.rootfs()?;
    drop(store);
    let store = ImageStore::open(&store_dir)?;
    let mut listed: Vec<String> = store.list()?.into_iter().map(|r| r.reference).collect();
    listed.sort();
    ensure!(listed == want, "after reopening: {listed:?}");
    let image = store.resolve("busybox")?;
    ensure!(image.rootfs()? == rootfs, "unpacked again");
    ensure!(std::fs::read_link(rootfs.join("bin/sh"))? == Path::new("busybox"));
    ensure!(rootfs.join("bin/busybox").is_file());
    contains(
        &std::fs::read_to_string(rootfs.join("etc/passwd"))?,
        "nobody:x:65534:65534:",
    )?;
    contains(
        &std::fs::read_to_string(rootfs.join("etc/group"))?,
        "nobody:x:65534:",
    )?;
    use std::os::unix::fs::PermissionsExt;
    ensure!(std::fs::metadata(rootfs.join("tmp"))?.permissions().mode() & 0o7777 == 0o1777);
    for d in ["proc", "sys", "dev", "etc"] {
        ensure!(rootfs.join(d).is_dir(), "/{d} missing");
    }

    store.remove("busybox:latest")?;
    ensure!(matches!(
        store.resolve("busybox"),
        Err(ImageError::NotFound { .. })
    ));
    ensure!(store.resolve(&versioned).is_ok());
    Ok(())
}
