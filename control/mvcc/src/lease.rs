//! Lease bookkeeping: which leases exist and which keys are attached.
//!
//! Expiry is not kept here: the Raft leader times leases and proposes a
//! `LeaseRevoke`, so applying stays free of clocks. Revoking deletes every
//! attached key at one new revision (etcd's `lessor.Revoke`, in key order).

use std::ops::Bound;

use redb::ReadableTable;

use crate::{
    batch::Batch,
    changes::Overlay,
    store::Error,
    tables::storage,
    txn::{self, Failure},
    types::{KvError, Lease, LeaseId},
};

/// etcd's `MaxLeaseTTL`.
pub(crate) const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's `lessor.Grant` checks: id 0 is "no lease", the TTL is capped, the
/// id must be free.
pub(crate) fn grant(batch: &mut Batch<'_>, id: LeaseId, ttl: i64) -> Result<(), Failure> {
    if id == 0 {
        return Err(KvError::LeaseNotFound.into());
    }
    if ttl > MAX_LEASE_TTL {
        return Err(KvError::LeaseTtlTooLarge.into());
    }
    let leases = &mut batch.base.leases;
    if leases.get(id).map_err(storage("leases: get"))?.is_some() {
        return Err(KvError::LeaseExists.into());
    }
    leases.insert(id, ttl).map_err(storage("leases: insert"))?;
    Ok(())
}

/// Deletes the lease's keys (one revision, if it has any) and the lease.
pub(crate) fn revoke(batch: &mut Batch<'_>, id: LeaseId) -> Result<(), Failure> {
    if batch
        .base
        .leases
        .get(id)
        .map_err(storage("leases: get"))?
        .is_none()
    {
        return Err(KvError::LeaseNotFound.into());
    }
    let keys = attached_keys(&batch.lease_keys, id)?;
    let mut overlay = Overlay::new(&batch.base);
    txn::delete_keys(&mut overlay, &keys)?;
    let pending = overlay.into_pending();
    batch.commit(pending)?;
    batch
        .base
        .leases
        .remove(id)
        .map_err(storage("leases: remove"))?;
    Ok(())
}

/// The keys attached to `id`, sorted.
pub(crate) fn attached_keys(
    lease_keys: &impl ReadableTable<(i64, &'static [u8]), ()>,
    id: LeaseId,
) -> Result<Vec<Vec<u8>>, Error> {
    let empty: &[u8] = &[];
    let iter = lease_keys
        .range::<(i64, &[u8])>((Bound::Included((id, empty)), Bound::Unbounded))
        .map_err(storage("lease_keys: scan"))?;
    let mut keys = Vec::new();
    for entry in iter {
        let (k, _) = entry.map_err(storage("lease_keys: read"))?;
        let (lease, key) = k.value();
        if lease != id {
            break;
        }
        keys.push(key.to_vec());
    }
    Ok(keys)
}

/// One lease with its keys.
pub(crate) fn get(
    leases: &impl ReadableTable<i64, i64>,
    lease_keys: &impl ReadableTable<(i64, &'static [u8]), ()>,
    id: LeaseId,
) -> Result<Option<Lease>, Error> {
    let Some(ttl) = leases.get(id).map_err(storage("leases: get"))? else {
        return Ok(None);
    };
    Ok(Some(Lease {
        id,
        ttl: ttl.value(),
        keys: attached_keys(lease_keys, id)?,
    }))
}

/// Every lease with its keys, by id.
pub(crate) fn all(
    leases: &impl ReadableTable<i64, i64>,
    lease_keys: &impl ReadableTable<(i64, &'static [u8]), ()>,
) -> Result<Vec<Lease>, Error> {
    let mut out = Vec::new();
    for entry in leases.iter().map_err(storage("leases: scan"))? {
        let (id, ttl) = entry.map_err(storage("leases: read"))?;
        out.push(Lease {
            id: id.value(),
            ttl: ttl.value(),
            keys: attached_keys(lease_keys, id.value())?,
        });
    }
    Ok(out)
}
