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
