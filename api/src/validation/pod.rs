//! Pods and pod templates: `ValidatePodCreate`, `ValidatePodSpec`,
//! `ValidatePodTemplateSpec` and the narrow set of changes a pod update
//! may make.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, Pod, PodSpec, PodTemplateSpec, Probe, Toleration, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::meta;
use super::names::{self, NameRule};
use super::path::Path;
use super::quantity;
use super::{FieldError, go_value};

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const TERMINATION_MESSAGE_POLICIES: &[&str] = &["File", "FallbackToLogsOnError"];
const HOST_PATH_TYPES: &[&str] = &[
    "",
    "BlockDevice",
    "CharDevice",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
];
const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];
const FILE_MODE_MSG: &str = "must be a number between 0 and 0777 (octal), both inclusive";
const NEGATIVE_MSG: &str = "must be greater than or equal to 0";
const MAX_INT32: i64 = i32::MAX as i64;

/// Field paths a container's environment may read through `fieldRef`.
const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// Every field path the downward API converts at all.
const DOWNWARD_API_FIELD_PATHS: &[&str] = &[
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.serviceAccountName",
    "spec.schedulerName",
    "status.phase",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// The volume sources in the order Kubernetes checks them, so the second one
/// found is the one reported.
const VOLUME_SOURCES: &[&str] = &[
    "emptyDir",
    "hostPath",
    "gitRepo",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

const POD_UPDATE_MSG: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// A Pod on create (`old` is `None`) or update.
pub(crate) fn validate_pod(pod: &Pod, old: Option<&Pod>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let meta_path = Path::new("metadata");
    if let Some(old) = old {
        errs.extend(meta::validate_object_meta_update(
            &pod.metadata,
            &old.metadata,
            &meta_path,
        ));
    }
    errs.extend(meta::validate_object_meta(
        &pod.metadata,
        NameRule::Subdomain,
        &meta_path,
    ));
    let spec_path = Path::new("spec");
    let empty = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    errs.extend(validate_pod_spec(spec, &spec_path));
    match old {
        None => {
            if spec
                .ephemeral_containers
                .as_ref()
                .is_some_and(|e| !e.is_empty())
            {
                errs.push(FieldError::forbidden(
                    &spec_path.child("ephemeralContainers"),
                    "cannot be set on create",
                ));
            }
            errs.extend(images_required(spec, &spec_path));
        }
        Some(old) => {
            let old_spec = old.spec.as_ref().unwrap_or(&empty);
            errs.extend(validate_pod_spec_update(spec, old_spec, &spec_path));
        }
    }
    errs
}

/// Pods, unlike templates, must name an image for every container.
fn images_required(spec: &PodSpec, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (list, name) in [
        (Some(&spec.containers), "containers"),
        (spec.init_containers.as_ref(), "initContainers"),
    ] {
        for (i, c) in list.into_iter().flatten().enumerate() {
            if c.image.as_deref().unwrap_or_default().is_empty() {
                errs.push(FieldError::required(
                    &path.child(name).index(i).child("image"),
                    "",
                ));
            }
        }
    }
    errs
}

/// `ValidatePodTemplateSpec`: a template's labels, annotations and spec.
pub(crate) fn validate_pod_template_spec(t: &PodTemplateSpec, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let labels = t.metadata.as_ref().and_then(|m| m.labels.as_ref());
    let annotations = t.metadata.as_ref().and_then(|m| m.annotations.as_ref());
    errs.extend(meta::validate_labels(labels, &path.child("labels")));
    errs.extend(meta::validate_annotations(
        annotations,
        &path.child("annotations"),
    ));
    let empty = PodSpec::default();
    let spec = t.spec.as_ref().unwrap_or(&empty);
    errs.extend(validate_pod_spec(spec, &path.child("spec")));
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        errs.push(FieldError::forbidden(
            &path.child("spec").child("ephemeralContainers"),
            "ephemeral containers not allowed in pod template",
        ));
    }
    errs
}

/// `ValidatePodSpec`.
pub(crate) fn validate_pod_spec(spec: &PodSpec, path: &Path) -> Vec<FieldError> {
    let (volumes, mut errs) = validate_volumes(
        spec.volumes.as_deref().unwrap_or_default(),
        &path.child("volumes"),
    );
    errs.extend(validate_containers(
        &spec.containers,
        &volumes,
        &path.child("containers"),
    ));
    errs.extend(validate_init_containers(
        spec.init_containers.as_deref().unwrap_or_default(),
        &spec.containers,
        &volumes,
        &path.child("initContainers"),
    ));
    if spec.host_network == Some(true) {
        for (i, c) in spec.containers.iter().enumerate() {
            for (j, p) in c.ports.iter().flatten().enumerate() {
                let host_port = p.host_port.unwrap_or(p.container_port);
                if host_port != p.container_port {
                    errs.push(FieldError::invalid(
                        &path
                            .child("containers")
                            .index(i)
                            .child("ports")
                            .index(j)
                            .child("hostPort"),
                        host_port.to_string(),
                        "must match `containerPort` when `hostNetwork` is true",
                    ));
                }
            }
        }
    }
    // An empty policy is Always after defaulting, except in Job templates,
    // whose own check reports it with the values a Job accepts.
    if let Some(policy) = spec.restart_policy.as_deref().filter(|p| !p.is_empty()) {
        errs.extend(enum_value(
            policy,
            RESTART_POLICIES,
            &path.child("restartPolicy"),
        ));
    }
    if let Some(policy) = spec.dns_policy.as_deref() {
        errs.extend(enum_value(policy, DNS_POLICIES, &path.child("dnsPolicy")));
        if policy == "None" && spec.dns_config.is_none() {
            errs.push(FieldError::required(
                &path.child("dnsConfig"),
                "must provide `dnsConfig` when `dnsPolicy` is None",
            ));
        }
    }
    errs.extend(meta::validate_labels(
        spec.node_selector.as_ref(),
        &path.child("nodeSelector"),
    ));
    for (field, value) in [
        ("serviceAccountName", spec.service_account_name.as_deref()),
        ("nodeName", spec.node_name.as_deref()),
        ("priorityClassName", spec.priority_class_name.as_deref()),
    ] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            for msg in names::dns1123_subdomain(v) {
                errs.push(FieldError::invalid_str(&path.child(field), v, msg));
            }
        }
    }
    if let Some(ads) = spec.active_deadline_seconds
        && !(1..=MAX_INT32).contains(&ads)
    {
        errs.push(FieldError::invalid(
            &path.child("activeDeadlineSeconds"),
            ads.to_string(),
            names::inclusive_range_error(1, MAX_INT32),
        ));
    }
    for (field, value) in [
        ("hostname", spec.hostname.as_deref()),
        ("subdomain", spec.subdomain.as_deref()),
    ] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            for msg in names::dns1123_label(v) {
                errs.push(FieldError::invalid_str(&path.child(field), v, msg));
            }
        }
    }
    errs.extend(validate_tolerations(
        spec.tolerations.as_deref().unwrap_or_default(),
        &path.child("tolerations"),
    ));
    errs
}

fn enum_value(value: &str, valid: &[&str], path: &Path) -> Option<FieldError> {
    if value.is_empty() {
        Some(FieldError::required(path, ""))
    } else if !valid.contains(&value) {
        Some(FieldError::not_supported(path, value, valid))
    } else {
        None
    }
}

fn non_negative(value: Option<i32>, path: &Path) -> Option<FieldError> {
    value
        .filter(|v| *v < 0)
        .map(|v| FieldError::invalid(path, v.to_string(), NEGATIVE_MSG))
}

/// `ValidateVolumes`: returns the names of the valid volumes, which mounts
/// may refer to.
fn validate_volumes(volumes: &[Volume], path: &Path) -> (BTreeSet<String>, Vec<FieldError>) {
    let mut names_seen = BTreeSet::new();
    let mut errs = Vec::new();
    for (i, vol) in volumes.iter().enumerate() {
        let p = path.index(i);
        let name_path = p.child("name");
        let mut el = validate_volume_source(vol, &p);
        if vol.name.is_empty() {
            el.push(FieldError::required(&name_path, ""));
        } else {
            for msg in names::dns1123_label(&vol.name) {
                el.push(FieldError::invalid_str(&name_path, &vol.name, msg));
            }
        }
        if names_seen.contains(&vol.name) {
            el.push(FieldError::duplicate(
                &name_path,
                go_value::quote(&vol.name),
            ));
        }
        if el.is_empty() {
            names_seen.insert(vol.name.clone());
        } else {
            errs.extend(el);
        }
    }
    (names_seen, errs)
}

fn validate_volume_source(vol: &Volume, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let as_json = serde_json::to_value(vol).unwrap_or_default();
    let present: Vec<&str> = VOLUME_SOURCES
        .iter()
        .copied()
        .filter(|s| as_json.get(s).is_some_and(|v| !v.is_null()))
        .collect();
    match present.as_slice() {
        [] => errs.push(FieldError::required(path, "must specify a volume type")),
        [_, extra @ ..] => {
            for s in extra {
                errs.push(FieldError::forbidden(
                    &path.child(s),
                    "may not specify more than 1 volume type",
                ));
            }
        }
    }
    let mode_ok = |m: Option<i32>| m.is_none_or(|m| (0..=0o777).contains(&m));
    let mut check_mode = |m: Option<i32>, p: Path| {
        if !mode_ok(m) {
            errs.push(FieldError::invalid(
                &p,
                m.unwrap_or_default().to_string(),
                FILE_MODE_MSG,
            ));
        }
    };
    if let Some(cm) = &vol.config_map {
        check_mode(
            cm.default_mode,
            path.child("configMap").child("defaultMode"),
        );
    }
    if let Some(s) = &vol.secret {
        check_mode(s.default_mode, path.child("secret").child("defaultMode"));
    }
    if let Some(d) = &vol.downward_api {
        check_mode(
            d.default_mode,
            path.child("downwardAPI").child("defaultMode"),
        );
    }
    if let Some(p) = &vol.projected {
        check_mode(p.default_mode, path.child("projected").child("defaultMode"));
    }
    if let Some(cm) = &vol.config_map {
        let p = path.child("configMap");
        if cm.name.is_empty() {
            errs.push(FieldError::required(&p.child("name"), ""));
        }
        for (j, item) in cm.items.iter().flatten().enumerate() {
            errs.extend(validate_key_to_path(
                &item.key,
                &item.path,
                item.mode,
                &p.child("items").index(j),
            ));
        }
    }
    if let Some(s) = &vol.secret {
        let p = path.child("secret");
        if s.secret_name.as_deref().unwrap_or_default().is_empty() {
            errs.push(FieldError::required(&p.child("secretName"), ""));
        }
        for (j, item) in s.items.iter().flatten().enumerate() {
            errs.extend(validate_key_to_path(
                &item.key,
                &item.path,
                item.mode,
                &p.child("items").index(j),
            ));
        }
    }
    if let Some(h) = &vol.host_path {
        let p = path.child("hostPath");
        if h.path.is_empty() {
            errs.push(FieldError::required(&p.child("path"), ""));
        }
        if let Some(t) = h.type_.as_deref()
            && !HOST_PATH_TYPES.contains(&t)
        {
            errs.push(FieldError::not_supported(
                &p.child("type"),
                t,
                HOST_PATH_TYPES,
            ));
        }
    }
    if let Some(pvc) = &vol.persistent_volume_claim
        && pvc.claim_name.is_empty()
    {
        errs.push(FieldError::required(
            &path.child("persistentVolumeClaim").child("claimName"),
            "",
        ));
    }
    if let Some(limit) = vol.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref())
        && quantity::parse(&limit.0).is_some_and(|v| v < 0.0)
    {
        errs.push(FieldError::forbidden(
            &path.child("emptyDir").child("sizeLimit"),
            "SizeLimit field must be a valid resource quantity",
        ));
    }
    errs
}

fn validate_key_to_path(key: &str, file: &str, mode: Option<i32>, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if key.is_empty() {
        errs.push(FieldError::required(&path.child("key"), ""));
    }
    if file.is_empty() {
        errs.push(FieldError::required(&path.child("path"), ""));
    } else {
        errs.extend(local_descending_path(file, &path.child("path")));
    }
    if let Some(m) = mode.filter(|m| !(0..=0o777).contains(m)) {
        errs.push(FieldError::invalid(
            &path.child("mode"),
            m.to_string(),
            FILE_MODE_MSG,
        ));
    }
    errs
}

fn local_descending_path(p: &str, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if p.starts_with('/') {
        errs.push(FieldError::invalid_str(path, p, "must be a relative path"));
    }
    if p.split('/').any(|part| part == "..") {
        errs.push(FieldError::invalid_str(path, p, "must not contain '..'"));
    }
    errs
}

fn validate_containers(
    containers: &[Container],
    volumes: &BTreeSet<String>,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, c) in containers.iter().enumerate() {
        let p = path.index(i);
        errs.extend(validate_container_common(c, volumes, &p));
        if !seen.insert(c.name.as_str()) {
            errs.push(FieldError::duplicate(
                &p.child("name"),
                go_value::quote(&c.name),
            ));
        }
        errs.extend(
            c.readiness_probe
                .as_ref()
                .map(|pr| validate_probe(pr, false, &p.child("readinessProbe")))
                .unwrap_or_default(),
        );
        errs.extend(
            c.startup_probe
                .as_ref()
                .map(|pr| validate_probe(pr, true, &p.child("startupProbe")))
                .unwrap_or_default(),
        );
        errs.extend(
            c.liveness_probe
                .as_ref()
                .map(|pr| validate_probe(pr, true, &p.child("livenessProbe")))
                .unwrap_or_default(),
        );
        if c.restart_policy.is_some() {
            errs.push(FieldError::forbidden(
                &p.child("restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
    }
    if containers.is_empty() {
        errs.push(FieldError::required(path, ""));
    }
    errs
}

fn validate_init_containers(
    init: &[Container],
    regular: &[Container],
    volumes: &BTreeSet<String>,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut seen: BTreeSet<&str> = regular.iter().map(|c| c.name.as_str()).collect();
    for (i, c) in init.iter().enumerate() {
        let p = path.index(i);
        errs.extend(validate_container_common(c, volumes, &p));
        let sidecar = match c.restart_policy.as_deref() {
            None => false,
            Some("Always") => true,
            Some(other) => {
                errs.push(FieldError::not_supported(
                    &p.child("restartPolicy"),
                    other,
                    &["Always"],
                ));
                false
            }
        };
        if !c.name.is_empty() && !seen.insert(c.name.as_str()) {
            errs.push(FieldError::duplicate(
                &p.child("name"),
                go_value::quote(&c.name),
            ));
        }
        if sidecar {
            errs.extend(
                c.readiness_probe
                    .as_ref()
                    .map(|pr| validate_probe(pr, false, &p.child("readinessProbe")))
                    .unwrap_or_default(),
            );
            errs.extend(
                c.startup_probe
                    .as_ref()
                    .map(|pr| validate_probe(pr, true, &p.child("startupProbe")))
                    .unwrap_or_default(),
            );
            errs.extend(
                c.liveness_probe
                    .as_ref()
                    .map(|pr| validate_probe(pr, true, &p.child("livenessProbe")))
                    .unwrap_or_default(),
            );
        } else {
            for (field, set) in [
                ("lifecycle", c.lifecycle.is_some()),
                ("livenessProbe", c.liveness_probe.is_some()),
                ("readinessProbe", c.readiness_probe.is_some()),
                ("startupProbe", c.startup_probe.is_some()),
            ] {
                if set {
                    errs.push(FieldError::forbidden(
                        &p.child(field),
                        "may not be set for init containers without restartPolicy=Always",
                    ));
                }
            }
        }
    }
    errs
}

/// `validateContainerCommon`.
fn validate_container_common(
    c: &Container,
    volumes: &BTreeSet<String>,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name_path = path.child("name");
    if c.name.is_empty() {
        errs.push(FieldError::required(&name_path, ""));
    } else {
        for msg in names::dns1123_label(&c.name) {
            errs.push(FieldError::invalid_str(&name_path, &c.name, msg));
        }
    }
    if let Some(image) = c.image.as_deref()
        && image.len() != image.trim().len()
    {
        errs.push(FieldError::invalid_str(
            &path.child("image"),
            image,
            "must not have leading or trailing whitespace",
        ));
    }
    if let Some(policy) = c.termination_message_policy.as_deref() {
        errs.extend(enum_value(
            policy,
            TERMINATION_MESSAGE_POLICIES,
            &path.child("terminationMessagePolicy"),
        ));
    }
    errs.extend(validate_container_ports(c, &path.child("ports")));
    errs.extend(validate_env(c, &path.child("env")));
    errs.extend(validate_volume_mounts(
        c,
        volumes,
        &path.child("volumeMounts"),
    ));
    if let Some(policy) = c.image_pull_policy.as_deref() {
        errs.extend(enum_value(
            policy,
            PULL_POLICIES,
            &path.child("imagePullPolicy"),
        ));
    }
    if let Some(res) = &c.resources {
        errs.extend(validate_resources(
            res.limits.as_ref(),
            res.requests.as_ref(),
            &path.child("resources"),
        ));
    }
    errs
}

fn validate_container_ports(c: &Container, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, port) in c.ports.iter().flatten().enumerate() {
        let p = path.index(i);
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            let msgs = names::port_name(name);
            if !msgs.is_empty() {
                for msg in msgs {
                    errs.push(FieldError::invalid_str(&p.child("name"), name, msg));
                }
            } else if !seen.insert(name) {
                errs.push(FieldError::duplicate(
                    &p.child("name"),
                    go_value::quote(name),
                ));
            }
        }
        if port.container_port == 0 {
            errs.push(FieldError::required(&p.child("containerPort"), ""));
        } else {
            for msg in names::port_num(port.container_port.into()) {
                errs.push(FieldError::invalid(
                    &p.child("containerPort"),
                    port.container_port.to_string(),
                    msg,
                ));
            }
        }
        if let Some(hp) = port.host_port.filter(|hp| *hp != 0) {
            for msg in names::port_num(hp.into()) {
                errs.push(FieldError::invalid(
                    &p.child("hostPort"),
                    hp.to_string(),
                    msg,
                ));
            }
        }
        if let Some(proto) = port.protocol.as_deref() {
            errs.extend(enum_value(proto, PROTOCOLS, &p.child("protocol")));
        }
    }
    errs
}

fn validate_env(c: &Container, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, ev) in c.env.iter().flatten().enumerate() {
        let p = path.index(i);
        if ev.name.is_empty() {
            errs.push(FieldError::required(&p.child("name"), ""));
        }
        for msg in names::env_var_name(&ev.name) {
            errs.push(FieldError::invalid_str(&p.child("name"), &ev.name, msg));
        }
        let Some(from) = &ev.value_from else { continue };
        let vp = p.child("valueFrom");
        let mut sources = 0;
        if let Some(f) = &from.field_ref {
            sources += 1;
            errs.extend(validate_field_ref(
                f.api_version.as_deref(),
                &f.field_path,
                &vp.child("fieldRef"),
            ));
        }
        if let Some(r) = &from.resource_field_ref {
            sources += 1;
            if r.resource.is_empty() {
                errs.push(FieldError::required(
                    &vp.child("resourceFieldRef").child("resource"),
                    "",
                ));
            }
        }
        for (field, sel) in [
            (
                "configMapKeyRef",
                from.config_map_key_ref.as_ref().map(|s| (&s.name, &s.key)),
            ),
            (
                "secretKeyRef",
                from.secret_key_ref.as_ref().map(|s| (&s.name, &s.key)),
            ),
        ] {
            let Some((name, key)) = sel else { continue };
            sources += 1;
            let sp = vp.child(field);
            if name.is_empty() {
                errs.push(FieldError::required(&sp.child("name"), ""));
            }
            if key.is_empty() {
                errs.push(FieldError::required(&sp.child("key"), ""));
            } else {
                for msg in names::config_map_key(key) {
                    errs.push(FieldError::invalid_str(&sp.child("key"), key, msg));
                }
            }
        }
        if sources == 0 {
            errs.push(FieldError::invalid_str(
                &vp,
                "",
                "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
            ));
        } else if !ev.value.as_deref().unwrap_or_default().is_empty() {
            errs.push(FieldError::invalid_str(
                &vp,
                "",
                "may not be specified when `value` is not empty",
            ));
        } else if sources > 1 {
            errs.push(FieldError::invalid_str(
                &vp,
                "",
                "may not have more than one field specified at a time",
            ));
        }
    }
    errs
}

/// `validateObjectFieldSelector` with the expressions environment variables
/// may use.
fn validate_field_ref(api_version: Option<&str>, field_path: &str, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if api_version == Some("") {
        errs.push(FieldError::required(&path.child("apiVersion"), ""));
        return errs;
    }
    if field_path.is_empty() {
        errs.push(FieldError::required(&path.child("fieldPath"), ""));
        return errs;
    }
    let (base, subscript) = match field_path.split_once("['") {
        Some((base, rest)) => match rest.strip_suffix("']") {
            Some(sub) => (base, Some(sub)),
            None => (field_path, None),
        },
        None => (field_path, None),
    };
    if !DOWNWARD_API_FIELD_PATHS.contains(&base) {
        errs.push(FieldError::invalid_str(
            &path.child("fieldPath"),
            field_path,
            format!("error converting fieldPath: field label not supported: {field_path}"),
        ));
        return errs;
    }
    match subscript {
        Some(sub) => match base {
            "metadata.annotations" | "metadata.labels" => {
                let key = if base == "metadata.annotations" {
                    sub.to_lowercase()
                } else {
                    sub.to_string()
                };
                for msg in names::qualified_name(&key) {
                    errs.push(FieldError::invalid_str(path, &key, msg));
                }
            }
            _ => errs.push(FieldError::invalid_str(
                path,
                base,
                "does not support subscript",
            )),
        },
        None if !ENV_FIELD_PATHS.contains(&base) => {
            let mut valid = ENV_FIELD_PATHS.to_vec();
            valid.sort_unstable();
            errs.push(FieldError::not_supported(
                &path.child("fieldPath"),
                base,
                &valid,
            ));
        }
        None => {}
    }
    errs
}

fn validate_volume_mounts(
    c: &Container,
    volumes: &BTreeSet<String>,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut mount_points = BTreeSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let p = path.index(i);
        if m.name.is_empty() {
            errs.push(FieldError::required(&p.child("name"), ""));
        }
        if !volumes.contains(&m.name) {
            errs.push(FieldError::not_found(&p.child("name"), &m.name));
        }
        if m.mount_path.is_empty() {
            errs.push(FieldError::required(&p.child("mountPath"), ""));
        }
        if !mount_points.insert(m.mount_path.as_str()) {
            errs.push(FieldError::invalid_str(
                &p.child("mountPath"),
                &m.mount_path,
                "must be unique",
            ));
        }
        // Kubernetes reports subPath problems without the mount's index.
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            errs.extend(local_descending_path(sub, &path.child("subPath")));
        }
        if let Some(expr) = m.sub_path_expr.as_deref().filter(|s| !s.is_empty()) {
            if m.sub_path.as_deref().is_some_and(|s| !s.is_empty()) {
                errs.push(FieldError::invalid_str(
                    &p.child("subPathExpr"),
                    expr,
                    "subPathExpr and subPath are mutually exclusive",
                ));
            }
            errs.extend(local_descending_path(expr, &path.child("subPathExpr")));
        }
    }
    errs
}

fn is_standard_container_resource(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-")
}

/// Resources whose requests must equal their limits.
fn overcommit_allowed(name: &str) -> bool {
    !(name.starts_with("hugepages-") || (name.contains('/') && !name.starts_with("kubernetes.io/")))
}

/// `ValidateContainerResourceRequirements`.
pub(crate) fn validate_resources(
    limits: Option<&BTreeMap<String, Quantity>>,
    requests: Option<&BTreeMap<String, Quantity>>,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let check = |name: &str, q: &Quantity, p: &Path, errs: &mut Vec<FieldError>| -> Option<f64> {
        for msg in names::qualified_name(name) {
            errs.push(FieldError::invalid_str(p, name, msg));
        }
        if !name.contains('/') && !is_standard_container_resource(name) {
            errs.push(FieldError::invalid_str(
                p,
                name,
                "must be a standard resource for containers",
            ));
        }
        match quantity::parse(&q.0) {
            None => {
                errs.push(FieldError::invalid_str(
                    p,
                    &q.0,
                    quantity::QUANTITY_SYNTAX_MSG,
                ));
                None
            }
            Some(v) if v < 0.0 => {
                errs.push(FieldError::invalid_str(p, &q.0, NEGATIVE_MSG));
                Some(v)
            }
            Some(v) => Some(v),
        }
    };
    let mut limit_values = BTreeMap::new();
    for (name, q) in limits.into_iter().flatten() {
        if let Some(v) = check(name, q, &path.child("limits").key(name), &mut errs) {
            limit_values.insert(name.as_str(), (v, q.0.as_str()));
        }
    }
    let req_path = path.child("requests");
    for (name, q) in requests.into_iter().flatten() {
        let Some(v) = check(name, q, &req_path.key(name), &mut errs) else {
            continue;
        };
        let Some((limit, limit_str)) = limit_values.get(name.as_str()) else {
            continue;
        };
        if !overcommit_allowed(name) && v != *limit {
            errs.push(FieldError::invalid_str(
                &req_path,
                &q.0,
                format!("must be equal to {name} limit of {limit_str}"),
            ));
        } else if v > *limit {
            errs.push(FieldError::invalid_str(
                &req_path,
                &q.0,
                format!("must be less than or equal to {name} limit of {limit_str}"),
            ));
        }
    }
    errs
}

fn validate_probe(probe: &Probe, must_succeed_once: bool, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let handlers = [
        ("exec", probe.exec.is_some()),
        ("httpGet", probe.http_get.is_some()),
        ("tcpSocket", probe.tcp_socket.is_some()),
        ("grpc", probe.grpc.is_some()),
    ];
    let set: Vec<&str> = handlers
        .iter()
        .filter(|(_, s)| *s)
        .map(|(n, _)| *n)
        .collect();
    match set.as_slice() {
        [] => errs.push(FieldError::required(path, "must specify a handler type")),
        [_, extra @ ..] => {
            for h in extra {
                errs.push(FieldError::forbidden(
                    &path.child(h),
                    "may not specify more than 1 handler type",
                ));
            }
        }
    }
    if let Some(h) = &probe.http_get {
        let hp = path.child("httpGet");
        if h.path.as_deref() == Some("") {
            errs.push(FieldError::required(&hp.child("path"), ""));
        }
        errs.extend(validate_port_num_or_name(&h.port, &hp.child("port")));
        if let Some(scheme) = h.scheme.as_deref()
            && !["HTTP", "HTTPS"].contains(&scheme)
        {
            errs.push(FieldError::not_supported(
                &hp.child("scheme"),
                scheme,
                &["HTTP", "HTTPS"],
            ));
        }
    }
    if let Some(t) = &probe.tcp_socket {
        errs.extend(validate_port_num_or_name(
            &t.port,
            &path.child("tcpSocket").child("port"),
        ));
    }
    if let Some(g) = &probe.grpc {
        for msg in names::port_num(g.port.into()) {
            errs.push(FieldError::invalid(
                &path.child("grpc").child("port"),
                g.port.to_string(),
                msg,
            ));
        }
    }
    for (field, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        errs.extend(non_negative(value, &path.child(field)));
    }
    if must_succeed_once && let Some(st) = probe.success_threshold.filter(|st| *st != 1) {
        errs.push(FieldError::invalid(
            &path.child("successThreshold"),
            st.to_string(),
            "must be 1",
        ));
    }
    errs
}

/// `ValidatePortNumOrName`.
pub(crate) fn validate_port_num_or_name(port: &IntOrString, path: &Path) -> Vec<FieldError> {
    match port {
        IntOrString::Int(n) => names::port_num((*n).into())
            .into_iter()
            .map(|msg| FieldError::invalid(path, n.to_string(), msg))
            .collect(),
        IntOrString::String(s) => names::port_name(s)
            .into_iter()
            .map(|msg| FieldError::invalid_str(path, s, msg))
            .collect(),
    }
}

fn toleration_go(t: &Toleration) -> String {
    format!(
        "core.Toleration{{Key:{}, Operator:{}, Value:{}, Effect:{}, TolerationSeconds:{}}}",
        go_value::quote(t.key.as_deref().unwrap_or_default()),
        go_value::quote(t.operator.as_deref().unwrap_or_default()),
        go_value::quote(t.value.as_deref().unwrap_or_default()),
        go_value::quote(t.effect.as_deref().unwrap_or_default()),
        t.toleration_seconds
            .map_or("(*int64)(nil)".to_string(), |s| format!("(*int64)({s})")),
    )
}

/// `ValidateTolerations`.
fn validate_tolerations(tolerations: &[Toleration], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, t) in tolerations.iter().enumerate() {
        let p = path.index(i);
        let key = t.key.as_deref().unwrap_or_default();
        let op = t.operator.as_deref().unwrap_or_default();
        let value = t.value.as_deref().unwrap_or_default();
        let effect = t.effect.as_deref().unwrap_or_default();
        if !key.is_empty() {
            for msg in names::qualified_name(key) {
                errs.push(FieldError::invalid_str(&p.child("key"), key, msg));
            }
        }
        if key.is_empty() && op != "Exists" {
            errs.push(FieldError::invalid_str(
                &p.child("operator"),
                op,
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            ));
        }
        if t.toleration_seconds.is_some() && effect != "NoExecute" {
            errs.push(FieldError::invalid_str(
                &p.child("effect"),
                effect,
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
        match op {
            "" | "Equal" => {
                let msgs = names::label_value(value);
                if !msgs.is_empty() {
                    errs.push(FieldError::invalid_str(
                        &p.child("operator"),
                        value,
                        msgs.join(";"),
                    ));
                }
            }
            "Exists" => {
                if !value.is_empty() {
                    errs.push(FieldError::invalid(
                        &p.child("operator"),
                        toleration_go(t),
                        "value must be empty when `operator` is 'Exists'",
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                &p.child("operator"),
                other,
                &["Equal", "Exists"],
            )),
        }
        if !effect.is_empty() && !TAINT_EFFECTS.contains(&effect) {
            errs.push(FieldError::not_supported(
                &p.child("effect"),
                effect,
                TAINT_EFFECTS,
            ));
        }
    }
    errs
}

/// `ValidatePodUpdate`: only images, a shorter deadline, added tolerations
/// and a fix for a negative grace period may change.
fn validate_pod_spec_update(new: &PodSpec, old: &PodSpec, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let new_init = new.init_containers.as_deref().unwrap_or_default();
    let old_init = old.init_containers.as_deref().unwrap_or_default();
    for (list, old_list, field) in [
        (
            new.containers.as_slice(),
            old.containers.as_slice(),
            "containers",
        ),
        (new_init, old_init, "initContainers"),
    ] {
        if list.len() != old_list.len() {
            errs.push(FieldError::forbidden(
                &path.child(field),
                "pod updates may not add or remove containers",
            ));
            return errs;
        }
        for (i, c) in list.iter().enumerate() {
            if c.image.as_deref().unwrap_or_default().is_empty() {
                errs.push(FieldError::required(
                    &path.child(field).index(i).child("image"),
                    "",
                ));
            }
        }
    }
    let ads_path = path.child("activeDeadlineSeconds");
    match (new.active_deadline_seconds, old.active_deadline_seconds) {
        (Some(n), _) if !(0..=MAX_INT32).contains(&n) => {
            errs.push(FieldError::invalid(
                &ads_path,
                n.to_string(),
                names::inclusive_range_error(0, MAX_INT32),
            ));
            return errs;
        }
        (Some(n), Some(o)) if o < n => {
            errs.push(FieldError::invalid(
                &ads_path,
                n.to_string(),
                "must be less than or equal to previous value",
            ));
            return errs;
        }
        (None, Some(_)) => {
            errs.push(FieldError::invalid(
                &ads_path,
                go_value::null(),
                "must not update from a positive integer to nil value",
            ));
        }
        _ => {}
    }
    let new_tolerations = new.tolerations.as_deref().unwrap_or_default();
    for old_t in old.tolerations.iter().flatten() {
        let kept = new_tolerations.iter().any(|t| {
            let mut o = old_t.clone();
            o.toleration_seconds = t.toleration_seconds;
            &o == t
        });
        if !kept {
            errs.push(FieldError::forbidden(
                &path.child("tolerations"),
                "existing toleration can not be modified except its tolerationSeconds",
            ));
            break;
        }
    }

    let mut munged = new.clone();
    for (c, o) in munged.containers.iter_mut().zip(&old.containers) {
        c.image.clone_from(&o.image);
    }
    if let Some(init) = munged.init_containers.as_mut() {
        for (c, o) in init.iter_mut().zip(old_init) {
            c.image.clone_from(&o.image);
        }
    }
    munged.active_deadline_seconds = old.active_deadline_seconds;
    // Ephemeral containers change through their own subresource only, and
    // are checked there.
    munged
        .ephemeral_containers
        .clone_from(&old.ephemeral_containers);
    munged.scheduling_gates.clone_from(&old.scheduling_gates);
    munged.tolerations.clone_from(&old.tolerations);
    if old.termination_grace_period_seconds.is_some_and(|g| g < 0)
        && munged.termination_grace_period_seconds == Some(1)
    {
        munged.termination_grace_period_seconds = old.termination_grace_period_seconds;
    }
    let (new_json, old_json) = (semantic_json(&munged), semantic_json(old));
    if new_json != old_json {
        let mut diff = Vec::new();
        json_diff(&old_json, &new_json, "spec", &mut diff);
        errs.push(FieldError::forbidden(
            path,
            format!("{POD_UPDATE_MSG}\n{}", diff.join("\n")),
        ));
    }
    errs
}

/// JSON for semantic comparison: Kubernetes treats an empty list like a
/// missing one.
pub(crate) fn semantic_json<T: serde::Serialize>(v: &T) -> Value {
    let mut json = serde_json::to_value(v).unwrap_or_default();
    drop_empty_lists(&mut json);
    json
}

fn drop_empty_lists(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !matches!(v, Value::Array(a) if a.is_empty()) && !v.is_null());
            map.values_mut().for_each(drop_empty_lists);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_empty_lists),
        _ => {}
    }
}

/// The leaves that differ, one line each, `-` old and `+` new, in place of
/// the Go struct diff Kubernetes appends.
fn json_diff(old: &Value, new: &Value, path: &str, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (o.get(k), n.get(k)) {
                    (Some(a), Some(b)) => json_diff(a, b, &p, out),
                    (Some(a), None) => out.push(format!("  - {p}: {a}")),
                    (None, Some(b)) => out.push(format!("  + {p}: {b}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(o), Value::Array(n)) if o.len() == n.len() => {
            for (i, (a, b)) in o.iter().zip(n).enumerate() {
                json_diff(a, b, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a != b => {
            out.push(format!("  - {path}: {a}"));
            out.push(format!("  + {path}: {b}"));
        }
        _ => {}
    }
}
