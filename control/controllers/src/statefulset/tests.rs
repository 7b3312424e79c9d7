use serde_json::{Value, json};

use super::*;

const NOW: &str = "2026-01-01T01:00:00Z";

fn set(spec: Value) -> anyhow::Result<StatefulSet> {
    let mut full = json!({
        "replicas": 3, "serviceName": "web", "podManagementPolicy": "OrderedReady",
        "selector": {"matchLabels": {"app": "web"}},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
        "template": {"metadata": {"labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "c", "image": "nginx"}]}},
        "volumeClaimTemplates": [{"metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
    });
    if let (Some(full), Some(spec)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(spec.clone());
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "s", "generation": 1},
        "spec": full,
    }))?)
}

/// Pod `web-<i>` at `rev`, Running and Ready or Pending.
fn pod(i: i32, rev: &str, ready: bool) -> anyhow::Result<Pod> {
    let (phase, status) = if ready {
        ("Running", "True")
    } else {
        ("Pending", "False")
    };
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("web-{i}"), "labels": {"app": "web", REVISION_HASH_LABEL: rev}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
        "status": {"phase": phase, "conditions": [
            {"type": "Ready", "status": status, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    }))?)
}

fn pods(spec: &[(i32, &str, bool)]) -> anyhow::Result<Vec<Pod>> {
    spec.iter().map(|(i, r, ok)| pod(*i, r, *ok)).collect()
}

/// (what, set, pods, creates, deletes)
type Case<'a> = (
    &'a str,
    &'a StatefulSet,
    Vec<Pod>,
    Vec<(i32, bool)>,
    Vec<&'a str>,
);

#[test]
fn ordered_ready_makes_one_pod_at_a_time_and_parallel_all_at_once() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let ordered = set(json!({}))?;
    let parallel = set(json!({"podManagementPolicy": "Parallel"}))?;
    let table: Vec<Case> = vec![
        (
            "empty: web-0 first",
            &ordered,
            vec![],
            vec![(0, true)],
            vec![],
        ),
        (
            "web-0 not ready: wait",
            &ordered,
            pods(&[(0, "r1", false)])?,
            vec![],
            vec![],
        ),
        (
            "web-0 ready: web-1",
            &ordered,
            pods(&[(0, "r1", true)])?,
            vec![(1, true)],
            vec![],
        ),
        (
            "parallel: all",
            &parallel,
            vec![],
            vec![(0, true), (1, true), (2, true)],
            vec![],
        ),
        (
            "scale down from the top, one at a time",
            &ordered,
            pods(&[
                (0, "r1", true),
                (1, "r1", true),
                (2, "r1", true),
                (3, "r1", true),
                (4, "r1", true),
            ])?,
            vec![],
            vec!["web-4"],
        ),
        (
            "parallel scale down: all at once",
            &parallel,
            pods(&[
                (0, "r1", true),
                (1, "r1", true),
                (2, "r1", true),
                (3, "r1", true),
                (4, "r1", true),
            ])?,
            vec![],
            vec!["web-4", "web-3"],
        ),
        (
            "no scale down while a lower pod is unready",
            &ordered,
            pods(&[
                (0, "r1", true),
                (1, "r1", false),
                (2, "r1", true),
                (3, "r1", true),
            ])?,
            vec![],
            vec![],
        ),
    ];
    for (what, s, existing, creates, deletes) in table {
        let p = plan(s, &existing, &[], ("r1", "r1"), now);
        assert_eq!(p.create, creates, "{what}");
        assert_eq!(p.delete, deletes, "{what}");
    }
    Ok(())
}

#[test]
fn a_rolling_update_goes_from_the_top_down_to_the_partition() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let s = set(json!({}))?;
    let old = pods(&[(0, "r1", true), (1, "r1", true), (2, "r1", true)])?;
    assert_eq!(plan(&s, &old, &[], ("r1", "r2"), now).delete, ["web-2"]);
    // web-2 recreated at r2 but not ready: wait.
    let mid = pods(&[(0, "r1", true), (1, "r1", true), (2, "r2", false)])?;
    assert!(plan(&s, &mid, &[], ("r1", "r2"), now).delete.is_empty());
    let next = pods(&[(0, "r1", true), (1, "r1", true), (2, "r2", true)])?;
    assert_eq!(plan(&s, &next, &[], ("r1", "r2"), now).delete, ["web-1"]);
    // Partition 2: web-0 and web-1 stay at r1; a missing web-1 comes back at r1.
    let part = set(
        json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}}),
    )?;
    assert!(plan(&part, &next, &[], ("r1", "r2"), now).delete.is_empty());
    let gap = pods(&[(0, "r1", true), (2, "r2", true)])?;
    assert_eq!(
        plan(&part, &gap, &[], ("r1", "r2"), now).create,
        [(1, false)]
    );
    // OnDelete: nothing goes by itself.
    let od = set(json!({"updateStrategy": {"type": "OnDelete"}}))?;
    assert!(plan(&od, &old, &[], ("r1", "r2"), now).delete.is_empty());
    // All updated: r2 becomes the current revision.
    let done = pods(&[(0, "r2", true), (1, "r2", true), (2, "r2", true)])?;
    let p = plan(&s, &done, &[], ("r1", "r2"), now);
    assert_eq!(p.status.current_revision.as_deref(), Some("r2"));
    assert_eq!(
        (
            p.status.replicas,
            p.status.ready_replicas,
            p.status.updated_replicas
        ),
        (3, Some(3), Some(3))
    );
    Ok(())
}

#[test]
fn claims_stay_on_scale_down_unless_the_policy_deletes_them() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let existing = pods(&[(0, "r1", true)])?;
    let claims: Vec<String> = (0..3).map(|i| claim_name("data", "web", i)).collect();
    let retain = set(json!({"replicas": 1}))?;
    assert!(
        plan(&retain, &existing, &claims, ("r1", "r1"), now)
            .delete_claims
            .is_empty()
    );
    let delete = set(json!({"replicas": 1,
        "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Retain"}}))?;
    assert_eq!(
        plan(&delete, &existing, &claims, ("r1", "r1"), now).delete_claims,
        ["data-web-1", "data-web-2"]
    );
    Ok(())
}

#[test]
fn a_pod_has_its_stable_identity_and_claims() -> anyhow::Result<()> {
    let s = set(json!({}))?;
    let template = s.spec.clone().unwrap_or_default().template;
    let p = new_pod(&s, &template, "web-abc", 2);
    assert_eq!(p.name_any(), "web-2");
    let labels = p.labels();
    assert_eq!(
        labels.get(POD_NAME_LABEL).map(String::as_str),
        Some("web-2")
    );
    assert_eq!(labels.get(POD_INDEX_LABEL).map(String::as_str), Some("2"));
    assert_eq!(
        labels.get(REVISION_HASH_LABEL).map(String::as_str),
        Some("web-abc")
    );
    let spec = p.spec.unwrap_or_default();
    assert_eq!(spec.hostname.as_deref(), Some("web-2"));
    assert_eq!(spec.subdomain.as_deref(), Some("web"));
    let volumes = spec.volumes.unwrap_or_default();
    assert_eq!(
        volumes[0]
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str()),
        Some("data-web-2")
    );
    let claims = new_claims(&s, 2);
    assert_eq!(claims[0].name_any(), "data-web-2");
    assert_eq!(
        claims[0].labels().get("app").map(String::as_str),
        Some("web")
    );
    assert!(
        claims[0].metadata.owner_references.is_none(),
        "Retain: the claim outlives the set"
    );
    Ok(())
}
