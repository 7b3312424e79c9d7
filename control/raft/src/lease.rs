//! Lease keep-alives and remaining TTLs asked of a follower are answered by
//! the leader's lessor, as etcd's followers forward them: the lessor's
//! timers live in the leader's memory only.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

/// The leader's lessor, as the peer protocol asks it on a follower's behalf.
pub trait LeaseOracle: Send + Sync + 'static {
    /// Renews lease `id`; its TTL in seconds, or `None` if it does not
    /// exist or expired.
    fn keep_alive(&self, id: i64) -> Option<i64>;
    /// Seconds left before lease `id` expires, or `None`.
    fn remaining(&self, id: i64) -> Option<i64>;
}

/// Where the member's lessor is registered once the API layer made it.
pub(crate) type OracleSlot = Arc<OnceLock<Arc<dyn LeaseOracle>>>;

/// What a follower asks the leader's lessor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LeaseRequest {
    /// Renew a lease.
    KeepAlive(i64),
    /// How long a lease has left.
    Remaining(i64),
}

impl LeaseRequest {
    /// Asks `oracle`.
    pub(crate) fn answer(self, oracle: &dyn LeaseOracle) -> Option<i64> {
        match self {
            Self::KeepAlive(id) => oracle.keep_alive(id),
            Self::Remaining(id) => oracle.remaining(id),
        }
    }
}

/// Why the member asked could not answer for the leader's lessor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LeaseError {
    /// It does not lead (any more).
    #[error("member {member} does not lead; ask the leader's lessor")]
    NotLeader {
        /// The member asked.
        member: u64,
    },
    /// It leads but its API has not registered a lessor yet (starting).
    #[error("member {member} has no lessor yet")]
    NoLessor {
        /// The member asked.
        member: u64,
    },
}
