//! A crash at any point loses no acknowledged write.
//!
//! A one-member cluster keeps its Raft log and its keyspace on simulated
//! disks (`shoal_mvcc::testing::CrashDisk`) on one power switch. Writers
//! put keys concurrently (so writes are batched), snapshots are built and
//! the log purged often, and the keyspace makes its applies durable only
//! every few commands. The power is cut at a random write to either disk;
//! the member is restarted on what survived, and every write whose
//! `RaftNode::write` returned must be there. Each writer's keys are
//! proposed one after the other, so what survives of them is a prefix.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use shoal_mvcc::{
    Command, Mvcc, Outcome, PutArgs, RangeArgs,
    testing::{CrashDisk, Power, Rng},
};

use crate::{Config, Member, RaftNode, log_store::LogStore};

const WRITERS: usize = 4;
const WRITES_PER_WRITER: usize = 30;
const RUNS: u64 = 100;
/// Bounds each step, so a hang fails the test instead of stalling it.
const STEP: Duration = Duration::from_secs(20);

fn config(dir: &Path, seed: u64) -> Config {
    let mut c = Config::new(
        1,
        "m1",
        dir,
        "127.0.0.1:0".parse().expect("loopback address"),
        "http://127.0.0.1:1",
        "",
    );
    c.heartbeat_interval = Duration::from_millis(20);
    c.election_timeout_min = Duration::from_millis(60);
    c.election_timeout_max = Duration::from_millis(120);
    c.leader_wait = Duration::from_secs(2);
    // Snapshots and purges during the run: the log must never lose what
    // the keyspace has not made durable.
    c.snapshot_logs_since_last = 8;
    c.logs_to_keep = 2;
    // Durable applies only now and then, at a point that varies by seed.
    c.apply_sync_commands = 2 + seed % 20;
    c.apply_sync_interval = Duration::from_secs(3600);
    c
}

fn members() -> BTreeMap<u64, Member> {
    BTreeMap::from([(
        1,
        Member {
            name: "m1".into(),
            peer_url: "http://127.0.0.1:1".into(),
            client_url: String::new(),
        },
    )])
}

fn put(key: &str) -> Command {
    Command::Put(PutArgs {
        key: key.as_bytes().to_vec(),
        value: key.as_bytes().to_vec(),
        ..Default::default()
    })
}

/// Images of a new log and a new keyspace, cleanly closed.
fn fresh_images() -> (Vec<u8>, Vec<u8>) {
    let power = Power::new(None);
    let log = CrashDisk::new(Vec::new(), &power, 0);
    let state = CrashDisk::new(Vec::new(), &power, 0);
    drop(LogStore::open_with_backend(log.clone()).expect("new log"));
    drop(Mvcc::open_with_backend(state.clone()).expect("new keyspace"));
    (log.durable(), state.durable())
}

async fn start(config: Config, log: &CrashDisk, state: &CrashDisk) -> Option<RaftNode> {
    let log = LogStore::open_with_backend(log.clone()).ok()?;
    let mvcc = Arc::new(Mvcc::open_with_backend(state.clone()).ok()?);
    RaftNode::start_on(config, log, mvcc).await.ok()
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// The power went before the cluster was up.
    DuringStart,
    /// The power went while writes were running.
    DuringWrites,
    /// The power went after every write was acknowledged.
    Idle,
}

/// What a run left: the acknowledged keys, the surviving images, and the
/// writes (to either disk) it made before the cut.
struct Crashed {
    acked: Vec<String>,
    log: Vec<u8>,
    state: Vec<u8>,
    ending: Ending,
    ops: u64,
}

/// Runs the member until the power goes at op `cut_at` (or, if it never
/// comes, after the writes).
async fn crash_run(
    seed: u64,
    images: &(Vec<u8>, Vec<u8>),
    dir: &Path,
    cut_at: Option<u64>,
) -> Crashed {
    let power = Power::new(cut_at);
    let log = CrashDisk::new(images.0.clone(), &power, seed ^ 0x106);
    let state = CrashDisk::new(images.1.clone(), &power, seed ^ 0x57a7e);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut ending = Ending::DuringStart;
    if let Some(node) = start(config(dir, seed), &log, &state).await {
        let node = Arc::new(node);
        if node.initialize(members()).await.is_ok() {
            let writers = (0..WRITERS).map(|w| {
                let node = node.clone();
                let acked = acked.clone();
                tokio::spawn(async move {
                    for i in 0..WRITES_PER_WRITER {
                        let key = format!("w{w}-{i:03}");
                        match tokio::time::timeout(STEP, node.write(put(&key))).await {
                            Ok(Ok(result)) => {
                                assert!(
                                    matches!(result.outcome, Ok(Outcome::Put(_))),
                                    "put {key}: {:?}",
                                    result.outcome
                                );
                                acked
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .push(key);
                            }
                            Ok(Err(_)) => return,
                            Err(_) => panic!("seed {seed}: write {key} hung"),
                        }
                    }
                })
            });
            for writer in writers.collect::<Vec<_>>() {
                writer.await.expect("writer task");
            }
            ending = if power.is_cut() {
                Ending::DuringWrites
            } else {
                Ending::Idle
            };
        }
        let ops = power.ops();
        // The cut comes before the shutdown: a clean close would make the
        // unsynced applies durable, which a crash does not.
        let (log_image, state_image) = (log.crash(), state.crash());
        tokio::time::timeout(STEP, node.shutdown())
            .await
            .expect("shutdown after the power cut");
        let acked = acked.lock().unwrap_or_else(PoisonError::into_inner).clone();
        return Crashed {
            acked,
            log: log_image,
            state: state_image,
            ending,
            ops,
        };
    }
    Crashed {
        acked: Vec::new(),
        log: log.crash(),
        state: state.crash(),
        ending,
        ops: power.ops(),
    }
}

/// Restarts on the survivors and checks every acknowledged write is there.
async fn check_restart(seed: u64, cut_at: u64, crashed: &Crashed, dir: &Path) {
    let what = format!("seed {seed}, cut at {cut_at} ({:?})", crashed.ending);
    let power = Power::new(None);
    let log = CrashDisk::new(crashed.log.clone(), &power, 0);
    let state = CrashDisk::new(crashed.state.clone(), &power, 0);
    let node = start(config(dir, seed), &log, &state)
        .await
        .unwrap_or_else(|| panic!("{what}: restart failed"));
    node.initialize(members())
        .await
        .unwrap_or_else(|e| panic!("{what}: initialize after restart: {e}"));
    // A write after the restart commits in the new term, and with it
    // every entry before it: all are applied once it returns.
    tokio::time::timeout(STEP, node.write(put("marker")))
        .await
        .unwrap_or_else(|_| panic!("{what}: write after restart hung"))
        .unwrap_or_else(|e| panic!("{what}: write after restart: {e}"));

    let all = RangeArgs {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let (range, _) = node
        .mvcc()
        .range(&all)
        .expect("range")
        .expect("range refused");
    let present: Vec<String> = range
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    for key in &crashed.acked {
        assert!(
            present.contains(key),
            "{what}: acknowledged write {key} lost ({} acknowledged, {} present)",
            crashed.acked.len(),
            present.len()
        );
    }
    for w in 0..WRITERS {
        let prefix = format!("w{w}-");
        let indexes: Vec<usize> = present
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix)?.parse().ok())
            .collect();
        assert_eq!(
            indexes,
            (0..indexes.len()).collect::<Vec<_>>(),
            "{what}: writer {w}'s surviving writes are not a prefix"
        );
    }
    tokio::time::timeout(STEP, node.shutdown())
        .await
        .unwrap_or_else(|_| panic!("{what}: shutdown after restart hung"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_any_write_loses_no_acknowledged_write() {
    let images = fresh_images();
    // How many disk writes a whole run makes, to draw cuts from.
    let calibration = tempfile::tempdir().expect("tempdir");
    let full = crash_run(u64::MAX, &images, calibration.path(), None).await;
    assert_eq!(full.ending, Ending::Idle, "a run without a cut failed");
    assert_eq!(full.acked.len(), WRITERS * WRITES_PER_WRITER);
    check_restart(u64::MAX, 0, &full, calibration.path()).await;

    let mut r = Rng(7);
    let mut endings = BTreeMap::new();
    let mut checked = 0;
    for seed in 0..RUNS {
        let dir = tempfile::tempdir().expect("tempdir");
        let cut_at = 1 + r.below(full.ops + full.ops / 10);
        let crashed = crash_run(seed, &images, dir.path(), Some(cut_at)).await;
        check_restart(seed, cut_at, &crashed, dir.path()).await;
        *endings.entry(crashed.ending).or_insert(0) += 1;
        checked += crashed.acked.len();
    }
    println!(
        "crash endings over {RUNS} runs ({} disk writes in a full run, {checked} \
         acknowledged writes checked): {endings:?}",
        full.ops
    );
    assert!(
        endings.get(&Ending::DuringWrites).copied().unwrap_or(0) >= RUNS / 2,
        "too few cuts while writing: {endings:?}"
    );
}
