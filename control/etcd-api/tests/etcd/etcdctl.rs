//! The real `etcdctl` 3.4 (ETCDCTL_API=3) against the server: the output a
//! user sees.

use std::process::Stdio;

use anyhow::{Context, Result, bail};
use shoal_etcd_api::{Backend, snapshot};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::Command,
};

use crate::common::{Server, within};

/// What etcdctl printed.
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn etcdctl_command(server: &Server) -> Command {
    etcdctl_at(&server.endpoint())
}

fn etcdctl_at(endpoint: &str) -> Command {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=8s")
        .kill_on_drop(true);
    cmd
}

/// Runs etcdctl with `args` (and `stdin`), each wait bounded.
async fn etcdctl(server: &Server, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
    run(etcdctl_command(server), args, stdin).await
}

async fn run(mut cmd: Command, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("cannot run etcdctl: install etcd 3.4's etcdctl on PATH (Debian: apt-get install etcd-client)")?;
    if let Some(mut pipe) = child.stdin.take() {
        if let Some(input) = stdin {
            within(pipe.write_all(input)).await??;
        }
        drop(pipe);
    }
    let out = within(child.wait_with_output()).await??;
    Ok(Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs etcdctl and requires success.
async fn ok(server: &Server, args: &[&str]) -> Result<String> {
    let out = etcdctl(server, args, None).await?;
    if !out.ok {
        bail!("etcdctl {args:?} failed: {}", out.stderr);
    }
    Ok(out.stdout)
}

#[tokio::test]
async fn put_get_prefix_rev_and_del() -> Result<()> {
    let server = Server::start().await?;
    assert_eq!(ok(&server, &["put", "/app/a", "one"]).await?, "OK\n");
    assert_eq!(ok(&server, &["put", "/app/b", "two"]).await?, "OK\n");
    let rev = server.backend.mvcc().revision();
    assert_eq!(ok(&server, &["put", "/app/a", "uno"]).await?, "OK\n");
    assert_eq!(
        ok(&server, &["get", "--prefix", "/app/"]).await?,
        "/app/a\nuno\n/app/b\ntwo\n"
    );
    assert_eq!(
        ok(&server, &["get", "/app/a", &format!("--rev={rev}")]).await?,
        "/app/a\none\n"
    );
    assert_eq!(
        ok(&server, &["get", "/app/", "--prefix", "--keys-only"]).await?,
        "/app/a\n\n/app/b\n\n"
    );
    assert_eq!(ok(&server, &["del", "/app/a"]).await?, "1\n");
    assert_eq!(ok(&server, &["get", "/app/a"]).await?, "");
    // etcdctl authenticates when given a user; shoal says auth is off, and
    // etcdctl goes on without a token.
    assert_eq!(
        ok(&server, &["--user=root:pw", "get", "/app/b"]).await?,
        "/app/b\ntwo\n"
    );
    server.stop().await
}

#[tokio::test]
async fn txn_from_stdin() -> Result<()> {
    let server = Server::start().await?;
    ok(&server, &["put", "flag", "on"]).await?;
    let script = b"value(\"flag\") = \"on\"\n\nput result yes\n\nput result no\n\n";
    let out = etcdctl(&server, &["txn"], Some(script)).await?;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "SUCCESS\n\nOK\n");
    let script = b"value(\"flag\") = \"off\"\n\nput result yes\n\nget flag\n\n";
    let out = etcdctl(&server, &["txn"], Some(script)).await?;
    assert_eq!(out.stdout, "FAILURE\n\nflag\non\n");
    assert_eq!(
        ok(&server, &["get", "result", "--print-value-only"]).await?,
        "yes\n"
    );
    server.stop().await
}

#[tokio::test]
async fn watch_prints_events_as_they_happen() -> Result<()> {
    let server = Server::start().await?;
    let from = server.backend.mvcc().revision() + 1;
    let mut watch = etcdctl_command(&server)
        .args(["watch", "--prefix", "w/", &format!("--rev={from}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run etcdctl")?;
    let stdout = watch.stdout.take().context("watch stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    ok(&server, &["put", "w/a", "1"]).await?;
    ok(&server, &["del", "w/a"]).await?;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match within(lines.next_line()).await?? {
            Some(line) => seen.push(line),
            None => bail!("etcdctl watch exited; printed {seen:?}"),
        }
    }
    assert_eq!(seen, ["PUT", "w/a", "1", "DELETE", "w/a"]);
    watch.kill().await?;
    server.stop().await
}

/// The hex lease id from "lease 694d77aa9e38260f granted with TTL(60s)".
fn lease_id(granted: &str) -> Result<String> {
    let id = granted
        .split_whitespace()
        .nth(1)
        .context("lease id in etcdctl output")?;
    Ok(id.to_owned())
}

#[tokio::test]
async fn lease_grant_keep_alive_time_to_live_and_revoke() -> Result<()> {
    let server = Server::start().await?;
    let granted = ok(&server, &["lease", "grant", "60"]).await?;
    assert!(granted.ends_with(" granted with TTL(60s)\n"), "{granted}");
    let id = lease_id(&granted)?;
    ok(&server, &["put", "--lease", &id, "leased", "v"]).await?;
    assert_eq!(
        ok(&server, &["lease", "keep-alive", "--once", &id]).await?,
        format!("lease {id} keepalived with TTL(60)\n")
    );
    let ttl = ok(&server, &["lease", "timetolive", &id, "--keys"]).await?;
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.ends_with("attached keys([leased])\n"), "{ttl}");
    assert_eq!(
        ok(&server, &["lease", "list"]).await?,
        format!("found 1 leases\n{id}\n")
    );
    assert_eq!(
        ok(&server, &["lease", "revoke", &id]).await?,
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok(&server, &["get", "leased"]).await?, "");
    assert_eq!(
        ok(&server, &["lease", "timetolive", &id]).await?,
        format!("lease {id} already expired\n")
    );
    let out = etcdctl(&server, &["lease", "revoke", &id], None).await?;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("etcdserver: requested lease not found"),
        "{}",
        out.stderr
    );
    server.stop().await
}

#[tokio::test]
async fn member_list_and_endpoint_status_and_health() -> Result<()> {
    let server = Server::start().await?;
    let member_id = format!("{:x}", server.backend.raft_status().member_id);
    assert_eq!(
        ok(&server, &["member", "list"]).await?,
        format!(
            "{member_id}, started, shoal-test, http://127.0.0.1:2380, {}, false\n",
            server.endpoint()
        )
    );
    ok(&server, &["put", "k", "v"]).await?;
    // etcdctl 3.4 dials per-endpoint commands (endpoint status, defrag,
    // hashkv, move-leader) with the whole URL as the HTTP/2 :authority,
    // which shoal's HTTP/2 stack refuses; without the scheme it works.
    let out = run(
        etcdctl_at(&server.addr.to_string()),
        &["endpoint", "status"],
        None,
    )
    .await?;
    assert!(out.ok, "{}", out.stderr);
    let status = out.stdout;
    // endpoint, ID, version, DB size, is leader, is learner, raft term,
    // raft index, raft applied index, errors
    let fields: Vec<&str> = status.trim_end_matches('\n').split(", ").collect();
    assert_eq!(fields.len(), 10, "{status}");
    assert_eq!(fields[0], server.addr.to_string());
    assert_eq!(&fields[1..3], [member_id.as_str(), "3.4.30"]);
    assert!(fields[3].ends_with("kB"), "DB size: {status}");
    assert_eq!(
        &fields[4..],
        ["true", "false", "1", "1", "1", ""],
        "{status}"
    );
    let health = etcdctl(&server, &["endpoint", "health"], None).await?;
    assert!(health.ok, "{}", health.stderr);
    assert!(
        health
            .stderr
            .contains("is healthy: successfully committed proposal"),
        "{}",
        health.stderr
    );
    server.stop().await
}

#[tokio::test]
async fn snapshot_save_downloads_a_restorable_file() -> Result<()> {
    let server = Server::start().await?;
    for i in 0..10 {
        ok(&server, &["put", &format!("s/{i}"), &format!("v{i}")]).await?;
    }
    let path = server.dir.path().join("backup.db");
    let path_str = path.to_str().context("temp path is UTF-8")?;
    let out = etcdctl(&server, &["snapshot", "save", path_str], None).await?;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, format!("Snapshot saved at {path_str}\n"));
    let file = std::fs::read(&path)?;
    let payload = snapshot::decode(&file)?;
    let restored = shoal_mvcc::Mvcc::open(&server.dir.path().join("restored.redb"))?;
    restored.restore(payload)?;
    assert_eq!(restored.revision(), server.backend.mvcc().revision());
    // `snapshot status` reads the file as etcd's bbolt database, which a
    // shoal snapshot is not: it fails rather than report wrong numbers.
    let status = etcdctl(&server, &["snapshot", "status", path_str], None).await?;
    assert!(
        !status.ok,
        "etcdctl cannot read a shoal snapshot: {}",
        status.stdout
    );
    server.stop().await
}

#[tokio::test]
async fn compaction_makes_old_revisions_unreadable() -> Result<()> {
    let server = Server::start().await?;
    ok(&server, &["put", "c", "1"]).await?;
    let old = server.backend.mvcc().revision();
    ok(&server, &["put", "c", "2"]).await?;
    let now = server.backend.mvcc().revision();
    assert_eq!(
        ok(&server, &["compaction", &now.to_string()]).await?,
        format!("compacted revision {now}\n")
    );
    let out = etcdctl(&server, &["get", "c", &format!("--rev={old}")], None).await?;
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{}",
        out.stderr
    );
    server.stop().await
}

#[tokio::test]
async fn an_oversized_value_is_refused_with_etcds_message() -> Result<()> {
    let server = Server::start().await?;
    // etcdctl reads the value from stdin when it is not an argument; 1.6 MiB
    // is over etcd's 1.5 MiB limit and under etcdctl's 2 MiB send limit.
    let value = vec![b'x'; 1600 * 1024];
    let out = etcdctl(&server, &["put", "big"], Some(&value)).await?;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("etcdserver: request is too large"),
        "{}",
        out.stderr
    );
    assert_eq!(ok(&server, &["put", "small", "v"]).await?, "OK\n");
    server.stop().await
}
