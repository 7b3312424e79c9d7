//! The gRPC statuses etcd clients parse (etcd's `v3rpc/rpctypes`): code and
//! message must match, since clientv3, etcdctl and the Kubernetes API server
//! compare the message text.

use shoal_mvcc::KvError;
use tonic::{Code, Status};

use crate::backend::BackendError;

/// etcd's `ErrGRPCEmptyKey`.
pub(crate) const EMPTY_KEY: &str = "etcdserver: key is not provided";
/// etcd's `ErrGRPCKeyNotFound` (also what it says for an empty txn op).
pub(crate) const KEY_NOT_FOUND: &str = "etcdserver: key not found";
/// etcd's `ErrGRPCValueProvided`.
pub(crate) const VALUE_PROVIDED: &str = "etcdserver: value is provided";
/// etcd's `ErrGRPCLeaseProvided`.
pub(crate) const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
/// etcd's `ErrGRPCTooManyOps`.
pub(crate) const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
/// etcd's `ErrGRPCDuplicateKey`.
pub(crate) const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
/// etcd's `ErrGRPCCompacted`.
pub(crate) const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
/// etcd's `ErrGRPCRequestTooLarge`.
pub(crate) const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
/// etcd's `ErrGRPCLeaseTTLTooLarge`.
pub(crate) const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
/// etcd's `ErrGRPCMemberBadURLs`.
pub(crate) const MEMBER_BAD_URLS: &str = "etcdserver: given member URLs are invalid";
/// etcd's `ErrGRPCAuthNotEnabled` (clientv3 goes on without a token on it).
pub(crate) const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";
/// etcd's `ErrGRPCNoLeader`.
pub(crate) const NO_LEADER: &str = "etcdserver: no leader";

/// The status for a request refused by the API layer's own checks.
pub(crate) fn invalid(message: &'static str) -> Status {
    Status::invalid_argument(message)
}

/// The status etcd returns for a keyspace refusal.
pub(crate) fn from_kv(e: &KvError) -> Status {
    let code = match e {
        KvError::Compacted { .. } | KvError::FutureRevision | KvError::LeaseTtlTooLarge => {
            Code::OutOfRange
        }
        KvError::EmptyKey | KvError::KeyNotFound | KvError::DuplicateKey | KvError::TooManyOps => {
            Code::InvalidArgument
        }
        KvError::LeaseNotFound => Code::NotFound,
        KvError::LeaseExists => Code::FailedPrecondition,
    };
    Status::new(code, e.to_string())
}

/// The status etcd returns for a store failure.
pub(crate) fn from_backend(e: &BackendError) -> Status {
    let code = match e {
        BackendError::NoLeader
        | BackendError::LeaderChanged
        | BackendError::Timeout
        | BackendError::Unhealthy
        | BackendError::Stopped => Code::Unavailable,
        // Clients retry Unavailable on another endpoint, which is what a
        // follower that cannot forward wants; etcd's own message for it.
        BackendError::NotLeader { .. } => return Status::unavailable(NO_LEADER),
        BackendError::LeaseNotFound | BackendError::MemberNotFound => Code::NotFound,
        BackendError::PeerUrlExists
        | BackendError::MemberNotLearner
        | BackendError::LearnerNotReady
        | BackendError::NotEnoughStartedMembers => Code::FailedPrecondition,
        BackendError::Unsupported(_) => Code::Unimplemented,
        // etcd answers errors it has no mapping for with Unknown.
        BackendError::Storage(_) => Code::Unknown,
    };
    Status::new(code, e.to_string())
}

/// The status for a failed local read.
pub(crate) fn from_storage(e: &shoal_mvcc::Error) -> Status {
    from_backend(&BackendError::Storage(e.to_string()))
}

#[cfg(test)]
mod tests;
