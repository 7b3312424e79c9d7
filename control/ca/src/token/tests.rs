use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn claims() -> Claims {
    Claims::service_account("default", "builder", "uid-sa", Duration::from_secs(3600))
        .with_pod("web-0", "uid-pod")
}

/// Rewrites a token's payload with `edit`, keeping the original signature.
fn forge(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> anyhow::Result<String> {
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
    edit(&mut payload);
    Ok(format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload)?),
        parts[2]
    ))
}

#[test]
fn a_signed_token_verifies_to_its_claims() -> anyhow::Result<()> {
    let signer = TokenSigner::generate()?;
    let claims = claims();
    let token = signer.sign(&claims)?;
    assert_eq!(signer.verify(&token)?, claims);
    assert_eq!(claims.sub, "system:serviceaccount:default:builder");
    assert_eq!(
        claims.identity(),
        Identity {
            user: "system:serviceaccount:default:builder".into(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:default".into()
            ],
        }
    );
    Ok(())
}

#[test]
fn a_token_has_kubernetes_claim_shape() -> anyhow::Result<()> {
    let signer = TokenSigner::generate()?;
    let token = signer.sign(&claims())?;
    let parts: Vec<&str> = token.split('.').collect();
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0])?)?;
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], signer.key_id());
    let payload: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
    assert_eq!(
        payload["iss"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(
        payload["aud"][0],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(payload["kubernetes.io"]["namespace"], "default");
    assert_eq!(
        payload["kubernetes.io"]["serviceaccount"]["name"],
        "builder"
    );
    assert_eq!(payload["kubernetes.io"]["serviceaccount"]["uid"], "uid-sa");
    assert_eq!(payload["kubernetes.io"]["pod"]["name"], "web-0");
    assert!(payload["kubernetes.io"].get("node").is_none());
    let (iat, exp) = (payload["iat"].as_i64(), payload["exp"].as_i64());
    assert_eq!(exp.zip(iat).map(|(e, i)| e - i), Some(3600));
    assert_eq!(payload["nbf"], payload["iat"]);
    Ok(())
}

#[test]
fn an_expired_token_is_rejected() -> anyhow::Result<()> {
    let signer = TokenSigner::generate()?;
    let mut claims = claims();
    claims.exp = claims.iat - 3600;
    let err = signer.verify(&signer.sign(&claims)?).err();
    assert!(
        matches!(err, Some(TokenError::Expired { exp }) if exp == claims.exp),
        "{err:?}"
    );

    // Within the minute of leeway it still passes.
    claims.exp = claims.iat - 30;
    signer.verify(&signer.sign(&claims)?)?;
    Ok(())
}

#[test]
fn a_token_not_yet_valid_is_rejected() -> anyhow::Result<()> {
    let signer = TokenSigner::generate()?;
    let mut claims = claims();
    claims.nbf = claims.iat + 600;
    let err = signer.verify(&signer.sign(&claims)?).err();
    assert!(
        matches!(err, Some(TokenError::NotYetValid { .. })),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn a_tampered_token_is_rejected() -> anyhow::Result<()> {
    let signer = TokenSigner::generate()?;
    let token = signer.sign(&claims())?;

    let escalated = forge(&token, |p| {
        p["sub"] = "system:serviceaccount:kube-system:admin".into();
        p["kubernetes.io"]["namespace"] = "kube-system".into();
        p["kubernetes.io"]["serviceaccount"]["name"] = "admin".into();
    })?;
    assert!(matches!(
        signer.verify(&escalated),
        Err(TokenError::Signature)
    ));

    let mut flipped = token.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    assert!(signer.verify(&String::from_utf8(flipped)?).is_err());

    let other = TokenSigner::generate()?;
    assert!(matches!(other.verify(&token), Err(TokenError::Signature)));

    for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
        assert!(
            matches!(signer.verify(junk), Err(TokenError::Malformed(_))),
            "{junk:?}"
        );
    }
    Ok(())
}

#[test]
fn an_unsigned_token_is_rejected() -> anyhow::Result<()> {
    let signer = TokenSigner::generate()?;
    let token = signer.sign(&claims())?;
    let payload = token.split('.').nth(1).unwrap_or_default();
    let none = format!(
        "{}.{payload}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#)
    );
    let err = signer.verify(&none).err();
    assert!(
        matches!(&err, Some(TokenError::Algorithm(alg)) if alg == "none"),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn a_token_for_another_audience_or_issuer_is_rejected() -> anyhow::Result<()> {
    let signer = TokenSigner::generate()?;
    let mut vault = claims();
    vault.aud = vec!["vault".into()];
    assert!(matches!(
        signer.verify(&signer.sign(&vault)?),
        Err(TokenError::Audience(_))
    ));
    let mut foreign = claims();
    foreign.iss = "https://example.invalid".into();
    assert!(matches!(
        signer.verify(&signer.sign(&foreign)?),
        Err(TokenError::Issuer(_))
    ));
    let mut lying = claims();
    lying.sub = "system:serviceaccount:kube-system:admin".into();
    assert!(matches!(
        signer.verify(&signer.sign(&lying)?),
        Err(TokenError::Subject { .. })
    ));
    Ok(())
}

#[test]
fn an_audience_given_as_one_string_is_accepted() -> anyhow::Result<()> {
    let signer = TokenSigner::generate()?;
    let mut value = serde_json::to_value(claims())?;
    value["aud"] = SERVICE_ACCOUNT_ISSUER.into();
    let claims: Claims = serde_json::from_value(value)?;
    assert_eq!(claims.aud, [SERVICE_ACCOUNT_ISSUER]);
    signer.verify(&signer.sign(&claims)?)?;
    Ok(())
}

#[test]
fn the_key_persists_beside_the_ca_and_reloads() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let signer = TokenSigner::load_or_create(dir.path())?;
    let path = dir.path().join(SA_KEY_FILE);
    assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
    let token = signer.sign(&claims())?;
    let reloaded = TokenSigner::load_or_create(dir.path())?;
    assert_eq!(reloaded.key_id(), signer.key_id());
    reloaded.verify(&token)?;
    Ok(())
}

#[test]
fn a_corrupt_key_is_an_error_naming_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(SA_KEY_FILE);
    fs::write(&path, "junk")?;
    let err = TokenSigner::load_or_create(dir.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("restore it from a backup"), "{err}");
    // The damaged key is left for the operator, not replaced.
    assert_eq!(fs::read_to_string(&path)?, "junk");
    Ok(())
}

#[test]
fn a_legacy_token_has_kubernetes_shape_never_expires_and_verifies_only_with_verify_any()
-> anyhow::Result<()> {
    let signer = TokenSigner::generate()?;
    let legacy = LegacyClaims::new("team", "builder", "uid-sa", "builder-token");
    let token = signer.sign_legacy(&legacy)?;
    let parts: Vec<&str> = token.split('.').collect();
    let payload: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
    assert_eq!(
        payload,
        serde_json::json!({
            "iss": "kubernetes/serviceaccount",
            "sub": "system:serviceaccount:team:builder",
            "kubernetes.io/serviceaccount/namespace": "team",
            "kubernetes.io/serviceaccount/secret.name": "builder-token",
            "kubernetes.io/serviceaccount/service-account.name": "builder",
            "kubernetes.io/serviceaccount/service-account.uid": "uid-sa",
        })
    );
    assert_eq!(signer.verify_any(&token)?, Verified::Legacy(legacy.clone()));
    assert_eq!(
        legacy.identity().groups,
        vec!["system:serviceaccounts", "system:serviceaccounts:team"]
    );
    assert!(
        signer.verify(&token).is_err(),
        "a legacy token is not a bound one"
    );
    let bound = signer.sign(&claims())?;
    assert!(matches!(signer.verify_any(&bound)?, Verified::Bound(_)));
    let other = TokenSigner::generate()?;
    assert!(matches!(
        other.verify_any(&token),
        Err(TokenError::Signature)
    ));
    let forged = forge(&token, |p| {
        p["kubernetes.io/serviceaccount/service-account.name"] = "admin".into();
    })?;
    assert!(signer.verify_any(&forged).is_err());
    Ok(())
}
