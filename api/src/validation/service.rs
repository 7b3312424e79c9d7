//! Services: `ValidateService` and the cluster IP rules of
//! `ValidateServiceUpdate`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::meta;
use super::names::{self, NameRule};
use super::path::Path;
use super::pod::validate_port_num_or_name;
use super::{FieldError, go_value};

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const SESSION_AFFINITIES: &[&str] = &["ClientIP", "None"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];
const INVALID_IP_MSG: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";

/// The NodePort range the apiserver allocates from; shoal keeps
/// Kubernetes' default.
const NODE_PORT_RANGE: std::ops::RangeInclusive<i32> = 30000..=32767;

/// A Service on create or update.
pub(crate) fn validate_service(svc: &Service, old: Option<&Service>) -> Vec<FieldError> {
    let meta_path = Path::new("metadata");
    let mut errs = Vec::new();
    let empty = ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&empty);
    if let Some(old) = old {
        errs.extend(meta::validate_object_meta_update(
            &svc.metadata,
            &old.metadata,
            &meta_path,
        ));
        errs.extend(validate_cluster_ip_update(
            spec,
            old.spec.as_ref().unwrap_or(&empty),
        ));
    }
    errs.extend(meta::validate_object_meta(
        &svc.metadata,
        NameRule::Dns1035,
        &meta_path,
    ));
    errs.extend(validate_spec(spec));
    errs
}

fn cluster_ips(spec: &ServiceSpec) -> Vec<String> {
    match (&spec.cluster_ips, spec.cluster_ip.as_deref()) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.to_string()],
        _ => Vec::new(),
    }
}

fn is_headless(spec: &ServiceSpec) -> bool {
    cluster_ips(spec).first().is_some_and(|ip| ip == "None")
}

fn validate_spec(spec: &ServiceSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let path = Path::new("spec");
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    let ports = spec.ports.as_deref().unwrap_or_default();
    let headless = is_headless(spec);
    let ips = cluster_ips(spec);
    if ports.is_empty() && !headless && ty != "ExternalName" {
        errs.push(FieldError::required(&path.child("ports"), ""));
    }
    let first_ip = || path.child("clusterIPs").index(0);
    match ty {
        "LoadBalancer" | "NodePort" if headless => errs.push(FieldError::invalid_str(
            &first_ip(),
            "None",
            format!("may not be set to 'None' for {ty} services"),
        )),
        "ExternalName" => {
            if !ips.is_empty() {
                errs.push(FieldError::forbidden(
                    &path.child("clusterIPs"),
                    "may not be set for ExternalName services",
                ));
            }
            if spec.ip_families.as_ref().is_some_and(|f| !f.is_empty()) {
                errs.push(FieldError::forbidden(
                    &path.child("ipFamilies"),
                    "may not be set for ExternalName services",
                ));
            }
            if spec.ip_family_policy.is_some() {
                errs.push(FieldError::forbidden(
                    &path.child("ipFamilyPolicy"),
                    "may not be set for ExternalName services",
                ));
            }
            let name = spec.external_name.as_deref().unwrap_or_default();
            let cname = name.strip_suffix('.').unwrap_or(name);
            if cname.is_empty() {
                errs.push(FieldError::required(&path.child("externalName"), ""));
            } else {
                for msg in names::dns1123_subdomain(cname) {
                    errs.push(FieldError::invalid_str(
                        &path.child("externalName"),
                        cname,
                        msg,
                    ));
                }
            }
        }
        _ => {}
    }

    let mut port_names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = path.child("ports").index(i);
        let name = port.name.as_deref().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(&p.child("name"), ""));
        } else if !name.is_empty() {
            for msg in names::dns1123_label(name) {
                errs.push(FieldError::invalid_str(&p.child("name"), name, msg));
            }
            if !port_names.insert(name) {
                errs.push(FieldError::duplicate(
                    &p.child("name"),
                    go_value::quote(name),
                ));
            }
        }
        for msg in names::port_num(port.port.into()) {
            errs.push(FieldError::invalid(
                &p.child("port"),
                port.port.to_string(),
                msg,
            ));
        }
        match port.protocol.as_deref() {
            Some("") => errs.push(FieldError::required(&p.child("protocol"), "")),
            Some(proto) if !PROTOCOLS.contains(&proto) => {
                errs.push(FieldError::not_supported(
                    &p.child("protocol"),
                    proto,
                    PROTOCOLS,
                ));
            }
            _ => {}
        }
        if let Some(target) = &port.target_port {
            errs.extend(validate_port_num_or_name(target, &p.child("targetPort")));
        }
        if let Some(node_port) = port.node_port.filter(|np| *np != 0)
            && !NODE_PORT_RANGE.contains(&node_port)
        {
            errs.push(FieldError::invalid(
                &p.child("nodePort"),
                node_port.to_string(),
                format!(
                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                    NODE_PORT_RANGE.start(),
                    NODE_PORT_RANGE.end()
                ),
            ));
        }
    }

    errs.extend(meta::validate_labels(
        spec.selector.as_ref(),
        &path.child("selector"),
    ));

    match spec.session_affinity.as_deref() {
        Some("") => errs.push(FieldError::required(&path.child("sessionAffinity"), "")),
        Some(a) if !SESSION_AFFINITIES.contains(&a) => {
            errs.push(FieldError::not_supported(
                &path.child("sessionAffinity"),
                a,
                SESSION_AFFINITIES,
            ));
        }
        Some("None") if spec.session_affinity_config.is_some() => errs.push(FieldError::forbidden(
            &path.child("sessionAffinityConfig"),
            "must not be set when session affinity is None",
        )),
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            let p = path
                .child("sessionAffinityConfig")
                .child("clientIP")
                .child("timeoutSeconds");
            match timeout {
                None => errs.push(FieldError::required(
                    &p,
                    "when session affinity type is ClientIP",
                )),
                Some(t) if !(1..=86400).contains(&t) => errs.push(FieldError::invalid(
                    &p,
                    t.to_string(),
                    "must be greater than 0 and less than 86400",
                )),
                Some(_) => {}
            }
        }
        _ => {}
    }

    for (i, ip) in ips.iter().enumerate() {
        let p = path.child("clusterIPs").index(i);
        if ip == "None" {
            if i > 0 || ips.len() > 1 {
                errs.push(FieldError::invalid_str(
                    &p,
                    ip,
                    "'None' must be the first and only value",
                ));
            }
        } else if ip.parse::<IpAddr>().is_err() {
            errs.push(FieldError::invalid_str(&p, ip, INVALID_IP_MSG));
        }
    }
    if let (Some(ip), Some(first)) = (
        spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()),
        spec.cluster_ips.as_ref().and_then(|v| v.first()),
    ) && ip != first
    {
        errs.push(FieldError::invalid(
            &path.child("clusterIPs"),
            go_value::string_slice(spec.cluster_ips.as_deref()),
            "first value must match `clusterIP`",
        ));
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if ip.parse::<IpAddr>().is_err() {
            errs.push(FieldError::invalid_str(
                &path.child("externalIPs").index(i),
                ip,
                INVALID_IP_MSG,
            ));
        }
    }

    if let Some(t) = spec.type_.as_deref() {
        if t.is_empty() {
            errs.push(FieldError::required(&path.child("type"), ""));
        } else if !SERVICE_TYPES.contains(&t) {
            errs.push(FieldError::not_supported(
                &path.child("type"),
                t,
                SERVICE_TYPES,
            ));
        }
    }
    if ty == "ClusterIP" {
        for (i, port) in ports.iter().enumerate() {
            if port.node_port.is_some_and(|np| np != 0) {
                errs.push(FieldError::forbidden(
                    &path.child("ports").index(i).child("nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
    let mut node_ports = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let Some(np) = port.node_port.filter(|np| *np != 0) else {
            continue;
        };
        if !node_ports.insert((port.protocol.as_deref().unwrap_or("TCP"), np)) {
            errs.push(FieldError::duplicate(
                &path.child("ports").index(i).child("nodePort"),
                np.to_string(),
            ));
        }
    }
    let mut seen_ports = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let proto = port.protocol.as_deref().unwrap_or("TCP");
        if !seen_ports.insert((proto, port.port)) {
            errs.push(FieldError::duplicate(
                &path.child("ports").index(i),
                format!(
                    "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
                    go_value::quote(proto),
                    port.port
                ),
            ));
        }
    }

    let externally_accessible = matches!(ty, "LoadBalancer" | "NodePort")
        || (ty == "ClusterIP" && spec.external_ips.as_ref().is_some_and(|v| !v.is_empty()));
    match spec.external_traffic_policy.as_deref() {
        Some(p) if !p.is_empty() && !externally_accessible => errs.push(FieldError::invalid_str(
            &path.child("externalTrafficPolicy"),
            p,
            "may only be set for externally-accessible services",
        )),
        Some(p) if !p.is_empty() && !TRAFFIC_POLICIES.contains(&p) => {
            errs.push(FieldError::not_supported(
                &path.child("externalTrafficPolicy"),
                p,
                TRAFFIC_POLICIES,
            ));
        }
        _ => {}
    }
    if let Some(p) = spec.internal_traffic_policy.as_deref()
        && !TRAFFIC_POLICIES.contains(&p)
    {
        errs.push(FieldError::not_supported(
            &path.child("internalTrafficPolicy"),
            p,
            TRAFFIC_POLICIES,
        ));
    }
    errs
}

/// `validateUpgradeDowngradeClusterIPs`: an assigned cluster IP stays; a
/// secondary one may be added or released.
fn validate_cluster_ip_update(new: &ServiceSpec, old: &ServiceSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let is_external = |s: &ServiceSpec| s.type_.as_deref() == Some("ExternalName");
    if is_external(new) || is_external(old) || (is_headless(new) && is_headless(old)) {
        return errs;
    }
    let (new_ips, old_ips) = (cluster_ips(new), cluster_ips(old));
    let path = Path::new("spec").child("clusterIPs").index(0);
    let value = go_value::string_slice(Some(&new_ips));
    let changed = "may not change once set";
    if old_ips.len() == new_ips.len() {
        if old_ips != new_ips {
            errs.push(FieldError::invalid(&path, value, changed));
        }
    } else if old_ips.len() > new_ips.len() {
        if new_ips.is_empty() {
            errs.push(FieldError::invalid(
                &path,
                value.clone(),
                "primary clusterIP can not be unset",
            ));
        }
        if new_ips.first().is_some_and(|n| Some(n) != old_ips.first()) {
            errs.push(FieldError::invalid(&path, value.clone(), changed));
        }
        if new_ips.len() == 1 && new.ip_family_policy.as_deref() != Some("SingleStack") {
            errs.push(FieldError::invalid(
                &path,
                value,
                "`ipFamilyPolicy` must be set to 'SingleStack' when releasing the secondary clusterIP",
            ));
        }
    } else if old_ips.first().is_some_and(|o| Some(o) != new_ips.first()) {
        errs.push(FieldError::invalid(&path, value, changed));
    }
    errs
}
