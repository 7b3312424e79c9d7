use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use serde_json::json;

use super::{desired_peer_routes, files::atomic_write, safe_join, worker::pre_stop_sleep};

fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"podCIDRs": cidrs},
        "status": {"addresses": ips.iter().map(|ip| json!({"type": "InternalIP", "address": ip})).collect::<Vec<_>>()}
    }))
    .expect("a node")
}

#[test]
fn peer_routes_go_to_every_other_node_per_family() {
    let nodes = [
        node(
            "n1",
            &["10.244.0.0/24", "fd00:10:244::/64"],
            &["172.20.0.11", "fd00:172:20::b"],
        ),
        node(
            "n2",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &["172.20.0.12", "fd00:172:20::c"],
        ),
        // No IPv6 address: only its IPv4 range is reachable.
        node(
            "n3",
            &["10.244.2.0/24", "fd00:10:244:2::/64"],
            &["172.20.0.13"],
        ),
    ];
    let routes = desired_peer_routes("n1", nodes.iter());
    let got: Vec<(String, String, String)> = routes
        .iter()
        .map(|r| (r.node.clone(), r.pod_cidr.to_string(), r.via.to_string()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("n2".into(), "10.244.1.0/24".into(), "172.20.0.12".into()),
            (
                "n2".into(),
                "fd00:10:244:1::/64".into(),
                "fd00:172:20::c".into()
            ),
            ("n3".into(), "10.244.2.0/24".into(), "172.20.0.13".into()),
        ]
    );
}

#[test]
fn volume_item_paths_cannot_leave_the_volume() {
    let dir = std::path::Path::new("/v");
    assert_eq!(safe_join(dir, "a/b"), Some(dir.join("a/b")));
    assert_eq!(safe_join(dir, "../etc/passwd"), None);
    assert_eq!(safe_join(dir, "/etc/passwd"), None);
    assert_eq!(safe_join(dir, "a/../../b"), None);
}

#[test]
fn atomic_writer_switches_content_through_data_link() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("vol");
    let mut files = BTreeMap::new();
    files.insert("greeting".to_owned(), (b"hello".to_vec(), 0o644));
    files.insert("nested/x".to_owned(), (b"1".to_vec(), 0o600));
    atomic_write(&dir, &files).expect("first write");
    assert_eq!(
        std::fs::read_to_string(dir.join("greeting")).expect("read"),
        "hello"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("nested/x")).expect("read"),
        "1"
    );
    let first = std::fs::read_link(dir.join("..data")).expect("..data");

    // The same content leaves everything as it is.
    atomic_write(&dir, &files).expect("same write");
    assert_eq!(
        std::fs::read_link(dir.join("..data")).expect("..data"),
        first
    );

    // New content: one switch, the removed key disappears, the old
    // timestamped directory is gone.
    files.insert("greeting".to_owned(), (b"bonjour".to_vec(), 0o644));
    files.remove("nested/x");
    atomic_write(&dir, &files).expect("update");
    assert_eq!(
        std::fs::read_to_string(dir.join("greeting")).expect("read"),
        "bonjour"
    );
    assert!(!dir.join("nested").exists(), "a removed key stays visible");
    assert!(!dir.join(&first).exists(), "the old data directory stays");

    // An item path outside the volume is refused and nothing changes.
    let mut bad = BTreeMap::new();
    bad.insert("../escape".to_owned(), (b"x".to_vec(), 0o644));
    assert!(atomic_write(&dir, &bad).is_err());
    assert!(!tmp.path().join("escape").exists());
}

#[test]
fn a_pre_stop_sleep_pauses_before_sigterm_within_the_grace_period() {
    use std::time::Duration;
    let hook = |v: serde_json::Value| -> k8s_openapi::api::core::v1::LifecycleHandler {
        serde_json::from_value(v).expect("a lifecycle handler")
    };
    let grace = Duration::from_secs(10);
    assert_eq!(
        pre_stop_sleep(&hook(json!({"sleep": {"seconds": 3}})), grace),
        Some(Duration::from_secs(3))
    );
    // Never past the grace period, never negative.
    assert_eq!(
        pre_stop_sleep(&hook(json!({"sleep": {"seconds": 60}})), grace),
        Some(grace)
    );
    assert_eq!(
        pre_stop_sleep(&hook(json!({"sleep": {"seconds": -1}})), grace),
        Some(Duration::ZERO)
    );
    // Other handlers are not a sleep.
    assert_eq!(
        pre_stop_sleep(&hook(json!({"exec": {"command": ["true"]}})), grace),
        None
    );
}

#[test]
fn a_pods_mounts_are_found_below_its_directory_with_escapes_undone() {
    let info = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:50 / /var/lib/shoal/pods/u1/volumes/cache rw,nosuid,nodev - tmpfs tmpfs rw,size=1024k
91 22 0:51 / /var/lib/shoal/pods/u1/volumes/my\\040secret rw - tmpfs tmpfs rw
92 22 0:52 / /var/lib/shoal/pods/u10/volumes/x rw - tmpfs tmpfs rw
";
    let found =
        super::tmpfs::mount_points_under(info, std::path::Path::new("/var/lib/shoal/pods/u1"));
    assert_eq!(
        found,
        [
            "/var/lib/shoal/pods/u1/volumes/cache",
            "/var/lib/shoal/pods/u1/volumes/my secret"
        ]
        .map(std::path::PathBuf::from)
    );
}
