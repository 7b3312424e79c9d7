use super::*;

#[test]
fn host_veth_names_are_short_stable_and_distinct() {
    let a = host_veth_name("6f1c1f4e-2d3b-4b8e-9d6a-0c1e2f3a4b5c");
    let b = host_veth_name("6f1c1f4e-2d3b-4b8e-9d6a-0c1e2f3a4b5d");
    assert_eq!(a.len(), 15, "the kernel's IFNAMSIZ limit");
    assert!(a.starts_with(HOST_VETH_PREFIX));
    assert!(a[3..].bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
    assert_eq!(a, host_veth_name("6f1c1f4e-2d3b-4b8e-9d6a-0c1e2f3a4b5c"));
    // Pinned: adoption after an upgrade finds veths by this name.
    assert_eq!(host_veth_name("pod-a"), "shl4977d9352ce5");
}

#[test]
fn pod_uids_that_are_not_plain_file_names_are_refused() {
    assert!(validate_pod_uid("6f1c1f4e-2d3b-4b8e-9d6a-0c1e2f3a4b5c").is_ok());
    for bad in [
        "",
        ".",
        "..",
        "../etc",
        "a/b",
        "a b",
        ".hidden",
        &"x".repeat(129),
    ] {
        let err = validate_pod_uid(bad).expect_err(bad);
        assert!(err.to_string().starts_with("pod uid "), "{err}");
    }
}

#[test]
fn route_keys_read_destination_and_gateway() {
    let route = peer_route_message(
        "10.244.2.0/24".parse().expect("cidr"),
        "172.31.0.2".parse().expect("ip"),
    )
    .expect("same family");
    assert_eq!(
        route_key(&route),
        Some((
            "10.244.2.0/24".parse().expect("cidr"),
            "172.31.0.2".parse().expect("ip")
        ))
    );
    assert_eq!(u8::from(route.header.protocol), RTPROT_SHOAL_PEER);
    assert!(is_main_table(&route));
    assert!(
        peer_route_message(
            "10.244.2.0/24".parse().expect("cidr"),
            "fd00::2".parse().expect("ip")
        )
        .is_none()
    );
}

#[test]
fn a_network_can_be_shared_between_tasks() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<Network>();
}
