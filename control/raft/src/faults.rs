//! Fault injection for fault campaigns: the peer network drops, delays or
//! partitions messages between chosen members, and a member's log store
//! takes longer to fsync, all switched at runtime from a [`Faults`] handle
//! every member of a test cluster shares.
//!
//! A dropped request never reaches its peer (openraft sees the peer
//! unreachable); a dropped reply reaches the sender as a network error
//! after the peer acted on the request, so a forwarded write may have been
//! applied without its client being told. Drops and delays are drawn from a
//! seeded generator, so a campaign's seed names the faults it ran.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use crate::types::NodeId;

/// What happens to messages from one member to another.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFault {
    /// The chance (0.0 to 1.0) that a request is dropped, and separately
    /// that its reply is; 1.0 cuts the link.
    pub drop: f64,
    /// Added before each request is sent...
    pub delay: Duration,
    /// ...plus up to this much more, drawn per request.
    pub jitter: Duration,
}

impl LinkFault {
    /// Every message lost: a partition.
    pub const CUT: Self = Self {
        drop: 1.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };
}

/// The fault of one message, as drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Drawn {
    pub(crate) drop_request: bool,
    pub(crate) drop_reply: bool,
    pub(crate) delay: Duration,
}

#[derive(Debug, Default)]
struct State {
    links: HashMap<(NodeId, NodeId), LinkFault>,
    fsync_delay: HashMap<NodeId, Duration>,
    rng: u64,
}

impl State {
    /// xorshift64*: cheap, and reproducible from the seed.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A uniform draw in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The faults of a test cluster, shared by its members (clones share
/// state). A member given none (`Config::faults = None`) runs unaltered.
#[derive(Clone, Debug)]
pub struct Faults {
    state: Arc<Mutex<State>>,
}

impl Faults {
    /// No faults yet; drops and jitter are drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                // Spread the seed over the word; xorshift must not start at zero.
                rng: seed
                    .wrapping_add(1)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .max(1),
                ..State::default()
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets what happens to messages from `from` to `to` (one direction).
    pub fn set_link(&self, from: NodeId, to: NodeId, fault: LinkFault) {
        let mut state = self.state();
        if fault == LinkFault::default() {
            state.links.remove(&(from, to));
        } else {
            state.links.insert((from, to), fault);
        }
    }

    /// Cuts every link between a member of `side` and a member of `other`,
    /// both ways.
    pub fn partition(&self, side: &[NodeId], other: &[NodeId]) {
        for &a in side {
            for &b in other {
                self.set_link(a, b, LinkFault::CUT);
                self.set_link(b, a, LinkFault::CUT);
            }
        }
    }

    /// Makes every link deliver again, at once.
    pub fn heal(&self) {
        self.state().links.clear();
    }

    /// Makes every durable write of `member`'s log store (appends, votes,
    /// truncation) take `delay` longer, as a slow or contended disk does;
    /// `Duration::ZERO` restores it.
    pub fn set_fsync_delay(&self, member: NodeId, delay: Duration) {
        let mut state = self.state();
        if delay.is_zero() {
            state.fsync_delay.remove(&member);
        } else {
            state.fsync_delay.insert(member, delay);
        }
    }

    /// Draws the fate of one message from `from` to `to`.
    pub(crate) fn draw(&self, from: NodeId, to: NodeId) -> Drawn {
        let mut state = self.state();
        let Some(fault) = state.links.get(&(from, to)).copied() else {
            return Drawn::default();
        };
        let drop_request = fault.drop >= 1.0 || state.unit() < fault.drop;
        let drop_reply = fault.drop >= 1.0 || state.unit() < fault.drop;
        let jitter = fault.jitter.mul_f64(state.unit());
        Drawn {
            drop_request,
            drop_reply,
            delay: fault.delay + jitter,
        }
    }

    /// The extra time `member`'s durable writes take now.
    pub(crate) fn fsync_delay(&self, member: NodeId) -> Duration {
        self.state()
            .fsync_delay
            .get(&member)
            .copied()
            .unwrap_or_default()
    }
}

/// The faults one member suffers: the shared handle and its own id.
#[derive(Clone, Debug)]
pub(crate) struct MemberFaults {
    pub(crate) faults: Faults,
    pub(crate) id: NodeId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_cuts_both_ways_until_healed() {
        let f = Faults::new(7);
        f.partition(&[1], &[2, 3]);
        for (from, to) in [(1, 2), (2, 1), (1, 3), (3, 1)] {
            let d = f.draw(from, to);
            assert!(d.drop_request && d.drop_reply, "{from}->{to}");
        }
        assert_eq!(f.draw(2, 3), Drawn::default(), "the majority still talks");
        f.heal();
        assert_eq!(f.draw(1, 2), Drawn::default());
    }

    #[test]
    fn drops_and_delays_are_drawn_from_the_seed() {
        let fault = LinkFault {
            drop: 0.3,
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(10),
        };
        let run = |seed| {
            let f = Faults::new(seed);
            f.set_link(1, 2, fault);
            (0..200).map(|_| f.draw(1, 2)).collect::<Vec<_>>()
        };
        let a = run(42);
        assert_eq!(a, run(42), "the same seed gives the same faults");
        assert_ne!(a, run(43));
        let dropped = a.iter().filter(|d| d.drop_request).count();
        assert!((30..90).contains(&dropped), "{dropped} of 200 at 0.3");
        assert!(
            a.iter()
                .all(|d| d.delay >= fault.delay && d.delay <= fault.delay + fault.jitter)
        );
    }

    #[test]
    fn a_slow_disk_is_per_member() {
        let f = Faults::new(1);
        f.set_fsync_delay(2, Duration::from_millis(30));
        assert_eq!(f.fsync_delay(2), Duration::from_millis(30));
        assert_eq!(f.fsync_delay(1), Duration::ZERO);
        f.set_fsync_delay(2, Duration::ZERO);
        assert_eq!(f.fsync_delay(2), Duration::ZERO);
    }
}
