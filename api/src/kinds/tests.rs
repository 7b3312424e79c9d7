use super::*;

#[test]
fn every_resource_is_unique_within_its_group_version() {
    for (i, a) in KINDS.iter().enumerate() {
        for b in &KINDS[i + 1..] {
            assert!(
                !(a.group == b.group && a.version == b.version && a.plural == b.plural),
                "{} served twice in {}",
                a.plural,
                a.api_version()
            );
        }
    }
}

#[test]
fn short_names_resolve_to_one_kind_per_group() {
    let pods = find_resource("", "v1", "pods").map(|k| k.short_names);
    assert_eq!(pods, Some(&["po"][..]));
    assert_eq!(
        find_kind("apps/v1", "Deployment").map(|k| k.plural),
        Some("deployments")
    );
    assert_eq!(find_kind("v1", "Deployment"), None);
}

#[test]
fn storage_keeps_kubernetes_layout_and_separates_shared_plurals() {
    let pods = find_resource("", "v1", "pods").map(Kind::storage_prefix);
    assert_eq!(pods.as_deref(), Some("/registry/pods/"));
    let deploy = find_resource("apps", "v1", "deployments").map(Kind::storage_prefix);
    assert_eq!(deploy.as_deref(), Some("/registry/deployments/"));
    let core = find_resource("", "v1", "events").map(Kind::storage_prefix);
    let new = find_resource("events.k8s.io", "v1", "events").map(Kind::storage_prefix);
    assert_ne!(core, new);
}

#[test]
fn core_group_comes_first_in_discovery() {
    let groups = groups();
    assert_eq!(groups.first().map(|g| g.0), Some(""));
    assert!(groups.iter().any(|(g, v)| *g == "apps" && v == &["v1"]));
}
