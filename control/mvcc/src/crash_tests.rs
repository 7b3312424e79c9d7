//! A crash at any point loses no acknowledged write.
//!
//! [`CrashDisk`] (in `testing`) behaves like a disk with a volatile write
//! cache; a simulated power loss keeps the durable image plus an arbitrary
//! subset of the pending writes, some of them torn. The tests apply random
//! batches, cut the power at a random write (often in the middle of a
//! commit), reopen the surviving image and check that the store is exactly
//! the state after a batch: the last durable one, or a later one, never
//! anything in between.

use crate::{
    Command, Mvcc,
    testing::{CrashDisk, Power},
    tests::{Rng, mem, random_command},
};

fn random_batch(r: &mut Rng, max_rev: i64) -> Vec<Command> {
    let n = 1 + r.below(12);
    (0..n).map(|_| random_command(r, max_rev)).collect()
}

/// An image with an initialised, empty store, and the number of backend
/// ops opening it took.
fn fresh_image() -> (Vec<u8>, u64) {
    let power = Power::new(None);
    let disk = CrashDisk::new(Vec::new(), &power, 0);
    let store = Mvcc::open_with_backend(disk.clone()).expect("open fresh");
    let ops = power.ops();
    drop(store);
    (disk.durable(), ops)
}

/// A disk on its own power, never cut.
fn steady(image: Vec<u8>) -> CrashDisk {
    CrashDisk::new(image, &Power::new(None), 0)
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// The power went while a batch was being committed (or synced).
    InFlight,
    /// The power went between batches.
    Idle,
    /// The power went while the store was being opened.
    DuringOpen,
}

/// How a run commits its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every batch with `apply` (fsynced).
    Durable,
    /// A random mix of `apply`, `apply_unsynced` and `sync`, as the Raft
    /// state machine does.
    Mixed,
}

/// One run: random batches on a store whose disk loses power at op
/// `cut_at` (or at a random batch boundary if the run is shorter).
fn run(seed: u64, base_image: &[u8], cut_at: u64, mode: Mode) -> Ending {
    let mut r = Rng(seed);
    let reference = mem();
    let mut states = vec![reference.snapshot().expect("snapshot")];
    let power = Power::new(Some(cut_at));
    let disk = CrashDisk::new(base_image.to_vec(), &power, seed ^ 0x5eed);
    let store = Mvcc::open_with_backend(disk.clone()).ok();
    // Batches whose apply returned, and how many of those are durable
    // (applied with `apply`, or followed by a `sync` that returned).
    let mut acked = 0usize;
    let mut durable = 0usize;
    let mut in_flight = false;
    let stop_after = 1 + r.below(30) as usize;
    if let Some(store) = &store {
        for i in 0..stop_after {
            let batch = random_batch(&mut r, reference.revision() + 1);
            let meta = (i as u64).to_be_bytes();
            let want = reference
                .apply(&batch, Some(&meta))
                .expect("reference apply");
            states.push(reference.snapshot().expect("snapshot"));
            let (synced, then_sync) = match mode {
                Mode::Durable => (true, false),
                Mode::Mixed => match r.below(4) {
                    0 => (true, false),
                    1 => (false, true),
                    _ => (false, false),
                },
            };
            let applied = if synced {
                store.apply(&batch, Some(&meta))
            } else {
                store.apply_unsynced(&batch, Some(&meta))
            };
            match applied {
                Ok(got) => {
                    assert_eq!(got, want, "seed {seed}: results differ from the reference");
                    acked = i + 1;
                    if synced {
                        durable = acked;
                    }
                }
                Err(_) => {
                    in_flight = true;
                    break;
                }
            }
            if then_sync {
                if store.sync().is_err() {
                    in_flight = true;
                    break;
                }
                durable = acked;
            }
        }
    }
    let opened = store.is_some();
    let survivor = disk.crash();
    drop(store);

    let reopened = Mvcc::open_with_backend(steady(survivor))
        .unwrap_or_else(|e| panic!("seed {seed} cut at {cut_at}: reopen failed: {e}"));
    let got = reopened.snapshot().expect("snapshot after reopen");
    // Nothing durable is lost, nothing is half applied: the state after
    // one of the batches from the last durable one on.
    let last = acked + usize::from(in_flight);
    let ok = (durable..=last.min(states.len() - 1)).any(|k| got == states[k]);
    assert!(
        ok,
        "seed {seed} cut at {cut_at} ({mode:?}): after {acked} acknowledged batches, \
         {durable} durable (one in flight: {in_flight}) the store is at revision {} \
         with meta {:?}",
        reopened.revision(),
        reopened.meta().expect("meta"),
    );
    // The reopened store keeps working.
    reopened
        .apply(&[crate::tests::put("after-crash", "1")], None)
        .expect("apply after reopen");
    match (opened, in_flight) {
        (false, _) => Ending::DuringOpen,
        (true, true) => Ending::InFlight,
        (true, false) => Ending::Idle,
    }
}

/// Runs `runs` seeds in `mode` with cuts in `1..=max_cut`.
fn endings(mode: Mode, runs: u64, max_cut: u64) -> std::collections::BTreeMap<Ending, u32> {
    let (image, _) = fresh_image();
    let mut r = Rng(42);
    let mut endings = std::collections::BTreeMap::new();
    for seed in 0..runs {
        // Most cuts land inside a run's commits; some never come and the
        // power goes at a batch boundary instead.
        let cut_at = 1 + r.below(max_cut);
        *endings.entry(run(seed, &image, cut_at, mode)).or_insert(0) += 1;
    }
    println!("crash endings ({mode:?}): {endings:?}");
    endings
}

#[test]
fn crash_at_any_write_loses_no_acknowledged_batch() {
    let endings = endings(Mode::Durable, 300, 400);
    assert!(
        endings.get(&Ending::InFlight).copied().unwrap_or(0) >= 100,
        "too few cuts inside a commit: {endings:?}"
    );
    assert!(
        endings.get(&Ending::Idle).copied().unwrap_or(0) >= 20,
        "too few cuts between batches: {endings:?}"
    );
}

#[test]
fn crash_with_unsynced_batches_loses_nothing_synced_and_tears_nothing() {
    // Unsynced commits write little until a durable one flushes them, so
    // the cuts are drawn from a shorter range to land inside runs.
    let endings = endings(Mode::Mixed, 300, 150);
    assert!(
        endings.get(&Ending::InFlight).copied().unwrap_or(0) >= 60,
        "too few cuts inside a commit: {endings:?}"
    );
    assert!(
        endings.get(&Ending::Idle).copied().unwrap_or(0) >= 20,
        "too few cuts between batches: {endings:?}"
    );
}

#[test]
fn crash_while_creating_on_a_backend_never_opens_a_bogus_store() {
    // redb's creation is not atomic (`Mvcc::open` on a path builds the file
    // aside and renames it); on a bare backend a cut during creation may
    // leave an image that does not open, but never one that opens wrong.
    let (_, open_ops) = fresh_image();
    for cut_at in 1..=open_ops {
        let disk = CrashDisk::new(Vec::new(), &Power::new(Some(cut_at)), cut_at);
        let opened = Mvcc::open_with_backend(disk.clone());
        let survivor = disk.crash();
        drop(opened);
        if let Ok(reopened) = Mvcc::open_with_backend(steady(survivor)) {
            assert_eq!(reopened.revision(), 1, "cut at {cut_at}");
            assert_eq!(
                reopened.snapshot().expect("snapshot"),
                mem().snapshot().expect("snapshot"),
                "cut at {cut_at}"
            );
        }
    }
}
