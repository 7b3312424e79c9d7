//! Services, endpoints, endpoint slices, network policies and ingress
//! classes.

use serde_json::{Value, json};

use super::{Object, default_str, default_value, existing, items, object, str_of};

/// Client-IP affinity lasts three hours unless asked otherwise.
const CLIENT_IP_AFFINITY_SECONDS: i64 = 10800;

/// `SetDefaults_Service`. Cluster IPs, IP families and node ports are the
/// apiserver's allocation, not defaults.
pub(super) fn default_service(root: &mut Object) {
    let Some(spec) = object(root, "spec") else {
        return;
    };
    default_str(spec, "sessionAffinity", "None");
    match str_of(spec, "sessionAffinity") {
        "None" => {
            spec.remove("sessionAffinityConfig");
        }
        "ClientIP" => {
            let timeout = spec
                .get("sessionAffinityConfig")
                .and_then(|c| c.get("clientIP"))
                .and_then(|c| c.get("timeoutSeconds"))
                .is_some_and(|t| !t.is_null());
            if !timeout {
                spec.insert(
                    "sessionAffinityConfig".into(),
                    json!({"clientIP": {"timeoutSeconds": CLIENT_IP_AFFINITY_SECONDS}}),
                );
            }
        }
        _ => {}
    }
    default_str(spec, "type", "ClusterIP");
    // Non-pointer ints in Go: 0 is "not set" (allocate one), however the
    // client wrote it (kubectl's protobuf always carries the zero).
    if spec.get("healthCheckNodePort").and_then(Value::as_i64) == Some(0) {
        spec.remove("healthCheckNodePort");
    }
    for port in items(spec, "ports") {
        default_str(port, "protocol", "TCP");
        if port.get("nodePort").and_then(Value::as_i64) == Some(0) {
            port.remove("nodePort");
        }
        let unset = port
            .get("targetPort")
            .is_none_or(|t| t.is_null() || t.as_i64() == Some(0) || t.as_str() == Some(""));
        if unset {
            let number = port.get("port").and_then(Value::as_i64).unwrap_or_default();
            port.insert("targetPort".into(), json!(number));
        }
    }
    let ty = str_of(spec, "type").to_string();
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let externally_accessible =
        ty == "LoadBalancer" || ty == "NodePort" || (ty == "ClusterIP" && has_external_ips);
    if externally_accessible {
        default_str(spec, "externalTrafficPolicy", "Cluster");
    }
    if matches!(ty.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        default_value(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        default_value(spec, "allocateLoadBalancerNodePorts", json!(true));
        if let Some(lb) = existing(root, "status").and_then(|s| existing(s, "loadBalancer")) {
            for ingress in items(lb, "ingress") {
                if !str_of(ingress, "ip").is_empty() {
                    default_value(ingress, "ipMode", json!("VIP"));
                }
            }
        }
    }
    // A struct, not a pointer, in Go: every Service shows it.
    if let Some(status) = object(root, "status") {
        default_value(status, "loadBalancer", json!({}));
    }
}

pub(super) fn default_endpoints(root: &mut Object) {
    for subset in items(root, "subsets") {
        for port in items(subset, "ports") {
            default_str(port, "protocol", "TCP");
        }
    }
}

pub(super) fn default_endpoint_slice(root: &mut Object) {
    for port in items(root, "ports") {
        default_value(port, "name", json!(""));
        default_value(port, "protocol", json!("TCP"));
    }
}

/// Ports default to TCP; a policy naming no types is an ingress policy, and
/// an egress one too when it has egress rules.
pub(super) fn default_network_policy(root: &mut Object) {
    let Some(spec) = existing(root, "spec") else {
        return;
    };
    for direction in ["ingress", "egress"] {
        for rule in items(spec, direction) {
            for port in items(rule, "ports") {
                default_value(port, "protocol", json!("TCP"));
            }
        }
    }
    if spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        let has_egress = spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        let types = if has_egress {
            json!(["Ingress", "Egress"])
        } else {
            json!(["Ingress"])
        };
        spec.insert("policyTypes".into(), types);
    }
}

pub(super) fn default_ingress_class(root: &mut Object) {
    if let Some(params) = existing(root, "spec").and_then(|s| existing(s, "parameters")) {
        default_value(params, "scope", json!("Cluster"));
    }
}
