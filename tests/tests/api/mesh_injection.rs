//! The mesh's sidecar injection as a user meets it with kubectl: pods of a
//! namespace labelled `shoal.io/inject=enabled`, or annotated
//! `shoal.io/inject: "true"`, come back from the API with the sidecar as
//! their first init container (`restartPolicy: Always`) and its token
//! volume; `"false"` opts out; a server that knows no address of its mesh
//! CA refuses pods asking for the sidecar, saying what to do.

use anyhow::{Result, ensure};
use serde_json::Value;

use super::ControlPlane;

const CA_URL: &str = "https://127.0.0.1:15012";

fn pod(name: &str, namespace: &str, inject: Option<&str>) -> String {
    let annotations = inject
        .map(|v| format!("\n  annotations: {{shoal.io/inject: \"{v}\"}}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}{annotations}\nspec:\n  containers:\n  - {{name: app, image: busybox, command: [sleep, \"3600\"]}}\n"
    )
}

async fn get(cp: &ControlPlane, name: &str, namespace: &str) -> Result<Value> {
    let out = cp
        .ok(&["get", "pod", name, "-n", namespace, "-o", "json"], None)
        .await?;
    Ok(serde_json::from_str(&out)?)
}

fn container_names(pod: &Value) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_namespaces_and_annotated_pods_get_the_sidecar() -> Result<()> {
    let cp = ControlPlane::start_configured(Default::default(), |c| {
        c.mesh_ca_url = Some(CA_URL.to_owned());
    })
    .await?;
    cp.ok(&["create", "namespace", "meshed"], None).await?;
    cp.ok(
        &["label", "namespace", "meshed", "shoal.io/inject=enabled"],
        None,
    )
    .await?;
    cp.ok(&["create", "namespace", "plain"], None).await?;
    cp.ok(&["apply", "-f", "-"], Some(&pod("web", "meshed", None)))
        .await?;
    cp.ok(
        &["apply", "-f", "-"],
        Some(&pod("out", "meshed", Some("false"))),
    )
    .await?;
    cp.ok(
        &["apply", "-f", "-"],
        Some(&pod("asked", "plain", Some("true"))),
    )
    .await?;
    cp.ok(&["apply", "-f", "-"], Some(&pod("bare", "plain", None)))
        .await?;

    for (name, ns) in [("web", "meshed"), ("asked", "plain")] {
        let p = get(&cp, name, ns).await?;
        let sidecar = &p["spec"]["initContainers"][0];
        ensure!(
            sidecar["name"] == "shoal-sidecar"
                && sidecar["restartPolicy"] == "Always"
                && sidecar["image"] == "shoal.io/sidecar:dev",
            "{ns}/{name} should have shoal-sidecar (restartPolicy Always) first: {}",
            p["spec"]["initContainers"]
        );
        let args: Vec<&str> = sidecar["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        ensure!(
            args.windows(2).any(|w| w == ["--ca-url", CA_URL]),
            "the sidecar should be pointed at the mesh CA {CA_URL}: {args:?}"
        );
        let volume = p["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "shoal-mesh-token")
            .cloned()
            .unwrap_or_default();
        ensure!(
            volume["projected"]["sources"][0]["serviceAccountToken"]["audience"]
                == "https://kubernetes.default.svc.cluster.local",
            "{ns}/{name} should have the sidecar's token volume for the API's audience: {}",
            p["spec"]["volumes"]
        );
        ensure!(
            container_names(&p) == ["shoal-sidecar", "app"],
            "{ns}/{name}: {:?}",
            container_names(&p)
        );
    }
    for (name, ns) in [("out", "meshed"), ("bare", "plain")] {
        let p = get(&cp, name, ns).await?;
        ensure!(
            container_names(&p) == ["app"],
            "{ns}/{name} should have no sidecar: {:?}",
            container_names(&p)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_mesh_cas_address_refuses_pods_asking_for_the_sidecar() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let out = cp
        .kubectl(
            &["apply", "-f", "-"],
            Some(&pod("asked", "default", Some("true"))),
        )
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("forbidden")
            && stderr.contains("--mesh-ca-listen"),
        "creating a pod annotated shoal.io/inject: \"true\" should be refused naming --mesh-ca-listen: {stderr}"
    );
    // The same pod without the annotation is admitted.
    cp.ok(&["apply", "-f", "-"], Some(&pod("asked", "default", None)))
        .await?;
    Ok(())
}
