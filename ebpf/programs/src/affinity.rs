//! ClientIP session affinity, per family: a client (the socket's network
//! namespace) that used a service with affinity within its timeout goes to
//! the same backend, as long as that backend is still live in the service
//! (its match entry exists).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use shoal_ebpf_common::{LbAffinityKey, LbAffinityMatchKey, LbAffinityValue, LbService};

use crate::maps::{LB4_AFFINITY, LB4_AFFINITY_MATCH, LB6_AFFINITY, LB6_AFFINITY_MATCH};

const NS_PER_SECOND: u64 = 1_000_000_000;

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn key(client: u64, frontend: &LbService) -> LbAffinityKey {
    LbAffinityKey {
        client,
        rev_nat_index: frontend.rev_nat_index,
        pad: [0; 6],
    }
}

#[inline(always)]
fn match_key(backend_id: u32, frontend: &LbService) -> LbAffinityMatchKey {
    LbAffinityMatchKey {
        backend_id,
        rev_nat_index: frontend.rev_nat_index,
        pad: 0,
    }
}

/// Whether an entry last used at `last_used` is still within the
/// frontend's timeout at `now`.
#[inline(always)]
fn fresh(last_used: u64, now: u64, frontend: &LbService) -> bool {
    now.wrapping_sub(last_used) <= u64::from(frontend.affinity_timeout) * NS_PER_SECOND
}

/// The backend id `client` is affine to for this IPv4 service, if the entry
/// is fresh and the backend still live in the service; refreshes it.
#[inline(always)]
pub fn lb4_affine_backend(client: u64, frontend: &LbService) -> Option<u32> {
    let key = key(client, frontend);
    // SAFETY: the value is copied out at once.
    let entry = unsafe { LB4_AFFINITY.get(key) }.copied()?;
    let now = now();
    if !fresh(entry.last_used_ns, now, frontend) {
        return None;
    }
    // SAFETY: as above.
    unsafe { LB4_AFFINITY_MATCH.get(match_key(entry.backend_id, frontend)) }?;
    lb4_remember(client, frontend, entry.backend_id);
    Some(entry.backend_id)
}

/// Records that `client` goes to `backend_id` for this IPv4 service.
#[inline(always)]
pub fn lb4_remember(client: u64, frontend: &LbService, backend_id: u32) {
    let value = LbAffinityValue {
        last_used_ns: now(),
        backend_id,
        pad: 0,
    };
    // A failed store only costs stickiness on the next connect.
    let _ = LB4_AFFINITY.insert(key(client, frontend), value, 0);
}

/// The IPv6 twin of [`lb4_affine_backend`].
#[inline(always)]
pub fn lb6_affine_backend(client: u64, frontend: &LbService) -> Option<u32> {
    let key = key(client, frontend);
    // SAFETY: the value is copied out at once.
    let entry = unsafe { LB6_AFFINITY.get(key) }.copied()?;
    let now = now();
    if !fresh(entry.last_used_ns, now, frontend) {
        return None;
    }
    // SAFETY: as above.
    unsafe { LB6_AFFINITY_MATCH.get(match_key(entry.backend_id, frontend)) }?;
    lb6_remember(client, frontend, entry.backend_id);
    Some(entry.backend_id)
}

/// The IPv6 twin of [`lb4_remember`].
#[inline(always)]
pub fn lb6_remember(client: u64, frontend: &LbService, backend_id: u32) {
    let value = LbAffinityValue {
        last_used_ns: now(),
        backend_id,
        pad: 0,
    };
    let _ = LB6_AFFINITY.insert(key(client, frontend), value, 0);
}
