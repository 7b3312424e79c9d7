//! The snapshot file `etcdctl snapshot save` writes from Maintenance.Snapshot.
//!
//! etcd streams its bbolt file (a whole number of 512-byte sectors) and
//! then the sha256 of it; etcdctl refuses a download whose length is not
//! `n × 512 + 32`. shoal streams the keyspace's snapshot in an envelope with
//! that shape:
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `SHOALSN1` |
//! | 8 | payload length, little-endian |
//! | n | the payload ([`shoal_mvcc::Mvcc::snapshot`]) |
//! | ≥ 0 | zeros up to a multiple of 512 |
//! | 32 | sha256 of everything before it |
//!
//! `etcdctl snapshot status` and `snapshot restore` expect a bbolt file and
//! cannot read it; [`decode`] gives back the payload for
//! [`shoal_mvcc::Mvcc::restore`].

use sha2::{Digest, Sha256};

/// First bytes of a shoal snapshot file.
pub const MAGIC: &[u8; 8] = b"SHOALSN1";
/// Sector size etcdctl checks the download against.
const SECTOR: usize = 512;
/// Length of the sha256 trailer.
const SHA_LEN: usize = 32;
/// Magic plus length.
const HEADER_LEN: usize = 16;

/// Why a snapshot file cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotFileError {
    /// Not a shoal snapshot (an etcd bbolt snapshot, or another file).
    #[error(
        "not a shoal snapshot file (no SHOALSN1 header); etcd's bbolt snapshots cannot be restored into shoal"
    )]
    NotShoal,
    /// Too short or not sector-aligned: the download was cut.
    #[error(
        "snapshot file is truncated ({len} bytes); download it again with `etcdctl snapshot save`"
    )]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// The sha256 trailer does not match: the file is corrupt.
    #[error("snapshot file checksum mismatch: the file is corrupt; download it again")]
    Checksum,
}

/// Wraps a keyspace snapshot in the envelope, without the sha256 trailer
/// (the stream appends it, as etcd does).
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let len = (HEADER_LEN + payload.len()).div_ceil(SECTOR) * SECTOR;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(len, 0);
    out
}

/// The sha256 trailer of an encoded snapshot.
pub fn checksum(encoded: &[u8]) -> [u8; SHA_LEN] {
    Sha256::digest(encoded).into()
}

/// Checks a saved snapshot file (envelope plus trailer) and returns the
/// keyspace snapshot inside it.
pub fn decode(file: &[u8]) -> Result<&[u8], SnapshotFileError> {
    if file.len() < 8 || &file[..8] != MAGIC {
        return Err(SnapshotFileError::NotShoal);
    }
    if file.len() < SECTOR + SHA_LEN || file.len() % SECTOR != SHA_LEN {
        return Err(SnapshotFileError::Truncated { len: file.len() });
    }
    let (body, sha) = file.split_at(file.len() - SHA_LEN);
    if checksum(body).as_slice() != sha {
        return Err(SnapshotFileError::Checksum);
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&body[8..HEADER_LEN]);
    let len = usize::try_from(u64::from_le_bytes(len))
        .map_err(|_| SnapshotFileError::Truncated { len: file.len() })?;
    body.get(HEADER_LEN..HEADER_LEN.saturating_add(len))
        .ok_or(SnapshotFileError::Truncated { len: file.len() })
}

#[cfg(test)]
mod tests;
