use http::Method;

use super::*;

fn res(method: Method, path: &str, query: &str) -> ResourceRequest {
    let q = Query::parse(Some(query)).unwrap_or_default();
    match route(&method, path, &q) {
        Ok(Route::Resource(r)) => r,
        other => panic!("{path}: {other:?}"),
    }
}

#[test]
fn namespaced_paths_resolve_like_kubernetes() {
    let r = res(Method::GET, "/api/v1/namespaces/demo/pods/web", "");
    assert_eq!(r.verb, Verb::Get);
    assert_eq!(r.namespace.as_deref(), Some("demo"));
    assert_eq!(
        (r.resource.as_str(), r.name.as_deref()),
        ("pods", Some("web"))
    );
    let r = res(
        Method::PUT,
        "/apis/apps/v1/namespaces/demo/deployments/web/scale",
        "",
    );
    assert_eq!(
        (r.group.as_str(), r.verb, r.subresource.as_deref()),
        ("apps", Verb::Update, Some("scale"))
    );
    let r = res(Method::GET, "/api/v1/pods", "watch=1");
    assert_eq!((r.verb, r.namespace), (Verb::Watch, None));
    let r = res(Method::DELETE, "/api/v1/namespaces/demo/configmaps", "");
    assert_eq!(r.verb, Verb::DeleteCollection);
}

#[test]
fn boolean_parameters_are_false_only_for_0_f_and_false() {
    // The Python client sends `watch=True`.
    for v in ["True", "true", "1", "", "yes"] {
        let q =
            Query::parse(Some(&format!("watch={v}&allowWatchBookmarks={v}"))).unwrap_or_default();
        assert!(q.watch && q.allow_bookmarks, "{v:?} is true");
    }
    for v in ["False", "false", "FALSE", "0", "f", "F"] {
        let q = Query::parse(Some(&format!("watch={v}"))).unwrap_or_default();
        assert!(!q.watch, "{v:?} is false");
    }
}

#[test]
fn namespace_objects_and_their_subresources_are_cluster_scoped() {
    let r = res(Method::GET, "/api/v1/namespaces/demo", "");
    assert_eq!(
        (r.resource.as_str(), r.name.as_deref(), r.namespace),
        ("namespaces", Some("demo"), None)
    );
    let r = res(Method::PUT, "/api/v1/namespaces/demo/finalize", "");
    assert_eq!(
        (r.resource.as_str(), r.subresource.as_deref()),
        ("namespaces", Some("finalize"))
    );
}

#[test]
fn discovery_and_health_paths() {
    let q = Query::default();
    assert_eq!(
        route(&Method::GET, "/apis/apps", &q),
        Ok(Route::Group("apps".into()))
    );
    assert_eq!(
        route(&Method::GET, "/api/v1", &q),
        Ok(Route::ResourceList(String::new(), "v1".into()))
    );
    assert_eq!(
        route(&Method::GET, "/readyz/ping", &q),
        Ok(Route::Health("readyz/ping".into()))
    );
    assert!(route(&Method::GET, "/nope", &q).is_err());
}

#[test]
fn malformed_numbers_name_the_parameter() {
    let e = Query::parse(Some("limit=ten")).err().map(|e| e.message);
    assert!(e.is_some_and(|m| m.contains("limit")));
}
