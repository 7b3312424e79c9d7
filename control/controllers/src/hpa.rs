//! The HorizontalPodAutoscaler controller (`autoscaling/v2`), as
//! kube-controller-manager's: every 15 s each autoscaler reads its target's
//! `/scale`, the pods the scale's selector matches and their
//! metrics.k8s.io PodMetrics (through the apiserver), computes the replica
//! count each Resource metric (cpu or memory, Utilization or AverageValue)
//! proposes, takes the largest, normalises it by min/max replicas and
//! `behavior`, and scales the target. Its status carries the counts, the
//! current metrics and the AbleToScale, ScalingActive and ScalingLimited
//! conditions with Kubernetes' reasons; a rescale is recorded as a
//! `SuccessfulRescale` event.
//!
//! Simplifications: only Resource metrics (Pods, Object, External and
//! ContainerResource metrics set ScalingActive False with
//! `InvalidMetricSourceType`); a pod counts as unready for CPU by its Ready
//! condition alone (no CPU initialisation period); failure events are
//! recorded when the condition changes, not on every sync.

mod calc;

#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::{
    autoscaling::v2::{
        HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior, MetricSpec,
    },
    core::v1::Pod,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use tracing::warn;

use crate::{control_loop::reflect, events};
use calc::{History, PodSample, PodState, Policy, Rules, Select, Target};

/// How often every autoscaler is synced (kube-controller-manager's
/// `--horizontal-pod-autoscaler-sync-period`).
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// How often the loop looks for autoscalers due (new ones go at once).
const TICK: Duration = Duration::from_secs(1);
/// The events' source.
const COMPONENT: &str = "horizontal-pod-autoscaler";

/// Runs the controller until the task is dropped.
pub async fn run(client: Client) {
    let (hpas, mut hpa_events) = reflect(Api::<HorizontalPodAutoscaler>::all(client.clone()));
    let mut state: HashMap<String, Autoscaler> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            e = hpa_events.next() => if e.is_none() { return },
            _ = tick.tick() => {
                if hpas.wait_until_ready().now_or_never().is_none() {
                    continue;
                }
                let now = jiff::Timestamp::now();
                let mut seen = HashSet::new();
                for hpa in hpas.state() {
                    let key = format!("{}/{}", hpa.namespace().unwrap_or_default(), hpa.name_any());
                    seen.insert(key.clone());
                    let a = state.entry(key.clone()).or_default();
                    // A spec change (a new generation) is synced at once.
                    let generation = hpa.metadata.generation.unwrap_or(0);
                    if a.next_sync.is_some_and(|t| t > now) && a.generation == generation {
                        continue;
                    }
                    a.generation = generation;
                    a.next_sync = now.checked_add(SYNC_PERIOD).ok();
                    if let Err(e) = reconcile(&client, &hpa, a, now).await {
                        warn!(hpa = %key, "horizontal pod autoscaler: {e}");
                    }
                }
                state.retain(|k, _| seen.contains(k));
            }
        }
    }
}

/// What the controller keeps per autoscaler between syncs.
#[derive(Debug, Default)]
struct Autoscaler {
    history: History,
    next_sync: Option<jiff::Timestamp>,
    generation: i64,
}

/// The conditions and counts one sync arrives at.
struct Outcome {
    current: i32,
    desired: i32,
    metrics: Vec<Value>,
    conditions: Vec<(&'static str, bool, &'static str, String)>,
    rescaled: bool,
}

/// The API resource of a `scaleTargetRef`.
fn target_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

fn rules_of(spec: Option<&HPAScalingRules>, default: Rules) -> Rules {
    let Some(spec) = spec else {
        return default;
    };
    let policies: Vec<Policy> = spec
        .policies
        .iter()
        .flatten()
        .map(|p| {
            let period = i64::from(p.period_seconds);
            if p.type_ == "Percent" {
                Policy::Percent {
                    value: p.value,
                    period,
                }
            } else {
                Policy::Pods {
                    value: p.value,
                    period,
                }
            }
        })
        .collect();
    Rules {
        window: spec
            .stabilization_window_seconds
            .map_or(default.window, i64::from),
        select: match spec.select_policy.as_deref() {
            Some("Min") => Select::Min,
            Some("Disabled") => Select::Disabled,
            _ => Select::Max,
        },
        policies: if policies.is_empty() {
            default.policies
        } else {
            policies
        },
    }
}

fn behavior_of(b: Option<&HorizontalPodAutoscalerBehavior>) -> (Rules, Rules) {
    (
        rules_of(b.and_then(|b| b.scale_up.as_ref()), Rules::default_up()),
        rules_of(b.and_then(|b| b.scale_down.as_ref()), Rules::default_down()),
    )
}

/// The metric's name in Kubernetes' messages and events.
fn metric_name(resource: &str, target: Target) -> String {
    match target {
        Target::Utilization(_) => {
            format!("{resource} resource utilization (percentage of request)")
        }
        Target::AverageValue(_) => format!("{resource} resource"),
    }
}

/// A Resource metric's resource and target, or why it cannot be used.
fn resource_target(m: &MetricSpec) -> Result<(String, Target), (&'static str, String)> {
    let Some(r) = m.resource.as_ref().filter(|_| m.type_ == "Resource") else {
        return Err((
            "InvalidMetricSourceType",
            format!("unknown metric source type {:?}", m.type_),
        ));
    };
    let target = match (
        r.target.type_.as_str(),
        r.target.average_utilization,
        r.target.average_value.as_ref(),
    ) {
        ("Utilization", Some(u), _) => Target::Utilization(u),
        ("AverageValue", _, Some(v)) => {
            Target::AverageValue(calc::milli(&v.0).ok_or_else(|| {
                (
                    "FailedGetResourceMetric",
                    format!("invalid averageValue {:?} for resource {}", v.0, r.name),
                )
            })?)
        }
        (t, _, _) => {
            return Err((
                "FailedGetResourceMetric",
                format!(
                    "invalid resource metric source: target type {t:?} for resource {} needs averageUtilization (Utilization) or averageValue (AverageValue)",
                    r.name
                ),
            ));
        }
    };
    Ok((r.name.clone(), target))
}

/// Every pod of the selector with its usage of `resource` and its request.
fn samples(
    pods: &[Pod],
    usage: &HashMap<String, HashMap<String, i64>>,
    resource: &str,
) -> Vec<PodSample> {
    pods.iter()
        .map(|pod| {
            let name = pod.name_any();
            let status = pod.status.as_ref();
            let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let state = if pod.metadata.deletion_timestamp.is_some() || phase == "Failed" {
                PodState::Ignored
            } else if phase == "Pending" || (resource == "cpu" && !ready) {
                PodState::Unready
            } else {
                PodState::Ready
            };
            let mut request = Ok(0);
            for c in pod.spec.iter().flat_map(|s| &s.containers) {
                let r = c
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get(resource))
                    .and_then(|q| calc::milli(&q.0));
                request = match (request, r) {
                    (Ok(sum), Some(r)) => Ok(sum + r),
                    (Err(e), _) => Err(e),
                    (Ok(_), None) => Err(format!(
                        "missing request for {resource} in container {} of Pod {name}",
                        c.name
                    )),
                };
            }
            PodSample {
                usage: usage.get(&name).and_then(|u| u.get(resource)).copied(),
                name,
                state,
                request,
            }
        })
        .collect()
}

/// PodMetrics of the pods matching `selector`: pod name → resource →
/// usage in thousandths (summed over containers).
async fn pod_usage(
    client: &Client,
    ns: &str,
    selector: &str,
) -> Result<HashMap<String, HashMap<String, i64>>, kube::Error> {
    let ar = ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let list = api.list(&ListParams::default().labels(selector)).await?;
    let mut out = HashMap::new();
    for item in list.items {
        let mut usage: HashMap<String, i64> = HashMap::new();
        for c in item.data["containers"].as_array().into_iter().flatten() {
            for (res, q) in c["usage"].as_object().into_iter().flatten() {
                if let Some(v) = q.as_str().and_then(calc::milli) {
                    *usage.entry(res.clone()).or_default() += v;
                }
            }
        }
        out.insert(item.name_any(), usage);
    }
    Ok(out)
}

/// One sync of one autoscaler.
async fn reconcile(
    client: &Client,
    hpa: &HorizontalPodAutoscaler,
    state: &mut Autoscaler,
    now: jiff::Timestamp,
) -> Result<(), kube::Error> {
    let ns = hpa.namespace().unwrap_or_default();
    let spec = hpa.spec.clone().unwrap_or_default();
    let target_ref = &spec.scale_target_ref;
    let reference = format!("{}/{}", target_ref.kind, target_ref.name);
    let ar = target_resource(
        target_ref.api_version.as_deref().unwrap_or("v1"),
        &target_ref.kind,
    );
    let targets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let scale = match targets.get_scale(&target_ref.name).await {
        Ok(s) => s,
        Err(e) => {
            let message =
                format!("the HPA controller was unable to get the target's current scale: {e}");
            let outcome = Outcome {
                current: hpa
                    .status
                    .as_ref()
                    .and_then(|s| s.current_replicas)
                    .unwrap_or(0),
                desired: hpa.status.as_ref().map_or(0, |s| s.desired_replicas),
                metrics: Vec::new(),
                conditions: vec![("AbleToScale", false, "FailedGetScale", message.clone())],
                rescaled: false,
            };
            return write_status(client, hpa, outcome, now, Some(("FailedGetScale", message)))
                .await;
        }
    };
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let selector = scale
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let (up, down) = behavior_of(spec.behavior.as_ref());
    let mut conditions = vec![(
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale".to_string(),
    )];
    let mut metrics_status = Vec::new();
    let mut failure: Option<(&'static str, String)> = None;

    let (desired, reason) = if current == 0 && min != 0 {
        conditions.push((
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero".into(),
        ));
        (0, String::new())
    } else if current > max {
        (
            max,
            "Current number of replicas above Spec.MaxReplicas".into(),
        )
    } else if current < min {
        (
            min,
            "Current number of replicas below Spec.MinReplicas".into(),
        )
    } else {
        match propose(
            client,
            &ns,
            &selector,
            current,
            &spec.metrics.clone().unwrap_or_default(),
        )
        .await
        {
            Ok((proposed, name, statuses)) => {
                metrics_status = statuses;
                conditions.push((
                    "ScalingActive",
                    true,
                    "ValidMetricFound",
                    format!(
                        "the HPA was able to successfully calculate a replica count from {name}"
                    ),
                ));
                let n = calc::normalize(
                    &mut state.history,
                    &up,
                    &down,
                    current,
                    proposed,
                    (min, max),
                    now.as_second(),
                );
                conditions[0] = ("AbleToScale", true, n.able.0, n.able.1.to_string());
                conditions.push((
                    "ScalingLimited",
                    n.limited.0,
                    n.limited.1,
                    n.limited.2.to_string(),
                ));
                let reason = if n.replicas > current {
                    format!("{name} above target")
                } else {
                    "All metrics below target".into()
                };
                (n.replicas, reason)
            }
            Err((reason, message, statuses)) => {
                metrics_status = statuses;
                let message = format!("the HPA was unable to compute the replica count: {message}");
                conditions.push(("ScalingActive", false, reason, message.clone()));
                failure = Some((reason, message));
                (current, String::new())
            }
        }
    };
    // Outside min/max the count is set without metrics; say it is limited.
    if current > max || (current < min && current != 0) {
        conditions.push((
            "ScalingLimited",
            true,
            if current > max {
                "TooManyReplicas"
            } else {
                "TooFewReplicas"
            },
            if current > max {
                "the desired replica count is more than the maximum replica count".into()
            } else {
                "the desired replica count is less than the minimum replica count".into()
            },
        ));
    }
    let mut rescaled = false;
    if desired != current && !(current == 0 && min != 0) {
        let patch = json!({"spec": {"replicas": desired}});
        match targets
            .patch_scale(
                &target_ref.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                rescaled = true;
                calc::record_rescale(
                    &mut state.history,
                    &up,
                    &down,
                    current,
                    desired,
                    now.as_second(),
                );
                conditions[0] = (
                    "AbleToScale",
                    true,
                    "SucceededRescale",
                    format!("the HPA controller was able to update the target scale to {desired}"),
                );
                events::normal(
                    client,
                    COMPONENT,
                    hpa,
                    "SuccessfulRescale",
                    &format!("New size: {desired}; reason: {reason}"),
                )
                .await;
            }
            Err(e) => {
                let message =
                    format!("the HPA controller was unable to update the target scale: {e}");
                conditions[0] = ("AbleToScale", false, "FailedUpdateScale", message.clone());
                failure = Some((
                    "FailedRescale",
                    format!("New size: {desired}; reason: {reason}; error: {e}"),
                ));
                warn!(hpa = %hpa.name_any(), target = %reference, "{message}");
            }
        }
    }
    let outcome = Outcome {
        current,
        desired,
        metrics: metrics_status,
        conditions,
        rescaled,
    };
    write_status(client, hpa, outcome, now, failure).await
}

/// The largest replica count the metrics propose, with the metric's name
/// and every metric's current status; or the condition reason, message and
/// the statuses gathered.
async fn propose(
    client: &Client,
    ns: &str,
    selector: &str,
    current: i32,
    specs: &[MetricSpec],
) -> Result<(i32, String, Vec<Value>), (&'static str, String, Vec<Value>)> {
    let mut best: Option<(i32, String)> = None;
    let mut statuses = Vec::new();
    let mut invalid: Option<(&'static str, String)> = None;
    let pods: Vec<Pod> = if selector.is_empty() {
        Vec::new()
    } else {
        match Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(selector))
            .await
        {
            Ok(l) => l.items,
            Err(e) => {
                return Err((
                    "FailedGetResourceMetric",
                    format!("listing the pods: {e}"),
                    statuses,
                ));
            }
        }
    };
    let usage = if pods.is_empty() {
        Ok(HashMap::new())
    } else {
        pod_usage(client, ns, selector).await
    };
    for m in specs {
        let (resource, target) = match resource_target(m) {
            Ok(rt) => rt,
            Err(e) => {
                invalid = Some(e);
                continue;
            }
        };
        let usage = match &usage {
            Ok(u) => u,
            Err(e) => {
                invalid = Some((
                    "FailedGetResourceMetric",
                    format!(
                        "failed to get {resource} utilization: unable to get metrics for resource {resource}: {e}"
                    ),
                ));
                continue;
            }
        };
        match calc::resource_replicas(
            current,
            &samples(&pods, usage, &resource),
            &resource,
            target,
        ) {
            Ok(p) => {
                let mut current_status = json!({"averageValue": calc::quantity(p.average)});
                if let Some(u) = p.utilization {
                    current_status["averageUtilization"] = json!(u);
                }
                statuses.push(json!({"type": "Resource", "resource": {"name": resource, "current": current_status}}));
                let name = metric_name(&resource, target);
                if best.as_ref().is_none_or(|(r, _)| p.replicas > *r) {
                    best = Some((p.replicas, name));
                }
            }
            Err(e) => {
                invalid = Some((
                    "FailedGetResourceMetric",
                    format!("failed to get {resource} utilization: {e}"),
                ));
            }
        }
    }
    match (best, invalid) {
        (None, Some((reason, message))) => Err((reason, message, statuses)),
        (None, None) => Err((
            "FailedGetResourceMetric",
            "the HPA has no metrics to scale on".into(),
            statuses,
        )),
        // Some metrics failed: only a scale-up is safe (Kubernetes' rule).
        (Some((r, _)), Some((reason, message))) if r <= current => Err((reason, message, statuses)),
        (Some((r, name)), _) => Ok((r, name, statuses)),
    }
}

/// Writes the status: counts, current metrics and the conditions (a
/// condition's lastTransitionTime kept while its status holds); records a
/// warning event when a failure condition is new.
async fn write_status(
    client: &Client,
    hpa: &HorizontalPodAutoscaler,
    outcome: Outcome,
    now: jiff::Timestamp,
    failure: Option<(&'static str, String)>,
) -> Result<(), kube::Error> {
    let old = hpa.status.clone().unwrap_or_default();
    let old_conditions = old.conditions.clone().unwrap_or_default();
    let stamp = now.round(jiff::Unit::Second).unwrap_or(now).to_string();
    let mut new_failure = false;
    let mut conditions: Vec<Value> = outcome
        .conditions
        .iter()
        .map(|(type_, ok, reason, message)| {
            let status = if *ok { "True" } else { "False" };
            let prev = old_conditions.iter().find(|c| c.type_ == *type_);
            let since = match prev {
                Some(c) if c.status == status => c
                    .last_transition_time
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_else(|| stamp.clone()),
                _ => stamp.clone(),
            };
            if !ok && prev.is_none_or(|c| c.reason.as_deref() != Some(*reason)) {
                new_failure = true;
            }
            json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": since})
        })
        .collect();
    // A condition this sync did not decide on (ScalingActive while the
    // count is outside min/max, say) keeps its last state, as Kubernetes'.
    for c in &old_conditions {
        if !outcome.conditions.iter().any(|(t, ..)| *t == c.type_) {
            conditions.push(serde_json::to_value(c).unwrap_or(Value::Null));
        }
    }
    conditions.retain(|c| !c.is_null());
    conditions.sort_by_key(|c| {
        ["AbleToScale", "ScalingActive", "ScalingLimited"]
            .iter()
            .position(|t| c["type"] == *t)
            .unwrap_or(3)
    });
    let mut status = json!({
        "observedGeneration": hpa.metadata.generation,
        "currentReplicas": outcome.current,
        "desiredReplicas": outcome.desired,
        "currentMetrics": outcome.metrics,
        "conditions": conditions,
    });
    if outcome.rescaled {
        status["lastScaleTime"] = json!(stamp);
    } else if let Some(t) = &old.last_scale_time {
        status["lastScaleTime"] = json!(t.0.to_string());
    }
    if let Some((reason, message)) = failure
        && new_failure
    {
        events::warning(client, COMPONENT, hpa, reason, &message).await;
    }
    let old_json = serde_json::to_value(&old).unwrap_or(Value::Null);
    let unchanged = [
        "currentReplicas",
        "desiredReplicas",
        "currentMetrics",
        "conditions",
        "observedGeneration",
    ]
    .iter()
    .all(|k| old_json.get(*k) == status.get(*k));
    if unchanged && !outcome.rescaled {
        return Ok(());
    }
    let api: Api<HorizontalPodAutoscaler> =
        Api::namespaced(client.clone(), &hpa.namespace().unwrap_or_default());
    api.patch_status(
        &hpa.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await?;
    Ok(())
}
