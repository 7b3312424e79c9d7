//! A crash at any point loses no acknowledged write.
//!
//! [`CrashDisk`] is a redb storage backend that behaves like a disk with a
//! volatile write cache: writes land in a pending set that reads see, and
//! only `sync_data` makes them durable. A simulated power loss keeps the
//! durable image plus an arbitrary subset of the pending writes, some of
//! them torn at sector granularity, and fails every later call, as a dead
//! disk would. The test applies random batches, cuts the power at a random
//! write (often in the middle of a commit), reopens the surviving image and
//! checks that the store is exactly the state after the last acknowledged
//! batch, or after the batch in flight, never anything in between.

use std::{
    io,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use redb::StorageBackend;

use crate::{
    Command, Mvcc,
    tests::{Rng, mem, random_command},
};

/// Granularity at which a pending write can be torn.
const SECTOR: usize = 512;

#[derive(Debug)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug)]
struct Disk {
    /// What survives a power loss for sure.
    durable: Vec<u8>,
    /// What reads see: durable plus pending.
    current: Vec<u8>,
    /// Changes since the last sync, in order.
    pending: Vec<Op>,
    /// Writes and length changes so far.
    ops: u64,
    /// Cut the power at this op.
    cut_at: Option<u64>,
    /// The image left after the power was cut.
    survivor: Option<Vec<u8>>,
    rng: Rng,
}

fn apply_op(image: &mut Vec<u8>, op: &Op, keep: usize) {
    match op {
        Op::SetLen(len) => image.resize(usize::try_from(*len).expect("len fits"), 0),
        Op::Write(offset, data) => {
            let offset = usize::try_from(*offset).expect("offset fits");
            let data = &data[..keep.min(data.len())];
            if image.len() < offset + data.len() {
                image.resize(offset + data.len(), 0);
            }
            image[offset..offset + data.len()].copy_from_slice(data);
        }
    }
}

impl Disk {
    fn cut_power(&mut self) {
        if self.survivor.is_some() {
            return;
        }
        let mut image = self.durable.clone();
        for op in &self.pending {
            // Each pending change independently reached the platter, or did
            // not, or (for a write) only its first sectors did.
            match self.rng.below(4) {
                0 => {}
                1 => {
                    if let Op::Write(_, data) = op {
                        let sectors = data.len().div_ceil(SECTOR);
                        let keep = self.rng.below(sectors as u64 + 1) as usize * SECTOR;
                        apply_op(&mut image, op, keep);
                    } else {
                        apply_op(&mut image, op, 0);
                    }
                }
                _ => apply_op(&mut image, op, usize::MAX),
            }
        }
        self.survivor = Some(image);
    }

    fn dead(&self) -> io::Result<()> {
        if self.survivor.is_some() {
            Err(io::Error::other("simulated power loss: disk gone"))
        } else {
            Ok(())
        }
    }

    fn count_op(&mut self) -> io::Result<()> {
        self.dead()?;
        self.ops += 1;
        if self.cut_at == Some(self.ops) {
            self.cut_power();
            return self.dead();
        }
        Ok(())
    }
}

/// A handle on a simulated disk; clones share it.
#[derive(Debug, Clone)]
struct CrashDisk(Arc<Mutex<Disk>>);

impl CrashDisk {
    fn new(image: Vec<u8>, cut_at: Option<u64>, seed: u64) -> Self {
        Self(Arc::new(Mutex::new(Disk {
            durable: image.clone(),
            current: image,
            pending: Vec::new(),
            ops: 0,
            cut_at,
            survivor: None,
            rng: Rng(seed),
        })))
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts the power now (if it was not already) and returns what
    /// survived.
    fn crash(&self) -> Vec<u8> {
        let mut disk = self.disk();
        disk.cut_power();
        disk.survivor.clone().expect("survivor after power cut")
    }

    fn ops(&self) -> u64 {
        self.disk().ops
    }
}

impl StorageBackend for CrashDisk {
    fn len(&self) -> io::Result<u64> {
        let disk = self.disk();
        disk.dead()?;
        Ok(disk.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let disk = self.disk();
        disk.dead()?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let src = disk
            .current
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut disk = self.disk();
        disk.count_op()?;
        let op = Op::SetLen(len);
        apply_op(&mut disk.current, &op, usize::MAX);
        disk.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut disk = self.disk();
        disk.dead()?;
        let Disk {
            durable, pending, ..
        } = &mut *disk;
        for op in pending.drain(..) {
            apply_op(durable, &op, usize::MAX);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut disk = self.disk();
        disk.count_op()?;
        let op = Op::Write(offset, data.to_vec());
        apply_op(&mut disk.current, &op, usize::MAX);
        disk.pending.push(op);
        Ok(())
    }
}

fn random_batch(r: &mut Rng, max_rev: i64) -> Vec<Command> {
    let n = 1 + r.below(12);
    (0..n).map(|_| random_command(r, max_rev)).collect()
}

/// An image with an initialised, empty store, and the number of backend
/// ops opening it took.
fn fresh_image() -> (Vec<u8>, u64) {
    let disk = CrashDisk::new(Vec::new(), None, 0);
    let store = Mvcc::open_with_backend(disk.clone()).expect("open fresh");
    let ops = disk.ops();
    drop(store);
    let image = disk.disk().durable.clone();
    (image, ops)
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// The power went while a batch was being committed.
    InFlight,
    /// The power went between batches.
    Idle,
    /// The power went while the store was being opened.
    DuringOpen,
}

/// One run: random batches on a store whose disk loses power at op
/// `cut_at` (or at a random batch boundary if the run is shorter).
fn run(seed: u64, base_image: &[u8], cut_at: u64) -> Ending {
    let mut r = Rng(seed);
    let reference = mem();
    let mut states = vec![reference.snapshot().expect("snapshot")];
    let disk = CrashDisk::new(base_image.to_vec(), Some(cut_at), seed ^ 0x5eed);
    let store = Mvcc::open_with_backend(disk.clone()).ok();
    let mut acked = 0usize;
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
            match store.apply(&batch, Some(&meta)) {
                Ok(got) => {
                    assert_eq!(got, want, "seed {seed}: results differ from the reference");
                    acked = i + 1;
                }
                Err(_) => {
                    in_flight = true;
                    break;
                }
            }
        }
    }
    let opened = store.is_some();
    let survivor = disk.crash();
    drop(store);

    let reopened = Mvcc::open_with_backend(CrashDisk::new(survivor, None, 0))
        .unwrap_or_else(|e| panic!("seed {seed} cut at {cut_at}: reopen failed: {e}"));
    let got = reopened.snapshot().expect("snapshot after reopen");
    let ok = got == states[acked] || (in_flight && got == states[acked + 1]);
    assert!(
        ok,
        "seed {seed} cut at {cut_at}: after {acked} acknowledged batches \
         (one in flight: {in_flight}) the store is at revision {} with meta {:?}",
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

#[test]
fn crash_at_any_write_loses_no_acknowledged_batch() {
    let (image, _) = fresh_image();
    let mut r = Rng(42);
    let mut endings = std::collections::BTreeMap::new();
    for seed in 0..300 {
        // Most cuts land inside a run's commits; some never come and the
        // power goes at a batch boundary instead.
        let cut_at = 1 + r.below(400);
        *endings.entry(run(seed, &image, cut_at)).or_insert(0) += 1;
    }
    println!("crash endings: {endings:?}");
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
fn crash_while_creating_on_a_backend_never_opens_a_bogus_store() {
    // redb's creation is not atomic (`Mvcc::open` on a path builds the file
    // aside and renames it); on a bare backend a cut during creation may
    // leave an image that does not open, but never one that opens wrong.
    let (_, open_ops) = fresh_image();
    for cut_at in 1..=open_ops {
        let disk = CrashDisk::new(Vec::new(), Some(cut_at), cut_at);
        let opened = Mvcc::open_with_backend(disk.clone());
        let survivor = disk.crash();
        drop(opened);
        if let Ok(reopened) = Mvcc::open_with_backend(CrashDisk::new(survivor, None, 0)) {
            assert_eq!(reopened.revision(), 1, "cut at {cut_at}");
            assert_eq!(
                reopened.snapshot().expect("snapshot"),
                mem().snapshot().expect("snapshot"),
                "cut at {cut_at}"
            );
        }
    }
}
