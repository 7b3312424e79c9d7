//! The pod status the agent posts: phase, conditions, addresses and one
//! status per container, in the shape `kubectl get/describe pod` reads.

use std::net::IpAddr;

use jiff::Timestamp;
use serde_json::{Value, json};

/// The scheme of `containerID` in container statuses (`shoal://<id>`).
pub const CONTAINER_ID_SCHEME: &str = "shoal";

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Terminated {
    pub id: String,
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
}

/// What one container is doing, as the status reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        id: String,
        started_at: Timestamp,
    },
    Terminated(Terminated),
}

/// One container's status, as JSON.
#[expect(clippy::too_many_arguments, reason = "the fields of a ContainerStatus")]
pub(crate) fn container(
    name: &str,
    image: &str,
    image_id: &str,
    state: &State,
    last: Option<&Terminated>,
    ready: bool,
    started: bool,
    restart_count: i32,
) -> Value {
    let mut s = json!({
        "name": name,
        "image": image,
        "imageID": image_id,
        "ready": ready,
        "started": started,
        "restartCount": restart_count,
        "state": state_json(state),
        "lastState": last.map_or(json!({}), |t| json!({"terminated": terminated_json(t)})),
    });
    let id = match state {
        State::Running { id, .. } => Some(id.clone()),
        State::Terminated(t) => Some(t.id.clone()),
        State::Waiting { .. } => last.map(|t| t.id.clone()),
    };
    if let Some(id) = id {
        s["containerID"] = json!(format!("{CONTAINER_ID_SCHEME}://{id}"));
    }
    s
}

fn state_json(state: &State) -> Value {
    match state {
        State::Waiting { reason, message } => {
            let mut w = json!({"reason": reason});
            if let Some(m) = message {
                w["message"] = json!(m);
            }
            json!({"waiting": w})
        }
        State::Running { started_at, .. } => {
            json!({"running": {"startedAt": time(*started_at)}})
        }
        State::Terminated(t) => json!({"terminated": terminated_json(t)}),
    }
}

fn terminated_json(t: &Terminated) -> Value {
    let mut v = json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "finishedAt": time(t.finished_at),
        "containerID": format!("{CONTAINER_ID_SCHEME}://{}", t.id),
    });
    if let Some(s) = t.signal {
        v["signal"] = json!(s);
    }
    if let Some(m) = &t.message {
        v["message"] = json!(m);
    }
    if let Some(s) = t.started_at {
        v["startedAt"] = json!(time(s));
    }
    v
}

/// RFC 3339 with seconds, as Kubernetes writes `metav1.Time`.
pub(crate) fn time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A pod condition, keeping its last transition time while its status
/// stays the same.
pub(crate) fn condition(
    kind: &str,
    status: bool,
    reason: Option<&str>,
    previous: &[Value],
    now: Timestamp,
) -> Value {
    let status = if status { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c["type"] == kind && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
        .unwrap_or_else(|| time(now));
    let mut c = json!({
        "type": kind,
        "status": status,
        "lastProbeTime": null,
        "lastTransitionTime": since,
    });
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    c
}

/// `podIPs` / `hostIPs` entries.
pub(crate) fn ips(list: &[IpAddr]) -> Value {
    Value::Array(
        list.iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect(),
    )
}
