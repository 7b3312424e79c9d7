use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn label_set_holds_pod_namespace_and_namespace_labels_without_rollout_hashes() {
    let pod = labels(&[("app", "web"), ("pod-template-hash", "5d8f")]);
    let ns = labels(&[("team", "blue")]);
    let set = security_labels(&pod, "prod", &ns);
    assert_eq!(
        set,
        labels(&[
            ("app", "web"),
            ("io.kubernetes.pod.namespace", "prod"),
            ("shoal.io/namespace.labels.team", "blue"),
        ])
    );
    assert_eq!(pod_labels(&set), labels(&[("app", "web")]));
    assert_eq!(namespace_labels(&set), ns);
    assert_eq!(namespace(&set), Some("prod"));
}

#[test]
fn preferred_number_is_stable_in_range_and_tells_sets_apart() {
    let a = security_labels(&labels(&[("app", "web")]), "default", &labels(&[]));
    let b = security_labels(&labels(&[("app", "web")]), "other", &labels(&[]));
    let n = preferred_number(&a);
    assert!((MIN..=MAX).contains(&n));
    assert_eq!(n, preferred_number(&a.clone()));
    assert_ne!(n, preferred_number(&b));
    // Pinned: every node and every build must compute the same number.
    assert_eq!(preferred_number(&labels(&[("a", "b")])), 983);
    let ab = labels(&[("ab", "c")]);
    let a_bc = labels(&[("a", "bc")]);
    assert_ne!(preferred_number(&ab), preferred_number(&a_bc));
}

#[test]
fn probing_wraps_inside_the_cluster_range() {
    assert_eq!(next_number(300), 301);
    assert_eq!(next_number(MAX), MIN);
}

#[test]
fn names_are_numbers_in_range() {
    assert_eq!(parse_name("256"), Some(256));
    assert_eq!(parse_name("65535"), Some(65_535));
    assert_eq!(parse_name("255"), None);
    assert_eq!(parse_name("0300"), None);
    assert_eq!(parse_name("web"), None);
}

#[test]
fn object_round_trips_its_labels() {
    let set = labels(&[("app", "web"), ("io.kubernetes.pod.namespace", "default")]);
    let obj = object(4242, &set);
    assert_eq!(obj["metadata"]["name"], "4242");
    assert_eq!(labels_of(&obj), Some(set));
    assert_eq!(
        labels_of(&serde_json::json!({"securityLabels": {"a": 1}})),
        None
    );
}
