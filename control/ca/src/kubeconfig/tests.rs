use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::{ADMIN_USER, ClusterCa, MASTERS_GROUP};

fn decode(data: &str) -> anyhow::Result<String> {
    Ok(String::from_utf8(STANDARD.decode(data)?)?)
}

#[test]
fn a_written_kubeconfig_parses_back_with_the_embedded_credentials() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let admin = ca.issue_client(ADMIN_USER, &[MASTERS_GROUP])?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kubeconfig");
    Kubeconfig::new("https://127.0.0.1:6443", &admin, ADMIN_USER).write(&path)?;
    assert_eq!(
        std::fs::metadata(&path)?.permissions().mode() & 0o777,
        0o600
    );

    let yaml = std::fs::read_to_string(&path)?;
    let doc: Document = serde_saphyr::from_str(&yaml)?;
    assert_eq!(doc.api_version, "v1");
    assert_eq!(doc.kind, "Config");
    assert_eq!(doc.current_context, "shoal");
    let [cluster] = &doc.clusters[..] else {
        anyhow::bail!("want one cluster in\n{yaml}");
    };
    assert_eq!(cluster.name, "shoal");
    assert_eq!(cluster.cluster.server, "https://127.0.0.1:6443");
    assert_eq!(
        decode(&cluster.cluster.certificate_authority_data)?,
        ca.cert_pem()
    );
    let [user] = &doc.users[..] else {
        anyhow::bail!("want one user in\n{yaml}");
    };
    assert_eq!(user.name, "shoal-admin");
    assert_eq!(decode(&user.user.client_certificate_data)?, admin.cert_pem);
    assert_eq!(decode(&user.user.client_key_data)?, admin.key_pem);
    let [context] = &doc.contexts[..] else {
        anyhow::bail!("want one context in\n{yaml}");
    };
    assert_eq!(
        (context.name.as_str(), context.context.cluster.as_str()),
        ("shoal", "shoal")
    );
    assert_eq!(context.context.user, "shoal-admin");
    // The keys client-go looks for, spelled its way.
    for key in [
        "apiVersion:",
        "current-context:",
        "certificate-authority-data:",
        "client-certificate-data:",
        "client-key-data:",
    ] {
        assert!(yaml.contains(key), "{key} missing from\n{yaml}");
    }
    Ok(())
}

#[test]
fn cluster_and_context_names_can_be_chosen() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let node = ca.issue_client("system:node:node-1", &["system:nodes"])?;
    let config = Kubeconfig {
        cluster_name: "lab",
        context_name: "node-1@lab",
        ..Kubeconfig::new("https://[::1]:6443", &node, "node-1")
    };
    let doc: Document = serde_saphyr::from_str(&config.to_yaml()?)?;
    assert_eq!(doc.current_context, "node-1@lab");
    assert_eq!(doc.contexts[0].context.cluster, "lab");
    assert_eq!(doc.clusters[0].name, "lab");
    assert_eq!(doc.clusters[0].cluster.server, "https://[::1]:6443");
    Ok(())
}

#[test]
fn an_unwritable_path_is_an_error_naming_it() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let admin = ca.issue_client(ADMIN_USER, &[MASTERS_GROUP])?;
    let dir = tempfile::tempdir()?;
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "")?;
    let path = blocker.join("kubeconfig");
    let err = Kubeconfig::new("https://127.0.0.1:6443", &admin, ADMIN_USER)
        .write(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with(&format!("writing kubeconfig {}", path.display())),
        "{err}"
    );
    Ok(())
}
