//! The leader's lease timers (etcd's lessor): deadlines live in memory, not
//! in the log. Keep-alives push a deadline back; when one passes, the owner
//! proposes `Command::LeaseRevoke`. A member that becomes leader (or
//! starts) gives every lease a full TTL, as etcd does on promotion.

use std::{collections::HashMap, sync::Mutex};

use shoal_mvcc::{Command, CommandResult, LeaseId, Outcome};
use tokio::{
    sync::Notify,
    time::{Duration, Instant},
};

/// In-memory lease deadlines.
#[derive(Debug, Default)]
pub struct Lessor {
    timers: Mutex<HashMap<LeaseId, Timer>>,
    changed: Notify,
}

#[derive(Debug)]
struct Timer {
    ttl: i64,
    deadline: Instant,
    /// Past its deadline and handed out by [`Lessor::expired`]: keep-alives
    /// fail from now on, as in etcd, until the revoke is applied.
    revoking: bool,
}

impl Timer {
    fn new(ttl: i64, now: Instant) -> Self {
        Self {
            ttl,
            deadline: now + Duration::from_secs(ttl.max(0).unsigned_abs()),
            revoking: false,
        }
    }
}

impl Lessor {
    /// A lessor with no leases.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts timing these leases (id, TTL) from now, replacing any timers:
    /// call it when this member starts leading.
    pub fn promote(&self, leases: impl IntoIterator<Item = (LeaseId, i64)>) {
        let now = Instant::now();
        let mut timers = self.lock();
        timers.clear();
        timers.extend(
            leases
                .into_iter()
                .map(|(id, ttl)| (id, Timer::new(ttl, now))),
        );
        drop(timers);
        self.changed.notify_one();
    }

    /// Follows an applied command: a granted lease starts its timer, a
    /// revoked one (or one whose revoke found it gone) stops it.
    pub fn applied(&self, cmd: &Command, result: &CommandResult) {
        match (cmd, &result.outcome) {
            (_, Ok(Outcome::LeaseGrant { id, ttl })) => {
                self.lock().insert(*id, Timer::new(*ttl, Instant::now()));
            }
            (Command::LeaseRevoke { id }, _) => {
                self.lock().remove(id);
            }
            _ => return,
        }
        self.changed.notify_one();
    }

    /// Starts timing one lease with a full TTL from now unless it is timed
    /// already: a lease granted through another member, asked about before
    /// [`adopt`](Self::adopt) saw it.
    pub fn adopt_lease(&self, id: LeaseId, ttl: i64) {
        let now = Instant::now();
        let inserted = match self.lock().entry(id) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Timer::new(ttl, now));
                true
            }
            std::collections::hash_map::Entry::Occupied(_) => false,
        };
        if inserted {
            self.changed.notify_one();
        }
    }

    /// Renews a lease for its full TTL; returns the TTL, or `None` if the
    /// lease is unknown or already expired.
    pub fn keep_alive(&self, id: LeaseId) -> Option<i64> {
        let now = Instant::now();
        let mut timers = self.lock();
        let timer = timers
            .get_mut(&id)
            .filter(|t| !t.revoking && t.deadline > now)?;
        *timer = Timer::new(timer.ttl, now);
        let ttl = timer.ttl;
        drop(timers);
        self.changed.notify_one();
        Some(ttl)
    }

    /// Whole seconds left before a lease expires (rounded down, as etcd
    /// reports), or `None` if it is unknown or expired.
    pub fn remaining(&self, id: LeaseId) -> Option<i64> {
        let now = Instant::now();
        let timers = self.lock();
        let timer = timers
            .get(&id)
            .filter(|t| !t.revoking && t.deadline > now)?;
        i64::try_from((timer.deadline - now).as_secs()).ok()
    }

    /// Waits until a lease's deadline passes and returns it, marked as being
    /// revoked. The caller proposes the revoke; if that fails it calls
    /// [`Lessor::revoke_failed`] so the lease is handed out again.
    pub async fn expired(&self) -> LeaseId {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let next = {
                let mut timers = self.lock();
                let now = Instant::now();
                let next = timers
                    .iter_mut()
                    .filter(|(_, t)| !t.revoking)
                    .min_by_key(|(_, t)| t.deadline);
                match next {
                    Some((id, t)) if t.deadline <= now => {
                        t.revoking = true;
                        return *id;
                    }
                    Some((_, t)) => Some(t.deadline),
                    None => None,
                }
            };
            match next {
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Reconciles the timers with the leases that exist (id, TTL): a lease
    /// this lessor does not time yet (granted through another member) gets
    /// a full TTL from now; a timer whose lease is gone is dropped. Running
    /// timers keep their deadlines.
    pub fn adopt(&self, leases: impl IntoIterator<Item = (LeaseId, i64)>) {
        let now = Instant::now();
        let leases: HashMap<LeaseId, i64> = leases.into_iter().collect();
        let mut timers = self.lock();
        let before = timers.len();
        timers.retain(|id, _| leases.contains_key(id));
        let mut changed = timers.len() != before;
        for (id, ttl) in leases {
            if let std::collections::hash_map::Entry::Vacant(e) = timers.entry(id) {
                e.insert(Timer::new(ttl, now));
                changed = true;
            }
        }
        drop(timers);
        if changed {
            self.changed.notify_one();
        }
    }

    /// The revoke of an expired lease was not applied: hand it out again.
    pub fn revoke_failed(&self, id: LeaseId) {
        if let Some(t) = self.lock().get_mut(&id) {
            t.revoking = false;
        }
        self.changed.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, Timer>> {
        // A panic while holding the lock leaves the map consistent (every
        // update is a single insert or field write), so keep going.
        self.timers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
