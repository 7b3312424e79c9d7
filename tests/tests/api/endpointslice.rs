//! EndpointSlices as a user sees them with kubectl: a dual-stack Service
//! gets one slice per family listing its pods, a pod's readiness flips its
//! endpoint, a named targetPort resolves to the container's port, a
//! deleted pod leaves, a terminating one shows as terminating, the legacy
//! Endpoints follow, and deleting the Service takes the slices with it.
//! No agent runs here: the test sets the pods' status as the agent would.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::ControlPlane;

/// How long a controller may take to catch up.
pub(super) const CATCH_UP: Duration = Duration::from_secs(20);

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
";

fn pod(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels:
    app: web
  finalizers: [shoal.test/hold]
spec:
  containers:
  - name: c
    image: busybox
    ports:
    - name: http
      containerPort: 8080
"
    )
}

/// `kubectl get ARGS -o json`, parsed.
pub(super) async fn get_json(cp: &ControlPlane, args: &[&str]) -> Result<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = cp.ok(&all, None).await?;
    serde_json::from_str(&out).with_context(|| format!("kubectl {all:?} printed {out}"))
}

/// Polls `kubectl get ARGS -o json` until `check` accepts it; fails with
/// the last object and what `check` said about it.
pub(super) async fn wait_for(
    cp: &ControlPlane,
    args: &[&str],
    what: &str,
    check: impl Fn(&Value) -> Result<(), String>,
) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let value = get_json(cp, args).await?;
        let verdict = check(&value);
        match verdict {
            Ok(()) => return Ok(value),
            Err(why) if tokio::time::Instant::now() > deadline => {
                bail!("{what}: not after {CATCH_UP:?}: {why}\nlast: {value:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Sets a pod's status as its node's agent would: Running with an IPv4 and
/// an IPv6 address and a Ready condition.
pub(super) async fn set_pod_status(
    cp: &ControlPlane,
    name: &str,
    n: u8,
    ready: bool,
) -> Result<()> {
    let status = json!({"status": {
        "phase": "Running",
        "podIP": format!("10.244.0.{n}"),
        "podIPs": [{"ip": format!("10.244.0.{n}")}, {"ip": format!("fd00:10:244::{n:x}")}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
    }});
    cp.ok(
        &[
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    )
    .await?;
    Ok(())
}

/// Per family: pod name → (address, ready, serving, terminating).
type Seen = Vec<(String, Vec<(String, String, bool, bool, bool)>)>;

fn endpoints_by_family(list: &Value) -> Seen {
    let mut out: Seen = Vec::new();
    for slice in list["items"].as_array().into_iter().flatten() {
        let family = slice["addressType"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut eps: Vec<(String, String, bool, bool, bool)> = slice["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["targetRef"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    e["addresses"][0].as_str().unwrap_or_default().to_string(),
                    e["conditions"]["ready"].as_bool().unwrap_or(false),
                    e["conditions"]["serving"].as_bool().unwrap_or(false),
                    e["conditions"]["terminating"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        eps.sort();
        out.push((family, eps));
    }
    out.sort();
    out
}

fn expect(list: &Value, want: &[(&str, u8, bool, bool, bool)]) -> Result<(), String> {
    let seen = endpoints_by_family(list);
    let mut expected: Seen = Vec::new();
    for family in ["IPv4", "IPv6"] {
        let eps = want
            .iter()
            .map(|(name, n, r, s, t)| {
                let ip = if family == "IPv4" {
                    format!("10.244.0.{n}")
                } else {
                    format!("fd00:10:244::{n:x}")
                };
                (name.to_string(), ip, *r, *s, *t)
            })
            .collect();
        expected.push((family.to_string(), eps));
    }
    if seen == expected {
        Ok(())
    } else {
        Err(format!("slices say {seen:?}, want {expected:?}"))
    }
}

const SLICES: &[&str] = &["endpointslices", "-l", "kubernetes.io/service-name=web"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_service_gets_a_slice_per_family_that_follows_its_pods() -> Result<()> {
    let cp = ControlPlane::start().await?;
    cp.ok(&["apply", "-f", "-"], Some(SERVICE)).await?;
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        cp.ok(&["apply", "-f", "-"], Some(&pod(name))).await?;
        let n = u8::try_from(i + 1)?;
        set_pod_status(&cp, name, n, name != "c").await?;
    }

    let list = wait_for(
        &cp,
        SLICES,
        "two slices listing a, b ready and c not",
        |v| {
            expect(
                v,
                &[
                    ("a", 1, true, true, false),
                    ("b", 2, true, true, false),
                    ("c", 3, false, false, false),
                ],
            )
        },
    )
    .await?;
    for slice in list["items"].as_array().into_iter().flatten() {
        let name = slice["metadata"]["name"].as_str().unwrap_or_default();
        assert!(name.starts_with("web-"), "generateName web-: {name}");
        assert_eq!(
            slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.k8s.io"
        );
        assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
        assert_eq!(slice["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(
            slice["ports"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            "the named targetPort resolves to the container's port"
        );
    }
    let table = cp
        .ok(
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
            ],
            None,
        )
        .await?;
    assert!(table.contains("IPv4") && table.contains("IPv6"), "{table}");

    // The legacy Endpoints: primary family, ready and not-ready addresses.
    let ep = wait_for(
        &cp,
        &["endpoints", "web"],
        "Endpoints with a, b ready and c not",
        |v| {
            let ips = |k: &str| -> Vec<String> {
                v["subsets"][0][k]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a["ip"].as_str().unwrap_or_default().to_string())
                    .collect()
            };
            let (ready, not_ready) = (ips("addresses"), ips("notReadyAddresses"));
            if ready == ["10.244.0.1", "10.244.0.2"] && not_ready == ["10.244.0.3"] {
                Ok(())
            } else {
                Err(format!(
                    "addresses {ready:?}, notReadyAddresses {not_ready:?}"
                ))
            }
        },
    )
    .await?;
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080);
    let described = cp.ok(&["describe", "svc", "web"], None).await?;
    assert!(
        described.contains("10.244.0.1:8080"),
        "kubectl describe svc shows the endpoints: {described}"
    );

    // Nothing changed for the slices: an unrelated pod edit writes nothing.
    let versions = |v: &Value| -> Vec<String> {
        let mut rv: Vec<String> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                s["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        rv.sort();
        rv
    };
    let before = versions(&list);
    cp.ok(&["label", "pod", "a", "unrelated=yes"], None).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = versions(&get_json(&cp, SLICES).await?);
    assert_eq!(before, after, "no write when nothing changed");

    // Readiness flips.
    set_pod_status(&cp, "c", 3, true).await?;
    set_pod_status(&cp, "a", 1, false).await?;
    wait_for(&cp, SLICES, "c ready, a not", |v| {
        expect(
            v,
            &[
                ("a", 1, false, false, false),
                ("b", 2, true, true, false),
                ("c", 3, true, true, false),
            ],
        )
    })
    .await?;

    // A terminating pod (held by its finalizer) serves but is not ready.
    cp.ok(&["delete", "pod", "b", "--wait=false"], None).await?;
    wait_for(&cp, SLICES, "b terminating", |v| {
        expect(
            v,
            &[
                ("a", 1, false, false, false),
                ("b", 2, false, true, true),
                ("c", 3, true, true, false),
            ],
        )
    })
    .await?;

    // Once gone, it leaves.
    cp.ok(
        &[
            "patch",
            "pod",
            "b",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
        None,
    )
    .await?;
    wait_for(&cp, SLICES, "b gone", |v| {
        expect(
            v,
            &[("a", 1, false, false, false), ("c", 3, true, true, false)],
        )
    })
    .await?;

    // The Service deleted: its slices and Endpoints go.
    cp.ok(&["delete", "svc", "web"], None).await?;
    wait_for(&cp, SLICES, "no slices", |v| match v["items"].as_array() {
        Some(items) if items.is_empty() => Ok(()),
        _ => Err("slices remain".into()),
    })
    .await?;
    wait_for(
        &cp,
        &["endpoints", "--field-selector", "metadata.name=web"],
        "no Endpoints",
        |v| match v["items"].as_array() {
            Some(items) if items.is_empty() => Ok(()),
            _ => Err("the Endpoints remain".into()),
        },
    )
    .await?;
    for name in ["a", "c"] {
        cp.ok(
            &[
                "patch",
                "pod",
                name,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
            None,
        )
        .await?;
    }
    cp.stop().await
}
