//! The fault campaign: 3 members whose peer network drops, delays and
//! partitions messages and whose log store can fsync slowly, under clients
//! doing put, get and compare-and-set txns through `etcd-client`. After each
//! fault heals, every acknowledged write is in the store, all members hold
//! the same keyspace at the same revision, and the recorded history is
//! linearizable: clients may see errors, never a wrong answer.
//!
//! Each scenario runs once per seed; the seed picks the background link
//! noise, the fault's timing, the slow disk's delay and the clients' keys.
//! `SHOAL_FAULT_SEEDS=N` runs seeds 1..=N (default 2, what CI runs);
//! `SHOAL_FAULT_SEED=S` runs seed S alone to reproduce a failure.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use shoal_e2e::linearizability::{self, Action, Operation};
use shoal_raft::{Faults, LinkFault};

use crate::common::{Member, WAIT, start_all};

/// Seeds CI runs per scenario.
const DEFAULT_SEEDS: u64 = 2;
/// Concurrent clients; client i talks to member i % 3.
const CLIENTS: usize = 6;
/// Registers the clients share.
const KEYS: u64 = 6;
/// How long a client waits for one answer before counting the operation's
/// outcome unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// The seeds to run.
fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SHOAL_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("SHOAL_FAULT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    (1..=n).collect()
}

/// A small deterministic generator for the test's own choices.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[lo, hi)` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// What a scenario does between the load starting and the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Cut one follower off from both others, then heal.
    MinorityFollower,
    /// Cut the leader off from both others, then heal.
    IsolatedLeader,
    /// Make the leader's fsyncs slow, then fast again.
    SlowLeaderDisk,
}

fn endpoint(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

async fn connect(endpoint: &str) -> Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(OP_TIMEOUT);
    Ok(Client::connect([endpoint.to_owned()], Some(options)).await?)
}

/// Who member `addr` says leads, and its own id (both Raft ids).
async fn status(addr: SocketAddr) -> Result<(u64, u64)> {
    let s = connect(&endpoint(addr)).await?.status().await?;
    Ok((s.leader(), s.header().map_or(0, |h| h.member_id())))
}

/// Waits until a member among `among` leads, as it and every other member
/// of `among` see it. Returns its index.
async fn leader_among(members: &[Member], among: &[usize]) -> Result<usize> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut seen = Vec::new();
        for &i in among {
            if let Ok(s) = status(members[i].client).await {
                seen.push((i, s));
            }
        }
        if seen.len() == among.len()
            && let Some(&(i, (leader, own))) = seen.iter().find(|(_, (l, own))| l == own)
            && seen.iter().all(|(_, (l, _))| *l == leader)
            && own != 0
        {
            return Ok(i);
        }
        ensure!(
            Instant::now() < deadline,
            "no leader among members {among:?} within {WAIT:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client's recorded operations, with the member it talked to.
#[derive(Default)]
struct Record {
    history: Vec<(usize, Operation)>,
    acked_writes: Vec<(Vec<u8>, Vec<u8>)>,
    errors: u64,
}

/// A client doing puts, gets and compare-and-set txns until `stop_at`.
async fn client(
    w: usize,
    member: usize,
    addr: SocketAddr,
    seed: u64,
    epoch: Instant,
    stop_at: Instant,
    record: Arc<Mutex<Record>>,
) {
    let mut rng = Rng::new(seed ^ (w as u64 + 1) << 32);
    let now = || epoch.elapsed().as_nanos() as u64;
    let mut c: Option<Client> = None;
    // The last value this client saw per key, for its txns' compares.
    let mut last_seen: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut n = 0u64;
    while Instant::now() < stop_at {
        let Some(client) = c.as_mut() else {
            c = connect(&endpoint(addr)).await.ok();
            if c.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        n += 1;
        let key = format!("reg{}", rng.next() % KEYS).into_bytes();
        let value = format!("c{w}-{n}").into_bytes();
        let call = now();
        let kind = rng.next() % 3;
        let (op, ok) = match kind {
            0 => {
                let res =
                    tokio::time::timeout(OP_TIMEOUT, client.put(key.clone(), value.clone(), None))
                        .await;
                let ok = matches!(res, Ok(Ok(_)));
                let op = Operation {
                    key: key.clone(),
                    action: Action::Write(Some(value.clone())),
                    call,
                    ret: ok.then(now),
                };
                if ok {
                    last_seen.insert(key.clone(), Some(value.clone()));
                }
                (Some(op), ok)
            }
            1 => match tokio::time::timeout(OP_TIMEOUT, client.get(key.clone(), None)).await {
                Ok(Ok(r)) => {
                    let seen = r.kvs().first().map(|kv| kv.value().to_vec());
                    last_seen.insert(key.clone(), seen.clone());
                    let op = Operation {
                        key: key.clone(),
                        action: Action::Read(seen),
                        call,
                        ret: Some(now()),
                    };
                    (Some(op), true)
                }
                // A read without an answer says nothing.
                _ => (None, false),
            },
            _ => {
                let expect = last_seen.get(&key).cloned().flatten();
                let compare = match &expect {
                    Some(v) => Compare::value(key.clone(), CompareOp::Equal, v.clone()),
                    None => Compare::version(key.clone(), CompareOp::Equal, 0),
                };
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                    .or_else([TxnOp::get(key.clone(), None)]);
                match tokio::time::timeout(OP_TIMEOUT, client.txn(txn)).await {
                    Ok(Ok(r)) if r.succeeded() => {
                        last_seen.insert(key.clone(), Some(value.clone()));
                        let op = Operation {
                            key: key.clone(),
                            action: Action::CompareAndSet {
                                expect,
                                new: value.clone(),
                            },
                            call,
                            ret: Some(now()),
                        };
                        (Some(op), true)
                    }
                    Ok(Ok(r)) => {
                        // The else branch read the value that failed the
                        // compare: a read at the txn's point in time.
                        let seen = r.op_responses().into_iter().find_map(|o| match o {
                            etcd_client::TxnOpResponse::Get(g) => {
                                Some(g.kvs().first().map(|kv| kv.value().to_vec()))
                            }
                            _ => None,
                        });
                        match seen {
                            Some(seen) => {
                                last_seen.insert(key.clone(), seen.clone());
                                let op = Operation {
                                    key: key.clone(),
                                    action: Action::Read(seen),
                                    call,
                                    ret: Some(now()),
                                };
                                (Some(op), true)
                            }
                            None => {
                                // A failed txn without its else branch's
                                // answer is a wrong answer.
                                let op = Operation {
                                    key: key.clone(),
                                    action: Action::Read(Some(b"<txn without else>".to_vec())),
                                    call,
                                    ret: Some(now()),
                                };
                                (Some(op), true)
                            }
                        }
                    }
                    _ => {
                        let op = Operation {
                            key: key.clone(),
                            action: Action::CompareAndSet {
                                expect,
                                new: value.clone(),
                            },
                            call,
                            ret: None,
                        };
                        (Some(op), false)
                    }
                }
            }
        };
        {
            let mut r = record.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(op) = op {
                if op.ret.is_some()
                    && let Action::Write(Some(v)) | Action::CompareAndSet { new: v, .. } =
                        &op.action
                {
                    r.acked_writes.push((op.key.clone(), v.clone()));
                }
                r.history.push((member, op));
            }
            if !ok {
                r.errors += 1;
            }
        }
        if !ok {
            // Reconnect after a pause, as a real client backs off.
            c = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Starts 3 members sharing `faults`.
async fn cluster(dir: &Path, faults: &Faults) -> Result<Vec<Member>> {
    let mut configs = crate::member_configs(dir, 3)?;
    for c in &mut configs {
        c.faults = Some(faults.clone());
    }
    start_all(configs).await
}

/// Raft id of the member at `index` (`--initial-cluster` order, from 1).
fn id(index: usize) -> u64 {
    index as u64 + 1
}

/// Every member's whole keyspace (serializable reads) and revision.
async fn keyspaces(members: &[Member]) -> Result<Vec<(i64, Vec<(Vec<u8>, Vec<u8>, i64)>)>> {
    let mut seen = Vec::new();
    for m in members {
        let mut c = connect(&endpoint(m.client)).await?;
        let r = c
            .get(
                "",
                Some(GetOptions::new().with_from_key().with_serializable()),
            )
            .await?;
        let kvs = r
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision()))
            .collect();
        seen.push((r.header().map_or(0, |h| h.revision()), kvs));
    }
    Ok(seen)
}

/// Every value ever written to `key` that member `addr` kept, oldest
/// first, read revision by revision from its history.
async fn values_written(addr: SocketAddr, key: &[u8]) -> Result<HashSet<Vec<u8>>> {
    let mut c = connect(&endpoint(addr)).await?;
    let mut values = HashSet::new();
    let mut rev = c
        .get(key, None)
        .await?
        .kvs()
        .first()
        .map_or(0, |kv| kv.mod_revision());
    while rev > 0 {
        let r = c
            .get(key, Some(GetOptions::new().with_revision(rev)))
            .await?;
        let Some(kv) = r.kvs().first() else { break };
        values.insert(kv.value().to_vec());
        // The value before this one was written at a lower revision.
        rev = kv.mod_revision() - 1;
        if kv.create_revision() == kv.mod_revision() {
            break;
        }
    }
    Ok(values)
}

/// Runs one scenario with one seed.
async fn run(scenario: Scenario, seed: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let faults = Faults::new(seed);
    let mut rng = Rng::new(seed);
    let mut members = cluster(dir.path(), &faults).await?;
    let leader = leader_among(&members, &[0, 1, 2]).await?;
    // Background noise on every link: delays and jitter, a few lost
    // messages (requests and replies).
    let noise = LinkFault {
        drop: 0.01 * (rng.next() % 3) as f64,
        delay: rng.millis(0, 3),
        jitter: rng.millis(1, 5),
    };
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                faults.set_link(id(a), id(b), noise);
            }
        }
    }
    let epoch = Instant::now();
    let before = rng.millis(500, 1000);
    let hold = rng.millis(2000, 3000);
    let after = Duration::from_millis(1500);
    let stop_at = Instant::now() + before + hold + after;
    let record: Arc<Mutex<Record>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let m = w % 3;
            tokio::spawn(client(
                w,
                m,
                members[m].client,
                seed,
                epoch,
                stop_at,
                record.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(before).await;

    let fault_at = epoch.elapsed().as_nanos() as u64;
    let mut isolated = None;
    match scenario {
        Scenario::MinorityFollower => {
            let follower = (leader + 1 + (rng.next() % 2) as usize) % 3;
            let rest: Vec<u64> = (0..3).filter(|&i| i != follower).map(id).collect();
            faults.partition(&[id(follower)], &rest);
            isolated = Some(follower);
            eprintln!("seed {seed}: member {} cut off", id(follower));
        }
        Scenario::IsolatedLeader => {
            let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
            faults.partition(
                &[id(leader)],
                &rest.iter().map(|&i| id(i)).collect::<Vec<_>>(),
            );
            isolated = Some(leader);
            eprintln!("seed {seed}: leader {} cut off", id(leader));
            let new_leader = leader_among(&members, &rest).await?;
            ensure!(new_leader != leader, "the majority must elect a new leader");
            eprintln!("seed {seed}: member {} leads the majority", id(new_leader));
            // A write sent to the old leader now cannot be acknowledged.
            let mut c = connect(&endpoint(members[leader].client)).await?;
            let probe = tokio::time::timeout(
                OP_TIMEOUT,
                c.put("probe", format!("from-old-leader-{seed}"), None),
            )
            .await;
            ensure!(
                !matches!(probe, Ok(Ok(_))),
                "the cut-off old leader acknowledged a write"
            );
        }
        Scenario::SlowLeaderDisk => {
            let delay = rng.millis(20, 120);
            faults.set_fsync_delay(id(leader), delay);
            eprintln!("seed {seed}: leader {} fsyncs {delay:?} slower", id(leader));
        }
    }
    let remaining = (epoch + before + hold).saturating_duration_since(Instant::now());
    tokio::time::sleep(remaining).await;
    let heal_at = epoch.elapsed().as_nanos() as u64;
    faults.heal();
    faults.set_fsync_delay(id(leader), Duration::ZERO);
    eprintln!("seed {seed}: healed");
    for c in clients {
        c.await?;
    }

    // Final linearizable reads of every register join the history, so a
    // lost acknowledged write shows up as a stale read.
    let mut record = std::mem::take(&mut *record.lock().unwrap_or_else(|e| e.into_inner()));
    let mut c = Client::connect(
        members
            .iter()
            .map(|m| endpoint(m.client))
            .collect::<Vec<_>>(),
        None,
    )
    .await?;
    for k in 0..KEYS {
        let key = format!("reg{k}").into_bytes();
        let call = epoch.elapsed().as_nanos() as u64;
        let r = c.get(key.clone(), None).await?;
        let op = Operation {
            key,
            action: Action::Read(r.kvs().first().map(|kv| kv.value().to_vec())),
            call,
            ret: Some(epoch.elapsed().as_nanos() as u64),
        };
        record.history.push((usize::MAX, op));
    }
    let acked = record.acked_writes.len();
    let unknown = record
        .history
        .iter()
        .filter(|(_, o)| o.ret.is_none())
        .count();
    eprintln!(
        "seed {seed}: {} operations, {acked} acknowledged writes, {unknown} unknown outcomes, {} client errors",
        record.history.len(),
        record.errors
    );
    ensure!(
        acked > 30,
        "only {acked} acknowledged writes: the load did not run"
    );
    let during: Vec<&(usize, Operation)> = record
        .history
        .iter()
        .filter(|(_, o)| o.call >= fault_at && o.ret.is_some_and(|r| r < heal_at))
        .collect();
    let acked_during = |pred: &dyn Fn(usize) -> bool| {
        during
            .iter()
            .filter(|(m, o)| pred(*m) && !matches!(o.action, Action::Read(_)))
            .count()
    };
    match (scenario, isolated) {
        (Scenario::IsolatedLeader, Some(old)) => {
            let by_old = acked_during(&|m| m == old);
            ensure!(
                by_old == 0,
                "the cut-off old leader acknowledged {by_old} writes"
            );
            ensure!(
                acked_during(&|m| m != old) > 0,
                "the majority acknowledged no write while the old leader was cut off"
            );
        }
        (Scenario::MinorityFollower, Some(cut)) => {
            let by_cut = acked_during(&|m| m == cut);
            ensure!(
                by_cut == 0,
                "the cut-off follower acknowledged {by_cut} writes"
            );
            ensure!(
                acked_during(&|m| m != cut) > 0,
                "the majority acknowledged no write while a follower was cut off"
            );
        }
        _ => {
            ensure!(
                acked_during(&|_| true) > 0,
                "no write was acknowledged while the leader's disk was slow"
            );
        }
    }

    let history: Vec<Operation> = record.history.iter().map(|(_, o)| o.clone()).collect();
    linearizability::check(&history)
        .with_context(|| format!("seed {seed}: the recorded history is not linearizable"))?;

    // All members converge on the same keyspace at the same revision.
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = keyspaces(&members).await?;
        if seen.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "seed {seed}: members disagree: {:?}",
            seen.iter()
                .map(|(rev, kvs)| (rev, kvs.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every acknowledged write is in every member's history of its key.
    for (i, m) in members.iter().enumerate() {
        let mut kept: BTreeMap<Vec<u8>, HashSet<Vec<u8>>> = BTreeMap::new();
        for k in 0..KEYS {
            let key = format!("reg{k}").into_bytes();
            kept.insert(key.clone(), values_written(m.client, &key).await?);
        }
        for (key, value) in &record.acked_writes {
            if !kept.get(key).is_some_and(|v| v.contains(value)) {
                bail!(
                    "seed {seed}: member {} lost the acknowledged write {}={}",
                    id(i),
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(value)
                );
            }
        }
    }
    if let Some(old) = isolated {
        // The cut-off member follows the cluster's leader again.
        let deadline = Instant::now() + WAIT;
        loop {
            let (leader_seen, own) = status(members[old].client).await?;
            let (majority_leader, _) = status(members[(old + 1) % 3].client).await?;
            if leader_seen == majority_leader
                && (scenario != Scenario::IsolatedLeader || leader_seen != own)
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "seed {seed}: member {own} still sees leader {leader_seen}, the others {majority_leader}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for m in &mut members {
        m.stop().await?;
    }
    Ok(())
}

async fn campaign(scenario: Scenario) -> Result<()> {
    for seed in seeds() {
        let started = Instant::now();
        run(scenario, seed).await.with_context(|| {
            format!("{scenario:?}, seed {seed} (rerun with SHOAL_FAULT_SEED={seed})")
        })?;
        eprintln!(
            "{scenario:?} seed {seed}: passed in {:?}",
            started.elapsed()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_follower_rejoins_and_no_acknowledged_write_is_lost() -> Result<()> {
    campaign(Scenario::MinorityFollower).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_leader_acknowledges_nothing_and_follows_the_new_leader_after_healing()
-> Result<()> {
    campaign(Scenario::IsolatedLeader).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_leader_disk_slows_writes_but_loses_none() -> Result<()> {
    campaign(Scenario::SlowLeaderDisk).await
}
