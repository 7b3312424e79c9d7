use super::calc::{
    History, PodSample, PodState, Policy, Proposal, Rules, Select, Target, milli, normalize,
    quantity, record_rescale, resource_replicas,
};

fn pod(name: &str, state: PodState, usage: Option<i64>, request: i64) -> PodSample {
    PodSample {
        name: name.into(),
        state,
        usage,
        request: Ok(request),
    }
}

fn ready(usage: i64) -> PodSample {
    pod("p", PodState::Ready, Some(usage), 100)
}

#[test]
fn resource_replicas_follow_kubernetes_arithmetic() {
    use PodState::*;
    // (what, current, pods, target, replicas, utilization)
    type Case = (&'static str, i32, Vec<PodSample>, Target, i32, Option<i32>);
    let cases: Vec<Case> = vec![
        (
            "one pod at 200% of a 50% target: ceil(1 * 4)",
            1,
            vec![ready(200)],
            Target::Utilization(50),
            4,
            Some(200),
        ),
        (
            "within the 10% tolerance: no change",
            3,
            vec![ready(52), ready(55), ready(50)],
            Target::Utilization(50),
            3,
            Some(52),
        ),
        (
            "idle pods scale down to ceil(ratio * n)",
            4,
            vec![ready(10), ready(10), ready(10), ready(10)],
            Target::Utilization(50),
            1,
            Some(10),
        ),
        (
            "a pod without metrics counts as at its request on a scale-down",
            3,
            vec![ready(10), ready(10), pod("m", Ready, None, 100)],
            Target::Utilization(50),
            3,
            Some(10),
        ),
        (
            "a pod without metrics counts as idle on a scale-up",
            2,
            vec![ready(200), pod("m", Ready, None, 100)],
            Target::Utilization(50),
            4,
            Some(200),
        ),
        (
            "an unready pod counts as idle on a scale-up",
            2,
            vec![ready(300), pod("u", Unready, Some(900), 100)],
            Target::Utilization(100),
            3,
            Some(300),
        ),
        (
            "an unready pod is not used on a scale-down",
            2,
            vec![ready(10), pod("u", Unready, Some(900), 100)],
            Target::Utilization(100),
            1,
            Some(10),
        ),
        (
            "ignored pods (deleting, failed) are left out",
            2,
            vec![ready(100), pod("d", Ignored, Some(0), 100)],
            Target::Utilization(50),
            2,
            Some(100),
        ),
        (
            "averageValue: 300m per pod over a 100m target",
            2,
            vec![ready(300), ready(300)],
            Target::AverageValue(100),
            6,
            None,
        ),
    ];
    for (what, current, pods, target, want, util) in cases {
        let got = resource_replicas(current, &pods, "cpu", target)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got.replicas, want, "{what}");
        assert_eq!(got.utilization, util, "{what}");
    }
    let p: Proposal = resource_replicas(
        1,
        &[ready(300), ready(100)],
        "cpu",
        Target::AverageValue(100),
    )
    .expect("proposal");
    assert_eq!(p.average, 200);
}

#[test]
fn resource_replicas_errors_name_the_problem() {
    let no_request = PodSample {
        name: "web-1".into(),
        state: PodState::Ready,
        usage: Some(5),
        request: Err("missing request for cpu in container app of Pod web-1".into()),
    };
    let e = resource_replicas(1, &[no_request], "cpu", Target::Utilization(50))
        .expect_err("no request");
    assert!(e.contains("missing request for cpu"), "{e}");
    let e = resource_replicas(1, &[], "cpu", Target::Utilization(50)).expect_err("no pods");
    assert!(e.contains("no pods returned by selector"), "{e}");
    let e = resource_replicas(
        1,
        &[pod("p", PodState::Ready, None, 100)],
        "cpu",
        Target::Utilization(50),
    )
    .expect_err("no metrics");
    assert!(e.contains("did not receive metrics"), "{e}");
}

fn up() -> Rules {
    Rules::default_up()
}

fn down(window: i64) -> Rules {
    Rules {
        window,
        ..Rules::default_down()
    }
}

#[test]
fn min_and_max_replicas_limit_with_kubernetes_reasons() {
    // (current, desired, min, max, want, limited reason)
    let cases = [
        (1, 5, 1, 3, 3, "TooManyReplicas"),
        (3, 0, 2, 5, 2, "TooFewReplicas"),
        (2, 3, 1, 10, 3, "DesiredWithinRange"),
        // Default scale-up: at most max(4 pods, 100%) per 15 s.
        (2, 20, 1, 50, 6, "ScaleUpLimit"),
        (10, 30, 1, 50, 20, "ScaleUpLimit"),
    ];
    for (current, desired, min, max, want, reason) in cases {
        let mut h = History::default();
        let n = normalize(&mut h, &up(), &down(0), current, desired, (min, max), 1000);
        assert_eq!(n.replicas, want, "{current} -> {desired} in [{min}, {max}]");
        assert_eq!(n.limited.1, reason, "{current} -> {desired}");
        assert_eq!(n.limited.0, reason != "DesiredWithinRange");
    }
}

#[test]
fn scale_down_waits_out_the_stabilization_window() {
    let mut h = History::default();
    let (up, down) = (up(), down(300));
    // A high recommendation at t=0 holds the count for 300 s.
    let n = normalize(&mut h, &up, &down, 4, 4, (1, 10), 0);
    assert_eq!(n.replicas, 4);
    let n = normalize(&mut h, &up, &down, 4, 1, (1, 10), 100);
    assert_eq!(n.replicas, 4);
    assert_eq!(n.able.0, "ScaleDownStabilized");
    let n = normalize(&mut h, &up, &down, 4, 1, (1, 10), 290);
    assert_eq!(
        n.replicas, 4,
        "the t=0 recommendation is still in the window"
    );
    let n = normalize(&mut h, &up, &down, 4, 1, (1, 10), 301);
    assert_eq!(n.replicas, 1);
    assert_eq!(n.able.0, "ReadyForNewScale");
    // With a zero window it goes at once.
    let mut h = History::default();
    normalize(&mut h, &up, &down_zero(), 4, 4, (1, 10), 0);
    assert_eq!(
        normalize(&mut h, &up, &down_zero(), 4, 1, (1, 10), 15).replicas,
        1
    );
}

fn down_zero() -> Rules {
    down(0)
}

#[test]
fn scale_up_window_applies_the_lowest_recent_recommendation() {
    let up = Rules {
        window: 60,
        ..Rules::default_up()
    };
    let mut h = History::default();
    normalize(&mut h, &up, &down(0), 2, 2, (1, 10), 0);
    let n = normalize(&mut h, &up, &down(0), 2, 6, (1, 10), 30);
    assert_eq!(n.replicas, 2);
    assert_eq!(n.able.0, "ScaleUpStabilized");
    let n = normalize(&mut h, &up, &down(0), 2, 6, (1, 10), 61);
    assert_eq!(n.replicas, 6);
}

#[test]
fn policies_count_changes_made_within_their_period() {
    let up = Rules {
        window: 0,
        select: Select::Max,
        policies: vec![Policy::Pods {
            value: 2,
            period: 60,
        }],
    };
    let down = Rules {
        window: 0,
        select: Select::Min,
        policies: vec![
            Policy::Pods {
                value: 1,
                period: 60,
            },
            Policy::Percent {
                value: 50,
                period: 60,
            },
        ],
    };
    let mut h = History::default();
    let n = normalize(&mut h, &up, &down, 2, 10, (1, 10), 0);
    assert_eq!(n.replicas, 4);
    assert_eq!(n.limited.1, "ScaleUpLimit");
    record_rescale(&mut h, &up, &down, 2, 4, 0);
    // Two pods were added within the last minute: no more until it passes.
    assert_eq!(
        normalize(&mut h, &up, &down, 4, 10, (1, 10), 30).replicas,
        4
    );
    assert_eq!(
        normalize(&mut h, &up, &down, 4, 10, (1, 10), 61).replicas,
        6
    );
    // Min of (1 pod, 50%) per minute: one pod at a time.
    let mut h = History::default();
    assert_eq!(normalize(&mut h, &up, &down, 8, 1, (1, 10), 0).replicas, 7);
    record_rescale(&mut h, &up, &down, 8, 7, 0);
    assert_eq!(normalize(&mut h, &up, &down, 7, 1, (1, 10), 10).replicas, 7);
    // Disabled: never in that direction.
    let frozen = Rules {
        select: Select::Disabled,
        ..down.clone()
    };
    let mut h = History::default();
    assert_eq!(
        normalize(&mut h, &up, &frozen, 5, 1, (1, 10), 0).replicas,
        5
    );
}

#[test]
fn quantities_in_thousandths() {
    assert_eq!(milli("250m"), Some(250));
    assert_eq!(milli("1"), Some(1000));
    assert_eq!(milli("1.5"), Some(1500));
    assert_eq!(milli("12345678n"), Some(13));
    assert_eq!(milli("8Mi"), Some(8 * 1024 * 1024 * 1000));
    assert_eq!(milli("1e3"), Some(1_000_000));
    assert_eq!(milli("lots"), None);
    assert_eq!(quantity(250), "250m");
    assert_eq!(quantity(2000), "2");
}
