use serde_json::json;

use super::*;
use crate::{Kind, find_kind};

fn kind(api_version: &str, name: &str) -> &'static Kind {
    find_kind(api_version, name).unwrap_or_else(|| panic!("{api_version} {name} is served"))
}

fn defaulted(api_version: &str, name: &str, mut obj: Value) -> Value {
    apply_defaults(kind(api_version, name), &mut obj);
    obj
}

#[test]
fn pod_gets_the_fields_kubectl_shows_after_create() {
    let pod = defaulted(
        "v1",
        "Pod",
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]}
        }),
    );
    assert_eq!(
        pod,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "containers": [{
                    "name": "web", "image": "nginx", "imagePullPolicy": "Always",
                    "ports": [{"containerPort": 80, "protocol": "TCP"}],
                    "resources": {},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File"
                }],
                "dnsPolicy": "ClusterFirst",
                "enableServiceLinks": true,
                "restartPolicy": "Always",
                "schedulerName": "default-scheduler",
                "securityContext": {},
                "terminationGracePeriodSeconds": 30
            }
        })
    );
}

#[test]
fn pod_defaults_are_idempotent_and_keep_what_the_user_set() {
    let obj = json!({
        "metadata": {"name": "job-pod"},
        "spec": {
            "restartPolicy": "Never",
            "dnsPolicy": "",
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "c", "image": "busybox:1.36", "imagePullPolicy": "Never"}]
        }
    });
    let once = defaulted("v1", "Pod", obj);
    let twice = defaulted("v1", "Pod", once.clone());
    assert_eq!(once, twice);
    assert_eq!(once["spec"]["restartPolicy"], "Never");
    assert_eq!(
        once["spec"]["dnsPolicy"], "ClusterFirst",
        "an empty string counts as unset"
    );
    assert_eq!(once["spec"]["terminationGracePeriodSeconds"], 5);
    assert_eq!(once["spec"]["containers"][0]["imagePullPolicy"], "Never");
}

#[test]
fn image_pull_policy_follows_the_tag() {
    for (image, policy) in [
        ("nginx", "Always"),
        ("nginx:latest", "Always"),
        ("nginx:1.27", "IfNotPresent"),
        ("localhost:5000/team/app", "Always"),
        ("localhost:5000/team/app:v2", "IfNotPresent"),
        (
            "registry.example/app@sha256:0123456789abcdef",
            "IfNotPresent",
        ),
        ("app:latest@sha256:0123456789abcdef", "Always"),
        ("Nginx", "IfNotPresent"),
        ("", "IfNotPresent"),
    ] {
        let pod = defaulted(
            "v1",
            "Pod",
            json!({"spec": {"containers": [{"name": "c", "image": image}]}}),
        );
        assert_eq!(
            pod["spec"]["containers"][0]["imagePullPolicy"], policy,
            "image {image:?}"
        );
    }
}

#[test]
fn probes_volumes_and_env_get_their_defaults() {
    let pod = defaulted(
        "v1",
        "Pod",
        json!({"spec": {
            "containers": [{
                "name": "app", "image": "app:1",
                "livenessProbe": {"httpGet": {"port": 8080}, "timeoutSeconds": 0},
                "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 3},
                "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "250m"}}
            }],
            "volumes": [
                {"name": "scratch"},
                {"name": "config", "configMap": {"name": "app"}},
                {"name": "creds", "secret": {"secretName": "app", "defaultMode": 256}},
                {"name": "host", "hostPath": {"path": "/var/log"}},
                {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
            ]
        }}),
    );
    let c = &pod["spec"]["containers"][0];
    assert_eq!(
        c["livenessProbe"],
        json!({"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
    );
    assert_eq!(c["readinessProbe"]["periodSeconds"], 3);
    assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "250m", "memory": "128Mi"}),
        "a Pod's requests default to its limits, what it asked for stays"
    );
    let vols = &pod["spec"]["volumes"];
    assert_eq!(vols[0], json!({"name": "scratch", "emptyDir": {}}));
    assert_eq!(vols[1]["configMap"]["defaultMode"], 420);
    assert_eq!(vols[2]["secret"]["defaultMode"], 256);
    assert_eq!(vols[3]["hostPath"]["type"], "");
    assert_eq!(vols[4]["projected"]["defaultMode"], 420);
    assert_eq!(
        vols[4]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
        3600
    );
}

#[test]
fn host_network_pods_publish_container_ports_on_the_host() {
    let pod = defaulted(
        "v1",
        "Pod",
        json!({"spec": {"hostNetwork": true, "containers": [{"name": "dns", "image": "dns:1", "ports": [{"containerPort": 53, "protocol": "UDP"}]}]}}),
    );
    assert_eq!(
        pod["spec"]["containers"][0]["ports"][0],
        json!({"containerPort": 53, "hostPort": 53, "protocol": "UDP"})
    );
}

#[test]
fn prepare_for_create_fills_in_what_admission_and_the_strategy_set() {
    let pod_kind = kind("v1", "Pod");
    let mut pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}});
    apply_defaults(pod_kind, &mut pod);
    prepare_for_create(pod_kind, &mut pod);
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], "default");
    assert_eq!(spec["serviceAccount"], "default");
    assert_eq!(spec["priority"], 0);
    assert_eq!(spec["preemptionPolicy"], "PreemptLowerPriority");
    assert_eq!(
        spec["tolerations"],
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ])
    );
    assert_eq!(
        pod["status"],
        json!({"phase": "Pending", "qosClass": "BestEffort"})
    );

    let mut critical = json!({"spec": {
        "priorityClassName": "system-node-critical",
        "serviceAccount": "kube-proxy",
        "tolerations": [{"operator": "Exists"}],
        "containers": [{"name": "c", "image": "c:1", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]
    }});
    apply_defaults(pod_kind, &mut critical);
    prepare_for_create(pod_kind, &mut critical);
    assert_eq!(critical["spec"]["priority"], 2_000_001_000);
    assert_eq!(
        critical["spec"]["serviceAccountName"], "kube-proxy",
        "the deprecated field is read"
    );
    assert_eq!(
        critical["spec"]["tolerations"],
        json!([{"operator": "Exists"}]),
        "already tolerates everything"
    );
    assert_eq!(critical["status"]["qosClass"], "Guaranteed");

    let mut burstable = json!({"spec": {"containers": [{"name": "c", "image": "c:1", "resources": {"requests": {"cpu": "100m"}}}]}});
    apply_defaults(pod_kind, &mut burstable);
    prepare_for_create(pod_kind, &mut burstable);
    assert_eq!(burstable["status"]["qosClass"], "Burstable");
}

#[test]
fn service_defaults_match_kubernetes() {
    let svc = defaulted(
        "v1",
        "Service",
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}, {"name": "tls", "port": 443, "targetPort": "https"}]}}),
    );
    assert_eq!(
        svc["spec"],
        json!({
            "selector": {"app": "web"},
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}, {"name": "tls", "port": 443, "protocol": "TCP", "targetPort": "https"}],
            "sessionAffinity": "None",
            "type": "ClusterIP",
            "internalTrafficPolicy": "Cluster"
        }),
        "no clusterIP or ipFamilies: those are allocated, not defaulted"
    );
    assert_eq!(svc["status"], json!({"loadBalancer": {}}));

    let lb = defaulted(
        "v1",
        "Service",
        json!({"spec": {"type": "LoadBalancer", "sessionAffinity": "ClientIP", "ports": [{"port": 53, "protocol": "UDP"}]}}),
    );
    assert_eq!(lb["spec"]["externalTrafficPolicy"], "Cluster");
    assert_eq!(lb["spec"]["allocateLoadBalancerNodePorts"], true);
    assert_eq!(
        lb["spec"]["sessionAffinityConfig"],
        json!({"clientIP": {"timeoutSeconds": 10800}})
    );
    assert_eq!(lb["spec"]["ports"][0]["protocol"], "UDP");

    let external = defaulted(
        "v1",
        "Service",
        json!({"spec": {"type": "ExternalName", "externalName": "db.example.com"}}),
    );
    assert!(external["spec"].get("internalTrafficPolicy").is_none());
    assert!(external["spec"].get("externalTrafficPolicy").is_none());
}

#[test]
fn deployment_defaults_include_its_template() {
    let d = defaulted(
        "apps/v1",
        "Deployment",
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}
            }
        }),
    );
    let spec = &d["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
    );
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(spec["progressDeadlineSeconds"], 600);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert!(
        pod.get("enableServiceLinks").is_none(),
        "Pod-only defaults stay out of templates"
    );

    let recreate = defaulted(
        "apps/v1",
        "Deployment",
        json!({"spec": {"strategy": {"type": "Recreate"}}}),
    );
    assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn stateful_set_daemon_set_and_replica_set_defaults() {
    let sts = defaulted(
        "apps/v1",
        "StatefulSet",
        json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}}),
    );
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["podManagementPolicy"], "OrderedReady");
    assert_eq!(
        spec["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
    );
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(
        spec["persistentVolumeClaimRetentionPolicy"],
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
    );
    let claim = &spec["volumeClaimTemplates"][0];
    assert_eq!(claim["apiVersion"], "v1");
    assert_eq!(claim["kind"], "PersistentVolumeClaim");
    assert_eq!(claim["spec"]["volumeMode"], "Filesystem");
    assert_eq!(claim["status"]["phase"], "Pending");

    let on_delete = defaulted(
        "apps/v1",
        "StatefulSet",
        json!({"spec": {"updateStrategy": {"type": "OnDelete"}}}),
    );
    assert_eq!(
        on_delete["spec"]["updateStrategy"],
        json!({"type": "OnDelete"})
    );

    let ds = defaulted("apps/v1", "DaemonSet", json!({"spec": {}}));
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    );
    assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);

    let rs = defaulted("apps/v1", "ReplicaSet", json!({"spec": {}}));
    assert_eq!(rs["spec"]["replicas"], 1);
}

#[test]
fn job_defaults_follow_the_completion_rules() {
    let template = json!({"metadata": {"labels": {"app": "pi"}}, "spec": {"containers": [{"name": "pi", "image": "perl:5"}]}});
    let job = defaulted(
        "batch/v1",
        "Job",
        json!({"metadata": {"name": "pi"}, "spec": {"template": template}}),
    );
    let spec = &job["spec"];
    assert_eq!(spec["completions"], 1);
    assert_eq!(spec["parallelism"], 1);
    assert_eq!(spec["backoffLimit"], 6);
    assert_eq!(spec["completionMode"], "NonIndexed");
    assert_eq!(spec["suspend"], false);
    assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
    assert!(
        spec["template"]["spec"].get("restartPolicy").is_none(),
        "the user must choose OnFailure or Never"
    );
    assert_eq!(
        job["metadata"]["labels"],
        json!({"app": "pi"}),
        "a Job without labels takes its pods'"
    );

    let queue = defaulted(
        "batch/v1",
        "Job",
        json!({"spec": {"parallelism": 3, "template": {}}}),
    );
    assert!(
        queue["spec"].get("completions").is_none(),
        "a work queue has no completion count"
    );
    assert_eq!(queue["spec"]["parallelism"], 3);

    let indexed = defaulted(
        "batch/v1",
        "Job",
        json!({"spec": {"backoffLimitPerIndex": 1, "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}}}),
    );
    assert_eq!(indexed["spec"]["backoffLimit"], 2_147_483_647);
    assert_eq!(indexed["spec"]["podReplacementPolicy"], "Failed");
    assert_eq!(
        indexed["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["status"],
        "True"
    );
}

#[test]
fn job_selector_is_generated_from_uid_and_name() {
    let job_kind = kind("batch/v1", "Job");
    let mut job = json!({
        "metadata": {"name": "pi", "uid": "1b4c-77"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl:5"}]}}}
    });
    apply_defaults(job_kind, &mut job);
    prepare_for_create(job_kind, &mut job);
    assert_eq!(
        job["spec"]["selector"],
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "1b4c-77"}})
    );
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"],
        json!({
            "batch.kubernetes.io/controller-uid": "1b4c-77",
            "batch.kubernetes.io/job-name": "pi",
            "controller-uid": "1b4c-77",
            "job-name": "pi"
        })
    );
    assert!(crate::validate(job_kind, &job, None).is_ok());

    let mut manual = json!({"metadata": {"name": "m", "uid": "u"}, "spec": {"manualSelector": true, "template": {}}});
    prepare_for_create(job_kind, &mut manual);
    assert!(manual["spec"].get("selector").is_none());
}

#[test]
fn cron_job_defaults() {
    let cj = defaulted(
        "batch/v1",
        "CronJob",
        json!({"spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}}}}}),
    );
    let spec = &cj["spec"];
    assert_eq!(spec["concurrencyPolicy"], "Allow");
    assert_eq!(spec["suspend"], false);
    assert_eq!(spec["successfulJobsHistoryLimit"], 3);
    assert_eq!(spec["failedJobsHistoryLimit"], 1);
    let pod = &spec["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "OnFailure");
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
    assert!(
        spec["jobTemplate"]["spec"].get("backoffLimit").is_none(),
        "Job defaults apply when the Job is made"
    );
}

#[test]
fn namespace_label_finalizer_and_phase() {
    let ns_kind = kind("v1", "Namespace");
    let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}});
    apply_defaults(ns_kind, &mut ns);
    assert_eq!(
        ns["metadata"]["labels"],
        json!({"kubernetes.io/metadata.name": "team-a"})
    );
    prepare_for_create(ns_kind, &mut ns);
    assert_eq!(ns["spec"], json!({"finalizers": ["kubernetes"]}));
    assert_eq!(ns["status"], json!({"phase": "Active"}));

    // A namespace being finalized loses its finalizer; defaulting on that
    // update must not bring it back.
    let mut finalized =
        json!({"metadata": {"name": "team-a"}, "spec": {}, "status": {"phase": "Terminating"}});
    apply_defaults(ns_kind, &mut finalized);
    assert_eq!(finalized["spec"], json!({}));
    assert_eq!(finalized["status"]["phase"], "Terminating");
}

#[test]
fn secret_type_and_string_data() {
    let secret = defaulted(
        "v1",
        "Secret",
        json!({"metadata": {"name": "db"}, "data": {"user": "YWRtaW4=", "password": "b2xk"}, "stringData": {"password": "s3cret"}}),
    );
    assert_eq!(secret["type"], "Opaque");
    assert!(
        secret.get("stringData").is_none(),
        "stringData is write-only"
    );
    assert_eq!(
        secret["data"],
        json!({"user": "YWRtaW4=", "password": "czNjcmV0"})
    );
}

#[test]
fn storage_network_and_access_defaults() {
    let pvc = defaulted(
        "v1",
        "PersistentVolumeClaim",
        json!({"spec": {"accessModes": ["ReadWriteOnce"]}}),
    );
    assert_eq!(pvc["spec"]["volumeMode"], "Filesystem");
    assert_eq!(pvc["status"]["phase"], "Pending");

    let pv = defaulted(
        "v1",
        "PersistentVolume",
        json!({"spec": {"hostPath": {"path": "/data"}}}),
    );
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(pv["spec"]["hostPath"]["type"], "");

    let np = defaulted(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        json!({"spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}}),
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(np["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
    let ingress_only = defaulted(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        json!({"spec": {"podSelector": {}}}),
    );
    assert_eq!(ingress_only["spec"]["policyTypes"], json!(["Ingress"]));

    let slice = defaulted(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        json!({"addressType": "IPv4", "ports": [{"port": 80}]}),
    );
    assert_eq!(
        slice["ports"][0],
        json!({"port": 80, "name": "", "protocol": "TCP"})
    );
    let ep = defaulted(
        "v1",
        "Endpoints",
        json!({"subsets": [{"ports": [{"port": 80}]}]}),
    );
    assert_eq!(ep["subsets"][0]["ports"][0]["protocol"], "TCP");

    let hpa = defaulted(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        json!({"spec": {"maxReplicas": 5, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}}}),
    );
    assert_eq!(hpa["spec"]["minReplicas"], 1);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        80
    );
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        60
    );
    assert_eq!(hpa["spec"]["behavior"]["scaleUp"]["selectPolicy"], "Max");
    assert_eq!(
        hpa["spec"]["behavior"]["scaleUp"]["policies"][0],
        json!({"type": "Pods", "value": 4, "periodSeconds": 15})
    );

    let rb = defaulted(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        json!({"roleRef": {"kind": "Role", "name": "reader"}, "subjects": [{"kind": "User", "name": "jane"}, {"kind": "ServiceAccount", "name": "ci", "namespace": "ci"}]}),
    );
    assert_eq!(rb["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
    assert_eq!(rb["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
    assert!(rb["subjects"][1].get("apiGroup").is_none());

    let sc = defaulted(
        "storage.k8s.io/v1",
        "StorageClass",
        json!({"provisioner": "shoal.io/local"}),
    );
    assert_eq!(sc["reclaimPolicy"], "Delete");
    assert_eq!(sc["volumeBindingMode"], "Immediate");

    let lr = defaulted(
        "v1",
        "LimitRange",
        json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "64Mi"}}]}}),
    );
    assert_eq!(lr["spec"]["limits"][0]["default"], json!({"cpu": "2"}));
    assert_eq!(
        lr["spec"]["limits"][0]["defaultRequest"],
        json!({"cpu": "2", "memory": "64Mi"})
    );
}

#[test]
fn objects_of_the_wrong_shape_are_left_for_validation() {
    let mut not_object = json!("pod");
    apply_defaults(kind("v1", "Pod"), &mut not_object);
    assert_eq!(not_object, json!("pod"));
    let pod = defaulted(
        "v1",
        "Pod",
        json!({"spec": {"containers": "web", "volumes": [1, null]}}),
    );
    assert_eq!(pod["spec"]["containers"], "web");
    assert_eq!(pod["spec"]["volumes"], json!([1, null]));
}
