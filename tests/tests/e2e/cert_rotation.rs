//! Node client certificate rotation with real processes: `shoal server
//! --node-cert-lifetime 20s`, an agent that joined with a token renews its
//! certificate before it expires (a new one on disk, valid for longer),
//! keeps its node Ready and runs a new pod after the first one expired,
//! which the apiserver no longer accepts; a node cannot ask for another
//! node's certificate.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use shoal_e2e::cluster::{ClusterConfig, LabCluster, kubectl_in, scratch_dir};
use shoal_e2e::lab::Lab;

const LIFETIME: &str = "20s";

/// The node certificate in `kubeconfig` and when it expires.
fn node_cert(kubeconfig: &Path) -> Result<(String, SystemTime)> {
    let pem = shoal_agent::cert_rotation::node_certificate(kubeconfig)?;
    let (_, not_after) = shoal_agent::cert_rotation::validity(&pem)
        .with_context(|| format!("the certificate in {}", kubeconfig.display()))?;
    Ok((pem, not_after))
}

#[test]
fn an_agent_renews_its_node_certificate_and_works_past_the_first_ones_expiry() -> Result<()> {
    let (dir, _tmp) = scratch_dir()?;
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 2, &dir)?;
    cfg.server_args = vec![
        "--node-cert-lifetime".into(),
        LIFETIME.into(),
        // A node whose Lease is not renewed turns Unknown within seconds.
        "--node-monitor-grace-period".into(),
        "6s".into(),
    ];
    let mut c = LabCluster::start(cfg)?;
    let kubeconfig = dir.join("node-2").join("agent").join("kubeconfig");
    let first_copy = dir.join("node-2-first.kubeconfig");
    std::fs::copy(&kubeconfig, &first_copy)
        .with_context(|| format!("copying {}", kubeconfig.display()))?;
    let (first_pem, first_expiry) = node_cert(&kubeconfig)?;
    let left = first_expiry
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    ensure!(
        left <= Duration::from_secs(21),
        "node-2's certificate is valid for {left:?}, not --node-cert-lifetime {LIFETIME}"
    );

    // A new certificate on disk before the first expires, valid for longer.
    let renewed = c.wait_for(
        "node-2's certificate renewed",
        Duration::from_secs(25),
        |_| {
            let (pem, expiry) = node_cert(&kubeconfig)?;
            ensure!(
                SystemTime::now() < first_expiry || pem != first_pem,
                "node-2's certificate expired before it was renewed"
            );
            Ok((pem != first_pem).then_some(expiry))
        },
    )?;
    ensure!(
        renewed > first_expiry,
        "the renewed certificate does not outlive the first"
    );

    // Past the first certificate's expiry: node-2 is Ready and runs a pod
    // created now, and the first certificate is refused.
    if let Ok(wait) = (first_expiry + Duration::from_secs(8)).duration_since(SystemTime::now()) {
        std::thread::sleep(wait);
    }
    let ready = c.kubectl_ok(
        &[
            "get",
            "node",
            "node-2",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        None,
    )?;
    ensure!(
        ready == "True",
        "node-2 after its first certificate expired: Ready={ready:?}\n{}",
        c.logs_tail(30)
    );
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: after-rotation}
spec:
  nodeName: node-2
  containers:
  - name: sleep
    image: busybox
    command: ["sleep", "3600"]
"#,
    )?;
    c.wait_for(
        "pod after-rotation Running on node-2",
        Duration::from_secs(60),
        |c| {
            let phase = c.kubectl_ok(
                &[
                    "get",
                    "pod",
                    "after-rotation",
                    "-o",
                    "jsonpath={.status.phase}",
                ],
                None,
            )?;
            Ok((phase == "Running").then_some(()))
        },
    )?;
    let cache = dir.join("kubectl-cache-node");
    let stale = kubectl_in(
        c.host(0),
        &first_copy,
        &cache,
        &["get", "node", "node-2"],
        None,
    )?;
    let said = String::from_utf8_lossy(&stale.stderr);
    ensure!(
        // Refused at the handshake (a new connection), or 401 on a request.
        !stale.status.success()
            && (said.contains("expired certificate") || said.contains("Unauthorized")),
        "node-2's expired first certificate: {said}"
    );

    // node-2, with its current certificate, asking for node-1's: 403.
    let other = shoal_ca::NodeRequest::generate("node-1")?;
    let csr = CertificateSigningRequest {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("node-2-asks-for-node-1".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(other.csr_pem.into_bytes()),
            signer_name: shoal_ca::KUBELET_CLIENT_SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let mut json = serde_json::to_value(&csr)?;
    json["apiVersion"] = "certificates.k8s.io/v1".into();
    json["kind"] = "CertificateSigningRequest".into();
    let out = kubectl_in(
        c.host(1),
        &kubeconfig,
        &cache,
        &["create", "-f", "-"],
        Some(&json.to_string()),
    )?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && said.contains("Forbidden")
            && said.contains("system:node:node-2")
            && said.contains("system:node:node-1"),
        "node-2 asking for node-1's certificate: {said}"
    );
    Ok(())
}
