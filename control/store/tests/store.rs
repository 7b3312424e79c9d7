//! The store as users run it: the etcd v3 API over Raft, driven by real
//! `etcdctl` 3.4 and the `etcd-client` crate; backup and restore; a
//! 3-member cluster losing its leader under load, checked for
//! linearizability.

mod common;
mod faults;

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use common::{Member, WAIT, free_addr, start_all};
use etcd_client::Client;
use shoal_e2e::linearizability::{self, Action, Operation};
use shoal_store::{InitialCluster, StoreConfig};

/// The member's etcd client URL.
fn endpoint(m: &Member) -> String {
    format!("http://{}", m.client)
}

fn single(dir: &Path) -> Result<StoreConfig> {
    let mut c = StoreConfig::single(dir, "127.0.0.1:0".parse()?, free_addr()?);
    c.api.min_lease_ttl = 1;
    Ok(c)
}

async fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = tokio::process::Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!(
            "--endpoints={}",
            endpoint.trim_start_matches("http://")
        ))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .context("running etcdctl (installed by `cargo xtask setup` from Debian's etcd-client)")?;
    if let Some(mut pipe) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).await?;
        }
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .context("etcdctl hung")??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "etcdctl {args:?} failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_against_the_raft_store_and_a_snapshot_restores() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut m = Member::start(single(&dir.path().join("a"))?).await?;
    let ep = endpoint(&m);
    assert_eq!(
        etcdctl(&ep, &["put", "/app/a", "1"], None).await?.trim(),
        "OK"
    );
    etcdctl(&ep, &["put", "/app/b", "2"], None).await?;
    etcdctl(&ep, &["put", "/app/a", "3"], None).await?;
    let got = etcdctl(&ep, &["get", "/app/", "--prefix"], None).await?;
    assert_eq!(got, "/app/a\n3\n/app/b\n2\n");
    // The first put made revision 2: reading there shows the old value.
    let old = etcdctl(&ep, &["get", "/app/a", "--rev=2"], None).await?;
    assert_eq!(old, "/app/a\n1\n");
    let txn = "value(\"/app/a\") = \"3\"\n\nput /app/c yes\n\nput /app/c no\n\n";
    let out = etcdctl(&ep, &["txn"], Some(txn)).await?;
    assert!(out.starts_with("SUCCESS"), "{out}");
    assert_eq!(etcdctl(&ep, &["del", "/app/b"], None).await?.trim(), "1");
    let members = etcdctl(&ep, &["member", "list"], None).await?;
    assert!(members.contains("started, default"), "{members}");
    let status = etcdctl(&ep, &["endpoint", "status"], None).await?;
    assert!(
        status.contains("true"),
        "the only member must lead: {status}"
    );
    let lease = etcdctl(&ep, &["lease", "grant", "60"], None).await?;
    let id = lease
        .split_whitespace()
        .nth(1)
        .context("lease id in `lease grant` output")?
        .to_owned();
    etcdctl(
        &ep,
        &["put", "/app/leased", "x", &format!("--lease={id}")],
        None,
    )
    .await?;
    let ttl = etcdctl(&ep, &["lease", "timetolive", &id, "--keys"], None).await?;
    assert!(ttl.contains("/app/leased"), "{ttl}");
    etcdctl(&ep, &["lease", "revoke", &id], None).await?;
    let gone = etcdctl(&ep, &["get", "/app/leased"], None).await?;
    assert_eq!(gone, "", "a revoked lease's keys vanish");

    // Backup and recovery: snapshot, stop, restore into a new directory,
    // start a new member there.
    let snap = dir.path().join("backup.db");
    let snap_s = snap.to_string_lossy().into_owned();
    etcdctl(&ep, &["snapshot", "save", &snap_s], None).await?;
    m.stop().await?;
    let restored = dir.path().join("restored");
    shoal_store::restore(&snap, &restored)?;
    let err = shoal_store::restore(&snap, &restored).expect_err("restoring over data");
    assert!(err.to_string().contains("new directory"), "{err}");
    let mut m2 = Member::start(single(&restored)?).await?;
    let ep2 = endpoint(&m2);
    let got = etcdctl(&ep2, &["get", "/app/", "--prefix"], None).await?;
    assert_eq!(got, "/app/a\n3\n/app/c\nyes\n");
    // Revisions carry over: the restored store continues from them.
    let old = etcdctl(&ep2, &["get", "/app/a", "--rev=2"], None).await?;
    assert_eq!(old, "/app/a\n1\n");
    etcdctl(&ep2, &["put", "/app/d", "4"], None).await?;
    m2.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_keeps_its_data() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = single(dir.path())?;
    let mut m = Member::start(config.clone()).await?;
    let mut c = Client::connect([endpoint(&m)], None).await?;
    for i in 0..20 {
        c.put(format!("k{i}"), format!("v{i}"), None).await?;
    }
    let rev = c
        .get("k0", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    m.stop().await?;
    let mut m = Member::start(config).await?;
    let mut c = Client::connect([endpoint(&m)], None).await?;
    let got = c
        .get("k", Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    assert_eq!(got.kvs().len(), 20);
    assert_eq!(got.header().map_or(0, |h| h.revision()), rev);
    m.stop().await?;
    Ok(())
}

/// Configurations of `n` members m1..mN on loopback, each listed in the
/// others' initial cluster, with their data under `dir`.
fn member_configs(dir: &Path, n: usize) -> Result<Vec<StoreConfig>> {
    let peers: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect::<Result<_>>()?;
    let spec = (0..n)
        .map(|i| format!("m{}=http://{}", i + 1, peers[i]))
        .collect::<Vec<_>>()
        .join(",");
    let initial = InitialCluster::parse(&spec)?;
    let mut configs = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let mut c = StoreConfig::single(dir.join(format!("m{}", i + 1)), free_addr()?, *peer);
        c.name = format!("m{}", i + 1);
        c.initial_cluster = Some(initial.clone());
        configs.push(c);
    }
    Ok(configs)
}

struct Cluster {
    members: Vec<Member>,
    configs: Vec<StoreConfig>,
}

impl Cluster {
    async fn start(dir: &Path, n: usize) -> Result<Self> {
        let configs = member_configs(dir, n)?;
        let members = start_all(configs.clone()).await?;
        Ok(Self { members, configs })
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(endpoint).collect()
    }

    /// The index of the member whose status says it leads.
    async fn leader(&self) -> Result<usize> {
        let deadline = Instant::now() + WAIT;
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.task.is_none() {
                    continue;
                }
                let Ok(mut c) = Client::connect([endpoint(m)], None).await else {
                    continue;
                };
                if let Ok(s) = c.status().await {
                    let own = s.header().map_or(0, |h| h.member_id());
                    if s.leader() == own && own != 0 {
                        return Ok(i);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no leader within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Clients write and read a few keys on every member while the leader is
/// stopped and later restarted from its data directory. The recorded
/// history must be linearizable, every acknowledged write must be there at
/// the end, and all members must agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_lose_and_regain_the_leader_under_load_linearizably() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 3).await?;
    let leader = cluster.leader().await?;
    eprintln!("cluster up, leader is member {}", leader + 1);
    let epoch = Instant::now();
    let history: Arc<Mutex<Vec<Operation>>> = Arc::default();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_secs(6);
    let mut clients = Vec::new();
    for w in 0..6usize {
        let endpoint = cluster.endpoints()[w % 3].clone();
        let history = history.clone();
        let acked = acked.clone();
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut c = None;
            while Instant::now() < stop_at {
                if c.is_none() {
                    c = Client::connect([endpoint.clone()], None).await.ok();
                    if c.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let Some(client) = c.as_mut() else { continue };
                let key = format!("reg{}", n % 8);
                let call = epoch.elapsed().as_nanos() as u64;
                let op = if n.is_multiple_of(2) {
                    let value = format!("w{w}-{n}");
                    let res = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.put(key.clone(), value.clone(), None),
                    )
                    .await;
                    let ok = matches!(res, Ok(Ok(_)));
                    if ok {
                        acked
                            .lock()
                            .map(|mut a| a.push((key.clone(), value.clone())))
                            .ok();
                    } else {
                        // Reconnect after a pause, as a real client backs off.
                        c = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Some(Operation {
                        key: key.into_bytes(),
                        action: Action::Write(Some(value.into_bytes())),
                        call,
                        // A failed write may still have happened.
                        ret: ok.then(|| epoch.elapsed().as_nanos() as u64),
                    })
                } else {
                    let res =
                        tokio::time::timeout(Duration::from_secs(2), client.get(key.clone(), None))
                            .await;
                    match res {
                        Ok(Ok(r)) => Some(Operation {
                            key: key.into_bytes(),
                            action: Action::Read(r.kvs().first().map(|kv| kv.value().to_vec())),
                            call,
                            ret: Some(epoch.elapsed().as_nanos() as u64),
                        }),
                        // A read without an answer says nothing.
                        _ => {
                            c = None;
                            None
                        }
                    }
                };
                if let Some(op) = op {
                    history.lock().map(|mut h| h.push(op)).ok();
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.members[leader].stop().await?;
    eprintln!("leader stopped");
    let new_leader = cluster.leader().await?;
    eprintln!("new leader is member {}", new_leader + 1);
    ensure!(new_leader != leader, "a new leader must be elected");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let config = cluster.configs[leader].clone();
    cluster.members[leader] = Member::start(config).await?;
    eprintln!("old leader restarted");
    for c in clients {
        c.await?;
    }
    // Final linearizable reads of every register join the history, so a lost
    // acknowledged write shows up as a stale read.
    let mut c = Client::connect(cluster.endpoints(), None).await?;
    for k in 0..8 {
        let key = format!("reg{k}");
        let call = epoch.elapsed().as_nanos() as u64;
        let r = c.get(key.clone(), None).await?;
        let op = Operation {
            key: key.into_bytes(),
            action: Action::Read(r.kvs().first().map(|kv| kv.value().to_vec())),
            call,
            ret: Some(epoch.elapsed().as_nanos() as u64),
        };
        history.lock().map(|mut h| h.push(op)).ok();
    }
    let history = history.lock().map(|h| h.clone()).unwrap_or_default();
    let writes = history
        .iter()
        .filter(|o| matches!(o.action, Action::Write(_)) && o.ret.is_some())
        .count();
    ensure!(
        writes > 50,
        "only {writes} acknowledged writes; the load did not run"
    );
    let pending = history.iter().filter(|o| o.ret.is_none()).count();
    eprintln!(
        "history: {} operations, {writes} acknowledged writes, {pending} unknown outcomes",
        history.len()
    );
    let started = Instant::now();
    linearizability::check(&history).context("the recorded history is not linearizable")?;
    eprintln!("linearizable; checked in {:?}", started.elapsed());

    // Every member converges on the same revision and the same registers.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut seen = Vec::new();
        for ep in cluster.endpoints() {
            let mut c = Client::connect([ep], None).await?;
            let r = c
                .get(
                    "reg",
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_serializable(),
                    ),
                )
                .await?;
            let kvs: Vec<_> = r
                .kvs()
                .iter()
                .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision()))
                .collect();
            seen.push((r.header().map_or(0, |h| h.revision()), kvs));
        }
        if seen.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        ensure!(Instant::now() < deadline, "members disagree: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acked = acked.lock().map(|a| a.len()).unwrap_or(0);
    ensure!(acked == writes, "acked {acked} vs recorded {writes}");
    for m in &mut cluster.members {
        m.stop().await?;
    }
    Ok(())
}

/// etcd's followers forward LeaseKeepAlive and LeaseTimeToLive to the
/// leader, whose lessor holds the timers: `etcdctl lease keep-alive`
/// pointed at a follower keeps a lease (and its key) alive past its TTL,
/// and once it stops the lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_keeps_a_lease_alive_through_a_follower() -> Result<()> {
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 3).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.endpoints()[(leader + 1) % 3].clone();
    let grant = etcdctl(&follower, &["lease", "grant", "3"], None).await?;
    // "lease 694d7a3b3e1c3c1a granted with TTL(5s)": the TTL may be raised
    // to the minimum.
    let mut words = grant.split_whitespace();
    let id = words.nth(1).context("lease id")?.to_owned();
    let ttl: u64 = grant
        .split("TTL(")
        .nth(1)
        .and_then(|t| t.split('s').next())
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("TTL in {grant:?}"))?;
    etcdctl(
        &follower,
        &["put", "/leased/key", "v", &format!("--lease={id}")],
        None,
    )
    .await?;

    let mut keep_alive = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!(
            "--endpoints={}",
            follower.trim_start_matches("http://")
        ))
        .args(["lease", "keep-alive", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running etcdctl lease keep-alive")?;
    let stdout = keep_alive.stdout.take().context("keep-alive stdout")?;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                seen.lock().map(|mut s| s.push(line)).ok();
            }
        })
    };
    // Twice the TTL and more: without renewals the lease would be gone.
    tokio::time::sleep(Duration::from_secs(2 * ttl + 1)).await;
    let renewals = seen.lock().map(|s| s.clone()).unwrap_or_default();
    ensure!(
        renewals
            .iter()
            .filter(|l| l.contains("keepalived with TTL("))
            .count()
            >= 2,
        "etcdctl lease keep-alive against a follower: {renewals:?}"
    );
    let ttl_left = etcdctl(&follower, &["lease", "timetolive", &id], None).await?;
    ensure!(
        ttl_left.contains("remaining(") && !ttl_left.contains("remaining(-1"),
        "timetolive through the follower: {ttl_left} (keep-alive said {renewals:?})"
    );
    let got = etcdctl(&follower, &["get", "/leased/key"], None).await?;
    ensure!(got == "/leased/key\nv\n", "the leased key is gone: {got:?}");

    keep_alive.kill().await?;
    reader.abort();
    // Without renewals the leader expires the lease and its key.
    let deadline = Instant::now() + WAIT;
    loop {
        let got = etcdctl(&follower, &["get", "/leased/key"], None).await?;
        if got.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the lease outlived its last keep-alive by {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for m in &mut cluster.members {
        m.stop().await?;
    }
    Ok(())
}

/// A member added to a running cluster as etcd adds one: `MemberAdd` as a
/// learner gives it an id, it starts with that id bootstrapping nothing,
/// receives what was written before, and once promoted votes: the two
/// members then hold writes made through either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_with_member_add_catches_up_and_votes_once_promoted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut first = Member::start(single(&dir.path().join("m1"))?).await?;
    let mut c1 = Client::connect([endpoint(&first)], None).await?;
    for i in 0..50 {
        c1.put(format!("/before/{i:02}"), format!("v{i}"), None)
            .await?;
    }
    let peer = free_addr()?;
    let peer_url = format!("http://{peer}");
    let added = c1
        .member_add(
            [peer_url.as_str()],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await?;
    let id = added.member().context("MemberAdd named no member")?.id();
    let cluster_id = added.header().map_or(0, |h| h.cluster_id());
    let mut config = StoreConfig::single(dir.path().join("m2"), free_addr()?, peer);
    config.name = "m2".into();
    config.join = Some(shoal_store::JoinedMember {
        id,
        cluster_id,
        peer_url,
    });
    let mut second = Member::start(config).await?;
    let mut c2 = Client::connect([endpoint(&second)], None).await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let got = c2
            .get(
                "/before/",
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_serializable(),
                ),
            )
            .await;
        if got.as_ref().is_ok_and(|g| g.kvs().len() == 50) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the learner did not receive the 50 keys written before it joined: {:?}",
            got.map(|g| g.kvs().len())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c1.member_promote(id).await?;
    let members = c1.member_list().await?;
    ensure!(
        members.members().len() == 2 && members.members().iter().all(|m| !m.is_learner()),
        "after the promotion: {:?}",
        members
            .members()
            .iter()
            .map(|m| (m.id(), m.is_learner()))
            .collect::<Vec<_>>()
    );
    c2.put("/after/through-m2", "yes", None).await?;
    let got = c1.get("/after/through-m2", None).await?;
    ensure!(
        got.kvs().first().map(|kv| kv.value()) == Some(b"yes".as_slice()),
        "a write through the new member is missing on the first"
    );
    // Two voters: a write needs both, so the new member really votes.
    second.stop().await?;
    let lone = tokio::time::timeout(
        Duration::from_secs(3),
        c1.put("/after/without-m2", "no", None),
    )
    .await;
    ensure!(
        !matches!(lone, Ok(Ok(_))),
        "a write committed with one of two voters down"
    );
    first.stop().await?;
    Ok(())
}

/// etcdctl's `member list` rows: (hex id, name, client URLs), from its
/// `ID, status, name, peer URLs, client URLs, is learner` lines.
async fn member_rows(endpoint: &str) -> Result<Vec<(String, String, usize)>> {
    let out = etcdctl(endpoint, &["member", "list"], None).await?;
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split(", ").collect();
            let col = |i: usize| cols.get(i).copied().unwrap_or_default();
            (
                col(0).to_owned(),
                col(2).to_owned(),
                col(4).split(',').filter(|u| !u.is_empty()).count(),
            )
        })
        .collect())
}

/// etcdctl failing with a message that contains `want`.
async fn etcdctl_refused(endpoint: &str, args: &[&str], want: &str) -> Result<()> {
    match etcdctl(endpoint, args, None).await {
        Ok(out) => bail!("etcdctl {args:?} succeeded: {out}"),
        Err(e) => {
            ensure!(format!("{e:#}").contains(want), "etcdctl {args:?}: {e:#}");
            Ok(())
        }
    }
}

/// Membership as etcd users see it: every member named in `etcdctl member
/// list` with its client URL; `etcdctl member remove` takes a member that
/// is down out, refuses one whose removal would leave no quorum (etcd's
/// strict reconfiguration check) and the last member; the leader removing
/// itself steps down, stops serving and refuses to start again, while the
/// member left serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_named_and_removed_as_etcd_does_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 3).await?;
    let endpoints = cluster.endpoints();
    let deadline = Instant::now() + WAIT;
    let rows = loop {
        let rows = member_rows(&endpoints[0]).await?;
        let mut names: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
        names.sort_unstable();
        // Every member published its client URL, not only the one that
        // bootstrapped the membership.
        if names == ["m1", "m2", "m3"] && rows.iter().all(|r| r.2 == 1) {
            break rows;
        }
        ensure!(Instant::now() < deadline, "member list: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = |name: &str| {
        rows.iter()
            .find(|r| r.1 == name)
            .map(|r| r.0.clone())
            .unwrap_or_default()
    };

    // A follower goes down; once the leader has not heard from it for
    // etcd's health interval, removing a running member would leave the
    // down one needed for a quorum: refused.
    let leader = cluster.leader().await?;
    let down = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    cluster.members[down].stop().await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let other_name = format!("m{}", other + 1);
    etcdctl_refused(
        &endpoints[leader],
        &["member", "remove", &id(&other_name)],
        "not enough started members",
    )
    .await?;
    // The member that is down goes.
    let down_name = format!("m{}", down + 1);
    let out = etcdctl(
        &endpoints[other],
        &["member", "remove", &id(&down_name)],
        None,
    )
    .await?;
    ensure!(out.contains("removed from cluster"), "{out}");
    let names: Vec<String> = member_rows(&endpoints[leader])
        .await?
        .into_iter()
        .map(|r| r.1)
        .collect();
    ensure!(
        names.len() == 2 && !names.contains(&down_name),
        "after removing {down_name}: {names:?}"
    );

    // The leader removes itself: it stops serving, the other member leads
    // alone and takes writes.
    let leader_name = format!("m{}", leader + 1);
    etcdctl(
        &endpoints[leader],
        &["member", "remove", &id(&leader_name)],
        None,
    )
    .await?;
    let task = cluster.members[leader]
        .task
        .take()
        .context("the leader's task")?;
    tokio::time::timeout(WAIT, task)
        .await
        .context("the removed leader kept serving")???;
    let out = etcdctl(&endpoints[other], &["put", "/after/removal", "yes"], None).await?;
    ensure!(out.trim() == "OK", "put on the member left: {out}");
    let rows = member_rows(&endpoints[other]).await?;
    ensure!(
        rows.len() == 1 && rows[0].1 == other_name,
        "after the leader left: {rows:?}"
    );
    etcdctl_refused(
        &endpoints[other],
        &["member", "remove", &id(&other_name)],
        "not enough started members",
    )
    .await?;
    // Its data dir refuses to start it again, saying what to do.
    let again = shoal_store::Store::start(cluster.configs[leader].clone()).await;
    match again {
        Ok(_) => bail!("the removed member started again"),
        Err(e) => ensure!(
            e.to_string().contains("was removed from its cluster"),
            "restarting the removed member: {e}"
        ),
    }
    for m in &mut cluster.members {
        m.stop().await?;
    }
    Ok(())
}
