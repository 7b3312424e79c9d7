use p256::pkcs8::DecodePrivateKey;

use super::*;
use crate::request::{CertificateRequest, RequestError};
use crate::{ClusterCa, LEAF_LIFETIME};

#[test]
fn a_generated_token_parses_back_and_names_its_secret() -> anyhow::Result<()> {
    let token = BootstrapToken::generate();
    let text = token.to_string();
    assert_eq!(text.len(), 23, "{text}");
    let parsed = BootstrapToken::parse(&text)?;
    assert_eq!(parsed, token);
    assert_eq!(
        parsed.secret_name(),
        format!("bootstrap-token-{}", token.id())
    );
    assert_eq!(bootstrap_user("abcdef"), "system:bootstrap:abcdef");
    // Debug output keeps the secret out of logs.
    assert!(!format!("{token:?}").contains(token.secret()));
    assert_ne!(BootstrapToken::generate(), token, "two tokens alike");
    Ok(())
}

#[test]
fn tokens_of_the_wrong_shape_are_refused() {
    for bad in [
        "",
        "abcdef",
        "abcdef.",
        "abcdef0123456789abcdef",
        "abcde.0123456789abcdef",
        "abcdefg.0123456789abcdef",
        "abcdef.0123456789abcde",
        "ABCDEF.0123456789abcdef",
        "abcdef.0123456789abcdeF",
        "abc-ef.0123456789abcdef",
        "abcdef.0123456789abcdef.x",
    ] {
        assert_eq!(
            BootstrapToken::parse(bad),
            Err(BootstrapError::MalformedToken),
            "{bad:?}"
        );
    }
    assert!(BootstrapToken::parse(" abcdef.0123456789abcdef\n").is_ok());
    assert!(BootstrapToken::check_id("abc123").is_ok());
    let err = BootstrapToken::check_id("abc12").map_err(|e| e.to_string());
    assert_eq!(
        err,
        Err("\"abc12\" is not a bootstrap token id: it must be 6 characters of [a-z0-9]".into())
    );
}

#[test]
fn secrets_compare_whole() -> anyhow::Result<()> {
    let token = BootstrapToken::parse("abcdef.0123456789abcdef")?;
    assert!(token.secret_matches("0123456789abcdef"));
    assert!(!token.secret_matches("0123456789abcdee"));
    assert!(!token.secret_matches("0123456789abcde"));
    assert!(!token.secret_matches(""));
    Ok(())
}

/// The hash as `openssl x509 -pubkey | openssl pkey -pubin -outform der |
/// sha256sum` computes it, the recipe kubeadm documents.
fn openssl_hash(pem: &str) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let cert = dir.path().join("ca.crt");
    std::fs::write(&cert, pem)?;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum",
            cert.display()
        ))
        .output()?;
    anyhow::ensure!(out.status.success(), "openssl: {out:?}");
    Ok(String::from_utf8(out.stdout)?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

#[test]
fn the_ca_hash_is_the_sha256_of_the_public_key_and_a_mismatch_names_both() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let hash = CaCertHash::of_pem(ca.cert_pem())?;
    let text = hash.to_string();
    assert!(
        text.starts_with("sha256:") && text.len() == 7 + 64,
        "{text}"
    );
    assert_eq!(text, format!("sha256:{}", openssl_hash(ca.cert_pem())?));
    assert_eq!(
        CaCertHash::parse(&text.to_uppercase().replace("SHA256:", "sha256:"))?,
        hash
    );
    hash.check(ca.cert_pem())?;
    // A bundle is judged by its first certificate.
    let other = ClusterCa::generate()?;
    hash.check(&format!("{}{}", ca.cert_pem(), other.cert_pem()))?;

    let other_hash = CaCertHash::of_pem(other.cert_pem())?.to_string();
    let err = hash.check(other.cert_pem()).map_err(|e| e.to_string());
    let Err(err) = err else {
        anyhow::bail!("another CA passed the check");
    };
    assert!(
        err.contains(&format!("expected {text}, got {other_hash}")),
        "{err}"
    );
    for bad in [
        "",
        "sha256:",
        "md5:00",
        &text[7..],
        &format!("{text}0"),
        "sha256:zz",
    ] {
        assert_eq!(
            CaCertHash::parse(bad),
            Err(BootstrapError::MalformedHash(bad.to_owned())),
            "{bad:?}"
        );
    }
    Ok(())
}

#[test]
fn a_node_request_is_signed_into_the_nodes_client_certificate() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let request = NodeRequest::generate("node-7")?;
    assert!(
        request
            .csr_pem
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
    );
    let parsed = CertificateRequest::from_pem(&request.csr_pem)?;
    assert_eq!(parsed.common_name().as_deref(), Some("system:node:node-7"));
    assert_eq!(parsed.organizations(), vec!["system:nodes".to_owned()]);
    assert!(!parsed.requests_alt_names());

    let cert_pem = ca.sign_client_request(&parsed, LEAF_LIFETIME)?;
    let cert = ParsedCert::from_pem(&cert_pem)?;
    assert!(cert.is_client() && !cert.is_serving());
    assert_eq!(cert.common_name().as_deref(), Some("system:node:node-7"));
    assert_eq!(cert.organizations(), vec!["system:nodes".to_owned()]);
    let lifetime = cert.not_after().duration_since(cert.not_before())?;
    assert!(
        lifetime >= LEAF_LIFETIME
            && lifetime <= LEAF_LIFETIME + std::time::Duration::from_secs(600),
        "{lifetime:?}"
    );
    // The certificate carries the node's own key.
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&request.key_pem)?;
    assert_eq!(
        cert.public_key_der()?,
        certificate::public_key_der(key.verifying_key())?
    );
    Ok(())
}

#[test]
fn a_request_whose_signature_does_not_verify_is_refused() -> anyhow::Result<()> {
    use base64::Engine;
    let request = NodeRequest::generate("node-1")?;
    let body: String = request
        .csr_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let mut der = base64::engine::general_purpose::STANDARD.decode(body)?;
    // Flip a byte of the common name (in the signed part).
    let at = der
        .windows(6)
        .position(|w| w == b"node-1")
        .ok_or_else(|| anyhow::anyhow!("no CN in the request"))?;
    der[at + 5] = b'2';
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    let forged = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    );
    assert_eq!(
        CertificateRequest::from_pem(&forged).map(|_| ()),
        Err(RequestError::Signature)
    );
    assert!(matches!(
        CertificateRequest::from_pem("not pem"),
        Err(RequestError::Pem(_))
    ));
    Ok(())
}
