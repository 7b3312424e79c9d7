use serde_json::{Value, json};

use super::*;
use crate::{apply_defaults, find_kind};

fn kind(api_version: &str, name: &str) -> &'static Kind {
    find_kind(api_version, name).unwrap_or_else(|| panic!("{api_version} {name} is served"))
}

/// Defaults `obj` as the apiserver would, then validates it.
fn check(api_version: &str, name: &str, mut obj: Value, old: Option<Value>) -> Vec<String> {
    let k = kind(api_version, name);
    apply_defaults(k, &mut obj);
    let old = old.map(|mut o| {
        apply_defaults(k, &mut o);
        o
    });
    match validate(k, &obj, old.as_ref()) {
        Ok(()) => Vec::new(),
        Err(errs) => errs.iter().map(ToString::to_string).collect(),
    }
}

fn pod(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
}

fn web_container() -> Value {
    json!({"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80, "name": "http"}]})
}

fn deployment(selector: Value, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": 3,
            "selector": selector,
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [web_container()]}}
        }
    })
}

#[test]
fn messages_read_as_kubernetes_writes_them() {
    let errs = check(
        "v1",
        "Pod",
        json!({"metadata": {"name": "Foo_bar"}, "spec": {"containers": [{"name": "web"}]}}),
        None,
    );
    assert_eq!(
        errs,
        [
            "metadata.name: Invalid value: \"Foo_bar\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            "spec.containers[0].image: Required value",
        ]
    );
}

#[test]
fn field_error_parts_feed_a_status_cause() {
    let e = FieldError::invalid(
        &Path::new("spec").child("ports").index(0).child("port"),
        "70000",
        "must be between 1 and 65535, inclusive",
    );
    assert_eq!(e.reason(), "FieldValueInvalid");
    assert_eq!(e.field, "spec.ports[0].port");
    assert_eq!(
        e.body(),
        "Invalid value: 70000: must be between 1 and 65535, inclusive"
    );
    let r = FieldError::required(&Path::new("spec").child("selector"), "");
    assert_eq!(
        (r.reason(), r.to_string()),
        (
            "FieldValueRequired",
            "spec.selector: Required value".to_string()
        )
    );
    let reasons: Vec<&str> = [
        FieldErrorKind::NotFound,
        FieldErrorKind::Required,
        FieldErrorKind::Duplicate,
        FieldErrorKind::Invalid,
        FieldErrorKind::NotSupported,
        FieldErrorKind::Forbidden,
        FieldErrorKind::TooLong,
        FieldErrorKind::TooMany,
    ]
    .iter()
    .map(|k| k.reason())
    .collect();
    assert_eq!(
        reasons,
        [
            "FieldValueNotFound",
            "FieldValueRequired",
            "FieldValueDuplicate",
            "FieldValueInvalid",
            "FieldValueNotSupported",
            "FieldValueForbidden",
            "FieldValueTooLong",
            "FieldValueTooMany"
        ]
    );
}

#[test]
fn the_422_message_brackets_several_errors_only() {
    let pod_kind = kind("v1", "Pod");
    let one = [FieldError::required(
        &Path::new("spec")
            .child("containers")
            .index(0)
            .child("image"),
        "",
    )];
    assert_eq!(
        invalid_message(pod_kind, "web", &one),
        "Pod \"web\" is invalid: spec.containers[0].image: Required value"
    );
    let mut two = one.to_vec();
    two.push(FieldError::not_supported(
        &Path::new("spec").child("restartPolicy"),
        "Sometimes",
        &["Always", "OnFailure", "Never"],
    ));
    two.push(one[0].clone());
    assert_eq!(
        invalid_message(pod_kind, "web", &two),
        "Pod \"web\" is invalid: [spec.containers[0].image: Required value, spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"]"
    );
    let deploy = kind("apps/v1", "Deployment");
    assert!(
        invalid_message(deploy, "web", &one).starts_with("Deployment.apps \"web\" is invalid: ")
    );
}

#[test]
fn a_well_formed_pod_passes() {
    let spec = json!({
        "initContainers": [{"name": "migrate", "image": "app:1", "command": ["migrate"]}],
        "containers": [{
            "name": "app", "image": "app:1",
            "ports": [{"containerPort": 8080, "name": "http"}],
            "env": [{"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, {"name": "LOG.LEVEL", "value": "debug"}],
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}, {"name": "cache", "mountPath": "/cache", "subPath": "app"}],
            "livenessProbe": {"httpGet": {"port": "http", "path": "/healthz"}},
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": 1, "memory": "128Mi"}}
        }],
        "volumes": [{"name": "config", "configMap": {"name": "app"}}, {"name": "cache"}],
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}],
        "nodeSelector": {"kubernetes.io/os": "linux"}
    });
    assert_eq!(check("v1", "Pod", pod(spec), None), Vec::<String>::new());
}

#[test]
fn pod_spec_errors() {
    assert_eq!(
        check("v1", "Pod", pod(json!({"containers": []})), None),
        ["spec.containers: Required value"]
    );
    let errs = check(
        "v1",
        "Pod",
        pod(json!({
            "restartPolicy": "Sometimes",
            "initContainers": [{"name": "web", "image": "busybox"}],
            "containers": [
                {"name": "web", "image": "nginx", "ports": [{"containerPort": 70000, "protocol": "HTTP"}],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "Sidecar", "image": "envoy"}
            ],
            "volumes": [{"name": "cache", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}]
        })),
        None,
    );
    assert_eq!(
        errs,
        [
            "spec.volumes[1].name: Duplicate value: \"cache\"",
            "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.containers[0].ports[0].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            "spec.containers[0].volumeMounts[0].name: Not found: \"data\"",
            "spec.containers[1].name: Invalid value: \"Sidecar\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
            "spec.initContainers[0].name: Duplicate value: \"web\"",
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
        ]
    );
}

#[test]
fn probes_env_resources_and_volume_sources() {
    let errs = check(
        "v1",
        "Pod",
        pod(json!({
            "containers": [{
                "name": "app", "image": "app:1",
                "livenessProbe": {"exec": {"command": ["true"]}, "httpGet": {"port": 80}, "successThreshold": 2},
                "readinessProbe": {"initialDelaySeconds": -1},
                "env": [{"name": "A=B", "value": "x"}, {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.schedulerName"}}}],
                "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1", "gpu": "1"}}
            }],
            "volumes": [{"name": "both", "emptyDir": {}, "hostPath": {"path": "/tmp"}}, {"name": "cfg", "configMap": {"name": "c", "defaultMode": 1000}}]
        })),
        None,
    );
    assert_eq!(
        errs,
        [
            "spec.volumes[0].hostPath: Forbidden: may not specify more than 1 volume type",
            "spec.volumes[1].configMap.defaultMode: Invalid value: 1000: must be a number between 0 and 0777 (octal), both inclusive",
            "spec.containers[0].env[0].name: Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='",
            "spec.containers[0].env[1].valueFrom.fieldRef.fieldPath: Unsupported value: \"spec.schedulerName\": supported values: \"metadata.name\", \"metadata.namespace\", \"metadata.uid\", \"spec.nodeName\", \"spec.serviceAccountName\", \"status.hostIP\", \"status.hostIPs\", \"status.podIP\", \"status.podIPs\"",
            "spec.containers[0].resources.limits[gpu]: Invalid value: \"gpu\": must be a standard resource for containers",
            "spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 1",
            // The limit was copied into the requests by defaulting.
            "spec.containers[0].resources.requests[gpu]: Invalid value: \"gpu\": must be a standard resource for containers",
            "spec.containers[0].readinessProbe: Required value: must specify a handler type",
            "spec.containers[0].readinessProbe.initialDelaySeconds: Invalid value: -1: must be greater than or equal to 0",
            "spec.containers[0].livenessProbe.httpGet: Forbidden: may not specify more than 1 handler type",
            "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1",
        ]
    );
}

#[test]
fn pod_updates_may_change_images_only() {
    let old = pod(
        json!({"containers": [web_container()], "tolerations": [{"key": "a", "operator": "Exists", "effect": "NoSchedule"}]}),
    );
    let mut image = old.clone();
    image["spec"]["containers"][0]["image"] = json!("nginx:1.28");
    image["spec"]["activeDeadlineSeconds"] = json!(600);
    image["spec"]["tolerations"] = json!([{"key": "a", "operator": "Exists", "effect": "NoSchedule"}, {"key": "b", "operator": "Exists"}]);
    assert_eq!(
        check("v1", "Pod", image.clone(), Some(old.clone())),
        Vec::<String>::new()
    );

    let mut longer = image.clone();
    longer["spec"]["activeDeadlineSeconds"] = json!(900);
    assert_eq!(
        check("v1", "Pod", longer, Some(image)),
        [
            "spec.activeDeadlineSeconds: Invalid value: 900: must be less than or equal to previous value"
        ]
    );

    let mut port = old.clone();
    port["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(8080);
    let errs = check("v1", "Pod", port, Some(old.clone()));
    assert_eq!(errs.len(), 1);
    let first_line = errs[0].lines().next().unwrap_or_default();
    assert_eq!(
        first_line,
        "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
    );
    assert!(
        errs[0].contains("spec.containers[0].ports[0].containerPort: 80"),
        "{}",
        errs[0]
    );

    let mut renamed = old.clone();
    renamed["metadata"]["name"] = json!("web2");
    assert_eq!(
        check("v1", "Pod", renamed, Some(old.clone())),
        ["metadata.name: Invalid value: \"web2\": field is immutable"]
    );

    let mut fewer = old.clone();
    fewer["spec"]["tolerations"] = json!([]);
    assert_eq!(
        check("v1", "Pod", fewer, Some(old)),
        [
            "spec.tolerations: Forbidden: existing toleration can not be modified except its tolerationSeconds"
        ]
    );
}

#[test]
fn metadata_labels_annotations_and_generate_name() {
    let errs = check(
        "v1",
        "ConfigMap",
        json!({"metadata": {"generateName": "cfg-", "labels": {"app": "-bad", "example.com/": "x"}, "annotations": {"big": "x".repeat(256 * 1024)}}}),
        None,
    );
    assert_eq!(
        errs,
        [
            "metadata.labels: Invalid value: \"-bad\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            "metadata.labels: Invalid value: \"example.com/\": name part must be non-empty",
            "metadata.labels: Invalid value: \"example.com/\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            "metadata.annotations: Too long: may not be more than 262144 bytes",
        ]
    );
    assert_eq!(
        check("v1", "ConfigMap", json!({"metadata": {}}), None),
        ["metadata.name: Required value: name or generateName is required"]
    );
    let long = "a".repeat(254);
    assert_eq!(
        check("v1", "ConfigMap", json!({"metadata": {"name": long}}), None),
        [format!(
            "metadata.name: Invalid value: \"{long}\": must be no more than 253 characters"
        )]
    );
}

#[test]
fn name_rules_differ_by_kind() {
    let ns = check(
        "v1",
        "Namespace",
        json!({"metadata": {"name": "team.a"}}),
        None,
    );
    assert_eq!(
        ns,
        ["metadata.name: Invalid value: \"team.a\": must not contain dots"]
    );
    let svc = check(
        "v1",
        "Service",
        json!({"metadata": {"name": "1web"}, "spec": {"ports": [{"port": 80}]}}),
        None,
    );
    assert_eq!(
        svc,
        [
            "metadata.name: Invalid value: \"1web\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
        ]
    );
    let role = json!({"metadata": {"name": "system:controller:job"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]});
    assert_eq!(
        check("rbac.authorization.k8s.io/v1", "ClusterRole", role, None),
        Vec::<String>::new()
    );
    let slash = json!({"metadata": {"name": "a/b"}});
    assert_eq!(
        check("rbac.authorization.k8s.io/v1", "ClusterRole", slash, None),
        ["metadata.name: Invalid value: \"a/b\": may not contain '/'"]
    );
}

#[test]
fn service_rules() {
    let svc = |spec: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": spec});
    assert_eq!(
        check(
            "v1",
            "Service",
            svc(json!({"selector": {"app": "web"}})),
            None
        ),
        ["spec.ports: Required value"]
    );
    assert_eq!(
        check(
            "v1",
            "Service",
            svc(json!({"clusterIP": "None", "selector": {"app": "db"}})),
            None
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        check("v1", "Service", svc(json!({"type": "ExternalName"})), None),
        ["spec.externalName: Required value"]
    );
    let errs = check(
        "v1",
        "Service",
        svc(
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 40000}, {"name": "b", "port": 80, "targetPort": "Web"}]}),
        ),
        None,
    );
    assert_eq!(
        errs,
        [
            "spec.ports[0].name: Required value",
            "spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the valid range. The range of valid ports is 30000-32767",
            "spec.ports[1].targetPort: Invalid value: \"Web\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
            "spec.ports[1]: Duplicate value: core.ServicePort{Name:\"\", Protocol:\"TCP\", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}, NodePort:0}",
        ]
    );
    assert_eq!(
        check(
            "v1",
            "Service",
            svc(json!({"type": "Balanced", "ports": [{"port": 80}]})),
            None
        ),
        [
            "spec.type: Unsupported value: \"Balanced\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
        ]
    );
    let old = svc(
        json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [{"port": 80}]}),
    );
    let moved = svc(
        json!({"clusterIP": "10.96.0.21", "clusterIPs": ["10.96.0.21"], "ports": [{"port": 80}]}),
    );
    assert_eq!(
        check("v1", "Service", moved, Some(old.clone())),
        ["spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.21\"}: may not change once set"]
    );
    let same = svc(
        json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [{"port": 8080}]}),
    );
    assert_eq!(
        check("v1", "Service", same, Some(old)),
        Vec::<String>::new()
    );
}

#[test]
fn deployment_selector_must_match_its_template() {
    assert_eq!(
        check(
            "apps/v1",
            "Deployment",
            deployment(
                json!({"matchLabels": {"app": "web"}}),
                json!({"app": "web"})
            ),
            None
        ),
        Vec::<String>::new()
    );
    let errs = check(
        "apps/v1",
        "Deployment",
        deployment(
            json!({"matchLabels": {"app": "api"}}),
            json!({"app": "web"}),
        ),
        None,
    );
    assert_eq!(
        errs,
        [
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`"
        ]
    );

    let mut missing = deployment(json!(null), json!({"app": "web"}));
    if let Some(spec) = missing["spec"].as_object_mut() {
        spec.remove("selector");
    }
    assert_eq!(
        check("apps/v1", "Deployment", missing, None),
        [
            "spec.selector: Required value",
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`",
        ]
    );
    assert_eq!(
        check(
            "apps/v1",
            "Deployment",
            deployment(json!({}), json!({"app": "web"})),
            None
        ),
        [
            "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for deployment"
        ]
    );

    let mut bad = deployment(
        json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]}),
        json!({"tier": "web"}),
    );
    bad["spec"]["replicas"] = json!(-1);
    bad["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
    bad["spec"]["strategy"] = json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}});
    assert_eq!(
        check("apps/v1", "Deployment", bad, None),
        [
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
            "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
            "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'",
        ]
    );
}

#[test]
fn workload_selectors_are_immutable() {
    let old = deployment(
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "web", "v": "2"}),
    );
    let new = deployment(
        json!({"matchLabels": {"app": "web", "v": "2"}}),
        json!({"app": "web", "v": "2"}),
    );
    assert_eq!(
        check("apps/v1", "Deployment", new, Some(old.clone())),
        [
            "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"v\":\"2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
        ]
    );
    let mut scaled = old.clone();
    scaled["spec"]["replicas"] = json!(10);
    scaled["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.28");
    assert_eq!(
        check("apps/v1", "Deployment", scaled, Some(old)),
        Vec::<String>::new()
    );

    let ds = |sel: Value| json!({"metadata": {"name": "agent"}, "spec": {"selector": sel, "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "a", "image": "agent:1"}]}}}});
    assert_eq!(
        check(
            "apps/v1",
            "DaemonSet",
            ds(json!({"matchLabels": {"app": "agent"}})),
            None
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        check(
            "apps/v1",
            "DaemonSet",
            ds(json!({"matchLabels": {"app": "agent2"}})),
            Some(ds(json!({"matchLabels": {"app": "agent"}})))
        ),
        [
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"agent\"}: `selector` does not match template `labels`",
            "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"agent2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable",
        ]
    );
    let rs = json!({"metadata": {"name": "web-5d8"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [web_container()]}}}});
    assert_eq!(
        check("apps/v1", "ReplicaSet", rs, None),
        Vec::<String>::new()
    );
}

#[test]
fn stateful_sets() {
    let sts = |name: &str, service: &str| {
        json!({
            "metadata": {"name": name},
            "spec": {
                "serviceName": service,
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "postgres:16", "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql"}]}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
            }
        })
    };
    assert_eq!(
        check("apps/v1", "StatefulSet", sts("db", "db"), None),
        Vec::<String>::new(),
        "mounts may name claim templates"
    );
    assert_eq!(
        check("apps/v1", "StatefulSet", sts("db.main", "db"), None),
        ["metadata.name: Invalid value: \"db.main\": must not contain dots"]
    );
    let mut scaled = sts("db", "db");
    scaled["spec"]["replicas"] = json!(3);
    assert_eq!(
        check("apps/v1", "StatefulSet", scaled, Some(sts("db", "db"))),
        Vec::<String>::new()
    );
    assert_eq!(
        check(
            "apps/v1",
            "StatefulSet",
            sts("db", "postgres"),
            Some(sts("db", "db"))
        ),
        [
            "spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
        ]
    );
}

fn job(restart: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "pi", "uid": "0f1e"},
        "spec": {"template": {"spec": {"restartPolicy": restart, "containers": [{"name": "pi", "image": "perl:5", "command": ["perl", "-e", "print 1"]}]}}}
    })
}

#[test]
fn jobs() {
    let job_kind = kind("batch/v1", "Job");
    let create = |mut obj: Value| {
        apply_defaults(job_kind, &mut obj);
        crate::prepare_for_create(job_kind, &mut obj);
        obj
    };
    let ok = create(job("Never"));
    assert!(validate(job_kind, &ok, None).is_ok());
    let always = create(job(""));
    let errs: Vec<String> = validate(job_kind, &always, None)
        .err()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errs,
        [
            "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\""
        ]
    );

    let mut changed = ok.clone();
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("perl:5.40");
    changed["spec"]["parallelism"] = json!(2);
    let errs: Vec<String> = validate(job_kind, &changed, Some(&ok))
        .err()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errs,
        ["spec.template: Invalid value: core.PodTemplateSpec{...}: field is immutable"]
    );

    let mut foreign = ok.clone();
    foreign["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
    let errs: Vec<String> = validate(job_kind, &foreign, None)
        .err()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errs.first().map(String::as_str),
        Some(
            "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"other\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: `selector` not auto-generated"
        )
    );
}

#[test]
fn cron_jobs() {
    let cj = |name: &str, schedule: &str| {
        json!({
            "metadata": {"name": name},
            "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}}}}
        })
    };
    for ok in [
        "*/5 * * * *",
        "0 3 * * mon-fri",
        "@hourly",
        "@every 1h30m",
        "15,45 */2 1-15 JAN,jul ?",
    ] {
        assert_eq!(
            check("batch/v1", "CronJob", cj("report", ok), None),
            Vec::<String>::new(),
            "{ok}"
        );
    }
    for (bad, msg) in [
        ("hourly", "expected exactly 5 fields, found 1: [hourly]"),
        (
            "0 0 * * * *",
            "expected exactly 5 fields, found 6: [0 0 * * * *]",
        ),
        (
            "*/0 * * * *",
            "step of range should be a positive number: */0",
        ),
        ("61 * * * *", "end of range (61) above maximum (59): 61"),
        (
            "5-1 * * * *",
            "beginning of range (5) beyond end of range (1): 5-1",
        ),
        (
            "x * * * *",
            "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax",
        ),
        ("@fortnightly", "unrecognized descriptor: @fortnightly"),
        ("0 0 0 * *", "beginning of range (0) below minimum (1): 0"),
    ] {
        assert_eq!(
            check("batch/v1", "CronJob", cj("report", bad), None),
            [format!("spec.schedule: Invalid value: \"{bad}\": {msg}")]
        );
    }
    assert_eq!(
        check(
            "batch/v1",
            "CronJob",
            cj("report", "TZ=UTC 0 * * * *"),
            None
        ),
        [
            "spec.schedule: Invalid value: \"TZ=UTC 0 * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
        ]
    );
    let long = "a".repeat(53);
    assert_eq!(
        check("batch/v1", "CronJob", cj(&long, "@daily"), None),
        [format!(
            "metadata.name: Invalid value: \"{long}\": must be no more than 52 characters"
        )]
    );
    let mut local = cj("report", "@daily");
    local["spec"]["timeZone"] = json!("Local");
    assert_eq!(
        check("batch/v1", "CronJob", local, None),
        [
            "spec.timeZone: Invalid value: \"Local\": timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
        ]
    );
}

#[test]
fn config_maps_and_secrets() {
    let cm = |data: Value| json!({"metadata": {"name": "app"}, "data": data});
    assert_eq!(
        check(
            "v1",
            "ConfigMap",
            cm(json!({"app.properties": "a=1", "KEY_NAME": "x"})),
            None
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        check(
            "v1",
            "ConfigMap",
            cm(json!({"bad key": "x", "..hidden": "y"})),
            None
        ),
        [
            "data[..hidden]: Invalid value: \"..hidden\": must not start with '..'",
            "data[bad key]: Invalid value: \"bad key\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
        ]
    );
    assert_eq!(
        check(
            "v1",
            "ConfigMap",
            cm(json!({"blob": "x".repeat(1024 * 1024 + 1)})),
            None
        ),
        [": Too long: may not be more than 1048576 bytes"]
    );
    let mut frozen = cm(json!({"a": "1"}));
    frozen["immutable"] = json!(true);
    let mut thawed = cm(json!({"a": "2"}));
    thawed["immutable"] = json!(true);
    assert_eq!(
        check("v1", "ConfigMap", thawed, Some(frozen)),
        ["data: Forbidden: field is immutable when `immutable` is set"]
    );

    let secret =
        |ty: &str, data: Value| json!({"metadata": {"name": "tls"}, "type": ty, "data": data});
    assert_eq!(
        check(
            "v1",
            "Secret",
            secret("kubernetes.io/tls", json!({"tls.crt": "Y2VydA=="})),
            None
        ),
        ["data[tls.key]: Required value"]
    );
    assert_eq!(
        check(
            "v1",
            "Secret",
            secret("Opaque", json!({})),
            Some(secret(
                "kubernetes.io/tls",
                json!({"tls.crt": "", "tls.key": ""})
            ))
        ),
        ["type: Invalid value: \"Opaque\": field is immutable"]
    );
    let with_string_data =
        json!({"metadata": {"name": "db"}, "stringData": {"password": "s3cret"}});
    assert_eq!(
        check("v1", "Secret", with_string_data, None),
        Vec::<String>::new()
    );
}

#[test]
fn namespaces_leases_and_rbac() {
    assert_eq!(
        check(
            "v1",
            "Namespace",
            json!({"metadata": {"name": "team-a"}}),
            None
        ),
        Vec::<String>::new()
    );
    let lease = json!({"metadata": {"name": "kube-scheduler", "namespace": "kube-system"}, "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 0}});
    assert_eq!(
        check("coordination.k8s.io/v1", "Lease", lease, None),
        ["spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"]
    );

    let role = json!({"metadata": {"name": "reader"}, "rules": [{"apiGroups": [""], "resources": ["pods"]}, {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]});
    assert_eq!(
        check("rbac.authorization.k8s.io/v1", "Role", role, None),
        [
            "rules[0].verbs: Required value: verbs must contain at least one value",
            "rules[1].nonResourceURLs: Invalid value: []string{\"/healthz\"}: namespaced rules cannot apply to non-resource URLs",
        ]
    );
    let binding = |role: &str| json!({"metadata": {"name": "read"}, "roleRef": {"kind": "Role", "name": role}, "subjects": [{"kind": "User", "name": "jane"}, {"kind": "Robot", "name": "r2"}]});
    assert_eq!(
        check(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            binding("writer"),
            Some(binding("reader"))
        ),
        [
            "subjects[1].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"",
            "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"Role\", Name:\"writer\"}: cannot change roleRef",
        ]
    );
    let crb = json!({"metadata": {"name": "ci"}, "roleRef": {"kind": "Role", "name": "x"}, "subjects": [{"kind": "ServiceAccount", "name": "ci"}]});
    assert_eq!(
        check(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            crb,
            None
        ),
        [
            "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
            "subjects[0].namespace: Required value",
        ]
    );
}

#[test]
fn kinds_without_own_rules_get_metadata_checks() {
    let pdb = json!({"metadata": {"name": "Web"}, "spec": {"minAvailable": 1}});
    assert_eq!(
        check("policy/v1", "PodDisruptionBudget", pdb, None)
            .first()
            .map(|e| e.starts_with("metadata.name: Invalid value: \"Web\"")),
        Some(true)
    );
    let old = json!({"metadata": {"name": "web", "uid": "1"}});
    let new = json!({"metadata": {"name": "web", "uid": "2"}});
    assert_eq!(
        check("v1", "ServiceAccount", new, Some(old)),
        ["metadata.uid: Invalid value: \"2\": field is immutable"]
    );
}

#[test]
fn values_of_the_wrong_type_are_reported_with_their_path() {
    let mut d = deployment(
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "web"}),
    );
    d["spec"]["replicas"] = json!("3");
    let errs = validate(kind("apps/v1", "Deployment"), &d, None)
        .err()
        .unwrap_or_default();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "spec.replicas");
    assert_eq!(errs[0].kind, FieldErrorKind::Invalid);
    assert!(
        errs[0].detail.contains("invalid type: string \"3\""),
        "{}",
        errs[0].detail
    );
}

#[test]
fn unknown_fields_are_found_by_path() {
    let pod_kind = kind("v1", "Pod");
    let obj = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "web", "creationTimestamp": null, "labels": {"any.key/works": "x"}, "colour": "blue",
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:anything": {}}}, "time": "2025-01-02T03:04:05Z"}],
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8", "uid": "1", "controller": true}]
        },
        "spec": {
            "containers": [
                {"name": "web", "image": "nginx", "resources": {"limits": {"cpu": 1}}},
                {"name": "side", "imagee": "envoy", "ports": [{"containerPort": 80, "hostport": 80}]}
            ],
            "restartPolicy": "Always",
            "nodeSelecter": {"a": "b"}
        },
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-02T03:04:05Z"}]},
        "extra": true
    });
    assert_eq!(
        unknown_fields(pod_kind, &obj),
        [
            "extra",
            "metadata.colour",
            "spec.containers[1].imagee",
            "spec.containers[1].ports[0].hostport",
            "spec.nodeSelecter"
        ]
    );
    assert_eq!(
        strict_error_message(&["spec.containers[0].imagee".to_string()]),
        "strict decoding error: unknown field \"spec.containers[0].imagee\""
    );
}

#[test]
fn unknown_fields_see_past_values_of_the_wrong_type() {
    let d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": "three",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [{"name": "web", "image": "nginx", "ports": "80", "cmd": ["x"]}]}}
        }
    });
    assert_eq!(
        unknown_fields(kind("apps/v1", "Deployment"), &d),
        ["spec.template.spec.containers[0].cmd"]
    );
    let clean = deployment(
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "web"}),
    );
    assert_eq!(
        unknown_fields(kind("apps/v1", "Deployment"), &clean),
        Vec::<String>::new()
    );
    let mut defaulted = clean.clone();
    apply_defaults(kind("apps/v1", "Deployment"), &mut defaulted);
    assert_eq!(
        unknown_fields(kind("apps/v1", "Deployment"), &defaulted),
        Vec::<String>::new()
    );
}

#[test]
fn unknown_fields_cover_every_served_kind() {
    for k in crate::KINDS {
        let obj = json!({"apiVersion": k.api_version(), "kind": k.kind, "metadata": {"name": "x"}, "bogus": 1});
        assert_eq!(
            unknown_fields(k, &obj),
            ["bogus"],
            "{} {}",
            k.api_version(),
            k.kind
        );
    }
}

#[test]
fn everyday_manifests_default_validate_and_decode_cleanly() {
    let manifests = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop"}, "stringData": {"password": "hunter2"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web", "namespace": "shop"}, "data": {"nginx.conf": "events {}"}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "shop"},
               "spec": {"serviceName": "db", "replicas": 1, "selector": {"matchLabels": {"app": "db"}},
                        "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "postgres:16",
                            "env": [{"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
                            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}]}]}},
                        "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "backup", "namespace": "shop"},
               "spec": {"schedule": "0 2 * * *", "timeZone": "Etc/UTC", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                   "containers": [{"name": "backup", "image": "busybox", "command": ["sh", "-c", "echo done"]}]}}}}}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "db", "namespace": "shop"},
               "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"rules": [{"host": "shop.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "maxReplicas": 5}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader", "namespace": "shop"},
               "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "read-pods", "namespace": "shop"},
               "roleRef": {"kind": "Role", "name": "pod-reader"}, "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "shop"}]}),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "shoal-scheduler", "namespace": "kube-system"},
               "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 15, "renewTime": "2025-01-02T03:04:05.123456Z"}}),
    ];
    for obj in manifests {
        let k = kind(
            obj["apiVersion"].as_str().unwrap_or_default(),
            obj["kind"].as_str().unwrap_or_default(),
        );
        let mut obj = obj.clone();
        apply_defaults(k, &mut obj);
        crate::prepare_for_create(k, &mut obj);
        let errs: Vec<String> = validate(k, &obj, None)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errs, Vec::<String>::new(), "{}", k.kind);
        assert_eq!(unknown_fields(k, &obj), Vec::<String>::new(), "{}", k.kind);
        assert!(
            validate(k, &obj, Some(&obj)).is_ok(),
            "an unchanged {} updates cleanly",
            k.kind
        );
    }
}
