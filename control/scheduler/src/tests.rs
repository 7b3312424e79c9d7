use super::*;
use serde_json::json;

fn node(i: usize, cpu: &str) -> NodeInfo {
    NodeInfo::from_node(
        &serde_json::from_value(json!({
            "metadata": {"name": format!("n{i:05}"), "labels": {"zone": format!("z{}", i % 3)}},
            "status": {"allocatable": {"cpu": cpu, "memory": "32Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .expect("test node"),
    )
}

fn pod(name: &str, cpu: &str, priority: i32) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": name},
        "spec": {"priority": priority, "containers": [{"name": "c",
            "resources": {"requests": {"cpu": cpu, "memory": "500Mi"}}}]},
    }))
    .expect("test pod")
}

fn state(nodes: usize, cpu: &str) -> State {
    let mut s = State {
        rng: 1,
        ..State::default()
    };
    for i in 0..nodes {
        let n = node(i, cpu);
        s.nodes.insert(n.name.clone(), n);
    }
    s.order_dirty = true;
    s
}

/// Places a pod as the loop does and assumes it where it went.
fn schedule(s: &mut State, p: &Pod) -> Option<String> {
    let info = PodInfo::from_pod(p);
    match s.place(&info, Strategy::LeastAllocated) {
        Outcome::Bind(node) => {
            s.add_bound(
                info.key.clone(),
                Bound {
                    node: node.clone(),
                    info: Arc::new(info),
                    name: p.name_any(),
                    assumed: true,
                    terminating: false,
                },
            );
            Some(node)
        }
        Outcome::Unschedulable(_) => None,
    }
}

#[test]
fn thousands_of_pods_on_thousands_of_nodes_stay_within_allocatable() {
    // scheduler_perf's shape, scaled down for a debug build: 5,000 nodes of
    // 4 CPUs, 100m pods; least-allocated spreads them.
    let mut s = state(5000, "4");
    assert_eq!(feasible_to_find(5000), 500, "kube's adaptive share: 10%");
    let started = std::time::Instant::now();
    for i in 0..2000 {
        assert!(schedule(&mut s, &pod(&format!("p{i}"), "100m", 0)).is_some());
    }
    let per_pod = started.elapsed() / 2000;
    eprintln!("{per_pod:?} per pod over 5,000 nodes (debug build)");
    let fullest = s.usage.values().map(|u| u.pods).max().unwrap_or(0);
    assert!(
        fullest <= 2,
        "least-allocated spreads: {fullest} pods on one node"
    );
    for (name, u) in &s.usage {
        let n = &s.nodes[name];
        assert!(u.cpu_milli <= n.cpu_milli && u.memory <= n.memory && u.pods <= n.pods);
    }
}

#[test]
fn a_full_cluster_refuses_with_every_node_counted() {
    let mut s = state(3, "1");
    for i in 0..3 {
        assert!(schedule(&mut s, &pod(&format!("p{i}"), "800m", 0)).is_some());
    }
    let info = PodInfo::from_pod(&pod("late", "500m", 0));
    match s.place(&info, Strategy::LeastAllocated) {
        Outcome::Unschedulable(reasons) => assert_eq!(
            plugins::unschedulable_message(3, &reasons),
            "0/3 nodes are available: 3 Insufficient cpu."
        ),
        Outcome::Bind(n) => panic!("placed on {n} though every node is full"),
    }
}

#[test]
fn preemption_picks_the_node_with_the_least_important_victims() {
    let mut s = state(2, "1");
    s.node_order();
    // n00000: one pod of priority 100; n00001: one of priority 10.
    for (name, node, priority) in [("a", "n00000", 100), ("b", "n00001", 10)] {
        let info = PodInfo::from_pod(&pod(name, "800m", priority));
        s.add_bound(
            name.into(),
            Bound {
                node: node.into(),
                info: Arc::new(info),
                name: name.into(),
                assumed: false,
                terminating: false,
            },
        );
    }
    let urgent = pod("urgent", "500m", 1000);
    let info = PodInfo::from_pod(&urgent);
    let Outcome::Unschedulable(reasons) = s.place(&info, Strategy::LeastAllocated) else {
        panic!("the urgent pod should not fit before preemption");
    };
    let plan = preemption::plan(&s, "urgent", &info, &urgent, &reasons).expect("a plan");
    assert_eq!(plan.node, "n00001");
    assert_eq!(
        plan.victims
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    // Nothing of lower priority to remove: no plan.
    let humble = pod("humble", "500m", 5);
    let info = PodInfo::from_pod(&humble);
    assert!(preemption::plan(&s, "humble", &info, &humble, &reasons).is_none());
}

#[test]
fn room_freed_for_a_nominated_pod_stays_its_own() {
    let mut s = state(1, "1");
    let urgent = PodInfo::from_pod(&pod("urgent", "800m", 1000));
    s.nominated
        .insert("urgent".into(), ("n00000".into(), Arc::new(urgent)));
    assert_eq!(
        schedule(&mut s, &pod("low", "500m", 0)),
        None,
        "a lower-priority pod may not take the preemptor's room"
    );
    assert_eq!(
        schedule(&mut s, &pod("higher", "100m", 2000)).as_deref(),
        Some("n00000"),
        "a higher-priority pod may"
    );
    assert_eq!(
        schedule(&mut s, &pod("urgent", "800m", 1000)).as_deref(),
        Some("n00000"),
        "nor does the reservation keep out the pod it is for"
    );
}

#[test]
fn preemption_avoids_breaking_a_disruption_budget() {
    let mut s = state(2, "1");
    s.node_order();
    for (name, node, priority) in [("guarded", "n00000", 5), ("plain", "n00001", 10)] {
        let mut p = pod(name, "800m", priority);
        p.metadata.labels = Some([("app".to_string(), name.to_string())].into());
        s.add_bound(
            name.into(),
            Bound {
                node: node.into(),
                info: Arc::new(PodInfo::from_pod(&p)),
                name: name.into(),
                assumed: false,
                terminating: false,
            },
        );
    }
    let urgent = pod("urgent", "500m", 1000);
    let info = PodInfo::from_pod(&urgent);
    let Outcome::Unschedulable(reasons) = s.place(&info, Strategy::LeastAllocated) else {
        panic!("the urgent pod should not fit before preemption");
    };
    let victims = |s: &State| {
        let plan = preemption::plan(s, "urgent", &info, &urgent, &reasons).expect("a plan");
        (plan.node, plan.victims[0].name.clone())
    };
    assert_eq!(
        victims(&s),
        ("n00000".into(), "guarded".into()),
        "the lowest priority goes"
    );
    s.budgets.push(Budget {
        namespace: "default".into(),
        name: "guard".into(),
        selector: plugins::Selector::new(Some(
            &serde_json::from_value(json!({"matchLabels": {"app": "guarded"}})).expect("selector"),
        )),
        allowed: 0,
    });
    assert_eq!(
        victims(&s),
        ("n00001".into(), "plain".into()),
        "the budget is respected"
    );
}

#[test]
fn a_wait_for_first_consumer_claim_lets_the_pod_go_anywhere_then_only_to_the_selected_node() {
    let mut s = state(5, "4");
    s.delayed_classes.insert("local-path".into());
    let mut p = pod("db", "100m", 0);
    if let Some(spec) = p.spec.as_mut() {
        spec.volumes = Some(vec![
            serde_json::from_value(
                json!({"name": "data", "persistentVolumeClaim": {"claimName": "data"}}),
            )
            .expect("test volume"),
        ]);
    }
    let info = PodInfo::from_pod(&p);
    let claim = |class: &str, selected: Option<&str>| Claim {
        volume: None,
        class: class.into(),
        selected: selected.map(str::to_owned),
    };

    // An Immediate claim not yet bound rules out every node.
    s.claims
        .insert("default/data".into(), claim("standard", None));
    assert!(matches!(
        s.place(&info, Strategy::LeastAllocated),
        Outcome::Unschedulable(r) if r.contains_key("pod has unbound immediate PersistentVolumeClaims")
    ));

    // Delayed: any node fits, and the claim still needs its node.
    s.claims
        .insert("default/data".into(), claim("local-path", None));
    assert_eq!(s.delayed(&info).unselected, vec!["data".to_string()]);
    assert!(matches!(
        s.place(&info, Strategy::LeastAllocated),
        Outcome::Bind(_)
    ));

    // Once the node is chosen the pod waits, and can only go there.
    s.claims
        .insert("default/data".into(), claim("local-path", Some("n00003")));
    let d = s.delayed(&info);
    assert!(d.waiting && d.unselected.is_empty());
    for _ in 0..10 {
        assert!(matches!(
            s.place(&info, Strategy::LeastAllocated),
            Outcome::Bind(n) if n == "n00003"
        ));
    }
}
