//! Flow observability for real: a two-node lab cluster whose agents export
//! flows over OTLP/gRPC to a receiver this test runs (OpenTelemetry's own
//! service definitions, `opentelemetry-proto`), listening in node-1's
//! network namespace on its fabric address so both agents reach it.
//!
//! A client pod on node-2 opens exactly N TCP connections to a pod on
//! node-1 over IPv4, N over IPv6 and N through a dual-stack Service of
//! each family; exactly 4N flow records arrive, each naming the client pod
//! and namespace, an echo pod as destination, port 9000 and plausible byte
//! counts (the reply is the pod's name). A UDP exchange ends by the idle
//! timeout. `shoal flows` on node-2 shows the flows. With the receiver
//! stopped, connections keep completing and node-2's /metrics counts the
//! failed exports.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{
            ExportLogsServiceRequest, ExportLogsServiceResponse,
            logs_service_server::{LogsService, LogsServiceServer},
        },
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, KeyValue, any_value},
};
use serde_json::Value;
use shoal_e2e::{
    cluster::{ClusterConfig, LabCluster},
    lab::Lab,
};

use super::ready;

const WAIT: Duration = Duration::from_secs(90);
/// Connections per family and path. CI runs the full 200.
const N: usize = 200;
const OTLP_PORT: u16 = 4317;
const UDP_IDLE: &str = "3s";

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: echo-a
  labels: {app: echo}
spec:
  nodeSelector: {kubernetes.io/hostname: node-1}
  containers:
  - name: echo
    image: busybox
    command: ["nc", "-ll", "-p", "9000", "-e", "hostname"]
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: echo}
  ports: [{name: name, port: 80, targetPort: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  containers:
  - name: sh
    image: busybox
    command: ["sleep", "3600"]
"#;

/// One received log record: its attributes as strings, and the resource's.
#[derive(Clone, Debug)]
struct Received {
    attrs: BTreeMap<String, String>,
    resource: BTreeMap<String, String>,
}

fn value_string(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn to_map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value_string(&kv.value)))
        .collect()
}

/// What the receiver got.
#[derive(Default)]
struct Store {
    logs: Mutex<Vec<Received>>,
    metric_names: Mutex<Vec<(String, BTreeMap<String, String>)>>,
}

#[derive(Clone)]
struct Receiver(Arc<Store>);

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut logs = self.0.logs.lock().unwrap_or_else(|e| e.into_inner());
        for rl in request.into_inner().resource_logs {
            let resource = rl
                .resource
                .as_ref()
                .map(|r| to_map(&r.attributes))
                .unwrap_or_default();
            for sl in rl.scope_logs {
                for lr in sl.log_records {
                    logs.push(Received {
                        attrs: to_map(&lr.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut names = self
            .0
            .metric_names
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for rm in request.into_inner().resource_metrics {
            let resource = rm
                .resource
                .as_ref()
                .map(|r| to_map(&r.attributes))
                .unwrap_or_default();
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    names.push((m.name, resource.clone()));
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        _request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        // The agents' own spans: accepted, not looked at.
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Binds `addr` inside the network namespace at `netns` (a listening
/// socket keeps its namespace when handed to another thread).
fn listen_in(netns: std::path::PathBuf, addr: SocketAddr) -> Result<std::net::TcpListener> {
    std::thread::spawn(move || -> Result<std::net::TcpListener> {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let l = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the OTLP receiver on {addr}"))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the listener thread panicked"))?
}

/// `GET /metrics` of node `host`'s agent.
fn agent_metrics(host: &shoal_e2e::lab::Host) -> Result<String> {
    let target = host.v4(10256);
    let netns = host.netns_path();
    std::thread::spawn(move || -> Result<String> {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(s, "GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the metrics thread panicked"))?
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn json(c: &LabCluster, args: &[&str]) -> Result<Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&c.kubectl_ok(&full, None)?).context("kubectl's JSON")
}

fn ips(v: &Value, field: &str) -> Vec<IpAddr> {
    v[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().or_else(|| x["ip"].as_str())?.parse().ok())
        .collect()
}

/// `n` connections from the client pod to `ip:port`, each reading the
/// reply: how many answered and how long it took.
fn connect_n(c: &LabCluster, ip: IpAddr, port: u16, n: usize) -> Result<(usize, Duration)> {
    let script = format!(
        "ok=0; for i in $(seq {n}); do nc -w 3 {ip} {port} </dev/null | grep -q . && ok=$((ok+1)); done; echo $ok"
    );
    let start = Instant::now();
    let out = c.kubectl(&["exec", "client", "--", "sh", "-c", &script], None)?;
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok = stdout.trim().parse::<usize>().with_context(|| {
        format!(
            "client → {ip}:{port}: {stdout:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((ok, took))
}

#[test]
fn flows_reach_a_real_otlp_receiver_once_each() -> Result<()> {
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 2, &dir)?;
    cfg.agent_args = vec!["--flow-udp-idle".into(), UDP_IDLE.into()];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // node-1's fabric address, where the receiver will listen: lab host i
    // is the fabric's network + HOST_NUMBER_OFFSET + i.
    let node1_v4 = std::net::Ipv4Addr::from(
        u32::from(shoal_e2e::lab::NODE_NET_V4) + u32::from(shoal_e2e::lab::HOST_NUMBER_OFFSET) + 1,
    );
    cfg.env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://{node1_v4}:{OTLP_PORT}"),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL".into(), "1000".into()),
    ];
    let mut c = LabCluster::start(cfg)?;
    let node1 = c.host(0);
    ensure!(
        node1.ipv4() == node1_v4,
        "node-1's fabric address is {}, not the {node1_v4} the agents export to",
        node1.ipv4()
    );
    let store = Arc::new(Store::default());
    let listener = listen_in(node1.netns_path(), node1.v4(OTLP_PORT))?;
    let receiver = {
        let store = store.clone();
        let _entered = rt.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        rt.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(LogsServiceServer::new(Receiver(store.clone())))
                .add_service(MetricsServiceServer::new(Receiver(store.clone())))
                .add_service(TraceServiceServer::new(Receiver(store)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        })
    };

    c.apply(PODS)?;
    c.wait_for("echo-a and client Ready", WAIT, |c| {
        let pods = json(c, &["pods"])?;
        let names: Vec<&str> = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| ready(p))
            .filter_map(|p| p["metadata"]["name"].as_str())
            .collect();
        Ok((names.contains(&"echo-a") && names.contains(&"client")).then_some(()))
    })?;
    let echo_ips = ips(&json(&c, &["pod", "echo-a"])?["status"], "podIPs");
    let svc_ips = ips(&json(&c, &["service", "echo"])?["spec"], "clusterIPs");
    ensure!(
        echo_ips.len() == 2 && svc_ips.len() == 2,
        "echo-a should have two pod IPs ({echo_ips:?}) and the Service two ClusterIPs ({svc_ips:?})"
    );
    // The Service is programmed once one connection through it answers.
    for ip in &svc_ips {
        c.wait_for(&format!("client reaches {ip}:80"), WAIT, |c| {
            Ok((connect_n(c, *ip, 80, 1)?.0 == 1).then_some(()))
        })?;
    }
    // Let those warm-up flows be exported, then count from here.
    std::thread::sleep(Duration::from_secs(2));
    let baseline = store.logs.lock().unwrap_or_else(|e| e.into_inner()).len();

    let mut took = Duration::ZERO;
    let targets = [
        (echo_ips[0], 9000),
        (echo_ips[1], 9000),
        (svc_ips[0], 80),
        (svc_ips[1], 80),
    ];
    for (ip, port) in targets {
        let (ok, t) = connect_n(&c, ip, port, N)?;
        ensure!(
            ok == N,
            "client → {ip}:{port}: {ok} of {N} connections answered"
        );
        took += t;
    }

    let mine = |r: &Received| {
        r.attrs.get("k8s.pod.name").map(String::as_str) == Some("client")
            && r.attrs.get("destination.port").map(String::as_str) == Some("9000")
            && r.attrs.get("network.transport").map(String::as_str) == Some("tcp")
    };
    let count = |store: &Store| {
        store.logs.lock().unwrap_or_else(|e| e.into_inner())[baseline..]
            .iter()
            .filter(|r| mine(r))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&store) < 4 * N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing more may come: one record per connection.
    std::thread::sleep(Duration::from_secs(3));
    let records: Vec<Received> = store.logs.lock().unwrap_or_else(|e| e.into_inner())[baseline..]
        .iter()
        .filter(|r| mine(r))
        .cloned()
        .collect();
    ensure!(
        records.len() == 4 * N,
        "{} flow records for 4 × {N} connections from client to port 9000; agent logs:\n{}",
        records.len(),
        c.logs_tail(40)
    );
    let by_type = |t: &str| {
        records
            .iter()
            .filter(|r| r.attrs["network.type"] == t)
            .count()
    };
    ensure!(
        by_type("ipv4") == 2 * N && by_type("ipv6") == 2 * N,
        "records per family: ipv4 {}, ipv6 {} (expected {} each)",
        by_type("ipv4"),
        by_type("ipv6"),
        2 * N
    );
    for r in &records {
        let a = &r.attrs;
        let get = |k: &str| a.get(k).map(String::as_str).unwrap_or_default();
        ensure!(
            get("k8s.namespace.name") == "default"
                && get("shoal.flow.destination.pod") == "echo-a"
                && get("shoal.flow.destination.namespace") == "default"
                && get("k8s.node.name") == "node-2"
                && get("shoal.flow.verdict") == "forwarded"
                && echo_ips
                    .iter()
                    .any(|ip| ip.to_string() == get("destination.address")),
            "a flow record does not name client → default/echo-a:9000 forwarded: {a:?}"
        );
        ensure!(
            get("shoal.flow.destination.services") == "default/echo",
            "the backend's Service is missing: {a:?}"
        );
        let sent: u64 = get("shoal.flow.bytes_sent").parse().unwrap_or(0);
        let received: u64 = get("shoal.flow.bytes_received").parse().unwrap_or(0);
        // SYN, ACK, FIN at least one way; the reply carries "echo-a\n".
        ensure!(
            (150..10_000).contains(&sent) && (150 + 7..10_000).contains(&received),
            "implausible byte counts: sent {sent}, received {received}: {a:?}"
        );
        ensure!(
            r.resource.get("k8s.node.name").map(String::as_str) == Some("node-2")
                && r.resource.get("k8s.cluster.name").map(String::as_str) == Some("shoal"),
            "resource attributes: {:?}",
            r.resource
        );
    }

    // Metrics arrive too, with the resource attributes.
    c.wait_for("flow metrics at the receiver", WAIT, |_| {
        let names = store.metric_names.lock().unwrap_or_else(|e| e.into_inner());
        Ok(names
            .iter()
            .any(|(n, r)| n == "shoal.flows" && r.get("k8s.node.name").is_some())
            .then_some(()))
    })?;

    // A UDP datagram's flow ends by the idle timeout.
    let sent_at = Instant::now();
    let out = c.kubectl(
        &[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            // busybox's nc has no UDP; tftp sends one read request (and
            // its retries, from the same port) to a port nothing answers.
            &format!(
                "timeout 2 tftp -g -r flows -l /tmp/flows {} 9200; true",
                echo_ips[0]
            ),
        ],
        None,
    )?;
    ensure!(out.status.success(), "udp send failed: {out:?}");
    let udp = c.wait_for("the UDP flow's idle-end record", WAIT, |_| {
        let logs = store.logs.lock().unwrap_or_else(|e| e.into_inner());
        Ok(logs
            .iter()
            .find(|r| {
                r.attrs.get("network.transport").map(String::as_str) == Some("udp")
                    && r.attrs.get("destination.port").map(String::as_str) == Some("9200")
            })
            .cloned())
    })?;
    ensure!(
        udp.attrs.get("shoal.flow.end").map(String::as_str) == Some("idle-end")
            && sent_at.elapsed() >= Duration::from_secs(3),
        "the UDP flow should end by the 3 s idle timeout: {:?} after {:?}",
        udp.attrs,
        sent_at.elapsed()
    );

    // `shoal flows` on node-2 shows the client's flows. Its agent is named
    // by its pin directory, as for `shoal dataplane --node`: lab clusters
    // running side by side all have a node-2.
    let node2 = c.host(1).pin_dir();
    let node2 = node2
        .file_name()
        .and_then(|n| n.to_str())
        .context("node-2's pin dir name")?;
    let out = std::process::Command::new(shoal_e2e::cluster::shoal_binary()?)
        .args([
            "flows", "--node", node2, "--pod", "client", "--port", "9000", "--last", "5",
        ])
        .output()
        .context("running shoal flows")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && text.lines().count() == 5
            && text
                .lines()
                .all(|l| l.contains("default/client") && l.contains("default/echo-a")),
        "shoal flows --node node-2 --pod client --port 9000 --last 5: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The receiver stops: traffic goes on as fast, exports fail and are counted.
    receiver.abort();
    drop(rt);
    let before = agent_metrics(c.host(1))?;
    let failed_before = counter(&before, "shoal_flow_export_failed_total")
        + counter(&before, "shoal_flow_export_dropped_total");
    let (ok, t) = connect_n(&c, echo_ips[0], 9000, N)?;
    ensure!(
        ok == N,
        "with the receiver down: {ok} of {N} connections answered"
    );
    ensure!(
        t < took / 4 * 2 + Duration::from_secs(5),
        "with the receiver down {N} connections took {t:?}, against {:?} for each batch before",
        took / 4
    );
    c.wait_for("failed exports counted on node-2", WAIT, |c| {
        let m = agent_metrics(c.host(1))?;
        let failed = counter(&m, "shoal_flow_export_failed_total")
            + counter(&m, "shoal_flow_export_dropped_total");
        Ok((failed >= failed_before + N as u64).then_some(()))
    })?;
    Ok(())
}
