use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use shoal_ca::{CertificateRequest, MeshCa};

use super::*;

/// Signs with an in-process mesh CA for a short lifetime, or fails while
/// told to.
struct Flaky {
    ca: MeshCa,
    failing: AtomicBool,
    calls: Mutex<u32>,
}

#[async_trait::async_trait]
impl CertSource for Flaky {
    async fn sign(&self, csr_pem: &str) -> Result<SignedCert, String> {
        if let Ok(mut calls) = self.calls.lock() {
            *calls += 1;
        }
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
        calls: Mutex::new(0),
    });
    let metrics = Arc::new(Metrics::default());
    let (manager, task) = IdentityManager::start(source.clone(), "cluster.local", metrics.clone());
    let first = manager.ready().await.ok_or("no identity")?;
    assert_eq!(
        first.id.to_string(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    // Half of two seconds later, a new certificate.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = manager.current().ok_or("identity lost")?;
    assert!(
        second.expires_at > first.expires_at,
        "not renewed at half life"
    );
    // The CA goes away: renewals fail, the current certificate stays.
    source.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let kept = manager
        .current()
        .ok_or("identity dropped while renewal failed")?;
    assert!(Arc::ptr_eq(&kept, &manager.current().ok_or("gone")?));
    assert!(
        metrics
            .render()
            .contains("shoal_sidecar_cert_renewals_total{result=\"error\"}")
    );
    let failed_calls = *source.calls.lock().map_err(|e| e.to_string())?;
    assert!(failed_calls >= 3, "no retries: {failed_calls} calls");
    // Back again: a fresh certificate soon after.
    source.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let back = manager.current().ok_or("identity lost")?;
    assert!(back.expires_at > kept.expires_at && !back.expired());
    task.abort();
    Ok(())
}
