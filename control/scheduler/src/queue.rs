//! The scheduling queue, as kube-scheduler's: pods ready to try in an
//! active heap (higher `spec.priority` first, then older first), pods
//! that just failed waiting out a per-pod exponential back-off (1 s
//! doubling to 10 s), and unschedulable pods parked until a cluster event
//! that could make them fit moves them back (or a long timeout passes).

use std::{
    cmp::{Ordering, Reverse},
    collections::{BinaryHeap, HashMap},
    time::{Duration, Instant},
};

/// The first back-off after a failed attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long an unschedulable pod waits for an event before it is tried
/// again anyway (kube's podMaxInUnschedulablePodsDuration is 5 min; the
/// scheduler does not watch everything that could make a pod fit, so a
/// shorter safety net).
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Active,
    Backoff,
    Unschedulable,
    /// Popped and being scheduled.
    InFlight,
}

#[derive(Debug)]
struct Entry {
    priority: i32,
    created: String,
    seq: u64,
    attempts: u32,
    backoff_until: Option<Instant>,
    parked_at: Option<Instant>,
    place: Place,
    /// Bumped on every move, so stale heap items are skipped.
    generation: u64,
}

#[derive(PartialEq, Eq)]
struct Active {
    priority: i32,
    created: Reverse<String>,
    seq: Reverse<u64>,
    uid: String,
    generation: u64,
}

impl Ord for Active {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.priority, &self.created, self.seq).cmp(&(other.priority, &other.created, other.seq))
    }
}

impl PartialOrd for Active {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The queue of pods waiting for a node, by uid.
#[derive(Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    active: BinaryHeap<Active>,
    backoff: BinaryHeap<Reverse<(Instant, String, u64)>>,
    seq: u64,
}

impl Queue {
    /// Adds a pending pod (no-op if it is queued already).
    pub fn add(&mut self, uid: &str, priority: i32, created: &str) {
        if self.entries.contains_key(uid) {
            return;
        }
        self.seq += 1;
        self.entries.insert(
            uid.to_string(),
            Entry {
                priority,
                created: created.to_string(),
                seq: self.seq,
                attempts: 0,
                backoff_until: None,
                parked_at: None,
                place: Place::Unschedulable,
                generation: 0,
            },
        );
        self.activate(uid);
    }

    /// Whether the pod is queued (in any state).
    pub fn contains(&self, uid: &str) -> bool {
        self.entries.contains_key(uid)
    }

    /// Forgets a pod (bound or deleted).
    pub fn remove(&mut self, uid: &str) {
        self.entries.remove(uid);
    }

    fn activate(&mut self, uid: &str) {
        let Some(e) = self.entries.get_mut(uid) else {
            return;
        };
        e.generation += 1;
        e.place = Place::Active;
        e.parked_at = None;
        self.active.push(Active {
            priority: e.priority,
            created: Reverse(e.created.clone()),
            seq: Reverse(e.seq),
            uid: uid.to_string(),
            generation: e.generation,
        });
    }

    fn park_backoff(&mut self, uid: &str, until: Instant) {
        let Some(e) = self.entries.get_mut(uid) else {
            return;
        };
        e.generation += 1;
        e.place = Place::Backoff;
        self.backoff
            .push(Reverse((until, uid.to_string(), e.generation)));
    }

    /// The next pod to try, the backed-off ones whose time came first
    /// moved to the active heap.
    pub fn pop(&mut self, now: Instant) -> Option<String> {
        self.flush_backoff(now);
        while let Some(item) = self.active.pop() {
            let Some(e) = self.entries.get_mut(&item.uid) else {
                continue;
            };
            if e.generation != item.generation || e.place != Place::Active {
                continue;
            }
            e.place = Place::InFlight;
            return Some(item.uid);
        }
        None
    }

    fn flush_backoff(&mut self, now: Instant) {
        while let Some(Reverse((until, _, _))) = self.backoff.peek() {
            if *until > now {
                break;
            }
            let Some(Reverse((_, uid, generation))) = self.backoff.pop() else {
                break;
            };
            let current = self
                .entries
                .get(&uid)
                .is_some_and(|e| e.generation == generation && e.place == Place::Backoff);
            if current {
                self.activate(&uid);
            }
        }
    }

    fn next_backoff(&mut self, uid: &str, now: Instant) -> Option<Instant> {
        let e = self.entries.get_mut(uid)?;
        e.attempts += 1;
        let shift = e.attempts.saturating_sub(1).min(8);
        let backoff = (INITIAL_BACKOFF * (1 << shift)).min(MAX_BACKOFF);
        let until = now + backoff;
        e.backoff_until = Some(until);
        Some(until)
    }

    /// No node fits: park the pod until a cluster event (its back-off
    /// still applies when one comes early).
    pub fn unschedulable(&mut self, uid: &str, now: Instant) {
        if self.next_backoff(uid, now).is_none() {
            return;
        }
        if let Some(e) = self.entries.get_mut(uid) {
            e.generation += 1;
            e.place = Place::Unschedulable;
            e.parked_at = Some(now);
        }
    }

    /// An error (a binding that failed): try again after the back-off.
    pub fn retry(&mut self, uid: &str, priority: i32, created: &str, now: Instant) {
        self.add(uid, priority, created);
        if let Some(until) = self.next_backoff(uid, now) {
            self.park_backoff(uid, until);
        }
    }

    /// A cluster event that could make parked pods fit: each goes back to
    /// the active heap, or to back-off while its back-off runs.
    pub fn move_all(&mut self, now: Instant) {
        let parked: Vec<(String, Option<Instant>)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.place == Place::Unschedulable)
            .map(|(uid, e)| (uid.clone(), e.backoff_until))
            .collect();
        for (uid, until) in parked {
            match until {
                Some(until) if until > now => self.park_backoff(&uid, until),
                _ => self.activate(&uid),
            }
        }
    }

    /// Parked pods that waited longer than [`MAX_UNSCHEDULABLE`] go back.
    pub fn flush_unschedulable(&mut self, now: Instant) {
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.place == Place::Unschedulable
                    && e.parked_at
                        .is_some_and(|t| now.duration_since(t) >= MAX_UNSCHEDULABLE)
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            self.activate(&uid);
        }
    }

    /// When the next backed-off pod becomes ready.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.backoff.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Whether a pod is ready to pop now.
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_then_older_pods_come_first() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add("low-old", 0, "2026-01-01T00:00:00Z");
        q.add("high", 1000, "2026-01-01T00:00:09Z");
        q.add("low-new", 0, "2026-01-01T00:00:05Z");
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now)).collect();
        assert_eq!(order, ["high", "low-old", "low-new"]);
    }

    #[test]
    fn unschedulable_pods_wait_for_an_event_and_their_back_off() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.add("p", 0, "");
        assert_eq!(q.pop(t0).as_deref(), Some("p"));
        q.unschedulable("p", t0);
        assert_eq!(q.pop(t0 + Duration::from_secs(30)), None, "parked");
        // An event half a second later: still backing off (1 s).
        q.move_all(t0 + Duration::from_millis(500));
        assert_eq!(q.pop(t0 + Duration::from_millis(900)), None);
        assert_eq!(q.next_wakeup(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.pop(t0 + Duration::from_secs(1)).as_deref(), Some("p"));
        // The back-off doubles per attempt up to 10 s.
        let mut t = t0 + Duration::from_secs(1);
        let mut waits = Vec::new();
        for _ in 0..5 {
            q.unschedulable("p", t);
            q.move_all(t);
            let until = q.next_wakeup().expect("backing off");
            waits.push(until.duration_since(t).as_secs());
            t = until;
            assert_eq!(q.pop(t).as_deref(), Some("p"));
        }
        assert_eq!(waits, [2, 4, 8, 10, 10]);
    }

    #[test]
    fn a_parked_pod_is_retried_after_the_safety_timeout() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.add("p", 0, "");
        q.pop(t0);
        q.unschedulable("p", t0);
        q.flush_unschedulable(t0 + Duration::from_secs(5));
        assert_eq!(q.pop(t0 + Duration::from_secs(5)), None);
        q.flush_unschedulable(t0 + MAX_UNSCHEDULABLE);
        assert_eq!(q.pop(t0 + MAX_UNSCHEDULABLE).as_deref(), Some("p"));
    }

    #[test]
    fn removed_pods_never_pop() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add("a", 0, "");
        q.add("b", 0, "");
        q.remove("a");
        assert_eq!(q.pop(now).as_deref(), Some("b"));
        assert_eq!(q.pop(now), None);
    }
}
