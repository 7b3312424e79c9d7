//! Members on loopback: bootstrap, replicated writes from any member,
//! linearizable reads, leader failover, restart and catch-up, snapshot
//! streaming to a new member, membership changes.

use std::{collections::BTreeMap, future::Future, net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context, Result, anyhow, bail, ensure};
use shoal_mvcc::{Command, KeyValue, Outcome, PutArgs, RangeArgs, Revision};
use shoal_raft::{Config, Error, Member, NodeId, RaftNode};
use tokio::time::{Instant, sleep, timeout};

/// Longest wait for any one condition.
const WAIT: Duration = Duration::from_secs(10);
/// Longest a whole test may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(40);

/// Runs a test body with an overall deadline.
async fn bounded(body: impl Future<Output = Result<()>>) -> Result<()> {
    timeout(TEST_TIMEOUT, body)
        .await
        .map_err(|_| anyhow!("test did not finish within {TEST_TIMEOUT:?}"))?
}

/// Polls `check` until it returns `Some` or `WAIT` passed.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {WAIT:?} waiting for {what}");
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// A member's identity and loopback address.
struct Spec {
    id: NodeId,
    addr: SocketAddr,
    member: Member,
}

impl Spec {
    fn new(id: NodeId) -> Result<Self> {
        let addr = shoal_e2e::ports::free_loopback_addr()?;
        Ok(Self {
            id,
            addr,
            member: Member {
                name: format!("m{id}"),
                peer_url: format!("http://{addr}"),
                client_url: format!("http://127.0.0.1:{}", 2379 + id),
            },
        })
    }

    async fn start(&self, root: &Path) -> Result<RaftNode> {
        RaftNode::start(self.config(root))
            .await
            .with_context(|| format!("starting member {}", self.id))
    }

    fn config(&self, root: &Path) -> Config {
        Config::new(
            self.id,
            self.member.name.clone(),
            root.join(&self.member.name),
            self.addr,
            self.member.peer_url.clone(),
            self.member.client_url.clone(),
        )
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutArgs {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    })
}

/// Every key-value and the revision, as this member's keyspace has them.
fn contents(node: &RaftNode) -> Result<(Vec<KeyValue>, Revision)> {
    let all = RangeArgs {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let (range, revision) = node
        .mvcc()
        .range(&all)?
        .map_err(|e| anyhow!("member {}: range: {e}", node.id()))?;
    Ok((range.kvs, revision))
}

fn value(node: &RaftNode, key: &str) -> Result<Option<String>> {
    let (kvs, _) = contents(node)?;
    Ok(kvs
        .into_iter()
        .find(|kv| kv.key == key.as_bytes())
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// Writes and checks the write succeeded.
async fn write_ok(node: &RaftNode, key: &str, value: &str) -> Result<Revision> {
    let result = node
        .write(put(key, value))
        .await
        .with_context(|| format!("writing {key} through member {}", node.id()))?;
    ensure!(
        matches!(result.outcome, Ok(Outcome::Put(_))),
        "put {key}: {:?}",
        result.outcome
    );
    Ok(result.revision)
}

/// Waits until every node names the same leader, one of them.
async fn agreed_leader(nodes: &[&RaftNode]) -> Result<NodeId> {
    eventually("members to agree on a leader", || {
        let leader = nodes.first()?.leader()?;
        let agreed = nodes.iter().all(|n| n.leader() == Some(leader));
        (agreed && nodes.iter().any(|n| n.id() == leader)).then_some(leader)
    })
    .await
}

/// After a linearizable read on each, every node has the same keyspace.
async fn assert_same_contents(nodes: &[&RaftNode]) -> Result<(Vec<KeyValue>, Revision)> {
    let mut seen: Option<(NodeId, (Vec<KeyValue>, Revision))> = None;
    for node in nodes {
        node.ensure_linearizable()
            .await
            .with_context(|| format!("linearizable read on member {}", node.id()))?;
        let mine = contents(node)?;
        if let Some((first, theirs)) = &seen {
            ensure!(
                *theirs == mine,
                "member {} has revision {} and {} keys, member {first} has revision {} and {} keys",
                node.id(),
                mine.1,
                mine.0.len(),
                theirs.1,
                theirs.0.len()
            );
        } else {
            seen = Some((node.id(), mine));
        }
    }
    seen.map(|(_, c)| c).context("no nodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_writes_reads_and_restarts() -> Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let spec = Spec::new(1)?;
        let members = BTreeMap::from([(1, spec.member.clone())]);

        let node = spec.start(dir.path()).await?;
        let leadership = node.leader_watch();
        ensure!(
            !leadership.borrow().is_self,
            "leads before being initialized"
        );
        node.initialize(members.clone()).await?;
        eventually("member 1 to lead", || node.is_leader().then_some(())).await?;
        let seen = *leadership.borrow();
        ensure!(
            seen.is_self && seen.leader == Some(1) && seen.term >= 1 && seen.term == node.term(),
            "leader watch says {seen:?}"
        );

        let first = write_ok(&node, "a", "1").await?;
        let second = write_ok(&node, "b", "2").await?;
        ensure!(
            second == first + 1,
            "revisions {first}, {second} are not consecutive"
        );
        let index = node.ensure_linearizable().await?;
        ensure!(index >= 3, "read index {index} is before the two writes");
        ensure!(
            node.applied_index() >= index,
            "applied {} < read index {index}",
            node.applied_index()
        );
        ensure!(
            node.commit_index().await? >= index,
            "commit index is behind the read index"
        );
        ensure!(value(&node, "a")?.as_deref() == Some("1"), "a is not 1");
        ensure!(value(&node, "b")?.as_deref() == Some("2"), "b is not 2");
        // Initializing an initialized member is not an error.
        node.initialize(members.clone()).await?;
        ensure!(
            node.members() == vec![(1, spec.member.clone(), false)],
            "{:?}",
            node.members()
        );

        node.shutdown().await;
        drop(node);

        // Restarted from its data directory: same data, leads again, writes.
        let node = spec.start(dir.path()).await?;
        node.initialize(members).await?;
        eventually("restarted member 1 to lead", || {
            node.is_leader().then_some(())
        })
        .await?;
        node.ensure_linearizable().await?;
        ensure!(
            value(&node, "b")?.as_deref() == Some("2"),
            "b lost across restart"
        );
        let third = write_ok(&node, "c", "3").await?;
        ensure!(
            third == second + 1,
            "revision {third} after restart does not follow {second}"
        );
        node.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_fail_over_catch_up_and_change_membership() -> Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let specs = (1..=4).map(Spec::new).collect::<Result<Vec<_>>>()?;
        let spec = |id: NodeId| &specs[usize::try_from(id - 1).unwrap_or(usize::MAX)];
        let voters: BTreeMap<NodeId, Member> = specs[..3]
            .iter()
            .map(|s| (s.id, s.member.clone()))
            .collect();

        let mut nodes: BTreeMap<NodeId, RaftNode> = BTreeMap::new();
        for s in &specs[..3] {
            nodes.insert(s.id, s.start(dir.path()).await?);
        }
        nodes[&1].initialize(voters.clone()).await?;
        let all: Vec<&RaftNode> = nodes.values().collect();
        let leader = agreed_leader(&all).await?;
        let follower = *nodes
            .keys()
            .find(|id| **id != leader)
            .context("a follower")?;
        let mut follower_view = nodes[&follower].leader_watch();
        let old_term = follower_view.borrow_and_update().term;

        // Writes on the leader and through a follower (forwarded).
        write_ok(&nodes[&leader], "k1", "from-leader").await?;
        write_ok(&nodes[&follower], "k2", "from-follower").await?;
        let (kvs, _) = assert_same_contents(&all).await?;
        ensure!(
            kvs.len() == 2,
            "want k1 and k2 everywhere, got {} keys",
            kvs.len()
        );

        // The leader goes away; the others elect a new one and keep writing.
        let old = nodes.remove(&leader).context("leader")?;
        old.shutdown().await;
        drop(old);
        let rest: Vec<&RaftNode> = nodes.values().collect();
        let new_leader = agreed_leader(&rest).await?;
        ensure!(
            new_leader != leader,
            "member {leader} is down but still named leader"
        );
        ensure!(
            follower_view.has_changed()?,
            "follower {follower} was not told about the new leader"
        );
        let now = *follower_view.borrow_and_update();
        ensure!(
            now.leader == Some(new_leader) && now.term > old_term,
            "follower {follower} sees {now:?}, want leader {new_leader} after term {old_term}"
        );
        for node in &rest {
            write_ok(node, &format!("after-failover-{}", node.id()), "v").await?;
        }

        // The old leader restarts from its data directory and catches up.
        nodes.insert(leader, spec(leader).start(dir.path()).await?);
        nodes[&leader].initialize(voters.clone()).await?;
        let all: Vec<&RaftNode> = nodes.values().collect();
        let (kvs, revision) = assert_same_contents(&all).await?;
        ensure!(
            kvs.len() == 4,
            "want 4 keys on every member, got {}",
            kvs.len()
        );
        let leader = agreed_leader(&all).await?;

        // Snapshot and purge the leader's log, so a new member can only
        // catch up from the snapshot.
        let snapshot_index = nodes[&leader].compact_log().await?;
        let mut metrics = nodes[&leader].metrics();
        let purged = timeout(
            WAIT,
            metrics.wait_for(|m| m.purged.is_some_and(|p| p.index >= snapshot_index)),
        )
        .await
        .map_err(|_| anyhow!("leader {leader} did not purge its log up to {snapshot_index}"))?
        .map_err(|e| anyhow!("metrics: {e}"))?
        .purged;
        drop(metrics);
        ensure!(purged.is_some(), "nothing purged");

        // Member 4 joins as a learner (asked through a follower), receives
        // the snapshot, then is promoted.
        let new = spec(4);
        nodes.insert(4, new.start(dir.path()).await?);
        let follower = *nodes
            .keys()
            .find(|id| **id != leader && **id != 4)
            .context("a follower")?;
        nodes[&follower].add_learner(4, new.member.clone()).await?;
        let learner_snapshot = {
            let learner = &nodes[&4];
            eventually("member 4 to install the snapshot", || {
                learner
                    .metrics()
                    .borrow()
                    .snapshot
                    .filter(|s| s.index >= snapshot_index)
            })
            .await?
        };
        ensure!(learner_snapshot.index >= snapshot_index);
        ensure!(
            *nodes[&4].snapshot_installs().borrow() >= 1,
            "member 4 caught up without installing a snapshot"
        );
        ensure!(
            nodes[&leader]
                .members()
                .contains(&(4, new.member.clone(), true)),
            "member 4 is not a learner: {:?}",
            nodes[&leader].members()
        );
        nodes[&leader].promote(4).await?;
        ensure!(
            nodes[&leader]
                .members()
                .contains(&(4, new.member.clone(), false)),
            "member 4 is not a voter: {:?}",
            nodes[&leader].members()
        );
        write_ok(&nodes[&4], "k-from-4", "v").await?;
        let all: Vec<&RaftNode> = nodes.values().collect();
        let (kvs, after) = assert_same_contents(&all).await?;
        ensure!(
            kvs.len() == 5 && after == revision + 1,
            "member 4 is not in step: {} keys at {after}",
            kvs.len()
        );

        // Remove a follower; the three left keep working.
        let removed = *nodes
            .keys()
            .find(|id| **id != leader && **id != 4)
            .context("a follower")?;
        nodes[&leader].remove(removed).await?;
        let gone = nodes.remove(&removed).context("removed member")?;
        gone.shutdown().await;
        drop(gone);
        let rest: Vec<&RaftNode> = nodes.values().collect();
        ensure!(
            rest[0].members().iter().all(|(id, _, _)| *id != removed),
            "member {removed} still listed: {:?}",
            rest[0].members()
        );
        write_ok(rest[rest.len() - 1], "after-remove", "v").await?;
        assert_same_contents(&rest).await?;

        // A refused change is reported as such, also when forwarded.
        match nodes[&4].promote(99).await {
            Err(Error::Membership(e)) => ensure!(e.to_string().contains("99"), "{e}"),
            other => bail!("promoting unknown member 99: want a membership error, got {other:?}"),
        }

        // Member 4 asks (forwarded) to make the two others the only voters,
        // which drops it from the cluster.
        let others: std::collections::BTreeSet<NodeId> =
            nodes.keys().copied().filter(|id| *id != 4).collect();
        nodes[&4].change_membership(others.clone()).await?;
        let voters: std::collections::BTreeSet<NodeId> = nodes[&leader]
            .members()
            .into_iter()
            .map(|(id, _, is_learner)| {
                ensure!(!is_learner, "member {id} left as a learner");
                Ok(id)
            })
            .collect::<Result<_>>()?;
        ensure!(voters == others, "voters are {voters:?}, want {others:?}");
        let four = nodes.remove(&4).context("member 4")?;
        four.shutdown().await;
        drop(four);
        let rest: Vec<&RaftNode> = nodes.values().collect();
        write_ok(rest[0], "two-voters", "v").await?;
        assert_same_contents(&rest).await?;

        for node in nodes.values() {
            node.shutdown().await;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_without_leader_fails_with_no_leader() -> Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let spec = Spec::new(1)?;
        let mut config = spec.config(dir.path());
        config.leader_wait = Duration::from_millis(300);
        // Never initialized: there is no cluster, so no leader.
        let node = RaftNode::start(config).await?;
        let started = Instant::now();
        match node.write(put("k", "v")).await {
            Err(e @ Error::NoLeader { .. }) => {
                ensure!(e.to_string().contains("no raft leader"), "message: {e}");
            }
            other => bail!("want NoLeader, got {other:?}"),
        }
        ensure!(
            started.elapsed() < Duration::from_secs(3),
            "gave up after {:?}",
            started.elapsed()
        );
        match node.ensure_linearizable().await {
            Err(Error::NoLeader { .. }) => {}
            other => bail!("want NoLeader for a read, got {other:?}"),
        }
        node.shutdown().await;
        drop(node);
        // The port and the files are free again: a restart opens them.
        let again = spec.start(dir.path()).await?;
        again.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries_and_each_gets_its_own_result() -> Result<()> {
    const WRITES: usize = 200;
    bounded(async {
        let dir = tempfile::tempdir()?;
        let spec = Spec::new(1)?;
        let node = std::sync::Arc::new(spec.start(dir.path()).await?);
        node.initialize(BTreeMap::from([(1, spec.member.clone())]))
            .await?;
        eventually("member 1 to lead", || node.is_leader().then_some(())).await?;
        let before = node.applied_index();

        let writes: Vec<_> = (0..WRITES)
            .map(|i| {
                let node = node.clone();
                tokio::spawn(
                    async move { write_ok(&node, &format!("k{i:03}"), &i.to_string()).await },
                )
            })
            .collect();
        let mut revisions = Vec::new();
        for write in writes {
            revisions.push(write.await??);
        }
        // Each put got its own revision, as if proposed alone.
        revisions.sort_unstable();
        revisions.dedup();
        ensure!(revisions.len() == WRITES, "revisions shared between puts");
        ensure!(
            revisions.last().copied().unwrap_or_default() - revisions[0] == WRITES as i64 - 1,
            "revisions are not consecutive: {revisions:?}"
        );
        for i in [0, WRITES / 2, WRITES - 1] {
            ensure!(
                value(&node, &format!("k{i:03}"))?.as_deref() == Some(i.to_string().as_str()),
                "k{i:03} has the wrong value"
            );
        }
        let entries = node.applied_index() - before;
        ensure!(
            entries < WRITES as u64 / 2,
            "{entries} log entries for {WRITES} concurrent writes: not batched"
        );
        node.shutdown().await;
        Ok(())
    })
    .await
}
