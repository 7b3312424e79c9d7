use super::*;

#[test]
fn kv_errors_carry_etcds_code_and_message() {
    let cases = [
        (
            KvError::Compacted {
                compact_revision: 5,
            },
            Code::OutOfRange,
            COMPACTED,
        ),
        (
            KvError::FutureRevision,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        (KvError::EmptyKey, Code::InvalidArgument, EMPTY_KEY),
        (
            KvError::LeaseNotFound,
            Code::NotFound,
            "etcdserver: requested lease not found",
        ),
        (
            KvError::LeaseExists,
            Code::FailedPrecondition,
            "etcdserver: lease already exists",
        ),
        (KvError::KeyNotFound, Code::InvalidArgument, KEY_NOT_FOUND),
        (KvError::DuplicateKey, Code::InvalidArgument, DUPLICATE_KEY),
        (KvError::TooManyOps, Code::InvalidArgument, TOO_MANY_OPS),
        (
            KvError::LeaseTtlTooLarge,
            Code::OutOfRange,
            LEASE_TTL_TOO_LARGE,
        ),
    ];
    for (err, code, message) in cases {
        let status = from_kv(&err);
        assert_eq!(status.code(), code, "{err:?}");
        assert_eq!(status.message(), message, "{err:?}");
    }
}

#[test]
fn unavailable_store_errors_are_retryable() {
    for err in [
        BackendError::NoLeader,
        BackendError::NotLeader { leader: Some(2) },
        BackendError::Timeout,
        BackendError::LeaderChanged,
        BackendError::Stopped,
    ] {
        assert_eq!(from_backend(&err).code(), Code::Unavailable, "{err:?}");
    }
    assert_eq!(
        from_backend(&BackendError::NotLeader { leader: None }).message(),
        NO_LEADER
    );
    assert_eq!(from_backend(&BackendError::NoLeader).message(), NO_LEADER);
    assert_eq!(
        from_backend(&BackendError::Timeout).message(),
        "etcdserver: request timed out"
    );
}

#[test]
fn membership_errors_match_etcd() {
    let s = from_backend(&BackendError::MemberNotFound);
    assert_eq!(
        (s.code(), s.message()),
        (Code::NotFound, "etcdserver: member not found")
    );
    let s = from_backend(&BackendError::MemberNotLearner);
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert_eq!(s.message(), "etcdserver: can only promote a learner member");
    let s = from_backend(&BackendError::LeaseNotFound);
    assert_eq!(
        (s.code(), s.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
}
