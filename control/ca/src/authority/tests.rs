use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use super::*;
use crate::{MASTERS_GROUP, default_apiserver_names};

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o777)
}

#[test]
fn a_new_ca_is_saved_with_a_private_key_and_reloads_the_same() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca_dir = dir.path().join("pki");
    let ca = ClusterCa::load_or_create(&ca_dir)?;
    assert_eq!(mode(&ca_dir.join(CA_KEY_FILE))?, 0o600);
    assert_eq!(mode(&ca_dir.join(CA_CERT_FILE))?, 0o644);
    assert_eq!(mode(&ca_dir)?, 0o700);
    assert_eq!(
        fs::read_to_string(ca_dir.join(CA_CERT_FILE))?,
        ca.cert_pem()
    );
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(&ca_dir)?.count(), 2);

    let again = ClusterCa::load_or_create(&ca_dir)?;
    assert_eq!(again.cert_pem(), ca.cert_pem());
    // The reloaded CA signs with the same key: what one issued, the other verifies.
    let issued = again.issue_client("u", &[])?;
    let cert = ParsedCert::from_pem(&issued.cert_pem)?;
    assert!(cert.is_signed_by(&ca.name, ca.verifying_key()));

    let ca_cert = ParsedCert::from_pem(ca.cert_pem())?;
    assert_eq!(ca_cert.common_name().as_deref(), Some(CA_COMMON_NAME));
    let lifetime = ca_cert.not_after().duration_since(ca_cert.not_before())?;
    assert!(lifetime >= CA_LIFETIME);
    Ok(())
}

#[test]
fn a_corrupt_ca_key_is_an_error_naming_the_file_and_the_way_out() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    ClusterCa::load_or_create(dir.path())?;
    let key_path = dir.path().join(CA_KEY_FILE);
    fs::write(
        &key_path,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )?;
    let err = ClusterCa::load_or_create(dir.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains(&key_path.display().to_string()), "{err}");
    assert!(
        err.contains("restore ca.crt and ca.key from a backup"),
        "{err}"
    );

    fs::write(&key_path, [0xff, 0xfe, 0x00])?;
    let err = ClusterCa::load(dir.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains(&key_path.display().to_string()), "{err}");
    Ok(())
}

#[test]
fn a_corrupt_ca_certificate_is_an_error_naming_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    ClusterCa::load_or_create(dir.path())?;
    let cert_path = dir.path().join(CA_CERT_FILE);
    fs::write(&cert_path, "garbage")?;
    let err = ClusterCa::load_or_create(dir.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains(&cert_path.display().to_string()), "{err}");
    assert!(err.contains("not a PEM X.509 certificate"), "{err}");
    Ok(())
}

#[test]
fn a_key_from_another_ca_is_refused() -> anyhow::Result<()> {
    let (one, two) = (tempfile::tempdir()?, tempfile::tempdir()?);
    ClusterCa::load_or_create(one.path())?;
    ClusterCa::load_or_create(two.path())?;
    fs::copy(two.path().join(CA_KEY_FILE), one.path().join(CA_KEY_FILE))?;
    let err = ClusterCa::load(one.path()).err();
    assert!(matches!(err, Some(CaError::Mismatch { .. })), "{err:?}");
    Ok(())
}

#[test]
fn a_certificate_without_its_key_is_not_replaced() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    ClusterCa::load_or_create(dir.path())?;
    fs::remove_file(dir.path().join(CA_KEY_FILE))?;
    let err = ClusterCa::load_or_create(dir.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("ca.key does not"), "{err}");
    // Nothing was written over the surviving certificate.
    assert!(!dir.path().join(CA_KEY_FILE).exists());
    Ok(())
}

#[test]
fn a_key_without_its_certificate_gets_one_that_still_verifies_old_certificates()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = ClusterCa::load_or_create(dir.path())?;
    let old = ca.issue_client("u", &[])?;
    fs::remove_file(dir.path().join(CA_CERT_FILE))?;
    let repaired = ClusterCa::load_or_create(dir.path())?;
    assert!(dir.path().join(CA_CERT_FILE).exists());
    let old = ParsedCert::from_pem(&old.cert_pem)?;
    assert!(old.is_signed_by(&repaired.name, repaired.verifying_key()));
    Ok(())
}

#[test]
fn a_serving_certificate_is_kept_while_it_fits_and_reissued_when_it_does_not() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let ca = ClusterCa::load_or_create(dir.path())?;
    let names = default_apiserver_names();
    let first = ca.ensure_serving(dir.path(), &names)?;
    assert_eq!(mode(&dir.path().join(SERVING_KEY_FILE))?, 0o600);
    assert_eq!(
        fs::read_to_string(dir.path().join(SERVING_CERT_FILE))?,
        first.cert_pem
    );

    // Same names, or fewer: kept.
    assert_eq!(ca.ensure_serving(dir.path(), &names)?, first);
    assert_eq!(ca.ensure_serving(dir.path(), &names[..2])?, first);

    // A new name: reissued, covering it.
    let mut more = names.clone();
    more.push(SubjectAltName::parse("192.0.2.7"));
    let second = ca.ensure_serving(dir.path(), &more)?;
    assert_ne!(second.cert_pem, first.cert_pem);
    assert!(
        ParsedCert::from_pem(&second.cert_pem)?
            .subject_alt_names()
            .contains(&more[more.len() - 1])
    );

    // Another CA: reissued by it.
    let other = ClusterCa::generate()?;
    let third = other.ensure_serving(dir.path(), &more)?;
    assert_ne!(third.cert_pem, second.cert_pem);
    assert_eq!(third.ca_pem, other.cert_pem());

    // A damaged certificate: reissued, not an error.
    fs::write(dir.path().join(SERVING_CERT_FILE), "garbage")?;
    let fourth = other.ensure_serving(dir.path(), &more)?;
    assert_ne!(fourth.cert_pem, third.cert_pem);

    // A key that no longer matches: reissued.
    fs::write(
        dir.path().join(SERVING_KEY_FILE),
        ca.issue_serving(&more)?.key_pem,
    )?;
    assert_ne!(
        other.ensure_serving(dir.path(), &more)?.cert_pem,
        fourth.cert_pem
    );
    Ok(())
}

#[test]
fn a_client_certificate_is_reissued_when_its_groups_change() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = ClusterCa::load_or_create(dir.path())?;
    let admin = ca.ensure_client(dir.path(), "admin", "shoal-admin", &[MASTERS_GROUP])?;
    assert_eq!(
        ca.ensure_client(dir.path(), "admin", "shoal-admin", &[MASTERS_GROUP])?,
        admin
    );
    let changed = ca.ensure_client(dir.path(), "admin", "shoal-admin", &[MASTERS_GROUP, "ops"])?;
    assert_ne!(changed, admin);
    let renamed = ca.ensure_client(dir.path(), "admin", "root", &[MASTERS_GROUP, "ops"])?;
    assert_ne!(renamed, changed);
    assert_eq!(mode(&dir.path().join("admin.key"))?, 0o600);
    Ok(())
}

fn openssl(args: &[&str], dir: &Path) -> anyhow::Result<String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "openssl {args:?} failed: {text}");
    Ok(text)
}

#[test]
fn openssl_verifies_the_issued_certificates_against_the_ca() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = ClusterCa::load_or_create(dir.path())?;
    ca.ensure_serving(dir.path(), &default_apiserver_names())?;
    ca.ensure_client(dir.path(), "admin", "shoal-admin", &[MASTERS_GROUP, "ops"])?;
    let p = dir.path();

    let out = openssl(&["verify", "-CAfile", "ca.crt", "serving.crt"], p)?;
    assert!(out.contains("serving.crt: OK"), "{out}");
    openssl(
        &[
            "verify",
            "-CAfile",
            "ca.crt",
            "-purpose",
            "sslserver",
            "serving.crt",
        ],
        p,
    )?;
    openssl(
        &[
            "verify",
            "-CAfile",
            "ca.crt",
            "-purpose",
            "sslclient",
            "admin.crt",
        ],
        p,
    )?;
    // A serving certificate is no client certificate, and the reverse.
    assert!(
        openssl(
            &[
                "verify",
                "-CAfile",
                "ca.crt",
                "-purpose",
                "sslclient",
                "serving.crt"
            ],
            p
        )
        .is_err()
    );
    assert!(
        openssl(
            &[
                "verify",
                "-CAfile",
                "ca.crt",
                "-purpose",
                "sslserver",
                "admin.crt"
            ],
            p
        )
        .is_err()
    );

    let text = openssl(&["x509", "-in", "serving.crt", "-noout", "-text"], p)?;
    for name in [
        "DNS:kubernetes.default.svc.cluster.local",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
        "IP Address:10.96.0.1",
        "IP Address:FD00:10:96:0:0:0:0:1",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    let subject = openssl(
        &[
            "x509",
            "-in",
            "admin.crt",
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
        ],
        p,
    )?;
    assert_eq!(
        subject.trim(),
        "subject=CN=shoal-admin,O=ops,O=system:masters"
    );
    let ca_text = openssl(&["x509", "-in", "ca.crt", "-noout", "-text"], p)?;
    assert!(ca_text.contains("CA:TRUE, pathlen:0"), "{ca_text}");
    assert!(ca_text.contains("Subject: CN = shoal-ca"), "{ca_text}");
    // The keys are PKCS#8 that openssl reads too.
    openssl(&["pkey", "-in", "ca.key", "-noout"], p)?;
    Ok(())
}

#[test]
fn a_peer_certificate_serves_and_connects_and_is_kept_while_it_fits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = ClusterCa::load_or_create(dir.path())?;
    let names = [SubjectAltName::parse("127.0.0.1")];
    let peer = ca.ensure_peer(dir.path(), "store", "m1", &names)?;
    assert_eq!(ca.ensure_peer(dir.path(), "store", "m1", &names)?, peer);
    let p = dir.path();
    for purpose in ["sslserver", "sslclient"] {
        let out = openssl(
            &[
                "verify",
                "-CAfile",
                "ca.crt",
                "-purpose",
                purpose,
                "store.crt",
            ],
            p,
        )?;
        assert!(out.contains("store.crt: OK"), "{purpose}: {out}");
    }
    let wider = [names[0].clone(), SubjectAltName::parse("localhost")];
    let reissued = ca.ensure_peer(dir.path(), "store", "m1", &wider)?;
    assert_ne!(reissued, peer, "a new name needs a new certificate");
    let renamed = ca.ensure_peer(dir.path(), "store", "m2", &wider)?;
    assert_ne!(
        renamed, reissued,
        "another member needs its own certificate"
    );
    assert_eq!(mode(&dir.path().join("store.key"))?, 0o600);
    Ok(())
}
