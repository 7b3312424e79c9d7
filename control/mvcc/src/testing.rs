//! Test doubles for crash tests of the keyspace and of what is built on it
//! (the Raft log and state machine), behind the `testing` feature.
//!
//! [`CrashDisk`] is a redb storage backend that behaves like a disk with a
//! volatile write cache: writes land in a pending set that reads see, and
//! only `sync_data` makes them durable. A [`Power`] switch is shared by the
//! disks of one simulated machine: it counts their writes and, at a chosen
//! write (or when told), cuts them all at once. What survives is each
//! disk's durable image plus an arbitrary subset of its pending writes,
//! some of them torn at sector granularity; every call after the cut
//! fails, as a dead disk would.

use std::{
    io,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use redb::StorageBackend;

/// Granularity at which a pending write can be torn.
const SECTOR: usize = 512;

/// A small deterministic generator (splitmix64), so a failing seed
/// replays exactly.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[derive(Debug)]
struct PowerState {
    /// Writes and length changes so far, on every disk.
    ops: u64,
    /// Cut the power at this op.
    cut_at: Option<u64>,
    /// Whether the power is off.
    cut: bool,
}

/// The power switch of one simulated machine; clones share it.
#[derive(Clone, Debug)]
pub struct Power(Arc<Mutex<PowerState>>);

impl Power {
    /// Power that goes off at the `cut_at`-th write or length change on
    /// any of its disks (never, for `None`, unless [`cut`](Self::cut)).
    pub fn new(cut_at: Option<u64>) -> Self {
        Self(Arc::new(Mutex::new(PowerState {
            ops: 0,
            cut_at,
            cut: false,
        })))
    }

    fn state(&self) -> MutexGuard<'_, PowerState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts the power now, if it was still on.
    pub fn cut(&self) {
        self.state().cut = true;
    }

    /// Whether the power is off.
    pub fn is_cut(&self) -> bool {
        self.state().cut
    }

    /// Writes and length changes so far, on every disk.
    pub fn ops(&self) -> u64 {
        self.state().ops
    }

    fn check(&self) -> io::Result<()> {
        if self.is_cut() {
            Err(io::Error::other("simulated power loss: disk gone"))
        } else {
            Ok(())
        }
    }

    /// Counts one write; the one at `cut_at` does not happen.
    fn count_op(&self) -> io::Result<()> {
        let mut state = self.state();
        if !state.cut {
            state.ops += 1;
            if state.cut_at == Some(state.ops) {
                state.cut = true;
            }
        }
        drop(state);
        self.check()
    }
}

#[derive(Debug)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
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

#[derive(Debug)]
struct Disk {
    /// What survives a power loss for sure.
    durable: Vec<u8>,
    /// What reads see: durable plus pending.
    current: Vec<u8>,
    /// Changes since the last sync, in order.
    pending: Vec<Op>,
    /// The image left after the power was cut, once asked for.
    survivor: Option<Vec<u8>>,
    rng: Rng,
}

impl Disk {
    /// The durable image plus what of the pending changes happened to
    /// reach the platter: each independently did, or did not, or (for a
    /// write) only its first sectors did.
    fn survivor(&mut self) -> Vec<u8> {
        if let Some(image) = &self.survivor {
            return image.clone();
        }
        let mut image = self.durable.clone();
        for op in &self.pending {
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
        self.survivor = Some(image.clone());
        image
    }
}

/// A simulated disk holding one database file; clones share it.
#[derive(Debug, Clone)]
pub struct CrashDisk {
    disk: Arc<Mutex<Disk>>,
    power: Power,
}

impl CrashDisk {
    /// A disk holding `image` (empty for a new database) on `power`;
    /// `seed` decides which pending writes survive a cut.
    pub fn new(image: Vec<u8>, power: &Power, seed: u64) -> Self {
        Self {
            disk: Arc::new(Mutex::new(Disk {
                durable: image.clone(),
                current: image,
                pending: Vec::new(),
                survivor: None,
                rng: Rng(seed),
            })),
            power: power.clone(),
        }
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts the power (of every disk on it) if it was still on, and
    /// returns what survived on this disk. Asking again gives the same
    /// image.
    pub fn crash(&self) -> Vec<u8> {
        self.power.cut();
        self.disk().survivor()
    }

    /// What is on the disk for sure: everything synced so far. After a
    /// clean close, the whole database.
    pub fn durable(&self) -> Vec<u8> {
        self.disk().durable.clone()
    }
}

impl StorageBackend for CrashDisk {
    fn len(&self) -> io::Result<u64> {
        self.power.check()?;
        Ok(self.disk().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.power.check()?;
        let disk = self.disk();
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let src = disk
            .current
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        // Held across the count, so a concurrent cut sees either all of
        // this change pending or none of it.
        let mut disk = self.disk();
        self.power.count_op()?;
        let op = Op::SetLen(len);
        apply_op(&mut disk.current, &op, usize::MAX);
        disk.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut disk = self.disk();
        self.power.check()?;
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
        self.power.count_op()?;
        let op = Op::Write(offset, data.to_vec());
        apply_op(&mut disk.current, &op, usize::MAX);
        disk.pending.push(op);
        Ok(())
    }
}
