use std::sync::Arc;
use std::time::Duration;

use shoal_ca::{ClusterCa, MeshCa, SpiffeId, SubjectAltName, WorkloadKey};
use tokio::net::TcpListener;

use super::*;
use crate::{MeshCaClient, ServiceAccount, TokenReviewer};

/// Accepts one token, as `shop/web`.
struct OneToken;

#[async_trait::async_trait]
impl TokenReviewer for OneToken {
    async fn review(&self, token: &str) -> Result<ServiceAccount, String> {
        if token == "good" {
            Ok(ServiceAccount {
                namespace: "shop".into(),
                name: "web".into(),
            })
        } else {
            Err("token signature does not verify".into())
        }
    }
}

async fn start(config: Config) -> anyhow::Result<(MeshCaClient, Arc<MeshCa>)> {
    let cluster = ClusterCa::generate()?;
    let serving = cluster.issue_serving(&[SubjectAltName::parse("127.0.0.1")])?;
    let mesh = Arc::new(MeshCa::generate()?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = MeshCaService::new(mesh.clone(), Arc::new(OneToken), config);
    tokio::spawn(async move { serve(listener, &serving, service, std::future::pending()).await });
    let client = MeshCaClient::new(&format!("https://{addr}"), cluster.cert_pem(), None)?;
    Ok((client, mesh))
}

#[tokio::test]
async fn signs_for_the_token_s_service_account() -> anyhow::Result<()> {
    let (client, mesh) = start(Config {
        trust_domain: "example.org".into(),
        ..Config::default()
    })
    .await?;
    let key = WorkloadKey::generate()?;
    let other = SpiffeId::new("example.org", "kube-system", "admin");
    let signed = client
        .sign(
            "good",
            &key.csr_pem(Some(&other))?,
            Some(Duration::from_secs(600)),
        )
        .await?;
    assert_eq!(
        signed.spiffe_id.to_string(),
        "spiffe://example.org/ns/shop/sa/web"
    );
    assert_eq!(signed.trust_bundle, vec![mesh.trust_bundle().to_owned()]);
    let left = signed
        .expires_at
        .duration_since(std::time::SystemTime::now())?;
    assert!(left <= Duration::from_secs(600) && left > Duration::from_secs(590));
    // The default lifetime is a day.
    let (client, _) = start(Config::default()).await?;
    let signed = client.sign("good", &key.csr_pem(None)?, None).await?;
    assert_eq!(
        signed.spiffe_id.to_string(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    let left = signed
        .expires_at
        .duration_since(std::time::SystemTime::now())?;
    assert!(left > Duration::from_secs(24 * 3600 - 60));
    Ok(())
}

#[tokio::test]
async fn refuses_bad_tokens_and_bad_requests_with_their_codes() -> anyhow::Result<()> {
    let (client, _) = start(Config::default()).await?;
    let csr = WorkloadKey::generate()?.csr_pem(None)?;
    let err = client.sign("forged", &csr, None).await.err();
    let err = err.ok_or_else(|| anyhow::anyhow!("a forged token was accepted"))?;
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
    assert!(err.to_string().contains("does not verify"), "{err}");
    let err = client.sign("good", "not a csr", None).await.err();
    let err = err.ok_or_else(|| anyhow::anyhow!("a bad CSR was accepted"))?;
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("csr"), "{err}");
    Ok(())
}
