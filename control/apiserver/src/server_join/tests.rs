use std::os::unix::fs::PermissionsExt;

use super::*;

fn answer(files: &[(&str, &[u8])]) -> ServerJoinResponse {
    ServerJoinResponse {
        member_id: 2,
        cluster_id: 7,
        files: files
            .iter()
            .map(|(n, b)| {
                (
                    (*n).to_owned(),
                    base64::engine::general_purpose::STANDARD.encode(b),
                )
            })
            .collect(),
    }
}

#[test]
fn the_shared_secrets_are_written_owner_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    answer(&[
        (shoal_ca::CA_KEY_FILE, b"key"),
        (shoal_ca::CA_CERT_FILE, b"cert"),
    ])
    .write_files(&pki)
    .expect("written");
    let key = pki.join(shoal_ca::CA_KEY_FILE);
    assert_eq!(std::fs::read(&key).expect("ca.key"), b"key");
    let mode = std::fs::metadata(&key)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "ca.key mode {mode:o}");
}

#[test]
fn a_server_cannot_write_outside_the_secrets_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let err = answer(&[("../kubeconfig", b"evil")])
        .write_files(&pki)
        .expect_err("refused");
    assert!(err.contains("unexpected file \"../kubeconfig\""), "{err}");
    assert!(!dir.path().join("kubeconfig").exists());
}
