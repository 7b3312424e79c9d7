//! `shoal server --store-endpoints` over a real etcd: Debian's etcd 3.4
//! (installed by `cargo xtask setup`) on loopback ports, the `shoal`
//! binary's API over it, driven with kubectl; etcdctl then finds the
//! objects under `/registry/`.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use super::{KUBECTL, free_addr};

/// A child process killed (and reaped) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` until it is true, failing after `limit` with `what` and
/// the log's tail.
fn wait_until(
    what: &str,
    limit: Duration,
    log: &Path,
    mut check: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            bail!(
                "{what}: not within {limit:?}; {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn etcdctl(endpoint: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running etcdctl (Debian's etcd-client, installed by `cargo xtask setup`)")?;
    ensure!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kubectl(dir: &Path, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new(KUBECTL)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!(
            "--cache-dir={}",
            dir.join("kubectl-cache").display()
        ))
        .arg("--request-timeout=10s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {KUBECTL}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn shoal_server_runs_over_a_real_etcd_3_4() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let (client, peer, api) = (free_addr()?, free_addr()?, free_addr()?);
    let endpoint = format!("http://{client}");
    let etcd_log = dir.join("etcd.log");
    let log = std::fs::File::create(&etcd_log)?;
    let _etcd = Killed(
        Command::new("etcd")
            .args(["--name", "ext", "--data-dir"])
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &format!("http://{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
            .args(["--initial-cluster", &format!("ext=http://{peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "starting etcd (Debian's etcd-server 3.4, installed by `cargo xtask setup`)",
            )?,
    );
    wait_until("etcd answers", Duration::from_secs(30), &etcd_log, || {
        etcdctl(&endpoint, &["endpoint", "health"]).is_ok()
    })?;
    let version = etcdctl(&endpoint, &["version"])?;
    ensure!(
        version.contains("API version: 3.4"),
        "expected Debian's etcd 3.4, etcdctl says: {version}"
    );

    let server_dir = dir.join("server");
    let server_log = dir.join("server.log");
    let log = std::fs::File::create(&server_log)?;
    let _server = Killed(
        Command::new(shoal_e2e::cluster::shoal_binary()?)
            .args(["server", "--data-dir"])
            .arg(&server_dir)
            .args(["--listen", &api.to_string()])
            .args(["--store-endpoints", &endpoint])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting shoal server")?,
    );
    let kubeconfig = server_dir.join("kubeconfig");
    wait_until(
        "shoal server's API over etcd",
        Duration::from_secs(60),
        &server_log,
        || {
            kubeconfig.is_file()
                && kubectl(dir, &kubeconfig, &["get", "--raw", "/readyz"], None).is_ok()
        },
    )?;

    // Create, list and watch through the API.
    let mut watch = Command::new(KUBECTL)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--cache-dir={}", dir.join("watch-cache").display()))
        .args([
            "get",
            "configmaps",
            "-n",
            "default",
            "--watch-only",
            "-o",
            "name",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl get --watch-only")?;
    // The watch is open once kubectl has listed; give it a moment.
    std::thread::sleep(Duration::from_secs(2));
    kubectl(
        dir,
        &kubeconfig,
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: in-etcd, namespace: default}\ndata: {where: etcd-3.4}\n",
        ),
    )?;
    kubectl(
        dir,
        &kubeconfig,
        &["create", "deployment", "web", "--image", "busybox"],
        None,
    )?;
    let listed = kubectl(
        dir,
        &kubeconfig,
        &["get", "configmaps", "-n", "default", "-o", "name"],
        None,
    )?;
    ensure!(
        listed.lines().any(|l| l == "configmap/in-etcd"),
        "kubectl get configmaps: {listed}"
    );
    let said = kubectl(
        dir,
        &kubeconfig,
        &[
            "get",
            "configmap",
            "in-etcd",
            "-o",
            "jsonpath={.data.where}",
        ],
        None,
    )?;
    ensure!(said == "etcd-3.4", "configmap in-etcd says {said:?}");
    // The Deployment controller (over etcd too) makes its ReplicaSet.
    wait_until(
        "the ReplicaSet of deployment web",
        Duration::from_secs(30),
        &server_log,
        || {
            kubectl(
                dir,
                &kubeconfig,
                &["get", "replicasets", "-o", "name"],
                None,
            )
            .is_ok_and(|out| out.contains("replicaset.apps/web-"))
        },
    )?;
    let _ = watch.kill();
    let out = watch.wait_with_output()?;
    let seen = String::from_utf8_lossy(&out.stdout);
    ensure!(
        seen.lines().any(|l| l == "configmap/in-etcd"),
        "the watch did not see configmap in-etcd: {seen:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The objects are in etcd under /registry/, as kube-apiserver keeps them.
    let keys = etcdctl(&endpoint, &["get", "--prefix", "/registry/", "--keys-only"])?;
    for key in [
        "/registry/configmaps/default/in-etcd",
        "/registry/deployments/default/web",
        "/registry/namespaces/kube-system",
    ] {
        ensure!(
            keys.lines().any(|l| l == key),
            "etcdctl get --prefix /registry/ lacks {key}: {keys}"
        );
    }
    let value = etcdctl(
        &endpoint,
        &[
            "get",
            "/registry/configmaps/default/in-etcd",
            "--print-value-only",
        ],
    )?;
    ensure!(value.contains("etcd-3.4"), "the stored configmap: {value}");
    Ok(())
}
