//! A linearizability checker for key-value histories (Wing & Gong's search
//! with Lowe's memoization, as in Porcupine), used on histories recorded
//! against the store under faults.
//!
//! A KV store is linearizable iff each key, a register, is (locality), so
//! the history is split by key and each key is searched on its own. An
//! operation whose outcome is unknown (the client gave up: a timeout, a lost
//! connection) may or may not have taken effect: it is given an infinite
//! return time, which lets the search place it anywhere after its call,
//! including after everything else (as if it never happened).

use std::collections::{BTreeMap, HashSet};

/// What one operation did to a single key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Set the value (`None` = delete).
    Write(Option<Vec<u8>>),
    /// Read, and saw this value (`None` = the key was absent).
    Read(Option<Vec<u8>>),
    /// Set `new` if the value was `expect` (`None` = absent) and succeed,
    /// as an etcd Txn comparing the value does. Record a failed one as the
    /// `Read` of the value its else branch got; one with an unknown outcome
    /// may have succeeded or not.
    CompareAndSet {
        /// The value it required.
        expect: Option<Vec<u8>>,
        /// The value it wrote.
        new: Vec<u8>,
    },
}

/// One client operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The key.
    pub key: Vec<u8>,
    /// What it did.
    pub action: Action,
    /// When the client sent it (any monotonic clock, e.g. nanoseconds).
    pub call: u64,
    /// When the client got the answer; `None` if it never learned the
    /// outcome (writes only: a read without an answer says nothing and
    /// should be left out of the history).
    pub ret: Option<u64>,
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "key {key:?}: no linearization of its {operations} operations exists \
     (the search got stuck at {stuck_at:?}, called at {call})"
)]
pub struct Violation {
    /// The key (lossy UTF-8).
    pub key: String,
    /// How many operations the key had.
    pub operations: usize,
    /// An operation that could not be placed: usually the stale read.
    pub stuck_at: Action,
    /// Its call time.
    pub call: u64,
}

/// Checks a whole history, key by key, starting from an empty store.
///
/// A write with an unknown outcome whose value no read of its key returned
/// (or compare-and-set)
/// can always be placed after everything else, so it is left out: each such
/// write would otherwise double the states the search must tell apart.
/// (This assumes every write of a key writes a distinct value, as a test
/// history should.)
pub fn check(history: &[Operation]) -> Result<(), Violation> {
    let observed: HashSet<(&[u8], &[u8])> = history
        .iter()
        .filter_map(|op| match &op.action {
            Action::Read(Some(v))
            | Action::CompareAndSet {
                expect: Some(v), ..
            } => Some((op.key.as_slice(), v.as_slice())),
            _ => None,
        })
        .collect();
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for op in history {
        let unobserved_pending = op.ret.is_none()
            && match &op.action {
                Action::Write(Some(v)) | Action::CompareAndSet { new: v, .. } => {
                    !observed.contains(&(op.key.as_slice(), v.as_slice()))
                }
                Action::Write(None) | Action::Read(_) => false,
            };
        if !unobserved_pending {
            by_key.entry(&op.key).or_default().push(op);
        }
    }
    for (key, ops) in by_key {
        check_register(key, &ops)?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// The search over one register. Events form a doubly linked list with a
/// sentinel at index 0; linearizing an operation unlinks its call and
/// return events, backtracking relinks them.
fn check_register(key: &[u8], ops: &[&Operation]) -> Result<(), Violation> {
    let n = ops.len();
    let mut times: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        times.push((op.call, true, i));
        times.push((op.ret.unwrap_or(u64::MAX), false, i));
    }
    // On equal times calls come first: ties count as overlapping, the more
    // permissive reading of a clock's resolution.
    times.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    let mut ev = vec![Event {
        op: usize::MAX,
        is_call: false,
        prev: 0,
        next: 0,
    }];
    let mut call_of = vec![0usize; n];
    let mut ret_of = vec![0usize; n];
    for (_, is_call, op) in &times {
        let idx = ev.len();
        let prev = idx - 1;
        ev.push(Event {
            op: *op,
            is_call: *is_call,
            prev,
            next: 0,
        });
        ev[prev].next = idx;
        if *is_call {
            call_of[*op] = idx;
        } else {
            ret_of[*op] = idx;
        }
    }
    let last = ev.len() - 1;
    ev[last].next = 0;
    ev[0].prev = last;

    let unlink = |ev: &mut Vec<Event>, i: usize| {
        let (p, nx) = (ev[i].prev, ev[i].next);
        ev[p].next = nx;
        ev[nx].prev = p;
    };
    let relink = |ev: &mut Vec<Event>, i: usize| {
        let (p, nx) = (ev[i].prev, ev[i].next);
        ev[p].next = i;
        ev[nx].prev = i;
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<Vec<u8>> = None;
    let mut cache: HashSet<(Vec<u64>, Option<Vec<u8>>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
    let mut cur = ev[0].next;
    let mut deepest: Option<usize> = None;
    while ev[0].next != 0 {
        let e = ev[cur];
        if e.is_call {
            let op = ops[e.op];
            let next_state = match &op.action {
                Action::Write(v) => Some(v.clone()),
                Action::Read(seen) => (seen == &state).then(|| state.clone()),
                Action::CompareAndSet { expect, new } => {
                    (expect == &state).then(|| Some(new.clone()))
                }
            };
            if let Some(next_state) = next_state {
                linearized[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((linearized.clone(), next_state.clone())) {
                    stack.push((cur, std::mem::replace(&mut state, next_state)));
                    unlink(&mut ev, cur);
                    unlink(&mut ev, ret_of[e.op]);
                    cur = ev[0].next;
                    continue;
                }
                linearized[e.op / 64] &= !(1 << (e.op % 64));
            }
            if deepest.is_none() {
                deepest = Some(e.op);
            }
            cur = e.next;
        } else {
            // A return whose operation is not placed yet: nothing before it
            // can be placed differently from here; undo the last choice.
            let Some((call_idx, prev_state)) = stack.pop() else {
                let stuck = deepest.unwrap_or(e.op);
                return Err(Violation {
                    key: String::from_utf8_lossy(key).into_owned(),
                    operations: n,
                    stuck_at: ops[stuck].action.clone(),
                    call: ops[stuck].call,
                });
            };
            let op = ev[call_idx].op;
            state = prev_state;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut ev, ret_of[op]);
            relink(&mut ev, call_idx);
            debug_assert_eq!(call_of[op], call_idx);
            cur = ev[call_idx].next;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
