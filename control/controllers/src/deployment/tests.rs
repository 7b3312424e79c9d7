use k8s_openapi::api::apps::v1::ReplicaSetStatus;

use super::*;

fn plan(spec: i32, available: i32) -> Plan {
    Plan {
        rs: ReplicaSet {
            spec: Some(ReplicaSetSpec {
                replicas: Some(spec),
                ..ReplicaSetSpec::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas: spec,
                available_replicas: Some(available),
                ready_replicas: Some(available),
                ..ReplicaSetStatus::default()
            }),
            ..ReplicaSet::default()
        },
        replicas: spec,
    }
}

fn replicas(plans: &[Plan]) -> Vec<i32> {
    plans.iter().map(|p| p.replicas).collect()
}

#[test]
fn a_rolling_update_surges_then_waits_for_availability() {
    // 4 replicas, 25 %: surge 1, unavailable 1.
    let mut plans = vec![plan(4, 4), plan(0, 0)];
    roll(&mut plans, 1, 4, 1, 1);
    assert_eq!(
        replicas(&plans),
        [3, 1],
        "one surged, one old removed within maxUnavailable"
    );
    // Nothing new is available yet: no further step.
    let mut plans = vec![plan(3, 3), plan(1, 0)];
    roll(&mut plans, 1, 4, 1, 1);
    assert_eq!(replicas(&plans), [3, 2]);
    let mut plans = vec![plan(3, 3), plan(2, 0)];
    roll(&mut plans, 1, 4, 1, 1);
    assert_eq!(replicas(&plans), [3, 2], "5 pods, 3 available: wait");
    let mut plans = vec![plan(3, 3), plan(2, 2)];
    roll(&mut plans, 1, 4, 1, 1);
    assert_eq!(replicas(&plans), [1, 2], "two more old ones may go");
    let mut plans = vec![plan(0, 0), plan(4, 4)];
    roll(&mut plans, 1, 4, 1, 1);
    assert_eq!(replicas(&plans), [0, 4]);
}

#[test]
fn unavailable_old_replicas_go_first_and_scaling_down_the_new_one_is_immediate() {
    let mut plans = vec![plan(3, 0), plan(3, 3)];
    roll(&mut plans, 1, 3, 1, 0);
    assert_eq!(replicas(&plans), [0, 3]);
    let mut plans = vec![plan(5, 5)];
    roll(&mut plans, 0, 1, 1, 0);
    assert_eq!(replicas(&plans), [1]);
}

#[test]
fn percentages_round_surge_up_and_unavailable_down() {
    let pct = IntOrString::String("25%".into());
    assert_eq!(scaled(Some(&pct), 3, true), 1);
    assert_eq!(scaled(Some(&pct), 3, false), 0);
    assert_eq!(scaled(None, 10, true), 3);
    assert_eq!(scaled(Some(&IntOrString::Int(2)), 10, false), 2);
}

#[test]
fn the_hash_uses_the_safe_alphabet_and_changes_with_template_and_collisions() {
    let a = PodTemplateSpec::default();
    let b = PodTemplateSpec {
        metadata: Some(kube::api::ObjectMeta {
            labels: Some([("app".to_string(), "x".to_string())].into()),
            ..Default::default()
        }),
        ..PodTemplateSpec::default()
    };
    let ha = pod_template_hash(&a, None);
    assert!(ha.bytes().all(|c| SAFE_ALPHABET.contains(&c)), "{ha}");
    assert_eq!(ha, pod_template_hash(&a, None));
    assert_ne!(ha, pod_template_hash(&b, None));
    assert_ne!(ha, pod_template_hash(&a, Some(1)));
}
