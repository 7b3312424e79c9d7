//! Printers for `networking.k8s.io/v1` and `discovery.k8s.io/v1` kinds.

use serde_json::Value;

use super::core_kinds::load_balancer_addresses;
use super::fields::{
    arr_at, format_label_selector, i64_at, is_set, list_with_more, opt_str_at, str_at,
};
use super::{AGE, Clock, Column, NAME, Printer, name, no_conditions};
use crate::kinds::Kind;

/// The printer for a networking kind.
pub(super) fn printer(kind: &Kind) -> Option<&'static Printer> {
    match (kind.group, kind.kind) {
        ("networking.k8s.io", "Ingress") => Some(&INGRESS),
        ("networking.k8s.io", "IngressClass") => Some(&INGRESS_CLASS),
        ("networking.k8s.io", "NetworkPolicy") => Some(&NETWORK_POLICY),
        ("discovery.k8s.io", "EndpointSlice") => Some(&ENDPOINT_SLICE),
        _ => None,
    }
}

static INGRESS: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Class",
            "The name of the IngressClass resource that should be used for additional configuration",
        ),
        Column::string(
            "Hosts",
            "Hosts that incoming requests are matched against before the ingress rule",
        ),
        Column::string(
            "Address",
            "Address is a list containing ingress points for the load-balancer",
        ),
        Column::string("Ports", "Ports of TLS configurations that open"),
        AGE,
    ],
    cells: ingress_cells,
    conditions: no_conditions,
};

/// Kubernetes' `formatHosts`: up to three rule hosts, `*` when no rule names
/// one.
fn format_hosts(rules: &[Value]) -> String {
    const MAX: usize = 3;
    let mut list: Vec<&str> = Vec::new();
    let mut more = false;
    for rule in rules {
        if list.len() == MAX {
            more = true;
        }
        let host = str_at(rule, "/host");
        if !more && !host.is_empty() {
            list.push(host);
        }
    }
    if list.is_empty() {
        return "*".to_string();
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", rules.len().saturating_sub(MAX))
    } else {
        joined
    }
}

fn ingress_cells(ing: &Value, clock: &Clock) -> Vec<Value> {
    let ports = if arr_at(ing, "/spec/tls").is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        name(ing),
        Value::from(opt_str_at(ing, "/spec/ingressClassName").unwrap_or("<none>")),
        Value::from(format_hosts(arr_at(ing, "/spec/rules"))),
        Value::from(load_balancer_addresses(arr_at(ing, "/status/loadBalancer/ingress")).join(",")),
        Value::from(ports),
        clock.age(ing),
    ]
}

static INGRESS_CLASS: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Controller",
            "Controller that is responsible for handling this class",
        ),
        Column::string(
            "Parameters",
            "A reference to a resource with additional parameters",
        ),
        AGE,
    ],
    cells: ingress_class_cells,
    conditions: no_conditions,
};

fn ingress_class_cells(class: &Value, clock: &Clock) -> Vec<Value> {
    // `Kind.apiGroup/name`, or `Kind/name` for a core-group resource.
    let parameters = if is_set(class, "/spec/parameters") {
        let kind = str_at(class, "/spec/parameters/kind");
        let target = str_at(class, "/spec/parameters/name");
        match opt_str_at(class, "/spec/parameters/apiGroup") {
            Some(group) => format!("{kind}.{group}/{target}"),
            None => format!("{kind}/{target}"),
        }
    } else {
        "<none>".to_string()
    };
    vec![
        name(class),
        Value::from(str_at(class, "/spec/controller")),
        Value::from(parameters),
        clock.age(class),
    ]
}

static NETWORK_POLICY: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Pod-Selector",
            "Selects the pods to which this NetworkPolicy object applies.",
        ),
        AGE,
    ],
    cells: network_policy_cells,
    conditions: no_conditions,
};

fn network_policy_cells(policy: &Value, clock: &Clock) -> Vec<Value> {
    // podSelector is not optional in Kubernetes: absent reads as empty,
    // which selects every pod and prints as `<none>`.
    let selector = policy
        .pointer("/spec/podSelector")
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
    vec![
        name(policy),
        Value::from(format_label_selector(Some(&selector))),
        clock.age(policy),
    ]
}

static ENDPOINT_SLICE: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "AddressType",
            "addressType specifies the type of address carried by this EndpointSlice.",
        ),
        Column::string(
            "Ports",
            "ports specifies the list of network ports exposed by each endpoint in this slice.",
        ),
        Column::string(
            "Endpoints",
            "endpoints is a list of unique endpoints in this slice.",
        ),
        AGE,
    ],
    cells: endpoint_slice_cells,
    conditions: no_conditions,
};

const SLICE_LIST_MAX: usize = 3;

/// Up to three ports by number (or name, or `*` for all ports).
fn format_slice_ports(ports: &[Value]) -> String {
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    for port in ports {
        if list.len() < SLICE_LIST_MAX {
            let text = if is_set(port, "/port") {
                i64_at(port, "/port").to_string()
            } else {
                opt_str_at(port, "/name").unwrap_or("*").to_string()
            };
            list.push(text);
        } else if list.len() == SLICE_LIST_MAX {
            more = true;
        }
    }
    list_with_more(&list, more, ports.len(), SLICE_LIST_MAX)
}

/// Up to three endpoint addresses.
fn format_slice_endpoints(endpoints: &[Value]) -> String {
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for address in endpoints.iter().flat_map(|e| arr_at(e, "/addresses")) {
        if list.len() < SLICE_LIST_MAX {
            list.push(address.as_str().unwrap_or("").to_string());
        } else if list.len() == SLICE_LIST_MAX {
            more = true;
        }
        count += 1;
    }
    list_with_more(&list, more, count, SLICE_LIST_MAX)
}

fn endpoint_slice_cells(slice: &Value, clock: &Clock) -> Vec<Value> {
    vec![
        name(slice),
        Value::from(str_at(slice, "/addressType")),
        Value::from(format_slice_ports(arr_at(slice, "/ports"))),
        Value::from(format_slice_endpoints(arr_at(slice, "/endpoints"))),
        clock.age(slice),
    ]
}
