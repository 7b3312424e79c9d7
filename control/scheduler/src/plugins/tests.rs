use super::*;
use serde_json::{Value, json};

fn node(name: &str, labels: Value, extra: Value) -> NodeInfo {
    let mut n = json!({"metadata": {"name": name, "labels": labels},
           "status": {"allocatable": {"cpu": "4", "memory": "4Gi", "pods": "110"},
                      "conditions": [{"type": "Ready", "status": "True"}]}});
    if let (Some(n), Some(extra)) = (n.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            n.insert(k.clone(), v.clone());
        }
    }
    NodeInfo::from_node(&serde_json::from_value(n).expect("test node"))
}

fn pod_with(ns: &str, labels: Value, spec: Value) -> PodInfo {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] =
            json!([{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]);
    }
    PodInfo::from_pod(
        &serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": ns, "labels": labels}, "spec": spec}),
        )
        .expect("test pod"),
    )
}

fn pod(spec: Value) -> PodInfo {
    pod_with("default", json!({}), spec)
}

fn requests(cpu: &str, mem: &str) -> Value {
    json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]})
}

/// Runs the filters for `pod` against `node` with `existing` pods placed
/// as (node labels, pod).
fn check(
    p: &PodInfo,
    n: &NodeInfo,
    all: &[NodeInfo],
    existing: &[(&NodeInfo, &PodInfo)],
) -> Result<(), Vec<Reason>> {
    let mut used = Usage::default();
    for (on, e) in existing {
        if on.name == n.name {
            used.add(e);
        }
    }
    let cycle = Cycle::new(p, all.iter(), existing.iter().map(|(n, e)| (&n.labels, *e)));
    filter(p, n, &used, &cycle)
}

type Filtered = Result<(), Vec<Reason>>;
type NodeCase<'a> = (&'a str, PodInfo, &'a NodeInfo, Filtered);
/// (what, pod, nodes with their usage, strategy, index of the node that must win)
type ScoreCase<'a> = (
    &'a str,
    &'a PodInfo,
    Vec<(&'a NodeInfo, Usage)>,
    Strategy,
    usize,
);

fn err(r: &str) -> Result<(), Vec<Reason>> {
    Err(vec![r.to_string()])
}

#[test]
fn quantities_parse_like_kubernetes() {
    assert_eq!(cpu_milli("100m"), Some(100));
    assert_eq!(cpu_milli("2"), Some(2000));
    assert_eq!(cpu_milli("0.5"), Some(500));
    assert_eq!(bytes("128Mi"), Some(128 << 20));
    assert_eq!(bytes("1G"), Some(1_000_000_000));
    assert_eq!(bytes("1e3"), Some(1000));
    assert_eq!(bytes("12Qi"), None);
}

#[test]
fn requests_sum_containers_and_take_the_largest_init_container() {
    let p = pod(json!({
        "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "200m"}}}],
        "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1", "memory": "1Mi"}}}]}));
    assert_eq!((p.cpu_milli, p.memory), (1000, 64 << 20));
    // Scoring counts a container without requests as 100m / 200 MB.
    let bare = pod(json!({"containers": [{"name": "a"}]}));
    assert_eq!(
        (bare.cpu_milli, bare.nonzero_cpu, bare.nonzero_memory),
        (0, 100, 200 << 20)
    );
}

#[test]
fn node_filters_name_kubernetes_reasons() {
    let ssd = node("n1", json!({"disk": "ssd", "zone": "a"}), json!({}));
    let cordoned = node("n2", json!({}), json!({"spec": {"unschedulable": true}}));
    let tainted = node(
        "n3",
        json!({}),
        json!({"spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}}),
    );
    let not_ready = NodeInfo::from_node(
        &serde_json::from_value(
            json!({"metadata": {"name": "n4"}, "status": {"allocatable": {"cpu": "4"}}}),
        )
        .expect("node"),
    );
    let all = [
        ssd.clone(),
        cordoned.clone(),
        tainted.clone(),
        not_ready.clone(),
    ];
    let cases: Vec<NodeCase> = vec![
        ("plain pod on a plain node", pod(json!({})), &ssd, Ok(())),
        (
            "cordoned",
            pod(json!({})),
            &cordoned,
            err("node(s) were unschedulable"),
        ),
        (
            "cordon tolerated",
            pod(
                json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]}),
            ),
            &cordoned,
            Ok(()),
        ),
        (
            "taint",
            pod(json!({})),
            &tainted,
            err("node(s) had untolerated taint {gpu: yes}"),
        ),
        (
            "taint tolerated by value",
            pod(json!({"tolerations": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]})),
            &tainted,
            Ok(()),
        ),
        (
            "taint with another value",
            pod(json!({"tolerations": [{"key": "gpu", "value": "no"}]})),
            &tainted,
            err("node(s) had untolerated taint {gpu: yes}"),
        ),
        (
            "not ready",
            pod(json!({})),
            &not_ready,
            err("node(s) had untolerated taint {node.kubernetes.io/not-ready: }"),
        ),
        (
            "nodeName elsewhere",
            pod(json!({"nodeName": "n9"})),
            &ssd,
            err("node(s) didn't match the requested node name"),
        ),
        (
            "nodeName here",
            pod(json!({"nodeName": "n1"})),
            &ssd,
            Ok(()),
        ),
        (
            "nodeSelector",
            pod(json!({"nodeSelector": {"disk": "hdd"}})),
            &ssd,
            err("node(s) didn't match Pod's node affinity/selector"),
        ),
        (
            "required node affinity In",
            pod(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd", "nvme"]}]}]}}}}),
            ),
            &ssd,
            Ok(()),
        ),
        (
            "required node affinity NotIn",
            pod(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}]}}}}),
            ),
            &ssd,
            err("node(s) didn't match Pod's node affinity/selector"),
        ),
        (
            "too big",
            pod(requests("5", "5Gi")),
            &ssd,
            Err(vec![
                "Insufficient cpu".into(),
                "Insufficient memory".into(),
            ]),
        ),
    ];
    for (what, p, n, want) in cases {
        assert_eq!(check(&p, n, &all, &[]), want, "{what}");
    }
}

#[test]
fn resources_and_host_ports_count_what_is_bound() {
    let n = node("n1", json!({}), json!({}));
    let all = [n.clone()];
    let web = pod(
        json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}],
        "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}}]}),
    );
    let udp = pod(
        json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]}]}),
    );
    let cases: Vec<(&str, PodInfo, Filtered)> = vec![
        (
            "same host port",
            pod(
                json!({"containers": [{"name": "c", "ports": [{"containerPort": 81, "hostPort": 8080}]}]}),
            ),
            err("node(s) didn't have free ports for the requested pod ports"),
        ),
        ("same port, other protocol", udp, Ok(())),
        ("cpu left", pod(requests("1", "1Gi")), Ok(())),
        (
            "cpu gone",
            pod(requests("1500m", "1Gi")),
            err("Insufficient cpu"),
        ),
    ];
    for (what, p, want) in cases {
        assert_eq!(check(&p, &n, &all, &[(&n, &web)]), want, "{what}");
    }
    let mut full = Usage::default();
    for _ in 0..110 {
        full.add(&pod(json!({"containers": []})));
    }
    assert_eq!(
        filter(
            &pod(json!({"containers": []})),
            &n,
            &full,
            &Cycle::default()
        ),
        err("Too many pods")
    );
    let mut u = Usage::default();
    u.add(&web);
    u.remove(&web);
    assert_eq!(u, Usage::default(), "removing a pod gives back all it took");
}

#[test]
fn pod_affinity_and_anti_affinity_follow_topology_keys() {
    let a1 = node(
        "a1",
        json!({"zone": "a", "kubernetes.io/hostname": "a1"}),
        json!({}),
    );
    let a2 = node(
        "a2",
        json!({"zone": "a", "kubernetes.io/hostname": "a2"}),
        json!({}),
    );
    let b1 = node(
        "b1",
        json!({"zone": "b", "kubernetes.io/hostname": "b1"}),
        json!({}),
    );
    let all = [a1.clone(), a2.clone(), b1.clone()];
    let db = pod_with("default", json!({"app": "db"}), json!({}));
    let db_other_ns = pod_with("other", json!({"app": "db"}), json!({}));
    let term =
        |key: &str| json!([{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": key}]);
    let near_db = pod(
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term("zone")}}}),
    );
    let away_from_db = pod(
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term("kubernetes.io/hostname")}}}),
    );
    let lonely_db = pod_with(
        "default",
        json!({"app": "db"}),
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}]}}}),
    );
    let web = pod_with("default", json!({"app": "web"}), json!({}));
    let first_db = pod_with(
        "default",
        json!({"app": "db"}),
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term("zone")}}}),
    );
    type Case<'a> = (
        &'a str,
        &'a PodInfo,
        &'a NodeInfo,
        Vec<(&'a NodeInfo, &'a PodInfo)>,
        Result<(), Vec<Reason>>,
    );
    let cases: Vec<Case> = vec![
        (
            "affinity: same zone as db",
            &near_db,
            &a2,
            vec![(&a1, &db)],
            Ok(()),
        ),
        (
            "affinity: other zone",
            &near_db,
            &b1,
            vec![(&a1, &db)],
            err("node(s) didn't match pod affinity rules"),
        ),
        (
            "affinity: db in another namespace",
            &near_db,
            &a1,
            vec![(&a1, &db_other_ns)],
            err("node(s) didn't match pod affinity rules"),
        ),
        (
            "affinity: no db anywhere",
            &near_db,
            &a1,
            vec![],
            err("node(s) didn't match pod affinity rules"),
        ),
        (
            "affinity: the first of its group goes anywhere",
            &first_db,
            &b1,
            vec![],
            Ok(()),
        ),
        (
            "anti-affinity: same host",
            &away_from_db,
            &a1,
            vec![(&a1, &db)],
            err("node(s) didn't match pod anti-affinity rules"),
        ),
        (
            "anti-affinity: other host same zone",
            &away_from_db,
            &a2,
            vec![(&a1, &db)],
            Ok(()),
        ),
        (
            "existing pod's anti-affinity",
            &web,
            &a2,
            vec![(&a1, &lonely_db)],
            err("node(s) didn't satisfy existing pods anti-affinity rules"),
        ),
        (
            "existing pod's anti-affinity, other zone",
            &web,
            &b1,
            vec![(&a1, &lonely_db)],
            Ok(()),
        ),
    ];
    for (what, p, n, existing, want) in cases {
        assert_eq!(check(p, n, &all, &existing), want, "{what}");
    }
}

#[test]
fn topology_spread_do_not_schedule_keeps_the_skew() {
    let a = node("a", json!({"zone": "a"}), json!({}));
    let b = node("b", json!({"zone": "b"}), json!({}));
    let c = node("c", json!({"zone": "c"}), json!({}));
    let nozone = node("x", json!({}), json!({}));
    let all = [a.clone(), b.clone(), c.clone(), nozone.clone()];
    let spread = |skew: i32| {
        pod_with(
            "default",
            json!({"app": "web"}),
            json!({"topologySpreadConstraints": [{
            "maxSkew": skew, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}}]}),
        )
    };
    let web = pod_with("default", json!({"app": "web"}), json!({}));
    let other = pod_with("default", json!({"app": "other"}), json!({}));
    let (s1, s2) = (spread(1), spread(2));
    type Case<'a> = (
        &'a str,
        &'a PodInfo,
        &'a NodeInfo,
        Vec<(&'a NodeInfo, &'a PodInfo)>,
        Result<(), Vec<Reason>>,
    );
    let skewed = "node(s) didn't match pod topology spread constraints";
    let cases: Vec<Case> = vec![
        ("empty cluster", &s1, &a, vec![], Ok(())),
        (
            "zone a has one, others none",
            &s1,
            &a,
            vec![(&a, &web)],
            err(skewed),
        ),
        ("zone b is empty", &s1, &b, vec![(&a, &web)], Ok(())),
        ("skew 2 allows a second", &s2, &a, vec![(&a, &web)], Ok(())),
        (
            "pods that do not match do not count",
            &s1,
            &a,
            vec![(&a, &other)],
            Ok(()),
        ),
        (
            "node without the key",
            &s1,
            &nozone,
            vec![],
            err("node(s) didn't match pod topology spread constraints (missing required label)"),
        ),
    ];
    for (what, p, n, existing, want) in cases {
        assert_eq!(check(p, n, &all, &existing), want, "{what}");
    }
}

fn totals_for(
    p: &PodInfo,
    nodes: &[(&NodeInfo, Usage)],
    existing: &[(&NodeInfo, &PodInfo)],
    strategy: Strategy,
) -> Vec<i64> {
    let all: Vec<NodeInfo> = nodes.iter().map(|(n, _)| (*n).clone()).collect();
    let cycle = Cycle::new(p, all.iter(), existing.iter().map(|(n, e)| (&n.labels, *e)));
    let raw: Vec<RawScore> = nodes
        .iter()
        .map(|(n, u)| score(p, n, u, &cycle, strategy))
        .collect();
    total_scores(&raw)
}

fn busy(cpu: &str, mem: &str) -> Usage {
    let mut u = Usage::default();
    u.add(&pod(requests(cpu, mem)));
    u
}

#[test]
fn scores_rank_nodes_as_kube_scheduler_does() {
    let a = node("a", json!({"disk": "ssd", "zone": "a"}), json!({}));
    let b = node("b", json!({"disk": "hdd", "zone": "b"}), json!({}));
    let soft = node(
        "s",
        json!({"zone": "b"}),
        json!({"spec": {"taints": [{"key": "old", "effect": "PreferNoSchedule"}]}}),
    );
    let p = pod(requests("500m", "512Mi"));
    let idle = Usage::default();
    let half = busy("2", "2Gi");
    let lopsided = busy("3", "256Mi");
    // (what, pod, nodes with usage, strategy, index of the node that must win)
    let prefer_ssd = pod(
        json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}},
        "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]}),
    );
    let cases: Vec<ScoreCase> = vec![
        (
            "least-allocated: the idle node",
            &p,
            vec![(&a, half.clone()), (&b, idle.clone())],
            Strategy::LeastAllocated,
            1,
        ),
        (
            "most-allocated: the busier node",
            &p,
            vec![(&a, half.clone()), (&b, idle.clone())],
            Strategy::MostAllocated,
            0,
        ),
        (
            "balanced: cpu and memory alike",
            &p,
            vec![(&a, lopsided.clone()), (&b, busy("2500m", "2500Mi"))],
            Strategy::MostAllocated,
            1,
        ),
        (
            "preferred node affinity outweighs a little load",
            &prefer_ssd,
            vec![(&a, busy("500m", "512Mi")), (&b, idle.clone())],
            Strategy::LeastAllocated,
            0,
        ),
        (
            "PreferNoSchedule taint is avoided",
            &p,
            vec![(&soft, idle.clone()), (&b, idle.clone())],
            Strategy::LeastAllocated,
            1,
        ),
    ];
    for (what, p, nodes, strategy, winner) in cases {
        let totals = totals_for(p, &nodes, &[], strategy);
        let best = totals.iter().copied().max().unwrap_or(0);
        assert_eq!(totals[winner], best, "{what}: {totals:?}");
        assert_eq!(
            totals.iter().filter(|t| **t == best).count(),
            1,
            "{what}: a tie {totals:?}"
        );
    }
}

#[test]
fn preferred_pod_affinity_and_soft_spread_steer_placement() {
    let a = node("a", json!({"zone": "a"}), json!({}));
    let b = node("b", json!({"zone": "b"}), json!({}));
    let cache = pod_with("default", json!({"app": "cache"}), json!({}));
    let web = pod_with("default", json!({"app": "web"}), json!({}));
    let term = json!({"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"});
    let near = pod(
        json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": term}]}}}),
    );
    let away = pod(
        json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": term}]}}}),
    );
    let spread = pod_with(
        "default",
        json!({"app": "web"}),
        json!({"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app": "web"}}}]}),
    );
    let nodes = vec![(&a, Usage::default()), (&b, Usage::default())];
    let t = totals_for(&near, &nodes, &[(&a, &cache)], Strategy::LeastAllocated);
    assert!(t[0] > t[1], "affinity pulls to the cache's zone: {t:?}");
    let t = totals_for(&away, &nodes, &[(&a, &cache)], Strategy::LeastAllocated);
    assert!(t[1] > t[0], "anti-affinity pushes away: {t:?}");
    let t = totals_for(
        &spread,
        &nodes,
        &[(&a, &web), (&a, &web)],
        Strategy::LeastAllocated,
    );
    assert!(t[1] > t[0], "soft spread prefers the emptier zone: {t:?}");
    // ScheduleAnyway never filters.
    assert_eq!(
        check(
            &spread,
            &a,
            &[a.clone(), b.clone()],
            &[(&a, &web), (&a, &web)]
        ),
        Ok(())
    );
}

#[test]
fn the_message_counts_reasons() {
    let mut reasons = BTreeMap::new();
    reasons.insert("Insufficient cpu".to_string(), 2);
    reasons.insert("node(s) were unschedulable".to_string(), 1);
    assert_eq!(
        unschedulable_message(3, &reasons),
        "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) were unschedulable."
    );
}

#[test]
fn a_match_fields_term_pins_a_pod_to_the_named_node() {
    let pinned = pod(
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}),
    );
    let n1 = node("n1", json!({}), json!({}));
    let n2 = node("n2", json!({}), json!({}));
    let all = [n1.clone(), n2.clone()];
    assert_eq!(check(&pinned, &n1, &all, &[]), Ok(()));
    assert_eq!(
        check(&pinned, &n2, &all, &[]),
        err("node(s) didn't match Pod's node affinity/selector")
    );
}

#[test]
fn bound_volumes_keep_a_pod_on_their_nodes() {
    let a = node("a", json!({"kubernetes.io/hostname": "a"}), json!({}));
    let b = node("b", json!({"kubernetes.io/hostname": "b"}), json!({}));
    let on_a: NodeSelectorTerm = serde_json::from_value(json!({"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]}))
    .expect("term");
    let p = pod(json!({}));
    let local = Cycle {
        volume_terms: vec![vec![on_a]],
        ..Cycle::default()
    };
    let unbound = Cycle {
        volume_error: Some("pod has unbound immediate PersistentVolumeClaims".into()),
        ..Cycle::default()
    };
    let cases = [
        ("the volume's node", &a, &local, Ok(())),
        (
            "another node",
            &b,
            &local,
            err("node(s) had volume node affinity conflict"),
        ),
        ("no volumes", &b, &Cycle::default(), Ok(())),
        (
            "an unbound claim",
            &a,
            &unbound,
            err("pod has unbound immediate PersistentVolumeClaims"),
        ),
    ];
    for (what, n, cycle, want) in cases {
        assert_eq!(filter(&p, n, &Usage::default(), cycle), want, "{what}");
    }
}
