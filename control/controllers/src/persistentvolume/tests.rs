use std::collections::HashSet;

use k8s_openapi::api::{
    core::v1::{PersistentVolume, PersistentVolumeClaim},
    storage::v1::StorageClass,
};
use serde_json::{Value, json};

use super::{Decision, decide, local_path_volume};

fn pv(name: &str, class: &str, size: &str, modes: &[&str], extra: Value) -> PersistentVolume {
    let mut v = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"tier": "fast"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": modes,
            "storageClassName": class,
            "hostPath": {"path": format!("/tmp/{name}")},
        },
        "status": {"phase": "Available"},
    });
    merge(&mut v, extra);
    serde_json::from_value(v).expect("a valid PersistentVolume")
}

fn pvc(class: Option<&str>, size: &str, modes: &[&str], extra: Value) -> PersistentVolumeClaim {
    let mut c = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "default", "uid": "u-1"},
        "spec": {"accessModes": modes, "resources": {"requests": {"storage": size}}},
    });
    if let Some(class) = class {
        c["spec"]["storageClassName"] = json!(class);
    }
    merge(&mut c, extra);
    serde_json::from_value(c).expect("a valid PersistentVolumeClaim")
}

fn class(name: &str, provisioner: &str, mode: &str) -> StorageClass {
    serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": provisioner,
        "volumeBindingMode": mode,
        "reclaimPolicy": "Delete",
    }))
    .expect("a valid StorageClass")
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn bind(name: &str) -> Decision {
    Decision::Bind(name.into())
}

#[test]
fn claims_bind_to_the_smallest_volume_that_fits() {
    let rwo = &["ReadWriteOnce"];
    let volumes = [
        pv("big", "", "10Gi", rwo, json!({})),
        pv("small", "", "1Gi", rwo, json!({})),
        pv("tiny", "", "100Mi", rwo, json!({})),
        pv("rwx", "", "5Gi", &["ReadWriteMany"], json!({})),
        pv("gold", "gold", "2Gi", rwo, json!({})),
        pv(
            "block",
            "",
            "3Gi",
            rwo,
            json!({"spec": {"volumeMode": "Block"}}),
        ),
        pv(
            "claimed",
            "",
            "1Gi",
            rwo,
            json!({"spec": {"claimRef": {"namespace": "other", "name": "x", "uid": "u-9"}}}),
        ),
        pv(
            "released",
            "",
            "1Gi",
            rwo,
            json!({"status": {"phase": "Released"}}),
        ),
        pv(
            "slow",
            "",
            "1Gi",
            rwo,
            json!({"metadata": {"labels": {"tier": "slow"}}}),
        ),
    ];
    let none = HashSet::new();
    let cases: Vec<(&str, PersistentVolumeClaim, HashSet<String>, Decision)> = vec![
        (
            "smallest that fits",
            pvc(Some(""), "500Mi", rwo, json!({})),
            none.clone(),
            bind("small"),
        ),
        (
            "exact size",
            pvc(Some(""), "100Mi", rwo, json!({})),
            none.clone(),
            bind("tiny"),
        ),
        (
            "larger request",
            pvc(Some(""), "4Gi", rwo, json!({})),
            none.clone(),
            bind("big"),
        ),
        (
            "access modes must all be offered",
            pvc(Some(""), "1Gi", &["ReadWriteMany"], json!({})),
            none.clone(),
            bind("rwx"),
        ),
        (
            "class must match",
            pvc(Some("gold"), "1Gi", rwo, json!({})),
            none.clone(),
            bind("gold"),
        ),
        (
            "volumeMode must match",
            pvc(
                Some(""),
                "1Gi",
                rwo,
                json!({"spec": {"volumeMode": "Block"}}),
            ),
            none.clone(),
            bind("block"),
        ),
        (
            "selector",
            pvc(
                Some(""),
                "1Gi",
                rwo,
                json!({"spec": {"selector": {"matchLabels": {"tier": "slow"}}}}),
            ),
            none.clone(),
            bind("slow"),
        ),
        (
            "volumes bound this pass are skipped",
            pvc(Some(""), "500Mi", rwo, json!({})),
            HashSet::from(["small".to_string(), "slow".to_string()]),
            bind("big"),
        ),
        (
            "volumeName pre-binding",
            pvc(Some(""), "1Gi", rwo, json!({"spec": {"volumeName": "big"}})),
            none.clone(),
            bind("big"),
        ),
        (
            "volumeName of a volume claimed by another",
            pvc(
                Some(""),
                "1Gi",
                rwo,
                json!({"spec": {"volumeName": "claimed"}}),
            ),
            none.clone(),
            Decision::Fail(
                "FailedBinding",
                "volume named by spec.volumeName is not available".into(),
            ),
        ),
        (
            "claimRef pre-binding wins over a smaller volume",
            pvc(
                Some(""),
                "1Gi",
                rwo,
                json!({"metadata": {"name": "x", "namespace": "other", "uid": "u-9"}}),
            ),
            none.clone(),
            bind("claimed"),
        ),
        (
            "nothing fits and no class",
            pvc(Some(""), "20Gi", rwo, json!({})),
            none.clone(),
            Decision::Fail(
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set".into(),
            ),
        ),
        (
            "unknown class",
            pvc(Some("silver"), "1Gi", rwo, json!({})),
            none.clone(),
            Decision::Fail(
                "ProvisioningFailed",
                "storageclass.storage.k8s.io \"silver\" not found".into(),
            ),
        ),
    ];
    for (name, claim, taken, want) in cases {
        let class = None;
        assert_eq!(
            decide(&claim, volumes.iter(), class, &taken),
            want,
            "{name}"
        );
    }
}

#[test]
fn local_path_claims_wait_for_a_consumer_then_are_provisioned_on_its_node() {
    let local = class(
        "local-path",
        super::LOCAL_PATH_PROVISIONER,
        "WaitForFirstConsumer",
    );
    let volumes: Vec<PersistentVolume> = Vec::new();
    let none = HashSet::new();
    let waiting = pvc(Some("local-path"), "1Gi", &["ReadWriteOnce"], json!({}));
    assert_eq!(
        decide(&waiting, volumes.iter(), Some(&local), &none),
        Decision::WaitForConsumer
    );
    let selected = pvc(
        Some("local-path"),
        "1Gi",
        &["ReadWriteOnce"],
        json!({"metadata": {"annotations": {super::SELECTED_NODE: "node-b"}}}),
    );
    assert_eq!(
        decide(&selected, volumes.iter(), Some(&local), &none),
        Decision::Provision("node-b".into())
    );
    let immediate = class("local-now", super::LOCAL_PATH_PROVISIONER, "Immediate");
    let now = pvc(Some("local-now"), "1Gi", &["ReadWriteOnce"], json!({}));
    assert!(matches!(
        decide(&now, volumes.iter(), Some(&immediate), &none),
        Decision::Fail("ProvisioningFailed", m) if m.contains("WaitForFirstConsumer")
    ));
    let pv = local_path_volume(&selected, &local, "node-b", "node-b", "/data/storage/");
    assert_eq!(pv["metadata"]["name"], "pvc-u-1");
    assert_eq!(pv["spec"]["hostPath"]["path"], "/data/storage/pvc-u-1");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(pv["spec"]["capacity"]["storage"], "1Gi");
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
        json!(["node-b"])
    );
    assert_eq!(pv["spec"]["claimRef"]["uid"], "u-1");
}
