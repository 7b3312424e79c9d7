//! The arithmetic of Kubernetes' horizontal pod autoscaler, free of the
//! API: the replica count a Resource metric proposes
//! (`replica_calculator.go`) and the normalisation by min/max replicas
//! and `behavior` (stabilisation windows and scaling policies,
//! `horizontal.go`).

/// How far the usage ratio may be from 1.0 before the count changes.
pub const TOLERANCE: f64 = 0.1;

/// What a Resource metric aims at, per pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `averageUtilization`: percent of the pods' requests.
    Utilization(i32),
    /// `averageValue`, in thousandths of the unit (millicores, millibytes).
    AverageValue(i64),
}

/// Where a pod stands for the calculation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Running and (for CPU) Ready.
    Ready,
    /// Pending, or (for CPU) not Ready: its usage says nothing about load
    /// yet. Shoal counts a pod unready by its Ready condition alone;
    /// Kubernetes also weighs the CPU initialisation period.
    Unready,
    /// Being deleted or Failed: left out entirely.
    Ignored,
}

/// One pod the target's selector matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSample {
    /// The pod's name.
    pub name: String,
    /// Where it stands.
    pub state: PodState,
    /// Its usage of the resource (sum over containers), thousandths.
    pub usage: Option<i64>,
    /// Its request of the resource (sum over containers), thousandths, or
    /// why it has none.
    pub request: Result<i64, String>,
}

/// What one metric proposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    /// The replica count.
    pub replicas: i32,
    /// The current average utilization (percent of request), for
    /// Utilization targets.
    pub utilization: Option<i32>,
    /// The current average usage per pod, thousandths.
    pub average: i64,
}

/// The replica count a Resource metric proposes for `current` replicas
/// whose pods are `pods`, as Kubernetes' `GetResourceReplicas` and
/// `GetRawResourceReplicas`: the ratio of usage to target over the pods
/// with metrics, within [`TOLERANCE`] no change; pods without metrics
/// count as at the target (or their full request) when scaling down and
/// as idle when scaling up, and unready pods as idle when scaling up; a
/// change those assumptions would reverse is not made.
pub fn resource_replicas(
    current: i32,
    pods: &[PodSample],
    resource: &str,
    target: Target,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let mut metrics: Vec<(&PodSample, i64)> = Vec::new();
    let mut unready: Vec<&PodSample> = Vec::new();
    let mut missing: Vec<&PodSample> = Vec::new();
    for pod in pods {
        match (pod.state, pod.usage) {
            (PodState::Ignored, _) => {}
            (PodState::Unready, _) => unready.push(pod),
            (PodState::Ready, None) => missing.push(pod),
            (PodState::Ready, Some(u)) => metrics.push((pod, u)),
        }
    }
    if metrics.is_empty() {
        return Err(format!(
            "did not receive metrics for targeted pods (pods might be unready): no {resource} usage for any ready pod"
        ));
    }
    let ready_count = metrics.len() as f64;
    let (ratio, utilization, average) = ratio_of(&metrics, resource, target)?;
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        let replicas = if (1.0 - ratio).abs() <= TOLERANCE {
            current
        } else {
            (ratio * ready_count).ceil() as i32
        };
        return Ok(Proposal {
            replicas,
            utilization,
            average,
        });
    }
    for pod in &missing {
        let assumed = if ratio < 1.0 {
            match target {
                // The greater of the full request and the target.
                Target::Utilization(t) => pod
                    .request
                    .as_ref()
                    .map(|r| r * i64::from(t.max(100)) / 100)
                    .unwrap_or(0),
                Target::AverageValue(v) => v,
            }
        } else {
            0
        };
        metrics.push((pod, assumed));
    }
    if scale_up_with_unready {
        for pod in &unready {
            metrics.push((pod, 0));
        }
    }
    let (new_ratio, _, _) = ratio_of(&metrics, resource, target)?;
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(Proposal {
            replicas: current,
            utilization,
            average,
        });
    }
    let replicas = (new_ratio * metrics.len() as f64).ceil() as i32;
    let replicas =
        if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
            current
        } else {
            replicas
        };
    Ok(Proposal {
        replicas,
        utilization,
        average,
    })
}

/// Usage over target for `metrics`: (ratio, utilization percent for a
/// Utilization target, average usage per pod).
fn ratio_of(
    metrics: &[(&PodSample, i64)],
    resource: &str,
    target: Target,
) -> Result<(f64, Option<i32>, i64), String> {
    let count = metrics.len() as i64;
    let total: i64 = metrics.iter().map(|(_, u)| u).sum();
    match target {
        Target::Utilization(t) => {
            let mut requests = 0i64;
            for (pod, _) in metrics {
                requests += pod.request.clone()?;
            }
            if requests == 0 {
                return Err(format!(
                    "no {resource} requests on the pods: utilization needs requests"
                ));
            }
            // Kubernetes rounds the utilization down to a whole percent
            // before comparing it with the target.
            let utilization = (total * 100 / requests) as i32;
            Ok((
                f64::from(utilization) / f64::from(t.max(1)),
                Some(utilization),
                total / count.max(1),
            ))
        }
        Target::AverageValue(v) => Ok((
            total as f64 / (v.max(1) as f64 * count.max(1) as f64),
            None,
            total / count.max(1),
        )),
    }
}

/// How a direction's policies combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The policy allowing the biggest change.
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No change in this direction.
    Disabled,
}

/// A scaling policy: how much may change within a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// At most this many pods per `period` seconds.
    Pods {
        /// Pods.
        value: i32,
        /// Seconds.
        period: i64,
    },
    /// At most this percentage of the pods at the period's start.
    Percent {
        /// Percent.
        value: i32,
        /// Seconds.
        period: i64,
    },
}

impl Policy {
    fn period(&self) -> i64 {
        match self {
            Policy::Pods { period, .. } | Policy::Percent { period, .. } => *period,
        }
    }
}

/// One direction's rules (`behavior.scaleUp` or `.scaleDown`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// `stabilizationWindowSeconds`.
    pub window: i64,
    /// `selectPolicy`.
    pub select: Select,
    /// `policies`.
    pub policies: Vec<Policy>,
}

impl Rules {
    /// Kubernetes' default scale-up: no window, 4 pods or 100% per 15 s,
    /// whichever is more.
    pub fn default_up() -> Self {
        Self {
            window: 0,
            select: Select::Max,
            policies: vec![
                Policy::Pods {
                    value: 4,
                    period: 15,
                },
                Policy::Percent {
                    value: 100,
                    period: 15,
                },
            ],
        }
    }

    /// Kubernetes' default scale-down: a 300 s window, 100% per 15 s.
    pub fn default_down() -> Self {
        Self {
            window: 300,
            select: Select::Max,
            policies: vec![Policy::Percent {
                value: 100,
                period: 15,
            }],
        }
    }

    fn longest_period(&self) -> i64 {
        self.policies.iter().map(Policy::period).max().unwrap_or(0)
    }
}

/// What an autoscaler remembers between syncs: recent recommendations
/// (for the stabilisation windows) and recent scale changes (for the
/// policies), each with its time in seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    recommendations: Vec<(i64, i32)>,
    up_events: Vec<(i64, i32)>,
    down_events: Vec<(i64, i32)>,
}

/// The replica count after normalisation, with the conditions it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The count to scale to.
    pub replicas: i32,
    /// AbleToScale's reason and message.
    pub able: (&'static str, &'static str),
    /// ScalingLimited: whether the count was limited, reason, message.
    pub limited: (bool, &'static str, &'static str),
}

/// `normalizeDesiredReplicasWithBehaviors`: stabilises `desired` against
/// the recommendations within each direction's window, then limits the
/// change by the policies and by `(minReplicas, maxReplicas)`.
pub fn normalize(
    history: &mut History,
    up: &Rules,
    down: &Rules,
    current: i32,
    desired: i32,
    (min, max): (i32, i32),
    now: i64,
) -> Normalized {
    // Stabilise.
    let (up_cutoff, down_cutoff) = (now - up.window, now - down.window);
    let (mut up_rec, mut down_rec) = (desired, desired);
    let mut old = None;
    for (i, (at, rec)) in history.recommendations.iter().enumerate() {
        if *at > up_cutoff {
            up_rec = up_rec.min(*rec);
        }
        if *at > down_cutoff {
            down_rec = down_rec.max(*rec);
        }
        if *at < up_cutoff && *at < down_cutoff {
            old = Some(i);
        }
    }
    let stabilized = current.max(up_rec).min(down_rec);
    match old {
        Some(i) => history.recommendations[i] = (now, desired),
        None => history.recommendations.push((now, desired)),
    }
    let able = if stabilized == desired {
        ("ReadyForNewScale", "recommended size matches current size")
    } else if desired >= current {
        (
            "ScaleUpStabilized",
            "recent recommendations were lower than current one, applying the lowest recent recommendation",
        )
    } else {
        (
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation",
        )
    };

    // Limit the rate.
    let (replicas, reason, message) = if stabilized > current {
        let limit = scale_up_limit(current, &history.up_events, up, now).max(current);
        let (allowed, reason, message) = if max > limit {
            (
                limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        if stabilized > allowed {
            (allowed, reason, message)
        } else {
            within(stabilized)
        }
    } else if stabilized < current {
        let limit = scale_down_limit(current, &history.down_events, down, now).min(current);
        let (allowed, reason, message) = if min < limit {
            (
                limit,
                "ScaleDownLimit",
                "the desired replica count is decreasing faster than the maximum scale rate",
            )
        } else {
            (
                min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        };
        if stabilized < allowed {
            (allowed, reason, message)
        } else {
            within(stabilized)
        }
    } else {
        within(stabilized)
    };
    Normalized {
        replicas,
        able,
        limited: (replicas != stabilized, reason, message),
    }
}

fn within(replicas: i32) -> (i32, &'static str, &'static str) {
    (
        replicas,
        "DesiredWithinRange",
        "the desired count is within the acceptable range",
    )
}

/// Replicas added (or removed) by `events` within the last `period`
/// seconds.
fn change_in_period(events: &[(i64, i32)], period: i64, now: i64) -> i32 {
    events
        .iter()
        .filter(|(at, _)| *at > now - period)
        .map(|(_, n)| n)
        .sum()
}

fn scale_up_limit(current: i32, events: &[(i64, i32)], rules: &Rules, now: i64) -> i32 {
    let pick: fn(i32, i32) -> i32 = match rules.select {
        Select::Disabled => return current,
        Select::Min => std::cmp::min,
        Select::Max => std::cmp::max,
    };
    let mut result = if rules.select == Select::Min {
        i32::MAX
    } else {
        i32::MIN
    };
    for p in &rules.policies {
        let start = current - change_in_period(events, p.period(), now);
        let proposed = match p {
            Policy::Pods { value, .. } => start + value,
            Policy::Percent { value, .. } => {
                (f64::from(start) * (1.0 + f64::from(*value) / 100.0)).ceil() as i32
            }
        };
        result = pick(result, proposed);
    }
    result
}

fn scale_down_limit(current: i32, events: &[(i64, i32)], rules: &Rules, now: i64) -> i32 {
    // The policy allowing the biggest change is the lowest limit.
    let pick: fn(i32, i32) -> i32 = match rules.select {
        Select::Disabled => return current,
        Select::Min => std::cmp::max,
        Select::Max => std::cmp::min,
    };
    let mut result = if rules.select == Select::Min {
        i32::MIN
    } else {
        i32::MAX
    };
    for p in &rules.policies {
        let start = current + change_in_period(events, p.period(), now);
        let proposed = match p {
            Policy::Pods { value, .. } => start - value,
            Policy::Percent { value, .. } => {
                (f64::from(start) * (1.0 - f64::from(*value) / 100.0)) as i32
            }
        };
        result = pick(result, proposed);
    }
    result
}

/// Remembers a rescale from `from` to `to` for the policies, forgetting
/// changes older than the direction's longest policy period.
pub fn record_rescale(
    history: &mut History,
    up: &Rules,
    down: &Rules,
    from: i32,
    to: i32,
    now: i64,
) {
    let (events, rules, change) = if to > from {
        (&mut history.up_events, up, to - from)
    } else {
        (&mut history.down_events, down, from - to)
    };
    let longest = rules.longest_period();
    events.retain(|(at, _)| *at > now - longest);
    events.push((now, change));
}

/// Thousandths of a Kubernetes quantity (`250m` → 250, `1` → 1000,
/// `8Mi` → 8388608000), or none if it is not one.
pub fn milli(quantity: &str) -> Option<i64> {
    let number = shoal_api::parse_quantity(quantity)?;
    // Kubernetes rounds a fraction of a thousandth up; float noise is not
    // one.
    let v = number * 1000.0;
    let v = if (v - v.round()).abs() < 1e-6 {
        v.round()
    } else {
        v.ceil()
    };
    Some(v as i64)
}

/// Thousandths as a quantity in canonical form (`250m`, `2`).
pub fn quantity(milli: i64) -> String {
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}
