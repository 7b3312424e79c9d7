//! Objects encoded by prost with k8s-pb's types (the same wire format Go's
//! generated code writes) decode to the JSON kubectl would have sent.

use std::collections::BTreeMap;

use k8s_pb::{
    api::{apps::v1 as apps, core::v1 as core},
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, MicroTime, ObjectMeta, Time},
        runtime::{TypeMeta, Unknown},
        util::intstr::IntOrString,
    },
};
use prost::Message;
use serde_json::json;

use super::*;

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// What Go's generated code writes for an unset non-pointer field: the
/// zero value, explicitly.
fn zero_meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: s(name),
        generate_name: s(""),
        namespace: s(""),
        self_link: s(""),
        uid: s(""),
        resource_version: s(""),
        generation: Some(0),
        creation_timestamp: Some(Time::default()),
        ..Default::default()
    }
}

#[test]
fn a_deployment_as_kubectl_create_deployment_sends_it() {
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    let mut meta = zero_meta("web");
    meta.labels = labels.clone();
    let container = core::Container {
        name: s("busybox"),
        image: s("busybox:1.36"),
        args: vec!["httpd".into(), String::new(), "-f".into()],
        resources: Some(core::ResourceRequirements {
            limits: BTreeMap::from([("memory".to_string(), Quantity { string: s("64Mi") })]),
            ..Default::default()
        }),
        security_context: Some(core::SecurityContext {
            allow_privilege_escalation: Some(false),
            run_as_user: Some(0),
            ..Default::default()
        }),
        ports: vec![core::ContainerPort {
            container_port: Some(8080),
            protocol: s("TCP"),
            ..Default::default()
        }],
        ..Default::default()
    };
    let deployment = apps::Deployment {
        metadata: Some(meta),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(LabelSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels,
                    creation_timestamp: Some(Time::default()),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![container],
                    volumes: vec![core::Volume {
                        name: s("scratch"),
                        volume_source: Some(core::VolumeSource {
                            empty_dir: Some(core::EmptyDirVolumeSource::default()),
                            ..Default::default()
                        }),
                    }],
                    ..Default::default()
                }),
            }),
            strategy: Some(apps::DeploymentStrategy::default()),
            ..Default::default()
        }),
        status: Some(apps::DeploymentStatus::default()),
    };
    let got = decode(&envelope(
        "apps/v1",
        "Deployment",
        deployment.encode_to_vec(),
    ));
    let want = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "generation": 0, "labels": {"app": "web"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                    "containers": [{
                        "name": "busybox",
                        "image": "busybox:1.36",
                        "args": ["httpd", "", "-f"],
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "resources": {"limits": {"memory": "64Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": false, "runAsUser": 0}
                    }]
                }
            },
            "strategy": {}
        },
        "status": {}
    });
    assert_eq!(got, Ok(want));
}

#[test]
fn secrets_configmaps_services_and_times_read_as_json_says_them() {
    let secret = core::Secret {
        metadata: Some(zero_meta("creds")),
        data: BTreeMap::from([
            ("user".to_string(), b"admin".to_vec()),
            ("empty".to_string(), Vec::new()),
        ]),
        r#type: s("Opaque"),
        ..Default::default()
    };
    let got = decode(&envelope("v1", "Secret", secret.encode_to_vec())).map_err(|e| e.to_string());
    assert_eq!(
        got.as_ref().map(|v| &v["data"]),
        Ok(&json!({"user": "YWRtaW4=", "empty": ""}))
    );
    assert_eq!(got.as_ref().map(|v| &v["type"]), Ok(&json!("Opaque")));

    let cm = core::ConfigMap {
        metadata: Some(zero_meta("cfg")),
        data: BTreeMap::from([
            ("k".to_string(), "v".to_string()),
            ("blank".to_string(), String::new()),
        ]),
        ..Default::default()
    };
    let got = decode(&envelope("v1", "ConfigMap", cm.encode_to_vec()));
    assert_eq!(
        got.map(|v| v["data"].clone()),
        Ok(json!({"k": "v", "blank": ""}))
    );

    let port = |name: &str, target: IntOrString| core::ServicePort {
        name: s(name),
        protocol: s("TCP"),
        port: Some(80),
        target_port: Some(target),
        node_port: Some(0),
        ..Default::default()
    };
    let svc = core::Service {
        metadata: Some(ObjectMeta {
            name: s("web"),
            creation_timestamp: Some(Time {
                seconds: Some(1_733_560_245),
                nanos: Some(0),
            }),
            ..Default::default()
        }),
        spec: Some(core::ServiceSpec {
            ports: vec![
                port(
                    "num",
                    IntOrString {
                        r#type: Some(0),
                        int_val: Some(8080),
                        str_val: s(""),
                    },
                ),
                port(
                    "named",
                    IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: s("http"),
                    },
                ),
            ],
            cluster_ips: vec!["10.96.0.20".into(), "fd00:10:96::20".into()],
            ..Default::default()
        }),
        status: None,
    };
    let got = decode(&envelope("v1", "Service", svc.encode_to_vec())).map_err(|e| e.to_string());
    let v = got.unwrap_or_default();
    assert_eq!(
        v["metadata"]["creationTimestamp"],
        json!("2024-12-07T08:30:45Z")
    );
    assert_eq!(v["spec"]["ports"][0]["targetPort"], json!(8080));
    assert_eq!(v["spec"]["ports"][1]["targetPort"], json!("http"));
    assert_eq!(v["spec"]["ports"][1]["nodePort"], json!(0));
    assert_eq!(
        v["spec"]["clusterIPs"],
        json!(["10.96.0.20", "fd00:10:96::20"])
    );

    let event = k8s_pb::api::events::v1::Event {
        metadata: Some(zero_meta("e")),
        event_time: Some(MicroTime {
            seconds: Some(0),
            nanos: Some(1_500),
        }),
        ..Default::default()
    };
    let got = decode(&envelope(
        "events.k8s.io/v1",
        "Event",
        event.encode_to_vec(),
    ));
    assert_eq!(
        got.map(|v| v["eventTime"].clone()),
        Ok(json!("1970-01-01T00:00:00.000001Z"))
    );
}

#[test]
fn bad_bodies_are_errors_that_say_where() {
    assert_eq!(decode(b"{\"kind\":\"Pod\"}"), Err(ProtoError::NoMagic));
    let err = decode(&envelope("v1", "Gizmo", Vec::new()));
    assert_eq!(
        err.map_err(|e| e.to_string()),
        Err(
            "no protobuf schema for apiVersion \"v1\" kind \"Gizmo\": send this object as JSON"
                .into()
        )
    );
    // A container whose image string announces more bytes than there are.
    let pod = core::Pod {
        metadata: Some(zero_meta("p")),
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: s("c"),
                image: s("busybox"),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let mut raw = pod.encode_to_vec();
    raw.truncate(raw.len() - 3);
    let err = decode(&envelope("v1", "Pod", raw)).map_err(|e| e.to_string());
    assert!(
        matches!(&err, Err(e) if e.starts_with("malformed protobuf at spec:")),
        "{err:?}"
    );
    // Invalid UTF-8 in a name.
    let mut meta = zero_meta("p");
    meta.name = None;
    let mut raw = core::Pod {
        metadata: Some(meta),
        ..Default::default()
    }
    .encode_to_vec();
    raw.extend([0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe]);
    let err = decode(&envelope("v1", "Pod", raw)).map_err(|e| e.to_string());
    assert!(matches!(&err, Err(e) if e.contains("not UTF-8")), "{err:?}");
    // Nesting past the limit.
    let mut deep = Vec::new();
    for _ in 0..200 {
        let mut outer = vec![0x0a];
        let mut len = deep.len();
        while len >= 0x80 {
            outer.push((len as u8) | 0x80);
            len >>= 7;
        }
        outer.push(len as u8);
        outer.extend(deep);
        deep = outer;
    }
    let err = decode(&envelope(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        deep,
    ));
    assert!(err.is_err());
}

#[test]
fn random_bytes_never_panic() {
    let pod = core::Pod {
        metadata: Some(zero_meta("p")),
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: s("c"),
                image: s("busybox"),
                env: vec![core::EnvVar {
                    name: s("A"),
                    value: s("b"),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
    .encode_to_vec();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut raw = pod.clone();
        let i = (seed as usize) % raw.len();
        raw[i] = (seed >> 32) as u8;
        if seed.is_multiple_of(3) {
            raw.truncate((seed as usize >> 8) % raw.len());
        }
        let _ = decode(&envelope("v1", "Pod", raw));
    }
}

#[test]
fn every_kind_and_every_referenced_message_has_a_schema() {
    let schema = &*SCHEMA;
    assert!(schema.kinds.len() > 90, "{} kinds", schema.kinds.len());
    for ((av, kind), msg) in &schema.kinds {
        assert!(schema.messages.contains_key(msg), "{av} {kind} → {msg}");
    }
    for (name, fields) in &schema.messages {
        for f in fields.values() {
            let mut ty = &f.ty;
            while let Type::Map(inner) = ty {
                ty = inner;
            }
            if let Type::Message(m) = ty {
                assert!(schema.messages.contains_key(m), "{name}.{} → {m}", f.json);
            }
        }
    }
    for (av, kind) in [
        ("v1", "Pod"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "Service"),
        ("v1", "Namespace"),
        ("v1", "ServiceAccount"),
        ("apps/v1", "Deployment"),
        ("batch/v1", "Job"),
        ("batch/v1", "CronJob"),
        ("policy/v1", "Eviction"),
        ("policy/v1", "PodDisruptionBudget"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("authentication.k8s.io/v1", "TokenRequest"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ] {
        assert!(schema.kinds.contains_key(&(av, kind)), "{av} {kind}");
    }
}
