use std::time::Duration;

use super::*;

#[test]
fn spiffe_ids_parse_and_print() -> anyhow::Result<()> {
    let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse()?;
    assert_eq!(id, SpiffeId::new("cluster.local", "shop", "web"));
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
    for bad in [
        "http://cluster.local/ns/shop/sa/web",
        "spiffe://cluster.local",
        "spiffe://Cluster.Local/ns/shop/sa/web",
        "spiffe://cluster.local/ns/shop/web",
        "spiffe://cluster.local/ns//sa/web",
        "spiffe://cluster.local/ns/shop/sa/web/extra",
    ] {
        assert!(bad.parse::<SpiffeId>().is_err(), "{bad} parsed");
    }
    Ok(())
}

#[test]
fn workload_certificates_carry_only_the_given_identity() -> anyhow::Result<()> {
    let ca = MeshCa::generate()?;
    let key = WorkloadKey::generate()?;
    // The request asks for another identity: the certificate names the
    // one the CA was told, never the request's.
    let asked = SpiffeId::new("cluster.local", "kube-system", "admin");
    let csr = CertificateRequest::from_pem(&key.csr_pem(Some(&asked))?)?;
    let id = SpiffeId::new("cluster.local", "shop", "web");
    let pem = ca.sign_workload(&csr, &id, Duration::from_secs(3600))?;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())?;
    assert_eq!(SpiffeId::from_cert_der(&der), Some(id));
    let (start, end) = validity(&pem).ok_or_else(|| anyhow::anyhow!("no validity"))?;
    let lifetime = end.duration_since(start)?;
    // Backdated five minutes, as every certificate shoal issues.
    assert!(lifetime >= Duration::from_secs(3600) && lifetime <= Duration::from_secs(3600 + 301));
    let parsed = ParsedCert::from_pem(&pem)?;
    assert!(parsed.is_client() && parsed.is_serving());
    let (name, signer) = ca.ca.signer_parts();
    assert!(parsed.is_signed_by(name, signer.verifying_key()));
    Ok(())
}

#[test]
fn the_mesh_ca_is_kept_on_disk_under_its_own_name() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = MeshCa::load_or_create(dir.path())?;
    let again = MeshCa::load_or_create(dir.path())?;
    assert_eq!(first.trust_bundle(), again.trust_bundle());
    // Beside the cluster CA in one directory, each keeps its own root.
    let cluster = ClusterCa::load_or_create(dir.path())?;
    assert_ne!(first.trust_bundle(), cluster.cert_pem());
    assert!(dir.path().join(MESH_CA_KEY_FILE).is_file());
    assert_eq!(
        MeshCa::load_or_create(dir.path())?.trust_bundle(),
        first.trust_bundle()
    );
    let parsed = ParsedCert::from_pem(first.trust_bundle())?;
    assert_eq!(parsed.common_name().as_deref(), Some(MESH_CA_COMMON_NAME));
    Ok(())
}

use rustls::pki_types::pem::PemObject;
