use super::Reference;

fn norm(r: &str) -> String {
    match Reference::parse(r) {
        Ok(r) => r.to_string(),
        Err(e) => panic!("{r}: {e}"),
    }
}

#[test]
fn docker_hub_short_names_normalise_to_one_reference() {
    for r in [
        "busybox",
        "busybox:latest",
        "library/busybox",
        "library/busybox:latest",
        "docker.io/library/busybox",
        "docker.io/library/busybox:latest",
        "index.docker.io/library/busybox",
        "docker.io/busybox",
    ] {
        assert_eq!(norm(r), "docker.io/library/busybox:latest", "{r}");
    }
}

#[test]
fn registries_ports_users_and_digests_are_kept() {
    assert_eq!(norm("nginx:1.27"), "docker.io/library/nginx:1.27");
    assert_eq!(norm("bitnami/redis"), "docker.io/bitnami/redis:latest");
    assert_eq!(
        norm("localhost:5000/team/app:v1"),
        "localhost:5000/team/app:v1"
    );
    assert_eq!(norm("quay.io/coreos/etcd"), "quay.io/coreos/etcd:latest");
    assert_eq!(norm("localhost/app"), "localhost/app:latest");
    let d = "sha256:".to_owned() + &"ab".repeat(32);
    assert_eq!(
        norm(&format!("busybox@{d}")),
        format!("docker.io/library/busybox@{d}")
    );
    let r = Reference::parse("registry.local:5000/x/y:z").expect("valid");
    assert_eq!(r.repository(), "registry.local:5000/x/y");
    assert_eq!(r.tag(), Some("z"));
}

#[test]
fn invalid_references_say_why() {
    for (r, want) in [
        ("", "empty"),
        ("BusyBox", "lowercase"),
        ("busybox:", "tag"),
        ("busybox@sha256:12", "64 hexadecimal"),
        ("busybox@md5:12", "sha256"),
        ("bad--/x", "components"),
        ("a//b", "components"),
    ] {
        match Reference::parse(r) {
            Ok(ok) => panic!("{r:?} parsed as {ok}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(want), "{r:?}: {msg}");
                assert!(msg.contains(&format!("{r:?}")), "{msg}");
            }
        }
    }
}
