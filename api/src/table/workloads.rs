//! Printers for the workload kinds: `apps/v1` and `batch/v1`.

use serde_json::Value;

use super::fields::{
    arr_at, condition_true, container_cells, format_label_selector, format_labels, human_duration,
    i64_at, int_cell, is_set, len_at, map_at, opt_bool_at, opt_i64_at, opt_str_at, parse_time,
    selector_string, str_at,
};
use super::{AGE, CONTAINERS, Clock, Column, IMAGES, NAME, Printer, name, no_conditions};
use crate::kinds::Kind;

/// The printer for a workload kind.
pub(super) fn printer(kind: &Kind) -> Option<&'static Printer> {
    match (kind.group, kind.kind) {
        ("apps", "Deployment") => Some(&DEPLOYMENT),
        ("apps", "ReplicaSet") => Some(&REPLICA_SET),
        ("apps", "StatefulSet") => Some(&STATEFUL_SET),
        ("apps", "DaemonSet") => Some(&DAEMON_SET),
        ("apps", "ControllerRevision") => Some(&CONTROLLER_REVISION),
        ("batch", "Job") => Some(&JOB),
        ("batch", "CronJob") => Some(&CRON_JOB),
        _ => None,
    }
}

/// `spec.replicas`; Kubernetes defaults a missing one to 1.
fn desired_replicas(obj: &Value) -> i64 {
    opt_i64_at(obj, "/spec/replicas").unwrap_or(1)
}

/// The CONTAINERS and IMAGES cells of a pod template.
fn template_containers(obj: &Value, template: &str) -> [Value; 2] {
    let (names, images) = container_cells(arr_at(obj, &format!("{template}/spec/containers")));
    [names, images]
}

const SELECTOR_DOC: &str = "Label query over pods that should match the replica count.";

static DEPLOYMENT: Printer = Printer {
    columns: &[
        NAME,
        Column::string("Ready", "Number of the pod with ready state"),
        Column::string(
            "Up-to-date",
            "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
        ),
        Column::string(
            "Available",
            "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
        ),
        AGE,
        CONTAINERS,
        IMAGES,
        Column::string("Selector", SELECTOR_DOC).wide(),
    ],
    cells: deployment_cells,
    conditions: no_conditions,
};

fn deployment_cells(deploy: &Value, clock: &Clock) -> Vec<Value> {
    // The deployment printer shows a selector as `LabelSelectorAsSelector`
    // does: empty rather than `<none>`, `<invalid>` rather than `<error>`.
    let selector = selector_string(deploy.pointer("/spec/selector"))
        .unwrap_or_else(|_| "<invalid>".to_string());
    let [containers, images] = template_containers(deploy, "/spec/template");
    vec![
        name(deploy),
        Value::from(format!(
            "{}/{}",
            i64_at(deploy, "/status/readyReplicas"),
            desired_replicas(deploy)
        )),
        Value::from(i64_at(deploy, "/status/updatedReplicas")),
        Value::from(i64_at(deploy, "/status/availableReplicas")),
        clock.age(deploy),
        containers,
        images,
        Value::from(selector),
    ]
}

static REPLICA_SET: Printer = Printer {
    columns: &[
        NAME,
        Column::integer("Desired", "Replicas is the number of desired replicas."),
        Column::integer(
            "Current",
            "Replicas is the most recently observed number of replicas.",
        ),
        Column::integer(
            "Ready",
            "The number of ready replicas for this replica set.",
        ),
        AGE,
        CONTAINERS,
        IMAGES,
        Column::string("Selector", SELECTOR_DOC).wide(),
    ],
    cells: replica_set_cells,
    conditions: no_conditions,
};

fn replica_set_cells(rs: &Value, clock: &Clock) -> Vec<Value> {
    let [containers, images] = template_containers(rs, "/spec/template");
    vec![
        name(rs),
        Value::from(desired_replicas(rs)),
        Value::from(i64_at(rs, "/status/replicas")),
        Value::from(i64_at(rs, "/status/readyReplicas")),
        clock.age(rs),
        containers,
        images,
        Value::from(format_label_selector(rs.pointer("/spec/selector"))),
    ]
}

static STATEFUL_SET: Printer = Printer {
    columns: &[
        NAME,
        Column::string("Ready", "Number of the pod with ready state"),
        AGE,
        CONTAINERS,
        IMAGES,
    ],
    cells: stateful_set_cells,
    conditions: no_conditions,
};

fn stateful_set_cells(sts: &Value, clock: &Clock) -> Vec<Value> {
    let [containers, images] = template_containers(sts, "/spec/template");
    vec![
        name(sts),
        Value::from(format!(
            "{}/{}",
            i64_at(sts, "/status/readyReplicas"),
            desired_replicas(sts)
        )),
        clock.age(sts),
        containers,
        images,
    ]
}

static DAEMON_SET: Printer = Printer {
    columns: &[
        NAME,
        Column::integer(
            "Desired",
            "The total number of nodes that should be running the daemon pod.",
        ),
        Column::integer(
            "Current",
            "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
        ),
        Column::integer(
            "Ready",
            "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
        ),
        Column::integer(
            "Up-to-date",
            "The total number of nodes that are running updated daemon pod",
        ),
        Column::integer(
            "Available",
            "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
        ),
        Column::string(
            "Node Selector",
            "NodeSelector is a selector which must be true for the pod to fit on a node.",
        ),
        AGE,
        CONTAINERS,
        IMAGES,
        Column::string(
            "Selector",
            "A label query over pods that are managed by the daemon set.",
        )
        .wide(),
    ],
    cells: daemon_set_cells,
    conditions: no_conditions,
};

fn daemon_set_cells(ds: &Value, clock: &Clock) -> Vec<Value> {
    let [containers, images] = template_containers(ds, "/spec/template");
    vec![
        name(ds),
        Value::from(i64_at(ds, "/status/desiredNumberScheduled")),
        Value::from(i64_at(ds, "/status/currentNumberScheduled")),
        Value::from(i64_at(ds, "/status/numberReady")),
        Value::from(i64_at(ds, "/status/updatedNumberScheduled")),
        Value::from(i64_at(ds, "/status/numberAvailable")),
        Value::from(format_labels(map_at(
            ds,
            "/spec/template/spec/nodeSelector",
        ))),
        clock.age(ds),
        containers,
        images,
        Value::from(format_label_selector(ds.pointer("/spec/selector"))),
    ]
}

static CONTROLLER_REVISION: Printer = Printer {
    columns: &[
        NAME,
        Column::string("Controller", "Controller of the object"),
        Column::string(
            "Revision",
            "Revision indicates the revision of the state represented by Data.",
        ),
        AGE,
    ],
    cells: controller_revision_cells,
    conditions: no_conditions,
};

/// The owning controller as `kind.group/name` in lowercase
/// (`statefulset.apps/web`), or `<none>`.
fn controller_of(obj: &Value) -> String {
    let Some(owner) = arr_at(obj, "/metadata/ownerReferences")
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
    else {
        return "<none>".to_string();
    };
    let api_version = str_at(owner, "/apiVersion");
    // `apps/v1` names group `apps`; a bare version is the core group.
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let kind = str_at(owner, "/kind");
    let owner_name = str_at(owner, "/name");
    let group_kind = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    if group_kind.is_empty() {
        return owner_name.to_string();
    }
    format!("{}/{owner_name}", group_kind.to_lowercase())
}

fn controller_revision_cells(rev: &Value, clock: &Clock) -> Vec<Value> {
    vec![
        name(rev),
        Value::from(controller_of(rev)),
        Value::from(i64_at(rev, "/revision")),
        clock.age(rev),
    ]
}

static JOB: Printer = Printer {
    columns: &[
        NAME,
        Column::string("Status", "Status of the job."),
        Column::string(
            "Completions",
            "The number of pods which reached phase Succeeded.",
        ),
        Column::string("Duration", "Time required to complete the job."),
        AGE,
        CONTAINERS,
        IMAGES,
        Column::string(
            "Selector",
            "A label query over pods that should match the pod count.",
        )
        .wide(),
    ],
    cells: job_cells,
    conditions: no_conditions,
};

/// Kubernetes' job STATUS: the first of Complete, Failed, Terminating,
/// Suspended, FailureTarget that holds, else Running.
fn job_status(job: &Value) -> &'static str {
    if condition_true(job, "Complete") {
        "Complete"
    } else if condition_true(job, "Failed") {
        "Failed"
    } else if is_set(job, "/metadata/deletionTimestamp") {
        "Terminating"
    } else if condition_true(job, "Suspended") {
        "Suspended"
    } else if condition_true(job, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    }
}

fn job_cells(job: &Value, clock: &Clock) -> Vec<Value> {
    let succeeded = i64_at(job, "/status/succeeded");
    let completions = match opt_i64_at(job, "/spec/completions") {
        Some(completions) => format!("{succeeded}/{completions}"),
        None => match i64_at(job, "/spec/parallelism") {
            parallelism if parallelism > 1 => format!("{succeeded}/1 of {parallelism}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let start = parse_time(str_at(job, "/status/startTime"));
    let end = parse_time(str_at(job, "/status/completionTime"));
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(clock.now - start),
        (Some(start), Some(end)) => human_duration(end - start),
    };
    let [containers, images] = template_containers(job, "/spec/template");
    vec![
        name(job),
        Value::from(job_status(job)),
        Value::from(completions),
        Value::from(duration),
        clock.age(job),
        containers,
        images,
        Value::from(format_label_selector(job.pointer("/spec/selector"))),
    ]
}

static CRON_JOB: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Schedule",
            "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
        ),
        Column::string(
            "Timezone",
            "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones.",
        ),
        Column::boolean(
            "Suspend",
            "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.",
        ),
        Column::integer("Active", "A list of pointers to currently running jobs."),
        Column::string(
            "Last Schedule",
            "Information when was the last time the job was successfully scheduled.",
        ),
        AGE,
        CONTAINERS,
        IMAGES,
        Column::string(
            "Selector",
            "A label query over pods that should match the pod count.",
        )
        .wide(),
    ],
    cells: cron_job_cells,
    conditions: no_conditions,
};

fn cron_job_cells(cj: &Value, clock: &Clock) -> Vec<Value> {
    let last_schedule = match opt_str_at(cj, "/status/lastScheduleTime") {
        Some(at) => clock.since(at),
        None => "<none>".to_string(),
    };
    // Kubernetes prints the suspend flag as text in this boolean column.
    let suspend = match opt_bool_at(cj, "/spec/suspend") {
        Some(true) => "True",
        Some(false) => "False",
        None => "<unset>",
    };
    let [containers, images] = template_containers(cj, "/spec/jobTemplate/spec/template");
    vec![
        name(cj),
        Value::from(str_at(cj, "/spec/schedule")),
        Value::from(opt_str_at(cj, "/spec/timeZone").unwrap_or("<none>")),
        Value::from(suspend),
        int_cell(len_at(cj, "/status/active")),
        Value::from(last_schedule),
        clock.age(cj),
        containers,
        images,
        Value::from(format_label_selector(
            cj.pointer("/spec/jobTemplate/spec/selector"),
        )),
    ]
}
