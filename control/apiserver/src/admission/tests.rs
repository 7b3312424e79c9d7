use super::*;

#[test]
fn cidrs_parse_and_contain() {
    let v4 = Cidr::parse("10.96.0.0/16").expect("valid");
    assert!(v4.contains("10.96.255.254".parse().expect("ip")));
    assert!(!v4.contains("10.97.0.1".parse().expect("ip")));
    assert!(!v4.contains("fd00:10:96::1".parse().expect("ip")));
    let v6 = Cidr::parse("fd00:10:96::/112").expect("valid");
    assert!(v6.contains("fd00:10:96::a".parse().expect("ip")));
    assert!(Cidr::parse("10.96.0.0").is_err());
    assert!(Cidr::parse("10.96.0.0/33").is_err());
}

#[test]
fn allocation_skips_reserved_taken_network_and_broadcast() {
    let cidr = Cidr::parse("10.96.0.0/29").expect("valid");
    let reserved: Vec<IpAddr> = vec!["10.96.0.1".parse().expect("ip")];
    let taken: HashSet<IpAddr> = ["10.96.0.2", "10.96.0.3", "10.96.0.4", "10.96.0.5"]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
    for _ in 0..20 {
        assert_eq!(
            pick_ip(cidr, &reserved, |ip| taken.contains(&ip)),
            Some("10.96.0.6".parse().expect("ip"))
        );
    }
    let all: HashSet<IpAddr> = (1..7)
        .map(|i| format!("10.96.0.{i}").parse().expect("ip"))
        .collect();
    assert_eq!(pick_ip(cidr, &[], |ip| all.contains(&ip)), None);
}

#[test]
fn node_ports_stay_in_range() {
    for _ in 0..50 {
        let p = pick_port(|p| p % 2 == 0).expect("free ports exist");
        assert!(NODE_PORTS.contains(&p) && p % 2 == 1);
    }
}

#[test]
fn a_service_claims_what_it_gains_and_releases_what_it_gives_up() {
    let old = json!({
        "metadata": {"namespace": "default", "name": "web", "uid": "u1"},
        "spec": {"clusterIPs": ["10.96.0.7", "fd00:10:96::7"], "ports": [{"port": 80, "nodePort": 30080}]},
    });
    let created = service_claims(Some(&old), None);
    let keys: Vec<&str> = created.claim.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/registry/ipaddresses/10.96.0.7",
            "/registry/ipaddresses/fd00:10:96::7",
            "/registry/servicenodeports/30080"
        ]
    );
    assert_eq!(created.claim[0].1["kind"], "IPAddress");
    assert_eq!(created.claim[0].1["spec"]["parentRef"]["name"], "web");
    assert!(created.release.is_empty());

    // Back to ClusterIP, single-stack: the NodePort and the v6 address go.
    let new = json!({
        "metadata": {"namespace": "default", "name": "web", "uid": "u1"},
        "spec": {"clusterIPs": ["10.96.0.7"], "ports": [{"port": 80}]},
    });
    let updated = service_claims(Some(&new), Some(&old));
    assert!(updated.claim.is_empty());
    assert_eq!(
        updated.release,
        [
            "/registry/ipaddresses/fd00:10:96::7",
            "/registry/servicenodeports/30080"
        ]
    );
    let deleted = service_claims(None, Some(&new));
    assert_eq!(deleted.release, ["/registry/ipaddresses/10.96.0.7"]);
    // A headless Service holds nothing.
    let headless = json!({"spec": {"clusterIPs": ["None"]}});
    assert!(service_claims(Some(&headless), None).is_empty());
}
