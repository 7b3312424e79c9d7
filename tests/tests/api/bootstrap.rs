//! Nodes join with bootstrap tokens, as kubeadm's TLS bootstrapping has
//! them: the token authenticates as `system:bootstrap:<id>`, the node's
//! CertificateSigningRequest is approved and signed by the controllers, and
//! the certificate is the node's identity from then on.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Node, Secret};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use shoal_agent::bootstrap::{Join, JoinError};
use shoal_agent::node::{NodeConfig, register};
use shoal_ca::{BootstrapToken, CaCertHash, ClusterCa};

use super::ControlPlane;

/// A bootstrap token Secret as `shoal token create` writes it, expiring at
/// `expiration` (RFC 3339).
fn token_secret(token: &BootstrapToken, expiration: &str) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        ("token-id", token.id()),
        ("token-secret", token.secret()),
        ("usage-bootstrap-authentication", "true"),
        ("expiration", expiration),
        (
            "auth-extra-groups",
            "system:bootstrappers:shoal:default-node-token",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(token.secret_name()),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// An expiration well after the test.
const LATER: &str = "2099-01-01T00:00:00Z";

/// A client that sends `token` and trusts the cluster CA.
fn token_client(cp: &ControlPlane, ca_pem: &str, token: &str) -> Result<Client> {
    let mut config = kube::Config::new(format!("https://{}", cp.addr).parse()?);
    config.root_cert = Some(vec![
        <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::from_pem_slice(
            ca_pem.as_bytes(),
        )?
        .to_vec(),
    ]);
    config.auth_info.token = Some(token.to_owned().into());
    Ok(Client::try_from(config)?)
}

fn join(cp: &ControlPlane, token: &BootstrapToken, hash: &CaCertHash) -> Join {
    Join {
        server: format!("https://{}", cp.addr),
        token: token.clone(),
        ca_cert_hash: hash.clone(),
        wait: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_with_a_bootstrap_token_and_acts_as_itself() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let admin = shoal_controllers::client_from_kubeconfig(&cp.kubeconfig).await?;
    let ca = ClusterCa::load(&cp.dir().join("pki"))?;
    let hash = CaCertHash::of_pem(ca.cert_pem())?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "kube-system");
    let token = BootstrapToken::generate();
    secrets
        .create(&PostParams::default(), &token_secret(&token, LATER))
        .await?;

    // The token alone: a bootstrapper, who may not read secrets.
    let as_token = token_client(&cp, ca.cert_pem(), &token.to_string())?;
    let err = Api::<Secret>::namespaced(as_token.clone(), "kube-system")
        .list(&Default::default())
        .await
        .err()
        .context("a bootstrap token listed secrets")?;
    let msg = err.to_string();
    ensure!(
        msg.contains(&format!(
            "User \"system:bootstrap:{}\" cannot list resource \"secrets\"",
            token.id()
        )),
        "bootstrapper listing secrets: {msg}"
    );

    // The join: discovery with the pinned CA, the CSR approved and signed.
    let kubeconfig = cp.dir().join("node-a.kubeconfig");
    join(&cp, &token, &hash).run("node-a", &kubeconfig).await?;
    let csr_table = cp.ok(&["get", "csr"], None).await?;
    let row = csr_table
        .lines()
        .find(|l| l.contains(&format!("system:bootstrap:{}", token.id())))
        .with_context(|| format!("kubectl get csr shows no request of the token:\n{csr_table}"))?;
    ensure!(
        row.contains("kubernetes.io/kube-apiserver-client-kubelet")
            && row.trim_end().ends_with("Approved,Issued"),
        "kubectl get csr: {csr_table}"
    );
    ensure!(
        csr_table.starts_with("NAME")
            && csr_table.contains("SIGNERNAME")
            && csr_table.contains("REQUESTOR")
            && csr_table.contains("CONDITION"),
        "kubectl get csr header: {csr_table}"
    );
    let name = row.split_whitespace().next().unwrap_or_default();
    let reason = cp
        .ok(
            &[
                "get",
                "csr",
                name,
                "-o",
                "jsonpath={.status.conditions[0].type}/{.status.conditions[0].reason}",
            ],
            None,
        )
        .await?;
    ensure!(reason == "Approved/AutoApproved", "condition: {reason}");

    // The certificate is the node's identity: it registers and updates its
    // own Node, and is no administrator.
    let node_client = shoal_controllers::client_from_kubeconfig(&kubeconfig).await?;
    let mut cfg = NodeConfig::new("node-a", cp.dir());
    cfg.addresses = vec!["172.20.0.21".parse()?];
    register(&node_client, &cfg).await?;
    let nodes: Api<Node> = Api::all(node_client.clone());
    nodes
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"joined": "by-token"}}})),
        )
        .await?;
    let label = cp
        .ok(
            &[
                "get",
                "node",
                "node-a",
                "-o",
                "jsonpath={.metadata.labels.joined}",
            ],
            None,
        )
        .await?;
    ensure!(label == "by-token", "node label: {label:?}");
    let out = cp
        .kubectl_as(
            &kubeconfig,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
            None,
        )
        .await?;
    let who = String::from_utf8_lossy(&out.stdout);
    let err = Api::<Namespace>::all(node_client)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "not-for-nodes"}}))?,
        )
        .await
        .err()
        .context("a node created a namespace")?
        .to_string();
    ensure!(
        err.contains("User \"system:node:node-a\" cannot create resource \"namespaces\""),
        "node creating a namespace: {err} (whoami: {who})"
    );

    // The node authorizer: node-a changes its own Node, Lease and the
    // status of pods bound to it, never another node's (kubectl with the
    // node's own kubeconfig).
    cp.ok(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: v1
kind: Node
metadata: {name: node-b}
---
apiVersion: v1
kind: Pod
metadata: {name: on-a, namespace: default}
spec:
  nodeName: node-a
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: on-b, namespace: default}
spec:
  nodeName: node-b
  containers: [{name: c, image: busybox}]
"#,
        ),
    )
    .await?;
    let (ok, err) = as_node(&cp, &kubeconfig, &["label", "node", "node-a", "mine=yes"]).await?;
    ensure!(ok, "node-a labelling its own Node: {err}");
    let (ok, err) = as_node(&cp, &kubeconfig, &["label", "node", "node-b", "stolen=yes"]).await?;
    ensure!(
        !ok && err.contains("Forbidden")
            && err.contains("nodes \"node-b\" is forbidden: node \"node-a\" is not allowed to modify node \"node-b\""),
        "node-a labelling node-b: {err}"
    );
    let status = r#"{"status":{"message":"from node-a"}}"#;
    let (ok, err) = as_node(
        &cp,
        &kubeconfig,
        &[
            "patch",
            "pod",
            "on-a",
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ],
    )
    .await?;
    ensure!(ok, "node-a patching the status of its own pod: {err}");
    let (ok, err) = as_node(
        &cp,
        &kubeconfig,
        &[
            "patch",
            "pod",
            "on-b",
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ],
    )
    .await?;
    ensure!(
        !ok && err.contains("pods \"on-b\" is forbidden: node \"node-a\" can only update pod status for pods with spec.nodeName set to itself"),
        "node-a patching the status of node-b's pod: {err}"
    );
    let (ok, err) = as_node(&cp, &kubeconfig, &["delete", "pod", "on-b", "--wait=false"]).await?;
    ensure!(
        !ok && err.contains("can only delete pods for pods with spec.nodeName set to itself"),
        "node-a deleting node-b's pod: {err}"
    );
    let message = cp
        .ok(
            &["get", "pod", "on-b", "-o", "jsonpath={.status.message}"],
            None,
        )
        .await?;
    ensure!(message.is_empty(), "on-b's status changed: {message:?}");
    let lease = |name: &str| {
        format!(
            r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{name}","namespace":"kube-node-lease"}},"spec":{{"holderIdentity":"{name}"}}}}"#
        )
    };
    cp.ok(&["apply", "-f", "-"], Some(&lease("node-b"))).await?;
    let out = cp
        .kubectl_as(&kubeconfig, &["apply", "-f", "-"], Some(&lease("node-a")))
        .await?;
    ensure!(
        out.status.success(),
        "node-a writing its own Lease: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, err) = as_node(
        &cp,
        &kubeconfig,
        &[
            "-n",
            "kube-node-lease",
            "annotate",
            "lease",
            "node-b",
            "stolen=yes",
        ],
    )
    .await?;
    ensure!(
        !ok && err.contains("is not allowed to modify lease \"node-b\""),
        "node-a writing node-b's Lease: {err}"
    );
    cp.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_expired_tokens_and_a_wrong_ca_hash_are_refused() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let admin = shoal_controllers::client_from_kubeconfig(&cp.kubeconfig).await?;
    let ca = ClusterCa::load(&cp.dir().join("pki"))?;
    let hash = CaCertHash::of_pem(ca.cert_pem())?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "kube-system");

    // Unknown: a bare 401 Status that names nothing.
    let unknown = BootstrapToken::generate();
    let err = Api::<Node>::all(token_client(&cp, ca.cert_pem(), &unknown.to_string())?)
        .list(&Default::default())
        .await
        .err()
        .context("an unknown token was accepted")?;
    match &err {
        kube::Error::Api(status) => ensure!(
            status.code == 401
                && status.reason == "Unauthorized"
                && !status.message.contains(unknown.secret())
                && !status.message.contains(unknown.id()),
            "unknown token: {status:?}"
        ),
        other => bail!("unknown token: {other}"),
    }
    let server = format!("https://{}", cp.addr);
    match join(&cp, &unknown, &hash)
        .run("node-x", &cp.dir().join("x.kubeconfig"))
        .await
    {
        Err(e @ JoinError::TokenRefused { .. }) => {
            let msg = e.to_string();
            ensure!(
                msg.contains(&server) && msg.contains("refused the bootstrap token"),
                "{msg}"
            );
        }
        other => bail!("joining with an unknown token: {other:?}"),
    }

    // Expired: refused, then deleted by the token cleaner.
    let expired = BootstrapToken::generate();
    secrets
        .create(
            &PostParams::default(),
            &token_secret(&expired, "2020-01-01T00:00:00Z"),
        )
        .await?;
    let err = Api::<Node>::all(token_client(&cp, ca.cert_pem(), &expired.to_string())?)
        .list(&Default::default())
        .await
        .err()
        .context("an expired token was accepted")?;
    ensure!(
        matches!(&err, kube::Error::Api(s) if s.code == 401),
        "expired token: {err}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while secrets.get_opt(&expired.secret_name()).await?.is_some() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the expired token's Secret was not cleaned up in 40 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A CA hash that is not this cluster's: refused before the token is sent.
    let valid = BootstrapToken::generate();
    secrets
        .create(&PostParams::default(), &token_secret(&valid, LATER))
        .await?;
    let other = CaCertHash::of_pem(ClusterCa::generate()?.cert_pem())?;
    match join(&cp, &valid, &other)
        .run("node-y", &cp.dir().join("y.kubeconfig"))
        .await
    {
        Err(e @ JoinError::Untrusted { .. }) => {
            let msg = e.to_string();
            ensure!(
                msg.contains(&format!("expected {other}, got {hash}")),
                "{msg}"
            );
        }
        other => bail!("joining with another CA's hash: {other:?}"),
    }
    let csrs = cp.ok(&["get", "csr", "-o", "name"], None).await?;
    ensure!(
        csrs.trim().is_empty(),
        "a refused join left requests: {csrs}"
    );
    cp.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_approver_does_not_know_waits_for_kubectl_certificate_approve() -> Result<()>
{
    let cp = ControlPlane::start().await?;
    let admin = shoal_controllers::client_from_kubeconfig(&cp.kubeconfig).await?;
    let csrs: Api<CertificateSigningRequest> = Api::all(admin);
    // Asked by the admin, not by a bootstrap token or the node itself.
    let request = shoal_ca::NodeRequest::generate("node-b")?;
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some("node-b-by-hand".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.csr_pem.into_bytes()),
            signer_name: shoal_ca::KUBELET_CLIENT_SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            username: Some("someone-else".into()),
            ..Default::default()
        },
        status: None,
    };
    let created = csrs.create(&PostParams::default(), &csr).await?;
    ensure!(
        created.spec.username.as_deref() == Some("shoal-admin"),
        "spec.username is the requester's: {:?}",
        created.spec.username
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let table = cp.ok(&["get", "csr", "node-b-by-hand"], None).await?;
    ensure!(
        table.trim_end().ends_with("Pending"),
        "before approval: {table}"
    );

    let out = cp
        .ok(&["certificate", "approve", "node-b-by-hand"], None)
        .await?;
    ensure!(
        out.contains("approved"),
        "kubectl certificate approve: {out}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let table = cp.ok(&["get", "csr", "node-b-by-hand"], None).await?;
        if table.trim_end().ends_with("Approved,Issued") {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "not signed after approval: {table}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let reason = cp
        .ok(
            &[
                "get",
                "csr",
                "node-b-by-hand",
                "-o",
                "jsonpath={.status.conditions[0].reason}",
            ],
            None,
        )
        .await?;
    ensure!(reason == "KubectlApprove", "condition reason: {reason}");

    // A request that is not a certificate request is refused naming the field.
    let bad = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "garbage"},
        "spec": {"request": "bm90IGEgY3NyCg==", "signerName": shoal_ca::KUBELET_CLIENT_SIGNER, "usages": ["client auth"]},
    });
    let out = cp
        .kubectl(&["create", "-f", "-"], Some(&bad.to_string()))
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("spec.request: Invalid value"),
        "a garbage request: {err}"
    );
    cp.stop().await
}

/// kubectl `args` with the node's `kubeconfig`: whether it succeeded, and
/// its stderr.
async fn as_node(
    cp: &ControlPlane,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> Result<(bool, String)> {
    let out = cp.kubectl_as(kubeconfig, args, None).await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The node certificate a kubeconfig holds, and when it expires.
fn node_cert(kubeconfig: &std::path::Path) -> Result<(String, std::time::SystemTime)> {
    let pem = shoal_agent::cert_rotation::node_certificate(kubeconfig)?;
    let (_, not_after) =
        shoal_agent::cert_rotation::validity(&pem).context("the node certificate's validity")?;
    Ok((pem, not_after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_renews_its_client_certificate_before_it_expires_and_only_its_own() -> Result<()> {
    use shoal_agent::cert_rotation::{RotatingClient, Rotation};
    let lifetime = Duration::from_secs(20);
    let mut controllers = shoal_controllers::Config {
        node_cert_lifetime: Some(lifetime),
        ..shoal_controllers::Config::default()
    };
    // A node whose Lease stops being renewed turns NotReady within 4 s.
    controllers.node_lifecycle.grace_period = Duration::from_secs(4);
    controllers.node_lifecycle.period = Duration::from_millis(200);
    let cp = ControlPlane::start_with(controllers).await?;
    let admin = shoal_controllers::client_from_kubeconfig(&cp.kubeconfig).await?;
    let ca = ClusterCa::load(&cp.dir().join("pki"))?;
    let hash = CaCertHash::of_pem(ca.cert_pem())?;
    let token = BootstrapToken::generate();
    Api::<Secret>::namespaced(admin.clone(), "kube-system")
        .create(&PostParams::default(), &token_secret(&token, LATER))
        .await?;
    let kubeconfig = cp.dir().join("node-r.kubeconfig");
    join(&cp, &token, &hash).run("node-r", &kubeconfig).await?;
    let first_copy = cp.dir().join("node-r.first.kubeconfig");
    std::fs::copy(&kubeconfig, &first_copy)?;
    let (first_pem, first_expiry) = node_cert(&kubeconfig)?;
    let left = first_expiry.duration_since(std::time::SystemTime::now())?;
    ensure!(
        left <= lifetime + Duration::from_secs(1),
        "the first certificate is valid for {left:?}, not --node-cert-lifetime {lifetime:?}"
    );

    // The agent as `shoal agent` runs it: its tasks share a rotating client.
    let rotation = Rotation::of_kubeconfig("node-r", &kubeconfig)
        .context("the joined kubeconfig is not node-r's certificate")?;
    let clients =
        RotatingClient::new(shoal_controllers::client_from_kubeconfig(&kubeconfig).await?);
    let rotator = tokio::spawn(shoal_agent::cert_rotation::run(
        rotation,
        clients.clone(),
        |path: std::path::PathBuf| async move { shoal_controllers::client_from_kubeconfig(&path).await },
    ));
    let mut cfg = NodeConfig::new("node-r", cp.dir());
    cfg.addresses = vec!["172.20.0.31".parse()?];
    cfg.heartbeat = Duration::from_millis(500);
    cfg.thresholds = shoal_agent::node::Thresholds {
        memory_available: 0,
        nodefs_available: 0.0,
        pids_used: 1.0,
    };
    let (tx, _rx) = tokio::sync::watch::channel::<Option<Node>>(None);
    let agent = tokio::spawn(shoal_agent::node::run(clients.client(), cfg, tx));

    // The certificate on disk changes before the first one expires.
    let renewed = loop {
        let (pem, expiry) = node_cert(&kubeconfig)?;
        if pem != first_pem {
            break expiry;
        }
        ensure!(
            std::time::SystemTime::now() < first_expiry,
            "the node certificate was not renewed before it expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        renewed > first_expiry,
        "the renewed certificate does not outlive the first"
    );

    // Past the first certificate's expiry the node stays Ready: its Lease
    // keeps being renewed with the new certificate...
    let past = first_expiry + Duration::from_secs(6);
    if let Ok(wait) = past.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let ready = cp
        .ok(
            &[
                "get",
                "node",
                "node-r",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            None,
        )
        .await?;
    ensure!(
        ready == "True",
        "node-r after its first certificate expired: Ready={ready:?}"
    );
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        admin.clone(),
        "kube-node-lease",
    )
    .get("node-r")
    .await?;
    let renew = lease
        .spec
        .and_then(|s| s.renew_time)
        .context("node-r's Lease has no renewTime")?;
    let age = std::time::SystemTime::now()
        .duration_since(renew.0.into())
        .unwrap_or_default();
    ensure!(
        age < Duration::from_secs(3),
        "node-r's Lease was last renewed {age:?} ago"
    );
    // ...while the first certificate no longer gets in.
    let stale = shoal_controllers::client_from_kubeconfig(&first_copy).await?;
    ensure!(
        Api::<Node>::all(stale).get("node-r").await.is_err(),
        "the expired first certificate was still accepted"
    );

    // A node renews only its own identity.
    let other = shoal_ca::NodeRequest::generate("node-other")?;
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("node-csr-".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(other.csr_pem.into_bytes()),
            signer_name: shoal_ca::KUBELET_CLIENT_SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let err = Api::<CertificateSigningRequest>::all(clients.client())
        .create(&PostParams::default(), &csr)
        .await
        .err()
        .context("node-r asked for node-other's certificate and was not refused")?;
    let kube::Error::Api(status) = &err else {
        bail!("renewing for another node: {err}");
    };
    ensure!(
        status.code == 403
            && status.message.contains("system:node:node-r")
            && status.message.contains("system:node:node-other"),
        "renewing for another node: {status:?}"
    );
    agent.abort();
    rotator.abort();
    Ok(())
}
