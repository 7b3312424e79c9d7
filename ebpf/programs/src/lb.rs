//! Service lookup and backend selection, per family.
//!
//! A miss on the frontend means "not a service": the caller passes the
//! packet or socket through untouched. Everything after a frontend hit
//! either yields a backend or an explicit drop verdict.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use shoal_ebpf_common::{BACKEND_SLOT_FRONTEND, Lb4Backend, Lb4Key, Lb6Backend, Lb6Key, Verdict};

use crate::{
    affinity::{lb4_affine_backend, lb4_remember, lb6_affine_backend, lb6_remember},
    maps::{LB4_BACKENDS, LB4_SERVICES, LB6_BACKENDS, LB6_SERVICES},
};

/// A chosen backend and the service it was chosen for.
pub struct Selected<B> {
    pub backend: B,
    pub rev_nat_index: u16,
}

/// Picks a random backend slot in 1..=count.
#[inline(always)]
fn pick_slot(count: u16) -> u16 {
    // SAFETY: a helper without arguments.
    let r = unsafe { bpf_get_prandom_u32() };
    (r % u32::from(count)) as u16 + 1
}

/// Looks up the IPv4 service at (address, dport, proto) and picks a backend.
/// With a `client` (a socket's netns cookie), a service with ClientIP
/// affinity sends it to the backend it used last, if that is recent and
/// still live, and remembers a fresh pick.
#[inline(always)]
pub fn lb4_select(
    address: u32,
    dport: u16,
    proto: u8,
    client: Option<u64>,
) -> Result<Option<Selected<Lb4Backend>>, Verdict> {
    let mut key = Lb4Key {
        address,
        dport,
        backend_slot: BACKEND_SLOT_FRONTEND,
        proto,
        generation: 0,
        pad: [0; 2],
    };
    // SAFETY: the value is copied out at once; the map is never resized.
    let Some(frontend) = (unsafe { LB4_SERVICES.get(key) }).copied() else {
        return Ok(None);
    };
    if frontend.count == 0 {
        return Err(Verdict::DropNoBackend);
    }
    let affine = match client {
        Some(client) if frontend.affinity_timeout != 0 => Some(client),
        _ => None,
    };
    if let Some(client) = affine
        && let Some(id) = lb4_affine_backend(client, &frontend)
        // SAFETY: as above.
        && let Some(backend) = (unsafe { LB4_BACKENDS.get(id) }).copied()
    {
        return Ok(Some(Selected {
            backend,
            rev_nat_index: frontend.rev_nat_index,
        }));
    }
    key.backend_slot = pick_slot(frontend.count);
    key.generation = frontend.generation;
    // SAFETY: as above.
    let Some(slot) = (unsafe { LB4_SERVICES.get(key) }).copied() else {
        return Err(Verdict::DropSlotMissing);
    };
    // SAFETY: as above.
    let Some(backend) = (unsafe { LB4_BACKENDS.get(slot.backend_id) }).copied() else {
        return Err(Verdict::DropBackendMissing);
    };
    if let Some(client) = affine {
        lb4_remember(client, &frontend, slot.backend_id);
    }
    Ok(Some(Selected {
        backend,
        rev_nat_index: frontend.rev_nat_index,
    }))
}

/// Looks up the IPv6 service at (address, dport, proto) and picks a backend.
/// With a `client` (a socket's netns cookie), a service with ClientIP
/// affinity sends it to the backend it used last, if that is recent and
/// still live, and remembers a fresh pick.
#[inline(always)]
pub fn lb6_select(
    address: [u8; 16],
    dport: u16,
    proto: u8,
    client: Option<u64>,
) -> Result<Option<Selected<Lb6Backend>>, Verdict> {
    let mut key = Lb6Key {
        address,
        dport,
        backend_slot: BACKEND_SLOT_FRONTEND,
        proto,
        generation: 0,
        pad: [0; 2],
    };
    // SAFETY: the value is copied out at once; the map is never resized.
    let Some(frontend) = (unsafe { LB6_SERVICES.get(key) }).copied() else {
        return Ok(None);
    };
    if frontend.count == 0 {
        return Err(Verdict::DropNoBackend);
    }
    let affine = match client {
        Some(client) if frontend.affinity_timeout != 0 => Some(client),
        _ => None,
    };
    if let Some(client) = affine
        && let Some(id) = lb6_affine_backend(client, &frontend)
        // SAFETY: as above.
        && let Some(backend) = (unsafe { LB6_BACKENDS.get(id) }).copied()
    {
        return Ok(Some(Selected {
            backend,
            rev_nat_index: frontend.rev_nat_index,
        }));
    }
    key.backend_slot = pick_slot(frontend.count);
    key.generation = frontend.generation;
    // SAFETY: as above.
    let Some(slot) = (unsafe { LB6_SERVICES.get(key) }).copied() else {
        return Err(Verdict::DropSlotMissing);
    };
    // SAFETY: as above.
    let Some(backend) = (unsafe { LB6_BACKENDS.get(slot.backend_id) }).copied() else {
        return Err(Verdict::DropBackendMissing);
    };
    if let Some(client) = affine {
        lb6_remember(client, &frontend, slot.backend_id);
    }
    Ok(Some(Selected {
        backend,
        rev_nat_index: frontend.rev_nat_index,
    }))
}
