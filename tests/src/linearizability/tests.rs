use super::*;

fn w(key: &str, v: Option<&str>, call: u64, ret: Option<u64>) -> Operation {
    Operation {
        key: key.as_bytes().to_vec(),
        action: Action::Write(v.map(|s| s.as_bytes().to_vec())),
        call,
        ret,
    }
}

fn r(key: &str, seen: Option<&str>, call: u64, ret: u64) -> Operation {
    Operation {
        key: key.as_bytes().to_vec(),
        action: Action::Read(seen.map(|s| s.as_bytes().to_vec())),
        call,
        ret: Some(ret),
    }
}

#[test]
fn a_sequential_history_is_linearizable() {
    let h = [
        r("k", None, 0, 1),
        w("k", Some("a"), 2, Some(3)),
        r("k", Some("a"), 4, 5),
        w("k", None, 6, Some(7)),
        r("k", None, 8, 9),
    ];
    assert_eq!(check(&h), Ok(()));
}

#[test]
fn a_stale_read_is_rejected() {
    // v2 was acknowledged before the read started, yet the read saw v1.
    let h = [
        w("k", Some("v1"), 0, Some(1)),
        w("k", Some("v2"), 2, Some(3)),
        r("k", Some("v1"), 4, 5),
    ];
    let err = check(&h).expect_err("stale read must be rejected");
    assert_eq!(err.key, "k");
    assert_eq!(err.stuck_at, Action::Read(Some(b"v1".to_vec())));
}

#[test]
fn a_read_of_a_value_never_written_is_rejected() {
    let h = [w("k", Some("a"), 0, Some(1)), r("k", Some("zz"), 2, 3)];
    assert!(check(&h).is_err());
}

#[test]
fn concurrent_writes_may_be_seen_in_either_order() {
    // Two overlapping writes; later reads agree on one winner.
    let h = [
        w("k", Some("a"), 0, Some(10)),
        w("k", Some("b"), 1, Some(9)),
        r("k", Some("a"), 11, 12),
        r("k", Some("a"), 13, 14),
    ];
    assert_eq!(check(&h), Ok(()));
    let h2 = [
        w("k", Some("a"), 0, Some(10)),
        w("k", Some("b"), 1, Some(9)),
        r("k", Some("b"), 11, 12),
    ];
    assert_eq!(check(&h2), Ok(()));
}

#[test]
fn reads_may_not_flip_back_after_agreeing() {
    // After a read saw b (so b is last), a later read cannot see a again.
    let h = [
        w("k", Some("a"), 0, Some(10)),
        w("k", Some("b"), 1, Some(9)),
        r("k", Some("b"), 11, 12),
        r("k", Some("a"), 13, 14),
    ];
    assert!(check(&h).is_err());
}

#[test]
fn a_write_with_unknown_outcome_may_or_may_not_have_happened() {
    let seen = [
        w("k", Some("a"), 0, Some(1)),
        w("k", Some("b"), 2, None),
        r("k", Some("b"), 3, 4),
    ];
    assert_eq!(check(&seen), Ok(()));
    let not_seen = [
        w("k", Some("a"), 0, Some(1)),
        w("k", Some("b"), 2, None),
        r("k", Some("a"), 3, 4),
    ];
    assert_eq!(check(&not_seen), Ok(()));
    // But once seen, it cannot be un-seen.
    let flip = [
        w("k", Some("a"), 0, Some(1)),
        w("k", Some("b"), 2, None),
        r("k", Some("b"), 3, 4),
        r("k", Some("a"), 5, 6),
    ];
    assert!(check(&flip).is_err());
}

#[test]
fn keys_are_checked_independently() {
    let h = [
        w("a", Some("1"), 0, Some(1)),
        w("b", Some("1"), 0, Some(1)),
        r("a", Some("1"), 2, 3),
        r("b", None, 2, 3),
    ];
    let err = check(&h).expect_err("b's read is stale");
    assert_eq!(err.key, "b");
}

/// A deterministic pseudo-random history of a real register under
/// concurrency is always accepted; the same history with one read made
/// stale is rejected. Many seeds.
#[test]
fn generated_histories_pass_and_seeded_stale_reads_fail() {
    let mut stale_checked = 0;
    for seed in 1..200u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Simulate: each op takes effect at an instant inside [call, ret].
        let mut value: Option<Vec<u8>> = None;
        let mut history = Vec::new();
        let mut t = 0u64;
        let mut reads = Vec::new();
        let mut prior_values = Vec::new();
        for i in 0..40 {
            let call = t + rnd() % 5;
            let effect = call + 1 + rnd() % 5;
            let ret = effect + 1 + rnd() % 5;
            t = effect;
            if rnd() % 2 == 0 {
                let v = format!("v{i}").into_bytes();
                if let Some(old) = value.replace(v.clone()) {
                    prior_values.push(old);
                }
                history.push(Operation {
                    key: b"k".to_vec(),
                    action: Action::Write(Some(v)),
                    call,
                    ret: Some(ret),
                });
            } else {
                reads.push(history.len());
                history.push(Operation {
                    key: b"k".to_vec(),
                    action: Action::Read(value.clone()),
                    call,
                    ret: Some(ret),
                });
            }
        }
        assert_eq!(check(&history), Ok(()), "seed {seed}");
        // Make the last read return the oldest written value. That is a
        // violation when some other write started after the oldest one
        // returned and itself returned before the read began: every
        // linearization then puts it after the oldest, and values are unique.
        let Some(&last_read) = reads.last() else {
            continue;
        };
        let Some(oldest) = prior_values.first().cloned() else {
            continue;
        };
        let read_call = history[last_read].call;
        let Some(oldest_ret) = history.iter().find_map(|op| match &op.action {
            Action::Write(Some(v)) if v == &oldest => op.ret,
            _ => None,
        }) else {
            continue;
        };
        let superseded = history.iter().any(|op| {
            matches!(&op.action, Action::Write(Some(v)) if v != &oldest)
                && op.call > oldest_ret
                && op.ret.is_some_and(|r| r < read_call)
        });
        if superseded {
            let mut stale = history.clone();
            stale[last_read].action = Action::Read(Some(oldest));
            assert!(check(&stale).is_err(), "seed {seed}: stale read accepted");
            stale_checked += 1;
        }
    }
    assert!(
        stale_checked > 100,
        "only {stale_checked} seeds produced a stale read"
    );
}

fn cas(key: &str, expect: Option<&str>, new: &str, call: u64, ret: Option<u64>) -> Operation {
    Operation {
        key: key.as_bytes().to_vec(),
        action: Action::CompareAndSet {
            expect: expect.map(|s| s.as_bytes().to_vec()),
            new: new.as_bytes().to_vec(),
        },
        call,
        ret,
    }
}

#[test]
fn a_compare_and_set_succeeds_only_on_the_value_it_expected() {
    let h = [
        w("k", Some("a"), 0, Some(1)),
        cas("k", Some("a"), "b", 2, Some(3)),
        r("k", Some("b"), 4, 5),
    ];
    assert_eq!(check(&h), Ok(()));
    // Two sequential swaps from the same value cannot both succeed.
    let h = [
        w("k", Some("a"), 0, Some(1)),
        cas("k", Some("a"), "b", 2, Some(3)),
        cas("k", Some("a"), "c", 4, Some(5)),
    ];
    let err = check(&h).expect_err("the second swap saw a value already replaced");
    assert!(
        matches!(err.stuck_at, Action::CompareAndSet { .. }),
        "{err}"
    );
}

#[test]
fn a_compare_and_set_with_an_unknown_outcome_may_have_happened_or_not() {
    let applied = [
        w("k", Some("a"), 0, Some(1)),
        cas("k", Some("a"), "b", 2, None),
        r("k", Some("b"), 10, 11),
    ];
    assert_eq!(check(&applied), Ok(()));
    let lost = [
        w("k", Some("a"), 0, Some(1)),
        cas("k", Some("a"), "b", 2, None),
        r("k", Some("a"), 10, 11),
    ];
    assert_eq!(check(&lost), Ok(()));
}
