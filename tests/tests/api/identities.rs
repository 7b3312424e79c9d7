//! Security identities (`shoal.io/v1alpha1` Identity) as the node agents
//! allocate them and the control plane collects them: pods with the same
//! labels in one namespace share a number, whichever node asks and even
//! when two ask at once; another namespace gets another number; a hash
//! collision moves to the next number; `kubectl get identities` lists
//! them; an identity no pod uses any more is deleted after the grace
//! period while used ones stay.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api,
    api::{DynamicObject, PostParams},
};
use shoal_agent::policy::{allocate, identity_resource};
use shoal_api::identity::{self as id, Labels};

use super::ControlPlane;

fn pod_yaml(ns: &str, name: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{{labels}}}
spec:
  containers:
  - name: c
    image: busybox
"
    )
}

/// The label set an agent computes for pod `ns/name`, from the API.
async fn label_set(client: &kube::Client, ns: &str, name: &str) -> Result<Labels> {
    let pod = Api::<Pod>::namespaced(client.clone(), ns).get(name).await?;
    let namespace = Api::<Namespace>::all(client.clone()).get(ns).await?;
    Ok(id::security_labels(
        &pod.metadata.labels.unwrap_or_default(),
        ns,
        &namespace.metadata.labels.unwrap_or_default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_labels_share_an_identity_and_unused_ones_are_collected() -> Result<()> {
    let grace = Duration::from_secs(2);
    let cp = ControlPlane::start_with(shoal_controllers::Config {
        identity_gc: shoal_controllers::identity_gc::Config {
            grace,
            interval: Duration::from_millis(300),
        },
        ..shoal_controllers::Config::default()
    })
    .await?;
    let client = shoal_controllers::client_from_kubeconfig(&cp.kubeconfig).await?;
    cp.ok(&["create", "namespace", "shop"], None).await?;
    cp.ok(&["label", "namespace", "shop", "team=blue"], None)
        .await?;
    cp.ok(&["create", "namespace", "lab"], None).await?;
    let pods = [
        ("shop", "web-1", "app: web"),
        // A rollout hash does not change the identity.
        ("shop", "web-2", "app: web, pod-template-hash: 5d8f"),
        ("lab", "web-3", "app: web"),
    ];
    for (ns, name, labels) in pods {
        cp.ok(&["apply", "-f", "-"], Some(&pod_yaml(ns, name, labels)))
            .await?;
    }
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &identity_resource());
    let none = BTreeMap::new();

    // Two nodes allocating web-1's identity at the same moment meet at one
    // number; web-2, allocated later by a third, gets it too.
    let set1 = label_set(&client, "shop", "web-1").await?;
    let (a, b) = tokio::join!(allocate(&api, &none, &set1), allocate(&api, &none, &set1));
    let (a, b) = (a?, b?);
    assert_eq!(a, b, "two nodes racing for one label set");
    let set2 = label_set(&client, "shop", "web-2").await?;
    assert_eq!(
        allocate(&api, &none, &set2).await?,
        a,
        "same labels, same identity"
    );
    let set3 = label_set(&client, "lab", "web-3").await?;
    let other = allocate(&api, &none, &set3).await?;
    assert_ne!(other, a, "another namespace, another identity");
    let obj = api.get(&a.to_string()).await?;
    assert_eq!(id::labels_of(&obj.data), Some(set1.clone()));
    assert_eq!(
        set1.get("shoal.io/namespace.labels.team")
            .map(String::as_str),
        Some("blue"),
        "namespace labels are part of the identity"
    );

    // A label set whose number is held by another set moves to the next.
    let squatted: Labels = [("app".to_string(), "squatted".to_string())].into();
    let preferred = id::preferred_number(&squatted);
    let squatter: Labels = [("app".to_string(), "squatter".to_string())].into();
    api.create(
        &PostParams::default(),
        &serde_json::from_value(id::object(preferred, &squatter))?,
    )
    .await
    .context("creating the squatter")?;
    let moved = allocate(&api, &none, &squatted).await?;
    assert_eq!(moved, id::next_number(preferred));

    // kubectl lists them with their namespace and labels.
    let table = cp.ok(&["get", "identities"], None).await?;
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(a.to_string().as_str()))
        .with_context(|| format!("identity {a} missing from:\n{table}"))?;
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells.get(1..3), Some(&["shop", "app=web"][..]), "{table}");
    assert!(table.starts_with("NAME"), "{table}");
    // A name that is not a number is refused.
    let bad = cp
        .kubectl(
            &["apply", "-f", "-"],
            Some(
                "apiVersion: shoal.io/v1alpha1\nkind: Identity\nmetadata:\n  name: web\nsecurityLabels: {app: web}\n",
            ),
        )
        .await?;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("metadata.name"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // web-3 goes: its identity and the unused ones go after the grace
    // period; the identity web-1 and web-2 use stays.
    cp.ok(
        &["delete", "pod", "-n", "lab", "web-3", "--wait=false"],
        None,
    )
    .await?;
    let deadline = tokio::time::Instant::now() + grace * 10 + Duration::from_secs(10);
    loop {
        let names: Vec<String> = api
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect();
        let gone = [other, preferred, moved]
            .iter()
            .all(|n| !names.contains(&n.to_string()));
        if gone {
            assert!(
                names.contains(&a.to_string()),
                "the used identity {a} was collected"
            );
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("unused identities {other}, {preferred}, {moved} still there: {names:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still there after another grace period.
    tokio::time::sleep(grace * 2).await;
    api.get(&a.to_string())
        .await
        .context("the identity of running pods")?;
    Ok(())
}
