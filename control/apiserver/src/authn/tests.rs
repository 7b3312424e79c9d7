use http::{HeaderMap, HeaderValue, header};

use super::bearer;

fn headers(authorization: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(authorization) {
        h.insert(header::AUTHORIZATION, v);
    }
    h
}

#[test]
fn bearer_tokens_are_read_from_the_authorization_header() {
    assert_eq!(bearer(&headers("Bearer abc.def.ghi")), Some("abc.def.ghi"));
    // The scheme is case-insensitive, as in client-go and Kubernetes.
    assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
    assert_eq!(bearer(&headers("Basic dXNlcjpwYXNz")), None);
    assert_eq!(bearer(&headers("Bearer ")), None);
    assert_eq!(bearer(&headers("Bearer")), None);
    assert_eq!(bearer(&HeaderMap::new()), None);
}
