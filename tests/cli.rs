//! The `shoal` binary as a user runs it: subcommands that need no cluster,
//! and flag errors that say what to fix. (Also makes `cargo test` build the
//! binary the lab cluster tests start.)

use std::process::Command;

fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
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
    let out = shoal()
        .args(["server", "--service-cidrs", "10.96.0.0/16"])
        .output()
        .expect("shoal runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--service-cidrs") && err.contains("IPv4 then IPv6"),
        "{err}"
    );

    let out = shoal()
        .args([
            "agent",
            "--kubeconfig",
            "/nonexistent",
            "--cluster-dns",
            "ten.nine",
            "--data-dir",
        ])
        .arg(tempfile::tempdir().expect("tempdir").path())
        .output()
        .expect("shoal runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cluster-dns") && err.contains("ten.nine"),
        "{err}"
    );
}
