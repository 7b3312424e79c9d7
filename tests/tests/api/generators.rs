//! kubectl's generators (`kubectl create <kind>`, `kubectl run`, `kubectl
//! expose`) send their objects as Kubernetes protobuf, not JSON: each one
//! creates what the user asked for, and a bad one gets Kubernetes' error.

use anyhow::{Result, ensure};
use serde_json::Value;

use super::ControlPlane;

async fn get(cp: &ControlPlane, what: &[&str]) -> Result<Value> {
    let mut args = vec!["get", "-n", "gen", "-o", "json"];
    args.extend_from_slice(what);
    Ok(serde_json::from_str(&cp.ok(&args, None).await?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_run_and_expose_make_what_they_say() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let create = |args: &'static [&'static str]| {
        let cp = &cp;
        async move {
            let out = cp.ok(args, None).await?;
            anyhow::Ok(out)
        }
    };
    ensure!(
        create(&["create", "namespace", "gen"])
            .await?
            .contains("namespace/gen created")
    );
    create(&[
        "create",
        "deployment",
        "web",
        "-n",
        "gen",
        "--image=busybox:1.36",
        "--replicas=3",
        "--port=8080",
        "--",
        "httpd",
        "-f",
        "-p",
        "8080",
    ])
    .await?;
    create(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "gen",
        "--from-literal=greeting=hello",
        "--from-literal=empty=",
    ])
    .await?;
    create(&[
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        "gen",
        "--from-literal=user=admin",
    ])
    .await?;
    create(&["create", "serviceaccount", "robot", "-n", "gen"]).await?;
    create(&[
        "run",
        "one",
        "-n",
        "gen",
        "--image=busybox:1.36",
        "--restart=Never",
        "--env=A=b",
        "--labels=x=y",
        "--",
        "sleep",
        "3600",
    ])
    .await?;
    create(&[
        "expose",
        "deployment",
        "web",
        "-n",
        "gen",
        "--port=80",
        "--target-port=8080",
    ])
    .await?;
    create(&[
        "create",
        "service",
        "nodeport",
        "np",
        "-n",
        "gen",
        "--tcp=80:8080",
    ])
    .await?;
    create(&[
        "create",
        "job",
        "once",
        "-n",
        "gen",
        "--image=busybox:1.36",
        "--",
        "true",
    ])
    .await?;
    create(&[
        "create",
        "cronjob",
        "tick",
        "-n",
        "gen",
        "--image=busybox:1.36",
        "--schedule=*/5 * * * *",
        "--",
        "date",
    ])
    .await?;
    create(&[
        "create",
        "rolebinding",
        "robot-view",
        "-n",
        "gen",
        "--clusterrole=view",
        "--serviceaccount=gen:robot",
    ])
    .await?;
    create(&[
        "create",
        "pdb",
        "web",
        "-n",
        "gen",
        "--selector=app=web",
        "--min-available=2",
    ])
    .await?;
    create(&[
        "create",
        "quota",
        "small",
        "-n",
        "gen",
        "--hard=pods=10,requests.cpu=2",
    ])
    .await?;
    create(&[
        "create",
        "priorityclass",
        "high",
        "--value=1000",
        "--description=urgent",
    ])
    .await?;

    let d = get(&cp, &["deployment", "web"]).await?;
    ensure!(d["spec"]["replicas"] == 3, "{d}");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    ensure!(c["image"] == "busybox:1.36", "{c}");
    ensure!(
        c["command"] == serde_json::json!(["httpd", "-f", "-p", "8080"]),
        "{c}"
    );
    ensure!(c["ports"][0]["containerPort"] == 8080, "{c}");
    ensure!(d["spec"]["selector"]["matchLabels"]["app"] == "web", "{d}");
    ensure!(d["metadata"]["creationTimestamp"].is_string(), "{d}");

    let cm = get(&cp, &["configmap", "cfg"]).await?;
    ensure!(
        cm["data"] == serde_json::json!({"greeting": "hello", "empty": ""}),
        "{cm}"
    );
    let secret = get(&cp, &["secret", "creds"]).await?;
    ensure!(secret["data"]["user"] == "YWRtaW4=", "{secret}");
    ensure!(secret["type"] == "Opaque", "{secret}");

    let pod = get(&cp, &["pod", "one"]).await?;
    ensure!(pod["spec"]["restartPolicy"] == "Never", "{pod}");
    ensure!(pod["metadata"]["labels"]["x"] == "y", "{pod}");
    let env = &pod["spec"]["containers"][0]["env"][0];
    ensure!(env["name"] == "A" && env["value"] == "b", "{pod}");

    let svc = get(&cp, &["service", "web"]).await?;
    ensure!(svc["spec"]["ports"][0]["port"] == 80, "{svc}");
    ensure!(svc["spec"]["ports"][0]["targetPort"] == 8080, "{svc}");
    ensure!(svc["spec"]["selector"]["app"] == "web", "{svc}");
    ensure!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.96.")),
        "{svc}"
    );
    let np = get(&cp, &["service", "np"]).await?;
    let node_port = np["spec"]["ports"][0]["nodePort"].as_u64().unwrap_or(0);
    ensure!(
        (30000..=32767).contains(&node_port),
        "nodePort not allocated: {np}"
    );

    let job = get(&cp, &["job", "once"]).await?;
    ensure!(
        job["spec"]["template"]["spec"]["containers"][0]["command"] == serde_json::json!(["true"]),
        "{job}"
    );
    ensure!(
        job["spec"]["template"]["spec"]["restartPolicy"] == "Never",
        "{job}"
    );
    let cron = get(&cp, &["cronjob", "tick"]).await?;
    ensure!(cron["spec"]["schedule"] == "*/5 * * * *", "{cron}");
    let rb = get(&cp, &["rolebinding", "robot-view"]).await?;
    ensure!(
        rb["roleRef"]["name"] == "view" && rb["subjects"][0]["name"] == "robot",
        "{rb}"
    );
    let pdb = get(&cp, &["pdb", "web"]).await?;
    ensure!(pdb["spec"]["minAvailable"] == 2, "{pdb}");
    let quota = get(&cp, &["quota", "small"]).await?;
    ensure!(quota["spec"]["hard"]["requests.cpu"] == "2", "{quota}");
    let pc: Value = serde_json::from_str(
        &cp.ok(&["get", "priorityclass", "high", "-o", "json"], None)
            .await?,
    )?;
    ensure!(pc["value"] == 1000 && pc["description"] == "urgent", "{pc}");

    // A bad generator request gets Kubernetes' validation error, and
    // nothing is written.
    let out = cp
        .kubectl(
            &[
                "create",
                "deployment",
                "Bad_Name",
                "-n",
                "gen",
                "--image=busybox",
            ],
            None,
        )
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("Bad_Name") && err.contains("is invalid"),
        "{err}"
    );
    let out = cp
        .kubectl(&["get", "deployment", "Bad_Name", "-n", "gen"], None)
        .await?;
    ensure!(!out.status.success(), "an invalid deployment was written");
    cp.stop().await
}
