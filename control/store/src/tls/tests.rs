use std::path::Path;

use super::*;

fn files(cert: Option<&Path>, key: Option<&Path>, ca: Option<&Path>, auth: bool) -> TlsFiles {
    TlsFiles {
        cert_file: cert.map(Path::to_path_buf),
        key_file: key.map(Path::to_path_buf),
        trusted_ca_file: ca.map(Path::to_path_buf),
        client_cert_auth: auth,
    }
}

/// Writes a CA, a certificate it signed and its key; returns their paths.
fn write_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = shoal_ca::ClusterCa::generate().expect("CA");
    let cert = ca
        .issue_serving(&[shoal_ca::SubjectAltName::parse("127.0.0.1")])
        .expect("serving cert");
    let paths = (dir.join("c.crt"), dir.join("c.key"), dir.join("ca.crt"));
    std::fs::write(&paths.0, &cert.cert_pem).expect("write cert");
    std::fs::write(&paths.1, &cert.key_pem).expect("write key");
    std::fs::write(&paths.2, ca.cert_pem()).expect("write ca");
    paths
}

#[test]
fn no_flags_mean_plain_http2() {
    let tls = TlsFiles::default()
        .load(Listener::Client)
        .expect("no flags");
    assert!(tls.is_none());
}

#[test]
fn a_half_given_pair_names_the_missing_flag() {
    let p = Path::new("/x/server.crt");
    let err = files(Some(p), None, None, false)
        .load(Listener::Client)
        .expect_err("cert without key");
    assert_eq!(err.to_string(), "--cert-file needs --key-file");
    let err = files(None, Some(p), None, false)
        .load(Listener::Peer)
        .expect_err("key without cert");
    assert_eq!(err.to_string(), "--peer-key-file needs --peer-cert-file");
    let err = files(None, None, Some(p), false)
        .load(Listener::Client)
        .expect_err("CA alone");
    assert_eq!(
        err.to_string(),
        "--trusted-ca-file needs --cert-file and --key-file"
    );
}

#[test]
fn client_cert_auth_needs_a_ca_and_peers_always_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, _) = write_pki(dir.path());
    let err = files(Some(&cert), Some(&key), None, true)
        .load(Listener::Client)
        .expect_err("auth without CA");
    assert_eq!(
        err.to_string(),
        "--client-cert-auth needs --trusted-ca-file to verify client certificates against"
    );
    let err = files(Some(&cert), Some(&key), None, false)
        .load(Listener::Peer)
        .expect_err("peers without CA");
    assert!(
        err.to_string()
            .starts_with("--peer-cert-file needs --peer-trusted-ca-file"),
        "{err}"
    );
}

#[test]
fn unreadable_and_non_pem_files_are_named_with_their_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, ca) = write_pki(dir.path());
    let missing = dir.path().join("missing.crt");
    let err = files(Some(&missing), Some(&key), None, false)
        .load(Listener::Client)
        .expect_err("missing cert");
    assert_eq!(
        err.to_string(),
        format!(
            "--cert-file {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    // A key given where the certificate belongs, and the reverse.
    let err = files(Some(&key), Some(&key), None, false)
        .load(Listener::Client)
        .expect_err("key as cert");
    assert_eq!(
        err.to_string(),
        format!(
            "--cert-file {}: no CERTIFICATE block (a PEM certificate is expected)",
            key.display()
        )
    );
    let err = files(Some(&cert), Some(&cert), Some(&ca), false)
        .load(Listener::Peer)
        .expect_err("cert as key");
    assert!(
        err.to_string().starts_with(&format!(
            "--peer-key-file {}: no usable private key",
            cert.display()
        )),
        "{err}"
    );
}

#[test]
fn good_files_load_with_their_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, ca) = write_pki(dir.path());
    let tls = files(Some(&cert), Some(&key), Some(&ca), true)
        .load(Listener::Client)
        .expect("good files")
        .expect("TLS on");
    assert!(tls.client_cert_auth);
    assert!(tls.trusted_ca_pem.is_some());
    assert!(
        !format!("{tls:?}").contains("PRIVATE KEY"),
        "the key stays out of logs"
    );
}
