use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn pools(list: &[&str]) -> Config {
    Config {
        pools: list.iter().map(|p| p.parse().expect("test pool")).collect(),
    }
}

#[test]
fn services_get_the_lowest_free_address_per_family_skipping_first_and_last() -> anyhow::Result<()> {
    let mut alloc = Allocator::new(&Config::default());
    assert_eq!(
        alloc.assign("ns/a", &[Family::V4, Family::V6], &[])?,
        vec![ip("10.250.0.1"), ip("fd00:10:250::1")]
    );
    assert_eq!(
        alloc.assign("ns/b", &[Family::V6], &[])?,
        vec![ip("fd00:10:250::2")]
    );
    assert_eq!(
        alloc.assign("ns/c", &[Family::V4], &[])?,
        vec![ip("10.250.0.2")]
    );
    // Assigning again keeps what a Service holds.
    assert_eq!(
        alloc.assign("ns/a", &[Family::V4, Family::V6], &[])?,
        vec![ip("10.250.0.1"), ip("fd00:10:250::1")]
    );
    alloc.release("ns/a");
    assert_eq!(
        alloc.assign("ns/d", &[Family::V4], &[])?,
        vec![ip("10.250.0.1")],
        "a released address is the next one handed out"
    );
    Ok(())
}

#[test]
fn a_full_pool_names_itself_takes_nothing_and_frees_up_on_release() -> anyhow::Result<()> {
    // A /30 has two usable addresses: .1 and .2 (.0 and .3 are skipped).
    let mut alloc = Allocator::new(&pools(&["10.0.0.0/30", "fd00::/126"]));
    alloc.assign("ns/a", &[Family::V4], &[])?;
    alloc.assign("ns/b", &[Family::V4], &[])?;
    let err = alloc.assign("ns/c", &[Family::V6, Family::V4], &[]).err();
    assert_eq!(
        err.as_ref().map(ToString::to_string).as_deref(),
        Some(
            "no free IPv4 address left in the LoadBalancer pool 10.0.0.0/30 (2 in use); delete an unused LoadBalancer Service or widen the pool (shoal server --lb-pool)"
        )
    );
    assert!(
        alloc.held("ns/c").is_empty(),
        "the IPv6 address taken first went back"
    );
    alloc.release("ns/b");
    assert_eq!(
        alloc.assign("ns/c", &[Family::V6, Family::V4], &[])?,
        vec![ip("fd00::1"), ip("10.0.0.2")]
    );
    Ok(())
}

#[test]
fn tiny_pools_hand_out_every_address_and_later_pools_are_used_when_one_is_full()
-> anyhow::Result<()> {
    let mut alloc = Allocator::new(&pools(&["192.0.2.7/32", "198.51.100.0/31"]));
    assert_eq!(
        alloc.assign("ns/a", &[Family::V4], &[])?,
        vec![ip("192.0.2.7")]
    );
    assert_eq!(
        alloc.assign("ns/b", &[Family::V4], &[])?,
        vec![ip("198.51.100.0")]
    );
    assert_eq!(
        alloc.assign("ns/c", &[Family::V4], &[])?,
        vec![ip("198.51.100.1")]
    );
    assert!(alloc.assign("ns/d", &[Family::V4], &[]).is_err());
    assert_eq!(
        alloc.assign("ns/e", &[Family::V6], &[]),
        Err(AllocError::NoPool { family: Family::V6 })
    );
    Ok(())
}

#[test]
fn requested_addresses_are_given_if_free_and_in_a_pool() -> anyhow::Result<()> {
    let mut alloc = Allocator::new(&Config::default());
    assert_eq!(
        alloc.assign("ns/a", &[Family::V4, Family::V6], &[ip("10.250.0.77")])?,
        vec![ip("10.250.0.77"), ip("fd00:10:250::1")],
        "the family without a request gets the lowest free address"
    );
    assert_eq!(
        alloc.assign("ns/b", &[Family::V4], &[ip("10.250.0.77")]),
        Err(AllocError::Taken {
            ip: ip("10.250.0.77"),
            owner: "ns/a".into()
        })
    );
    assert!(matches!(
        alloc.assign("ns/b", &[Family::V4], &[ip("192.168.1.1")]),
        Err(AllocError::OutsidePools { .. })
    ));
    assert!(
        matches!(
            alloc.assign("ns/b", &[Family::V4], &[ip("10.250.0.255")]),
            Err(AllocError::OutsidePools { .. })
        ),
        "the pool's broadcast address is not handed out"
    );
    // Changing the request moves the Service and frees the old address.
    assert_eq!(
        alloc.assign("ns/a", &[Family::V4], &[ip("10.250.0.78")])?,
        vec![ip("10.250.0.78")]
    );
    assert_eq!(
        alloc.assign("ns/b", &[Family::V4], &[ip("10.250.0.77")])?,
        vec![ip("10.250.0.77")]
    );
    assert_eq!(
        alloc.assign("ns/c", &[Family::V6], &[])?,
        vec![ip("fd00:10:250::1")],
        "ns/a's IPv6 address went back when it became single-stack"
    );
    Ok(())
}

#[test]
fn claims_from_status_are_first_come_and_never_double_booked() -> anyhow::Result<()> {
    let mut alloc = Allocator::new(&Config::default());
    assert!(alloc.claim("ns/old", ip("10.250.0.1")));
    assert!(!alloc.claim("ns/new", ip("10.250.0.1")));
    assert!(!alloc.claim("ns/new", ip("10.99.0.1")), "outside the pools");
    assert_eq!(
        alloc.assign("ns/new", &[Family::V4], &[])?,
        vec![ip("10.250.0.2")]
    );
    assert_eq!(
        alloc.assign("ns/old", &[Family::V4], &[])?,
        vec![ip("10.250.0.1")]
    );
    Ok(())
}

fn service(value: serde_json::Value) -> Service {
    serde_json::from_value(value).expect("test service")
}

#[test]
fn requests_come_from_the_spec_and_the_cilium_and_metallb_annotations() {
    let svc = service(json!({
        "metadata": {"name": "web", "namespace": "ns", "annotations": {
            "lbipam.cilium.io/ips": "10.250.0.9, fd00:10:250::9",
        }},
        "spec": {"type": "LoadBalancer"},
    }));
    assert_eq!(
        requested(&svc),
        Ok(vec![ip("10.250.0.9"), ip("fd00:10:250::9")])
    );
    let svc = service(json!({
        "metadata": {"name": "web", "namespace": "ns", "annotations": {
            "metallb.io/loadBalancerIPs": "10.250.0.9,10.250.0.10",
        }},
        "spec": {"type": "LoadBalancer", "loadBalancerIP": "10.250.0.9"},
    }));
    assert_eq!(
        requested(&svc),
        Err("annotation metallb.io/loadBalancerIPs: 10.250.0.10 asks for a second IPv4 address; a Service gets one per family".into())
    );
    let svc = service(json!({
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": {"type": "LoadBalancer", "loadBalancerIP": "ten"},
    }));
    assert_eq!(
        requested(&svc),
        Err("spec.loadBalancerIP: \"ten\" is not an IP address".into())
    );
}

#[test]
fn only_classless_load_balancers_are_managed() {
    let lb = |spec: serde_json::Value| service(json!({"metadata": {"name": "x"}, "spec": spec}));
    assert!(managed(&lb(json!({"type": "LoadBalancer"}))));
    assert!(!managed(&lb(json!({"type": "NodePort"}))));
    assert!(!managed(&lb(
        json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/other"})
    )));
}
