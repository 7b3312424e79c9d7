//! `kubectl explain` against the schemas the API serves in `/openapi/v3`.

use anyhow::{Result, ensure};

use super::ControlPlane;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_kubernetes_field_docs() -> Result<()> {
    let cp = ControlPlane::start().await?;

    let out = cp.ok(&["explain", "pods.spec.containers"], None).await?;
    for want in [
        "KIND:       Pod",
        "VERSION:    v1",
        "FIELD: containers <[]Container>",
        "List of containers belonging to the pod.",
        "name\t<string> -required-",
        "Name of the container specified as a DNS_LABEL.",
        "image\t<string>",
    ] {
        ensure!(
            out.contains(want),
            "explain pods.spec.containers lacks {want:?}:\n{out}"
        );
    }

    let out = cp
        .ok(
            &["explain", "deployment.spec.strategy", "--recursive"],
            None,
        )
        .await?;
    for want in [
        "GROUP:      apps",
        "rollingUpdate\t<RollingUpdateDeployment>",
        "maxSurge\t<IntOrString>",
        "maxUnavailable\t<IntOrString>",
        "type\t<string>",
    ] {
        ensure!(
            out.contains(want),
            "explain deployment.spec.strategy --recursive lacks {want:?}:\n{out}"
        );
    }

    let out = cp
        .ok(&["explain", "services", "--api-version=v1"], None)
        .await?;
    for want in [
        "KIND:       Service",
        "VERSION:    v1",
        "spec\t<ServiceSpec>",
        "Service is a named abstraction",
    ] {
        ensure!(
            out.contains(want),
            "explain services lacks {want:?}:\n{out}"
        );
    }

    // A field that does not exist gets kubectl's own error.
    let out = cp
        .kubectl(&["explain", "pods.spec.nosuchfield"], None)
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("field \"nosuchfield\" does not exist"),
        "explain of an unknown field: {stderr}"
    );

    cp.stop().await
}
