//! The `shoal` binary as a user runs it: subcommands that need no cluster,
//! and flag errors that say what to fix. (Also makes `cargo test` build the
//! binary the lab cluster tests start.)

use std::process::Command;

fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

/// Runs `cmd`, which must fail; its stderr.
fn failing(cmd: &mut Command) -> String {
    let out = cmd.output().expect("shoal runs");
    assert!(!out.status.success(), "{cmd:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn image_import_and_ls_use_the_agents_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = shoal_runtime::busybox_archive()
        .expect("the busybox OCI archive (`cargo xtask setup` builds it)");
    let out = shoal()
        .args(["image", "ls", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("shoal runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("busybox"));

    let out = shoal()
        .args(["image", "import", "--data-dir"])
        .arg(dir.path())
        .arg(&archive)
        .output()
        .expect("shoal runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported docker.io/library/busybox:latest"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = shoal()
        .args(["image", "ls", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("shoal runs");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("docker.io/library/busybox:latest"),
        "{listing}"
    );

    let out = shoal()
        .args(["image", "import", "--data-dir"])
        .arg(dir.path())
        .arg(dir.path().join("nope.tar"))
        .output()
        .expect("shoal runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope.tar"),
        "the error names the archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_flags_name_the_flag_and_the_fix() {
    let err = failing(shoal().args(["server", "--service-cidrs", "10.96.0.0/16"]));
    assert!(
        err.contains("--service-cidrs") && err.contains("IPv4 then IPv6"),
        "{err}"
    );

    let err = failing(
        shoal()
            .args([
                "agent",
                "--kubeconfig",
                "/nonexistent",
                "--cluster-dns",
                "ten.nine",
                "--data-dir",
            ])
            .arg(tempfile::tempdir().expect("tempdir").path()),
    );
    assert!(
        err.contains("--cluster-dns") && err.contains("ten.nine"),
        "{err}"
    );

    let err = failing(shoal().args(["up", "--register-with-taints", "dedicated=gpu:NoWhere"]));
    assert!(
        err.contains("--register-with-taints")
            && err.contains("NoSchedule, PreferNoSchedule or NoExecute"),
        "{err}"
    );

    // A joining member's store must be reachable by the others.
    let err = failing(
        shoal()
            .args([
                "server",
                "--join",
                "https://127.0.0.1:1",
                "--token",
                "abcdef.0123456789abcdef",
                "--ca-cert-hash",
                "sha256:00",
                "--data-dir",
            ])
            .arg(tempfile::tempdir().expect("tempdir").path()),
    );
    assert!(
        err.contains("--store-peer-listen 127.0.0.1:2380")
            && err.contains("other members can reach"),
        "{err}"
    );
}

/// Kills the server when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// etcdctl with the environment `shoal server` wrote to DATA_DIR/etcdctl.env
/// (lines `export NAME=VALUE`), minus the variables in `without`.
fn etcdctl(env_file: &std::path::Path, without: &[&str], args: &[&str]) -> std::process::Output {
    let text = std::fs::read_to_string(env_file).expect("etcdctl.env");
    let mut cmd = Command::new("etcdctl");
    for line in text.lines() {
        let Some((name, value)) = line.trim_start_matches("export ").split_once('=') else {
            continue;
        };
        if !without.contains(&name) {
            cmd.env(name, value);
        }
    }
    cmd.args(["--dial-timeout=3s", "--command-timeout=5s"])
        .args(args)
        .output()
        .expect("etcdctl runs (installed by `cargo xtask setup`)")
}

#[test]
fn the_embedded_store_speaks_tls_and_wants_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("server");
    let addr = || {
        shoal_e2e::ports::free_loopback_addr()
            .expect("a free loopback port")
            .to_string()
    };
    let store = addr();
    let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
    let _server = KillOnDrop(
        shoal()
            .args(["server", "--data-dir"])
            .arg(&data)
            .args(["--listen", &addr(), "--store-listen", &store])
            .args(["--store-peer-listen", &addr()])
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("shoal server starts"),
    );
    let env_file = data.join("etcdctl.env");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // The kubeconfig comes after the API bootstrapped through the store.
    while !(env_file.is_file() && data.join("kubeconfig").is_file()) {
        assert!(
            std::time::Instant::now() < deadline,
            "shoal server wrote no etcdctl.env and kubeconfig in 60 s: {}",
            std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&env_file).expect("etcdctl.env");
    assert!(
        text.contains(&format!("ETCDCTL_ENDPOINTS=https://{store}")),
        "{text}"
    );

    // The apiserver wrote its bootstrap objects through TLS; etcdctl with
    // the written certificates reads them.
    let key = "/registry/namespaces/default";
    let mut got = etcdctl(&env_file, &[], &["get", key, "--keys-only"]);
    while !String::from_utf8_lossy(&got.stdout).contains(key) {
        assert!(
            std::time::Instant::now() < deadline,
            "etcdctl get {key}: {}{}",
            String::from_utf8_lossy(&got.stdout),
            String::from_utf8_lossy(&got.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        got = etcdctl(&env_file, &[], &["get", key, "--keys-only"]);
    }
    let put = etcdctl(&env_file, &[], &["put", "/operator/note", "hi"]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );

    // Without a client certificate the handshake is refused.
    let anonymous = etcdctl(
        &env_file,
        &["ETCDCTL_CERT", "ETCDCTL_KEY"],
        &["get", key, "--keys-only"],
    );
    assert!(
        !anonymous.status.success(),
        "a client without a certificate read the store: {}",
        String::from_utf8_lossy(&anonymous.stdout)
    );
    // Plain HTTP/2 gets nothing either.
    let plain = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints=http://{store}"),
            "--dial-timeout=3s",
            "--command-timeout=5s",
            "get",
            key,
        ])
        .output()
        .expect("etcdctl runs");
    assert!(
        !plain.status.success(),
        "plain HTTP read the store: {}",
        String::from_utf8_lossy(&plain.stdout)
    );
}
