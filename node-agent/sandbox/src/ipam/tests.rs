use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

fn v4(s: &str) -> Option<Ipv4Net> {
    Some(s.parse().expect("test CIDR"))
}

fn v6(s: &str) -> Option<Ipv6Net> {
    Some(s.parse().expect("test CIDR"))
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

#[test]
fn a_slash_29_hands_out_the_five_addresses_between_the_node_and_broadcast() {
    let mut ipam = Allocator::new(v4("10.244.1.0/29"), None, State::default()).expect("allocator");
    let got: Vec<Ipv4Addr> = (0..5)
        .map(|i| {
            ipam.allocate(&format!("pod-{i}"))
                .expect("allocate")
                .0
                .ipv4
                .expect("v4")
        })
        .collect();
    let want: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect();
    assert_eq!(got, want);

    let err = ipam
        .allocate("pod-5")
        .expect_err("a sixth pod does not fit");
    assert_eq!(
        err.to_string(),
        "pod pod-5: the IPv4 pod CIDR 10.244.1.0/29 is exhausted (5 addresses in use)"
    );
    assert!(
        ipam.get("pod-5").is_none(),
        "a failed allocation leaves no record"
    );
}

#[test]
fn ipv6_skips_the_subnet_router_anycast_and_the_node_address() {
    let mut ipam =
        Allocator::new(None, v6("fd00:10:244:1::/64"), State::default()).expect("allocator");
    let (a, changed) = ipam.allocate("a").expect("allocate");
    assert!(changed);
    assert_eq!(a.ipv4, None);
    assert_eq!(a.ipv6, Some(ip6("fd00:10:244:1::2")));
    assert_eq!(
        ipam.allocate("b").expect("allocate").0.ipv6,
        Some(ip6("fd00:10:244:1::3"))
    );
}

#[test]
fn dual_stack_gives_one_address_of_each_family() {
    let mut ipam = Allocator::new(
        v4("10.244.1.0/24"),
        v6("fd00:10:244:1::/64"),
        State::default(),
    )
    .expect("allocator");
    let (a, _) = ipam.allocate("a").expect("allocate");
    assert_eq!(a.ipv4, Some(ip4("10.244.1.2")));
    assert_eq!(a.ipv6, Some(ip6("fd00:10:244:1::2")));
}

#[test]
fn allocating_twice_for_one_pod_returns_the_same_addresses_without_a_change() {
    let mut ipam = Allocator::new(
        v4("10.244.1.0/24"),
        v6("fd00:10:244:1::/64"),
        State::default(),
    )
    .expect("allocator");
    let (first, _) = ipam.allocate("a").expect("allocate");
    let (again, changed) = ipam.allocate("a").expect("allocate");
    assert_eq!(first, again);
    assert!(!changed, "nothing to persist");
}

#[test]
fn a_pod_that_holds_one_family_gets_the_missing_one_when_the_node_gains_it() {
    let mut ipam = Allocator::new(v4("10.244.1.0/24"), None, State::default()).expect("allocator");
    let (a, _) = ipam.allocate("a").expect("allocate");
    let mut ipam = Allocator::new(v4("10.244.1.0/24"), v6("fd00::/64"), ipam.state().clone())
        .expect("allocator");
    let (b, changed) = ipam.allocate("a").expect("allocate");
    assert!(changed);
    assert_eq!(b.ipv4, a.ipv4);
    assert_eq!(b.ipv6, Some(ip6("fd00::2")));
}

#[test]
fn released_addresses_come_back_only_after_the_rest_of_the_range() {
    let mut ipam = Allocator::new(v4("10.244.1.0/29"), None, State::default()).expect("allocator");
    for pod in ["a", "b", "c"] {
        ipam.allocate(pod).expect("allocate");
    }
    assert_eq!(
        ipam.release("a").and_then(|a| a.ipv4),
        Some(ip4("10.244.1.2"))
    );
    assert_eq!(ipam.release("a"), None, "releasing twice is harmless");
    // Round-robin: .5 and .6 are still fresh, .2 comes back after them.
    let next: Vec<Ipv4Addr> = ["d", "e", "f"]
        .iter()
        .map(|pod| ipam.allocate(pod).expect("allocate").0.ipv4.expect("v4"))
        .collect();
    assert_eq!(
        next,
        vec![ip4("10.244.1.5"), ip4("10.244.1.6"), ip4("10.244.1.2")]
    );
}

#[test]
fn a_full_range_frees_up_when_a_pod_leaves() {
    let mut ipam = Allocator::new(v4("10.244.1.0/30"), None, State::default()).expect("allocator");
    assert_eq!(
        ipam.allocate("a").expect("allocate").0.ipv4,
        Some(ip4("10.244.1.2"))
    );
    assert!(matches!(
        ipam.allocate("b"),
        Err(Error::Exhausted { in_use: 1, .. })
    ));
    ipam.release("a");
    assert_eq!(
        ipam.allocate("b").expect("allocate").0.ipv4,
        Some(ip4("10.244.1.2"))
    );
}

#[test]
fn exhausting_one_family_leaves_the_other_untouched() {
    let mut ipam = Allocator::new(
        v4("10.244.1.0/30"),
        v6("fd00:10:244:1::/64"),
        State::default(),
    )
    .expect("allocator");
    ipam.allocate("a").expect("allocate");
    let before = ipam.state().clone();
    let err = ipam.allocate("b").expect_err("no IPv4 left");
    assert!(
        err.to_string()
            .contains("IPv4 pod CIDR 10.244.1.0/30 is exhausted"),
        "{err}"
    );
    assert_eq!(ipam.state(), &before);
}

#[test]
fn cidrs_without_a_usable_address_are_refused() {
    for cidr in ["10.0.0.0/31", "10.0.0.4/32"] {
        let err = Allocator::new(v4(cidr), None, State::default()).expect_err(cidr);
        assert!(
            matches!(
                err,
                Error::CidrTooSmall {
                    family: Family::V4,
                    ..
                }
            ),
            "{cidr}: {err}"
        );
    }
    for cidr in ["fd00::/127", "fd00::/128"] {
        let err = Allocator::new(None, v6(cidr), State::default()).expect_err(cidr);
        assert!(
            matches!(
                err,
                Error::CidrTooSmall {
                    family: Family::V6,
                    ..
                }
            ),
            "{cidr}: {err}"
        );
    }
    assert!(Allocator::new(v4("10.0.0.0/30"), v6("fd00::/126"), State::default()).is_ok());
}

#[test]
fn a_cidr_given_with_host_bits_counts_from_its_network() {
    let mut ipam = Allocator::new(v4("10.244.1.77/24"), None, State::default()).expect("allocator");
    assert_eq!(
        ipam.allocate("a").expect("allocate").0.ipv4,
        Some(ip4("10.244.1.2"))
    );
}

#[test]
fn pods_outside_a_changed_cidr_keep_their_addresses() {
    let mut ipam = Allocator::new(v4("10.244.1.0/24"), None, State::default()).expect("allocator");
    ipam.allocate("old").expect("allocate");
    let mut ipam =
        Allocator::new(v4("10.244.9.0/24"), None, ipam.state().clone()).expect("allocator");
    assert_eq!(
        ipam.allocate("old").expect("allocate").0.ipv4,
        Some(ip4("10.244.1.2"))
    );
    assert_eq!(
        ipam.allocate("new").expect("allocate").0.ipv4,
        Some(ip4("10.244.9.2"))
    );
}

#[test]
fn the_state_survives_a_save_and_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.json");
    assert_eq!(load(&path).expect("missing file"), State::default());

    let mut ipam = Allocator::new(
        v4("10.244.1.0/29"),
        v6("fd00:10:244:1::/64"),
        State::default(),
    )
    .expect("allocator");
    ipam.allocate("a").expect("allocate");
    ipam.allocate("b").expect("allocate");
    save(&path, ipam.state()).expect("save");

    let mut reopened = Allocator::new(
        v4("10.244.1.0/29"),
        v6("fd00:10:244:1::/64"),
        load(&path).expect("load"),
    )
    .expect("allocator");
    assert_eq!(reopened.get("a"), ipam.get("a"));
    let (c, _) = reopened.allocate("c").expect("allocate");
    assert_eq!(
        c.ipv4,
        Some(ip4("10.244.1.4")),
        "no address held before the restart is reused"
    );
    assert!(
        !path.with_extension("json.tmp").exists(),
        "no temporary file is left behind"
    );
}

#[test]
fn a_corrupt_state_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.json");
    std::fs::write(&path, b"{not json").expect("write");
    let err = load(&path).expect_err("corrupt");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    std::fs::write(&path, br#"{"version": 99, "pods": {}}"#).expect("write");
    let err = load(&path).expect_err("too new");
    assert!(err.to_string().contains("version 99"), "{err}");
}
