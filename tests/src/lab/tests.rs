use std::path::Path;

use super::*;

#[test]
fn hosts_are_numbered_from_ten_in_both_families() {
    let host = Host::new("lab", 1, Path::new("/sys/fs/cgroup/unified/shoal-lab"));
    assert_eq!(host.name(), "host-1");
    assert_eq!(host.netns(), "shoal-lab-host-1");
    assert_eq!(host.ipv4(), Ipv4Addr::new(172, 20, 0, 11));
    assert_eq!(host.ipv6().to_string(), "fd00:172:20::b");
    assert_eq!(
        host.cgroup(),
        Path::new("/sys/fs/cgroup/unified/shoal-lab/host-1")
    );
    assert_eq!(host.pin_dir(), Path::new("/sys/fs/bpf/shoal/lab-host-1"));
    assert_eq!(host.v6(80).to_string(), "[fd00:172:20::b]:80");

    let last = Host::new("lab", MAX_HOSTS, Path::new("/x"));
    assert_eq!(last.ipv4(), Ipv4Addr::new(172, 20, 0, 210));
}

#[test]
fn only_exact_lab_names_belong_to_a_prefix() {
    assert_eq!(member("lab", "shoal-lab-fabric"), Some(Member::Fabric));
    assert_eq!(member("lab", "shoal-lab-host-12"), Some(Member::Host(12)));
    // Another lab whose prefix starts with ours is not ours.
    assert_eq!(member("lab", "shoal-lab-host-host-1"), None);
    assert_eq!(member("lab", "shoal-lab2-host-1"), None);
    assert_eq!(member("lab", "shoal-lab-host-01"), None);
    assert_eq!(member("lab", "shoal-lab-host-"), None);
    assert_eq!(member("lab", "lab-host-1"), None);
    assert_eq!(
        member("a-host", "shoal-a-host-host-1"),
        Some(Member::Host(1))
    );
    assert_eq!(member("a", "shoal-a-host-host-1"), None);
}

#[test]
fn prefixes_must_be_usable_in_names() {
    for good in ["lab", "t123n0", "a-b", "x"] {
        assert!(check_prefix(good).is_ok(), "{good}");
    }
    for bad in ["", "Lab", "a b", "a/b", "-a", "a-", "a_b", &"x".repeat(33)] {
        let err = check_prefix(bad).expect_err(bad).to_string();
        assert!(err.starts_with("invalid lab prefix"), "{err}");
    }
}

#[test]
fn test_prefixes_carry_their_pid() {
    assert_eq!(test_prefix_pid("t123n4"), Some(123));
    assert_eq!(test_prefix_pid("lab"), None);
    assert_eq!(test_prefix_pid("t12"), None);
    assert_eq!(test_prefix_pid("tn1"), None);
    assert_eq!(test_prefix_pid("t1n"), None);
}

#[test]
fn unique_prefixes_differ() {
    let (a, b) = (Lab::unique_prefix(), Lab::unique_prefix());
    assert_ne!(a, b);
    assert!(check_prefix(&a).is_ok());
}

#[test]
fn mountinfo_gives_points_and_types() {
    let text = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                42 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw\n\
                50 27 0:5 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";
    let mounts = mounts::parse(text);
    assert_eq!(mounts.len(), 3);
    assert_eq!(mounts[0].point, Path::new("/sys/fs/cgroup/unified"));
    assert_eq!(mounts[0].fstype, "cgroup2");
    assert_eq!(mounts[1].fstype, "ext4");
    assert_eq!(mounts[2].point, Path::new("/mnt/with space"));
}

#[test]
fn removed_says_what_went() {
    assert_eq!(Removed::default().to_string(), "nothing");
    let removed = Removed {
        killed: 2,
        netns: vec!["shoal-lab-host-1".into()],
        cgroups: vec![],
        pin_dirs: vec![],
    };
    assert_eq!(
        removed.to_string(),
        "killed 2 process(es); netns shoal-lab-host-1"
    );
}
