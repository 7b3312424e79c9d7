use std::sync::atomic::{AtomicBool, Ordering};

use shoal_ca::{CertificateRequest, MeshCa};

use super::*;

/// Signs with an in-process mesh CA for a short lifetime, or fails while
/// told to.
struct Flaky {
    ca: MeshCa,
    failing: AtomicBool,
}

#[async_trait::async_trait]
impl CertSource for Flaky {
    async fn sign(&self, csr_pem: &str) -> Result<SignedCert, String> {
        if self.failing.load(Ordering::SeqCst) {
            return Err("mesh CA unreachable".into());
        }
        let csr = CertificateRequest::from_pem(csr_pem).map_err(|e| e.to_string())?;
        let id = SpiffeId::new("cluster.local", "shop", "web");
        let lifetime = Duration::from_secs(2);
        let pem = self
            .ca
            .sign_workload(&csr, &id, lifetime)
            .map_err(|e| e.to_string())?;
        Ok(SignedCert {
            chain_pem: vec![pem],
            trust_bundle: vec![self.ca.trust_bundle().to_owned()],
            spiffe_id: id,
            expires_at: SystemTime::now() + lifetime,
        })
    }
}

#[tokio::test]
async fn renews_at_half_life_and_keeps_the_old_certificate_while_renewal_fails()
-> Result<(), String> {
    let source = Arc::new(Flaky {
        ca: MeshCa::generate().map_err(|e| e.to_string())?,
        failing: AtomicBool::new(false),
    });
    let metrics = Arc::new(Metrics::default());
    let (manager, task) = IdentityManager::start(source.clone(), "cluster.local", metrics.clone());
    let first = manager.ready().await.ok_or("no identity")?;
    assert_eq!(
        first.id.to_string(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    // Half of two seconds later, a new certificate.
    let second = renewed_after(&manager, &first).await?;
    let took = second
        .expires_at
        .duration_since(first.expires_at)
        .map_err(|e| e.to_string())?;
    assert!(
        took >= Duration::from_millis(900),
        "renewed after {took:?}, not at half life"
    );
    // The CA goes away: renewals fail (and are retried), the current
    // certificate stays in use.
    source.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let kept = manager
        .current()
        .ok_or("identity dropped while renewal failed")?;
    assert!(
        Arc::ptr_eq(&kept, &second),
        "the certificate changed while the CA failed"
    );
    let failures = metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("shoal_sidecar_cert_renewals_total{result=\"error\"} "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(failures >= 2, "{failures} failed renewals: no retry");
    // Back again: a fresh certificate soon after.
    source.failing.store(false, Ordering::SeqCst);
    let back = renewed_after(&manager, &kept).await?;
    assert!(!back.expired());
    task.abort();
    Ok(())
}

/// The first identity after `old`, within five seconds.
async fn renewed_after(
    manager: &IdentityManager,
    old: &Arc<Identity>,
) -> Result<Arc<Identity>, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(current) = manager.current()
            && !Arc::ptr_eq(&current, old)
        {
            return Ok(current);
        }
        if tokio::time::Instant::now() > deadline {
            return Err("no new certificate in 5 s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
