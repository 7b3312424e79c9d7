//! `metrics.k8s.io/v1beta1` (metrics-server's API, served in process):
//! NodeMetrics and PodMetrics, read on request from the agents'
//! `/stats/summary` over the same mutual TLS as logs. `kubectl top` and the
//! HorizontalPodAutoscaler read them. A node whose agent does not answer
//! is left out of a list, as metrics-server leaves out a node it could not
//! scrape; only a `get` of that one object is a 404.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use futures_util::future::join_all;
use http_body_util::{BodyExt as _, Limited};
use serde_json::{Value, json};

use crate::{
    body::Reply,
    kubelet::{KubeletClient, agent_addr_of},
    request::{Query, ResourceRequest, Verb},
    rest::object_key,
    selector::Filter,
    status::ApiError,
    storage::Storage,
};

#[cfg(test)]
mod tests;

/// The API group.
pub const GROUP: &str = "metrics.k8s.io";
/// Its only version.
pub const VERSION: &str = "v1beta1";
/// How long one agent may take to answer a summary.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest summary read from an agent.
const MAX_SUMMARY: usize = 16 * 1024 * 1024;
/// The window reported with every sample: the agent's CPU rate spans at
/// most one housekeeping interval (shoal-agent's `DEFAULT_HOUSEKEEPING`).
const WINDOW: &str = "10s";

/// The group as `/apis` lists it.
pub fn group_json() -> Value {
    let v = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"name": GROUP, "versions": [v.clone()], "preferredVersion": v})
}

/// `/apis/metrics.k8s.io/v1beta1`.
pub fn resource_list() -> Value {
    let r = |name: &str, kind: &str, namespaced: bool| {
        json!({
            "name": name,
            "singularName": "",
            "namespaced": namespaced,
            "kind": kind,
            "verbs": ["get", "list"],
        })
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [r("nodes", "NodeMetrics", false), r("pods", "PodMetrics", true)],
    })
}

/// The group's entry in aggregated discovery v2.
pub fn aggregated_json() -> Value {
    let r = |name: &str, kind: &str, scope: &str| {
        json!({
            "resource": name,
            "responseKind": {"group": GROUP, "version": VERSION, "kind": kind},
            "scope": scope,
            "singularResource": "",
            "verbs": ["get", "list"],
        })
    };
    json!({
        "metadata": {"name": GROUP, "creationTimestamp": null},
        "versions": [{
            "version": VERSION,
            "resources": [r("nodes", "NodeMetrics", "Cluster"), r("pods", "PodMetrics", "Namespaced")],
            "freshness": "Current",
        }],
    })
}

/// Serves a metrics.k8s.io request: get or list of `nodes` or `pods`.
pub async fn serve(
    kubelet: &KubeletClient,
    storage: &Storage,
    req: &ResourceRequest,
    query: &Query,
) -> Result<Reply, ApiError> {
    if req.version != VERSION {
        return Err(ApiError::no_route(&format!(
            "/apis/{GROUP}/{}/{}",
            req.version, req.resource
        )));
    }
    let (kind, source) = match req.resource.as_str() {
        "nodes" => ("NodeMetrics", "nodes"),
        "pods" => ("PodMetrics", "pods"),
        other => return Err(ApiError::not_found(GROUP, other, "")),
    };
    if req.subresource.is_some() {
        return Err(ApiError::no_route(&format!(
            "/apis/{GROUP}/{VERSION}/{}/{}",
            req.resource,
            req.subresource.as_deref().unwrap_or_default()
        )));
    }
    if !matches!(req.verb, Verb::Get | Verb::List) {
        return Err(ApiError::method_not_supported(kind, req.verb.as_str()));
    }
    let objects = read_objects(storage, source, req, query).await?;
    let items = match source {
        "nodes" => node_items(kubelet, objects).await,
        _ => pod_items(kubelet, storage, objects).await,
    };
    if let Some(name) = &req.name {
        return items
            .into_iter()
            .next()
            .map(|mut item| {
                item["kind"] = json!(kind);
                item["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
                Reply::json(200, &item)
            })
            .ok_or_else(|| ApiError::not_found(GROUP, &req.resource, name));
    }
    Ok(Reply::json(
        200,
        &json!({
            "kind": format!("{kind}List"),
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "metadata": {},
            "items": items,
        }),
    ))
}

/// The nodes or pods the request is about: the one it names, or those the
/// selectors pass.
async fn read_objects(
    storage: &Storage,
    source: &str,
    req: &ResourceRequest,
    query: &Query,
) -> Result<Vec<Value>, ApiError> {
    let kind = shoal_api::find_resource("", "v1", source)
        .ok_or_else(|| ApiError::internal(format!("{source} are not served")))?;
    let namespace = if kind.namespaced() {
        req.namespace.as_deref()
    } else {
        None
    };
    if let Some(name) = &req.name {
        let found = storage.get(&object_key(kind, namespace, name)).await?;
        return Ok(found.map(|s| s.value).into_iter().collect());
    }
    let filter = Filter::of(query, source)?;
    let prefix = match namespace {
        Some(ns) => format!("{}{ns}/", kind.storage_prefix()),
        None => kind.storage_prefix(),
    };
    let page = storage.list(&prefix, None, 0, None).await?;
    Ok(page
        .items
        .into_iter()
        .map(|(_, s)| s.value)
        .filter(|o| filter.matches(o))
        .collect())
}

/// Each node's summary, asked of every agent at once; a node whose agent
/// cannot be reached is missing from the map.
async fn summaries(
    kubelet: &KubeletClient,
    nodes: &[(String, SocketAddr)],
) -> HashMap<String, Value> {
    let asks = nodes.iter().map(|(node, addr)| async move {
        let fetch = async {
            let body = kubelet
                .get(node, *addr, "/stats/summary", "the node's resource usage")
                .await?;
            let bytes = Limited::new(body, MAX_SUMMARY)
                .collect()
                .await
                .map_err(|e| ApiError::internal(format!("reading the summary: {e}")))?
                .to_bytes();
            serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| ApiError::internal(format!("decoding the summary: {e}")))
        };
        match tokio::time::timeout(SUMMARY_TIMEOUT, fetch).await {
            Ok(Ok(summary)) => Some((node.clone(), summary)),
            Ok(Err(e)) => {
                tracing::info!(node, error = %e.message, "metrics: skipping a node whose summary could not be read");
                None
            }
            Err(_) => {
                tracing::info!(node, "metrics: skipping a node whose agent did not answer in {SUMMARY_TIMEOUT:?}");
                None
            }
        }
    });
    join_all(asks).await.into_iter().flatten().collect()
}

async fn node_items(kubelet: &KubeletClient, nodes: Vec<Value>) -> Vec<Value> {
    let addrs: Vec<(String, SocketAddr)> = nodes
        .iter()
        .filter_map(|n| Some((name_of(n)?.to_string(), agent_addr_of(n)?)))
        .collect();
    let summaries = summaries(kubelet, &addrs).await;
    nodes
        .iter()
        .filter_map(|n| node_metrics(n, summaries.get(name_of(n)?)?))
        .collect()
}

async fn pod_items(kubelet: &KubeletClient, storage: &Storage, pods: Vec<Value>) -> Vec<Value> {
    let mut node_names: Vec<&str> = pods
        .iter()
        .filter_map(|p| p.pointer("/spec/nodeName").and_then(Value::as_str))
        .filter(|n| !n.is_empty())
        .collect();
    node_names.sort_unstable();
    node_names.dedup();
    let Some(kind) = shoal_api::find_resource("", "v1", "nodes") else {
        return Vec::new();
    };
    let mut addrs = Vec::new();
    for node in node_names {
        if let Ok(Some(stored)) = storage.get(&object_key(kind, None, node)).await
            && let Some(addr) = agent_addr_of(&stored.value)
        {
            addrs.push((node.to_string(), addr));
        }
    }
    let summaries = summaries(kubelet, &addrs).await;
    pods.iter()
        .filter_map(|p| {
            let node = p.pointer("/spec/nodeName").and_then(Value::as_str)?;
            pod_metrics(p, summaries.get(node)?)
        })
        .collect()
}

fn name_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/name").and_then(Value::as_str)
}

/// CPU and memory of a summary's `cpu` and `memory`: (time, usage), or
/// none when the CPU has no rate yet or either is missing.
fn usage(stats: &Value) -> Option<(String, Value)> {
    let cores = stats
        .pointer("/cpu/usageNanoCores")
        .and_then(Value::as_u64)?;
    let memory = stats
        .pointer("/memory/workingSetBytes")
        .and_then(Value::as_u64)?;
    let time = stats
        .pointer("/cpu/time")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Some((
        time,
        json!({"cpu": format!("{cores}n"), "memory": bytes_quantity(memory)}),
    ))
}

/// Bytes as a Kubernetes quantity in its canonical form (`Ki` when whole).
pub(crate) fn bytes_quantity(bytes: u64) -> String {
    if bytes == 0 {
        "0".into()
    } else if bytes.is_multiple_of(1024 * 1024) {
        format!("{}Mi", bytes / (1024 * 1024))
    } else if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// A node's NodeMetrics from its agent's summary.
pub(crate) fn node_metrics(node: &Value, summary: &Value) -> Option<Value> {
    let (time, usage) = usage(summary.get("node")?)?;
    Some(json!({
        "metadata": {
            "name": name_of(node)?,
            "labels": node.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({})),
            "creationTimestamp": time,
        },
        "timestamp": time,
        "window": WINDOW,
        "usage": usage,
    }))
}

/// A pod's PodMetrics from its node's summary: none unless the summary
/// holds the pod (same uid) with CPU and memory for every container, as
/// metrics-server drops pods with partial data.
pub(crate) fn pod_metrics(pod: &Value, summary: &Value) -> Option<Value> {
    let name = name_of(pod)?;
    let namespace = pod.pointer("/metadata/namespace").and_then(Value::as_str)?;
    let uid = pod.pointer("/metadata/uid").and_then(Value::as_str);
    let stats = summary.get("pods")?.as_array()?.iter().find(|s| {
        s.pointer("/podRef/name").and_then(Value::as_str) == Some(name)
            && s.pointer("/podRef/namespace").and_then(Value::as_str) == Some(namespace)
            && (uid.is_none() || s.pointer("/podRef/uid").and_then(Value::as_str) == uid)
    })?;
    let mut time = String::new();
    let mut containers = Vec::new();
    for c in stats.get("containers")?.as_array()? {
        let (t, usage) = usage(c)?;
        time = time.max(t);
        containers.push(json!({"name": c.get("name")?.as_str()?, "usage": usage}));
    }
    if containers.is_empty() {
        return None;
    }
    Some(json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": pod.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({})),
            "creationTimestamp": time,
        },
        "timestamp": time,
        "window": WINDOW,
        "containers": containers,
    }))
}
