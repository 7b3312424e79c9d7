use super::*;

/// What `kubectl create token robot` (1.32) sends.
const KUBECTL_PLAIN: &[u8] = b"k8s\x00\x0a\x28\x0a\x18authentication.k8s.io/v1\x12\x0cTokenRequest\x12\x1a\x0a\x10\x0a\x00\x12\x00\x1a\x00\x22\x00\x2a\x00\x32\x00\x38\x00\x42\x00\x12\x00\x1a\x04\x0a\x00\x12\x00\x1a\x00\x22\x00";

/// `kubectl create token robot --duration=15m --audience=aa --audience=bbb
/// --bound-object-kind=Pod --bound-object-name=web --bound-object-uid=U1`.
const KUBECTL_FULL: &[u8] = b"k8s\x00\x0a\x28\x0a\x18authentication.k8s.io/v1\x12\x0cTokenRequest\x12\x3a\x0a\x10\x0a\x00\x12\x00\x1a\x00\x22\x00\x2a\x00\x32\x00\x38\x00\x42\x00\x12\x20\x0a\x02aa\x0a\x03bbb\x1a\x12\x0a\x03Pod\x12\x02v1\x1a\x03web\x22\x02U1\x20\x84\x07\x1a\x04\x0a\x00\x12\x00\x1a\x00\x22\x00";

fn protobuf(bytes: &[u8]) -> Body<'_> {
    Body {
        content_type: "application/vnd.kubernetes.protobuf",
        bytes,
    }
}

#[test]
fn kubectl_protobuf_requests_decode() -> Result<(), ApiError> {
    assert_eq!(parse(&protobuf(KUBECTL_PLAIN))?, Spec::default());
    assert_eq!(
        parse(&protobuf(KUBECTL_FULL))?,
        Spec {
            audiences: vec!["aa".into(), "bbb".into()],
            expiration_seconds: Some(900),
            bound: Some(BoundRef {
                kind: "Pod".into(),
                api_version: "v1".into(),
                name: "web".into(),
                uid: "U1".into(),
            }),
        }
    );
    Ok(())
}

#[test]
fn json_requests_decode() -> Result<(), ApiError> {
    let body = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"audiences":["vault"],"expirationSeconds":1200,"boundObjectRef":{"kind":"Secret","apiVersion":"v1","name":"s"}}}"#;
    let spec = parse(&Body {
        content_type: "application/json",
        bytes: body,
    })?;
    assert_eq!(spec.audiences, ["vault"]);
    assert_eq!(spec.expiration_seconds, Some(1200));
    assert_eq!(
        spec.bound.map(|b| (b.kind, b.name)),
        Some(("Secret".into(), "s".into()))
    );
    Ok(())
}

#[test]
fn malformed_bodies_are_bad_requests() {
    let cut = &KUBECTL_FULL[..KUBECTL_FULL.len() - 20];
    let err = parse(&protobuf(cut)).expect_err("truncated");
    assert_eq!(err.code, 400, "{err}");
    let err = parse(&protobuf(b"{}")).expect_err("no envelope");
    assert!(err.message.contains("envelope"), "{err}");
    let err = parse(&Body {
        content_type: "application/json",
        bytes: br#"{"kind":"Pod","spec":{}}"#,
    })
    .expect_err("wrong kind");
    assert!(err.message.contains("TokenRequest"), "{err}");
    let err = parse(&Body {
        content_type: "application/json",
        bytes: br#"{"spec":{"expirationSeconds":"soon"}}"#,
    })
    .expect_err("string expiry");
    assert!(err.message.contains("spec.expirationSeconds"), "{err}");
}

#[test]
fn only_posts_to_a_service_accounts_token_are_token_requests() {
    let mut req = ResourceRequest {
        verb: Verb::Create,
        group: String::new(),
        version: "v1".into(),
        namespace: Some("default".into()),
        resource: "serviceaccounts".into(),
        name: Some("robot".into()),
        subresource: Some("token".into()),
    };
    assert!(is_token_request(&req));
    req.verb = Verb::Get;
    assert!(!is_token_request(&req));
    req.verb = Verb::Create;
    req.subresource = None;
    assert!(!is_token_request(&req));
}

#[test]
fn timestamps_are_kubernetes_shaped() {
    assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
    assert_eq!(timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
}
