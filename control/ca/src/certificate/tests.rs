use std::time::{Duration, SystemTime};

use p256::pkcs8::DecodePublicKey;

use super::*;
use crate::ClusterCa;

#[test]
fn a_client_certificate_names_the_user_and_every_group_in_order() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let issued = ca.issue_client("jane", &["dev", "system:masters", "ops"])?;
    let cert = ParsedCert::from_pem(&issued.cert_pem)?;
    assert_eq!(cert.common_name().as_deref(), Some("jane"));
    assert_eq!(cert.organizations(), ["dev", "system:masters", "ops"]);
    assert!(cert.is_client());
    assert!(!cert.is_serving());
    assert!(cert.subject_alt_names().is_empty());
    Ok(())
}

#[test]
fn a_serving_certificate_covers_the_default_apiserver_names() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let names = default_apiserver_names();
    let issued = ca.issue_serving(&names)?;
    let cert = ParsedCert::from_pem(&issued.cert_pem)?;
    assert_eq!(cert.subject_alt_names(), names);
    assert!(cert.is_serving());
    assert!(!cert.is_client());
    for expected in [
        "localhost",
        "127.0.0.1",
        "::1",
        "kubernetes.default.svc.cluster.local",
        "10.96.0.1",
        "fd00:10:96::1",
    ] {
        assert!(
            names.contains(&SubjectAltName::parse(expected)),
            "{expected} missing"
        );
    }
    Ok(())
}

#[test]
fn a_name_parses_as_an_address_when_it_is_one() -> anyhow::Result<()> {
    assert_eq!(
        SubjectAltName::parse("fd00:10:96::1"),
        SubjectAltName::Ip("fd00:10:96::1".parse()?)
    );
    assert_eq!(
        SubjectAltName::parse("node-1"),
        SubjectAltName::Dns("node-1".into())
    );
    assert_eq!(SubjectAltName::parse("10.0.0.1").to_string(), "10.0.0.1");
    Ok(())
}

#[test]
fn a_dns_name_that_is_not_ascii_is_refused_with_the_subject() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let err = ca
        .issue_serving(&[SubjectAltName::Dns("bücher.example".into())])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("CN=shoal-apiserver"), "{err}");
    Ok(())
}

#[test]
fn a_certificate_is_renewed_once_half_its_life_is_gone() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let cert = ParsedCert::from_pem(&ca.issue_client("u", &[])?.cert_pem)?;
    let lifetime = cert.not_after().duration_since(cert.not_before())?;
    let start = cert.not_before();
    assert!(cert.has_half_life_left(SystemTime::now()));
    assert!(cert.has_half_life_left(start + lifetime / 2 - Duration::from_secs(60)));
    assert!(!cert.has_half_life_left(start + lifetime / 2 + Duration::from_secs(60)));
    assert!(!cert.has_half_life_left(cert.not_after() + Duration::from_secs(1)));
    // Validity starts a few minutes back so a slow clock accepts it at once.
    assert!(start < SystemTime::now() - Duration::from_secs(60));
    Ok(())
}

#[test]
fn only_the_issuing_ca_verifies_a_certificate() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let other = ClusterCa::generate()?;
    let cert = ParsedCert::from_pem(&ca.issue_client("u", &[])?.cert_pem)?;
    let ca_cert = ParsedCert::from_pem(ca.cert_pem())?;
    let other_cert = ParsedCert::from_pem(other.cert_pem())?;
    let ca_key = p256::PublicKey::from_public_key_der(&ca_cert.public_key_der()?)?;
    let other_key = p256::PublicKey::from_public_key_der(&other_cert.public_key_der()?)?;
    assert!(cert.is_signed_by(ca_cert.subject(), &ca_key.into()));
    // Same name, other key: refused.
    assert!(!cert.is_signed_by(ca_cert.subject(), &other_key.into()));
    Ok(())
}
