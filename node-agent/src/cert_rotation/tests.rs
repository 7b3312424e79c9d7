use std::time::{Duration, SystemTime};

use super::rotation_deadline;

#[test]
fn the_deadline_falls_between_70_and_90_percent_of_the_validity() {
    let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let not_after = not_before + Duration::from_secs(1000);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let at = rotation_deadline(not_before, not_after);
        let offset = at.duration_since(not_before).unwrap_or_default();
        assert!(
            (Duration::from_secs(700)..=Duration::from_secs(900)).contains(&offset),
            "deadline {offset:?} after notBefore of a 1000 s certificate"
        );
        seen.insert(offset.as_secs());
    }
    // Jittered: a fleet joined together does not renew together.
    assert!(seen.len() > 20, "only {} distinct deadlines", seen.len());
}

#[test]
fn an_expired_validity_gives_a_deadline_in_the_past() {
    let not_before = SystemTime::now() - Duration::from_secs(100);
    let at = rotation_deadline(not_before, not_before + Duration::from_secs(10));
    assert!(at < SystemTime::now());
}
