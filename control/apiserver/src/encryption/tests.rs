use base64::Engine as _;

use super::*;

const SECRET_KEY: &str = "/registry/secrets/default/db";

fn config(keys: &[(&str, [u8; 32])], identity_first: bool) -> String {
    let keys: String = keys
        .iter()
        .map(|(name, secret)| {
            format!(
                "            - name: {name}\n              secret: {}\n",
                base64::engine::general_purpose::STANDARD.encode(secret)
            )
        })
        .collect();
    let identity = "      - identity: {}\n";
    let aesgcm = format!("      - aesgcm:\n          keys:\n{keys}");
    let providers = if identity_first {
        format!("{identity}{aesgcm}")
    } else {
        format!("{aesgcm}{identity}")
    };
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n      - secrets\n    providers:\n{providers}"
    )
}

#[test]
fn secrets_round_trip_under_the_first_key_and_carry_its_name() -> anyhow::Result<()> {
    let enc =
        Encryption::parse(&config(&[("key1", [7; 32])], false)).map_err(anyhow::Error::msg)?;
    let plain = br#"{"data":{"password":"aHVudGVyMg=="}}"#.to_vec();
    let sealed = enc.seal(SECRET_KEY, plain.clone())?;
    assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
    assert!(!sealed.windows(12).any(|w| w == b"aHVudGVyMg=="));
    assert_eq!(enc.open(SECRET_KEY.as_bytes(), &sealed)?.as_ref(), plain);
    // A fresh nonce each time: the same Secret never encrypts the same way twice.
    assert_ne!(enc.seal(SECRET_KEY, plain.clone())?, sealed);
    Ok(())
}

#[test]
fn other_resources_and_plain_values_pass_through() -> anyhow::Result<()> {
    let enc =
        Encryption::parse(&config(&[("key1", [7; 32])], false)).map_err(anyhow::Error::msg)?;
    let cm = b"{\"kind\":\"ConfigMap\"}".to_vec();
    assert_eq!(enc.seal("/registry/configmaps/default/a", cm.clone())?, cm);
    // Written before encryption was turned on.
    assert_eq!(enc.open(SECRET_KEY.as_bytes(), &cm)?.as_ref(), cm);
    Ok(())
}

#[test]
fn a_new_first_key_writes_while_the_old_one_still_reads() -> anyhow::Result<()> {
    let old =
        Encryption::parse(&config(&[("key1", [1; 32])], false)).map_err(anyhow::Error::msg)?;
    let written_before = old.seal(SECRET_KEY, b"{}".to_vec())?;
    let rotated = Encryption::parse(&config(&[("key2", [2; 32]), ("key1", [1; 32])], false))
        .map_err(anyhow::Error::msg)?;
    assert_eq!(rotated.write_key(), Some("key2"));
    assert_eq!(
        rotated
            .open(SECRET_KEY.as_bytes(), &written_before)?
            .as_ref(),
        b"{}"
    );
    assert!(
        rotated
            .seal(SECRET_KEY, b"{}".to_vec())?
            .starts_with(b"k8s:enc:aesgcm:v1:key2:")
    );

    let finished =
        Encryption::parse(&config(&[("key2", [2; 32])], false)).map_err(anyhow::Error::msg)?;
    let err = finished
        .open(SECRET_KEY.as_bytes(), &written_before)
        .expect_err("key1 was removed");
    assert!(err.to_string().contains("\"key1\""), "{err}");
    Ok(())
}

#[test]
fn identity_first_stores_plain_but_still_decrypts() -> anyhow::Result<()> {
    let on = Encryption::parse(&config(&[("key1", [3; 32])], false)).map_err(anyhow::Error::msg)?;
    let sealed = on.seal(SECRET_KEY, b"{}".to_vec())?;
    let off = Encryption::parse(&config(&[("key1", [3; 32])], true)).map_err(anyhow::Error::msg)?;
    assert_eq!(off.write_key(), None);
    assert_eq!(off.seal(SECRET_KEY, b"{}".to_vec())?, b"{}");
    assert_eq!(off.open(SECRET_KEY.as_bytes(), &sealed)?.as_ref(), b"{}");
    Ok(())
}

#[test]
fn damaged_or_moved_ciphertext_is_refused_naming_the_key() -> anyhow::Result<()> {
    let enc =
        Encryption::parse(&config(&[("key1", [9; 32])], false)).map_err(anyhow::Error::msg)?;
    let mut sealed = enc.seal(SECRET_KEY, b"{\"a\":1}".to_vec())?;
    // Copied under another name: the key is the associated data.
    let err = enc
        .open(b"/registry/secrets/default/other", &sealed)
        .expect_err("moved ciphertext");
    assert!(matches!(err, EncryptionError::Decrypt { .. }), "{err}");
    if let Some(last) = sealed.last_mut() {
        *last ^= 1;
    }
    let err = enc
        .open(SECRET_KEY.as_bytes(), &sealed)
        .expect_err("flipped bit");
    let text = err.to_string();
    assert!(
        text.contains(SECRET_KEY) && text.contains("\"key1\""),
        "{text}"
    );
    // Cut short, even inside the nonce.
    let short = b"k8s:enc:aesgcm:v1:key1:abc";
    assert!(enc.open(SECRET_KEY.as_bytes(), short).is_err());
    let other = b"k8s:enc:kms:v2:vault:xyz";
    let err = enc.open(SECRET_KEY.as_bytes(), other).expect_err("kms");
    assert!(err.to_string().contains("\"kms\""), "{err}");
    Ok(())
}

#[test]
fn bad_configs_say_what_to_fix() {
    let short = config(&[("key1", [1; 32])], false).replace(
        &base64::engine::general_purpose::STANDARD.encode([1u8; 32]),
        &base64::engine::general_purpose::STANDARD.encode([1u8; 16]),
    );
    let err = Encryption::parse(&short).expect_err("16-byte key");
    assert!(
        err.contains("\"key1\"") && err.contains("16 bytes"),
        "{err}"
    );

    let twice = config(&[("key1", [1; 32]), ("key1", [2; 32])], false);
    assert!(
        Encryption::parse(&twice)
            .expect_err("duplicate")
            .contains("twice")
    );

    let colon = config(&[("a:b", [1; 32])], false);
    assert!(
        Encryption::parse(&colon)
            .expect_err("colon")
            .contains("colon")
    );

    let cbc = config(&[("key1", [1; 32])], false).replace("aesgcm", "aescbc");
    assert!(
        Encryption::parse(&cbc)
            .expect_err("aescbc")
            .contains("\"aescbc\"")
    );

    let pods = config(&[("key1", [1; 32])], false).replace("- secrets", "- secrets\n      - pods");
    assert!(
        Encryption::parse(&pods)
            .expect_err("pods")
            .contains("secrets only")
    );
}

#[test]
fn first_start_creates_a_private_key_file_that_reloads() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let first = Encryption::load_or_create(&pki)?;
    assert_eq!(first.write_key(), Some(FIRST_KEY_NAME));
    let path = pki.join(ENCRYPTION_CONFIG_FILE);
    assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
    let sealed = first.seal(SECRET_KEY, b"{}".to_vec())?;
    let again = Encryption::load_or_create(&pki)?;
    assert_eq!(again.open(SECRET_KEY.as_bytes(), &sealed)?.as_ref(), b"{}");

    fs::write(&path, "resources: [")?;
    let err = Encryption::load_or_create(&pki).expect_err("broken file");
    assert!(err.to_string().contains(ENCRYPTION_CONFIG_FILE), "{err}");
    Ok(())
}

#[test]
fn values_not_under_the_write_key_are_stale() -> anyhow::Result<()> {
    let old =
        Encryption::parse(&config(&[("key1", [1; 32])], false)).map_err(anyhow::Error::msg)?;
    let rotated = Encryption::parse(&config(&[("key2", [2; 32]), ("key1", [1; 32])], false))
        .map_err(anyhow::Error::msg)?;
    let off = Encryption::parse(&config(&[("key2", [2; 32])], true)).map_err(anyhow::Error::msg)?;
    let key = SECRET_KEY.as_bytes();
    let under_key1 = old.seal(SECRET_KEY, b"{}".to_vec())?;
    let under_key2 = rotated.seal(SECRET_KEY, b"{}".to_vec())?;
    assert!(!old.is_stale(key, &under_key1));
    assert!(rotated.is_stale(key, &under_key1));
    assert!(!rotated.is_stale(key, &under_key2));
    assert!(rotated.is_stale(key, b"{}"), "plain while a key encrypts");
    assert!(
        off.is_stale(key, &under_key2),
        "encrypted while identity writes"
    );
    assert!(!off.is_stale(key, b"{}"));
    // A key name that only starts like the write key's is another key.
    let key10 =
        Encryption::parse(&config(&[("key10", [3; 32])], false)).map_err(anyhow::Error::msg)?;
    assert!(old.is_stale(key, &key10.seal(SECRET_KEY, b"{}".to_vec())?));
    assert!(!rotated.is_stale(b"/registry/configmaps/default/a", b"{}"));
    Ok(())
}
