//! Cluster DNS as a user meets it: shoal-dns fed by the API (Services,
//! EndpointSlices and Pods created through it), asked with the real `dig`
//! on loopback; names outside the cluster forwarded to an nsd the test
//! starts; bad input answered or refused while the server keeps serving.

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use shoal_dns::{ClusterView, Config, Server, WatchedKind};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::oneshot,
};

use super::ControlPlane;

const DIG: &str = "/usr/bin/dig";
const NSD: &str = "/usr/sbin/nsd";
/// A new Service must resolve this soon after its create returns (the goal
/// is 100 ms; the bound is generous for a loaded CI machine, the benchmark
/// measures it precisely).
const FRESH: Duration = Duration::from_secs(2);

async fn client(cp: &ControlPlane) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig)
        .with_context(|| format!("reading {}", cp.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("the kubeconfig the API server wrote")?;
    Ok(Client::try_from(config)?)
}

/// A running shoal-dns on a loopback port.
struct Dns {
    addr: SocketAddr,
    metrics: std::sync::Arc<shoal_dns::Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), shoal_dns::Error>>,
}

impl Dns {
    async fn start(view: ClusterView, upstreams: Vec<SocketAddr>) -> Result<Self> {
        let config = Config {
            listen: vec!["127.0.0.1:0".parse()?],
            upstreams,
            tcp_idle_timeout: Duration::from_secs(30),
            ..Config::default()
        };
        let server = Server::bind(config, view)
            .await
            .context("binding shoal-dns on loopback")?;
        let addr = server.local_addrs()[0];
        let metrics = server.metrics();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            metrics,
            stop: Some(tx),
            task,
        })
    }

    /// Runs `dig @addr -p port ARGS` and returns its output; fails if dig fails.
    async fn dig(&self, args: &[&str]) -> Result<String> {
        if !Path::new(DIG).exists() {
            bail!("{DIG} is missing: install dnsutils (`cargo xtask setup` does)");
        }
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new(DIG)
                .arg(format!("@{}", self.addr.ip()))
                .arg("-p")
                .arg(self.addr.port().to_string())
                .args(["+time=2", "+tries=2"])
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .with_context(|| format!("dig {args:?} did not finish"))??;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "dig {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(text)
    }

    /// The answer section's data (`dig +short`), sorted.
    async fn short(&self, args: &[&str]) -> Result<Vec<String>> {
        let mut all = vec!["+short"];
        all.extend_from_slice(args);
        let mut v: Vec<String> = self
            .dig(&all)
            .await?
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        v.sort();
        Ok(v)
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("shoal-dns did not stop")???;
        Ok(())
    }
}

/// `status: X` of a full dig answer.
fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
}

/// The section of a full dig answer (`ANSWER`, `AUTHORITY`, ...): its record lines.
fn section<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!(";; {name} SECTION:");
    out.split(&header)
        .nth(1)
        .map(|rest| {
            rest.lines()
                .skip(1)
                .take_while(|l| !l.trim().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// A DNS query packet for `name` (a hand-written one keeps the freshness
/// probe free of process start-up time).
fn query_packet(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p
}

/// Asks over UDP until `name` has an answer (A); returns how long it took.
async fn until_resolves(addr: SocketAddr, name: &str, within: Duration) -> Result<Duration> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let start = Instant::now();
    let mut id = 0u16;
    let mut buf = [0u8; 1500];
    loop {
        id = id.wrapping_add(1);
        sock.send_to(&query_packet(id, name, 1), addr).await?;
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await
            && n >= 12
            && u16::from_be_bytes([buf[0], buf[1]]) == id
            && buf[3] & 0x0f == 0
            // An answer, or the truncation flag that stands for one too big for UDP.
            && (u16::from_be_bytes([buf[6], buf[7]]) > 0 || buf[2] & 0x02 != 0)
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!("{name} did not resolve within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn service(name: &str, spec: serde_json::Value) -> Result<Service> {
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
    )?)
}

fn slice(name: &str, svc: &str, family: &str, body: serde_json::Value) -> Result<EndpointSlice> {
    let mut v = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": family,
    });
    if let (Some(o), Some(extra)) = (v.as_object_mut(), body.as_object()) {
        o.extend(extra.clone());
    }
    Ok(serde_json::from_value(v)?)
}

/// Every record type a user asks for, answered from the API's objects;
/// a new Service resolves within moments of its create; an unready
/// endpoint leaves the headless answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_resolves_services_endpoints_and_pods_created_through_the_api() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let client = client(&cp).await?;
    let view = ClusterView::new("cluster.local", 5)?;
    let watch = tokio::spawn(shoal_dns::watch(client.clone(), view.clone()));
    tokio::time::timeout(Duration::from_secs(30), view.wait_synced())
        .await
        .context("the DNS view did not list Services, EndpointSlices and Pods in 30 s")?;
    let dns = Dns::start(view, Vec::new()).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();

    // A dual-stack Service: A and AAAA, SRV per named port, PTR per family.
    let web = services
        .create(
            &pp,
            &service(
                "web",
                json!({"ipFamilyPolicy": "RequireDualStack",
                       "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
            )?,
        )
        .await?;
    let created = Instant::now();
    let fresh = until_resolves(dns.addr, "web.default.svc.cluster.local", FRESH).await?;
    eprintln!(
        "web.default.svc.cluster.local resolved {fresh:?} after its create returned ({:?} incl. the first query)",
        created.elapsed()
    );
    let ips = web
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ips.clone())
        .context("the API allocated no ClusterIPs")?;
    let v4 = ips
        .iter()
        .find(|ip| ip.contains('.'))
        .context("no IPv4 ClusterIP")?;
    let v6 = ips
        .iter()
        .find(|ip| ip.contains(':'))
        .context("no IPv6 ClusterIP")?;
    assert_eq!(
        dns.short(&["web.default.svc.cluster.local", "A"]).await?,
        [v4.as_str()]
    );
    assert_eq!(
        dns.short(&["web.default.svc.cluster.local", "AAAA"])
            .await?,
        [v6.as_str()]
    );
    assert_eq!(
        dns.short(&["_http._tcp.web.default.svc.cluster.local", "SRV"])
            .await?,
        ["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        dns.short(&["-x", v4]).await?,
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        dns.short(&["-x", v6]).await?,
        ["web.default.svc.cluster.local."]
    );
    let full = dns.dig(&["web.default.svc.cluster.local", "A"]).await?;
    assert!(
        full.contains(" aa "),
        "cluster answers are authoritative: {full}"
    );
    assert!(
        section(&full, "ANSWER")
            .iter()
            .any(|l| l.split_whitespace().nth(1) == Some("5")),
        "TTL 5: {full}"
    );
    assert!(full.contains("; EDNS: version: 0"), "EDNS answered: {full}");

    // NXDOMAIN and NODATA, both with the SOA in the authority section.
    let nx = dns.dig(&["nope.default.svc.cluster.local", "A"]).await?;
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    assert!(
        section(&nx, "AUTHORITY").iter().any(|l| l.contains("SOA")),
        "{nx}"
    );
    let nodata = dns.dig(&["web.default.svc.cluster.local", "MX"]).await?;
    assert_eq!(status(&nodata), "NOERROR", "{nodata}");
    assert!(section(&nodata, "ANSWER").is_empty(), "{nodata}");
    assert!(
        section(&nodata, "AUTHORITY")
            .iter()
            .any(|l| l.contains("SOA")),
        "{nodata}"
    );

    // A headless Service with EndpointSlices in Kubernetes' shape, both families.
    services
        .create(
            &pp,
            &service(
                "db",
                json!({"clusterIP": "None", "ipFamilyPolicy": "RequireDualStack",
                       "ports": [{"name": "pg", "port": 5432}]}),
            )?,
        )
        .await?;
    let v4_slice = |ready: bool| {
        slice(
            "db-v4",
            "db",
            "IPv4",
            json!({
                "endpoints": [
                    {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": ready}},
                    {"addresses": ["10.244.2.6"], "hostname": "db-1", "conditions": {"ready": true}},
                ],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            }),
        )
    };
    slices.create(&pp, &v4_slice(true)?).await?;
    slices
        .create(
            &pp,
            &slice(
                "db-v6",
                "db",
                "IPv6",
                json!({
                    "endpoints": [{"addresses": ["fd00:10:244:1::5"], "hostname": "db-0",
                                   "conditions": {"ready": true}}],
                    "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
                }),
            )?,
        )
        .await?;
    until_resolves(dns.addr, "db-1.db.default.svc.cluster.local", FRESH).await?;
    assert_eq!(
        dns.short(&["db.default.svc.cluster.local", "A"]).await?,
        ["10.244.1.5", "10.244.2.6"]
    );
    assert_eq!(
        dns.short(&["db.default.svc.cluster.local", "AAAA"]).await?,
        ["fd00:10:244:1::5"]
    );
    assert_eq!(
        dns.short(&["db-0.db.default.svc.cluster.local", "AAAA"])
            .await?,
        ["fd00:10:244:1::5"]
    );
    assert_eq!(
        dns.short(&["_pg._tcp.db.default.svc.cluster.local", "SRV"])
            .await?,
        [
            "0 100 5432 db-0.db.default.svc.cluster.local.",
            "0 100 5432 db-1.db.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        dns.short(&["-x", "10.244.2.6"]).await?,
        ["db-1.db.default.svc.cluster.local."]
    );
    // db-0 turns unready: it leaves the answer as soon as the slice says so.
    let mut unready = v4_slice(false)?;
    unready.metadata.resource_version = None;
    slices
        .patch("db-v4", &PatchParams::default(), &Patch::Merge(&unready))
        .await?;
    let deadline = Instant::now() + FRESH;
    loop {
        let now = dns.short(&["db.default.svc.cluster.local", "A"]).await?;
        if now == ["10.244.2.6"] {
            break;
        }
        ensure!(Instant::now() < deadline, "db-0 still answered: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // ExternalName: a CNAME.
    services
        .create(
            &pp,
            &service(
                "ext",
                json!({"type": "ExternalName", "externalName": "db.example.org"}),
            )?,
        )
        .await?;
    let deadline = Instant::now() + FRESH;
    loop {
        let cname = dns
            .short(&["ext.default.svc.cluster.local", "CNAME"])
            .await?;
        if cname == ["db.example.org."] {
            break;
        }
        ensure!(Instant::now() < deadline, "no CNAME for ext: {cname:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A pod with both addresses: its dashed names and PTR in both families.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))?;
    pods.create(&pp, &pod).await?;
    pods.patch_status(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"podIP": "10.244.9.9",
            "podIPs": [{"ip": "10.244.9.9"}, {"ip": "fd00:10:244:9::9"}]}})),
    )
    .await?;
    until_resolves(dns.addr, "10-244-9-9.default.pod.cluster.local", FRESH).await?;
    assert_eq!(
        dns.short(&["fd00-10-244-9--9.default.pod.cluster.local", "AAAA"])
            .await?,
        ["fd00:10:244:9::9"]
    );
    assert_eq!(
        dns.short(&["-x", "10.244.9.9"]).await?,
        ["10-244-9-9.default.pod.cluster.local."]
    );
    assert_eq!(
        dns.short(&["-x", "fd00:10:244:9::9"]).await?,
        ["fd00-10-244-9--9.default.pod.cluster.local."]
    );

    // A headless answer too big for UDP: truncated there, whole over TCP.
    services
        .create(&pp, &service("big", json!({"clusterIP": "None"}))?)
        .await?;
    let endpoints: Vec<_> = (1..=200)
        .map(|i| json!({"addresses": [format!("10.244.{}.{}", 100 + i / 250, i % 250)]}))
        .collect();
    slices
        .create(
            &pp,
            &slice("big-1", "big", "IPv4", json!({"endpoints": endpoints}))?,
        )
        .await?;
    until_resolves(dns.addr, "big.default.svc.cluster.local", FRESH).await?;
    let udp = dns
        .dig(&["+notcp", "+ignore", "big.default.svc.cluster.local", "A"])
        .await?;
    assert!(udp.contains(" tc"), "the UDP answer is truncated: {udp}");
    let fallback = dns
        .dig(&["+notcp", "big.default.svc.cluster.local", "A"])
        .await?;
    assert!(
        fallback.contains("Truncated, retrying in TCP mode"),
        "{fallback}"
    );
    assert_eq!(section(&fallback, "ANSWER").len(), 200, "{fallback}");
    let tcp = dns
        .dig(&["+tcp", "big.default.svc.cluster.local", "A"])
        .await?;
    assert_eq!(section(&tcp, "ANSWER").len(), 200, "{tcp}");
    let plain = dns
        .dig(&[
            "+noedns",
            "+notcp",
            "+ignore",
            "big.default.svc.cluster.local",
            "A",
        ])
        .await?;
    assert!(plain.contains(" tc"), "without EDNS, 512 bytes: {plain}");

    // The freshness check above may ask before the new Service reached the
    // view (an NXDOMAIN), so the deliberate NXDOMAIN is at least one of them.
    let metrics = dns.metrics.render();
    let nxdomain: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(nxdomain >= 1, "no A NXDOMAIN counted: {metrics}");
    dns.stop().await?;
    watch.abort();
    cp.stop().await
}

/// nsd on loopback serving `example.test`, as the upstream.
struct Nsd {
    addr: SocketAddr,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Nsd {
    async fn start() -> Result<Self> {
        if !Path::new(NSD).exists() {
            bail!("{NSD} is missing: install nsd (`cargo xtask setup` does)");
        }
        let dir = tempfile::tempdir()?;
        let addr = super::free_addr()?;
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("example.test.zone"),
            "$ORIGIN example.test.\n$TTL 60\n\
             @ IN SOA ns.example.test. admin.example.test. 1 3600 600 86400 30\n\
             @ IN NS ns.example.test.\n\
             ns IN A 192.0.2.1\n\
             www IN A 192.0.2.10\n\
             www IN AAAA 2001:db8::10\n\
             alias IN CNAME www.example.test.\n",
        )?;
        let conf = format!(
            "server:\n  ip-address: {ip}@{port}\n  port: {port}\n  username: \"\"\n  chroot: \"\"\n  \
             zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  \
             xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  \
             logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 1\n\
             remote-control:\n  control-enable: no\n\
             zone:\n  name: example.test\n  zonefile: \"{d}/example.test.zone\"\n",
            ip = addr.ip(),
            port = addr.port(),
        );
        let conf_path = dir.path().join("nsd.conf");
        std::fs::write(&conf_path, conf)?;
        let child = tokio::process::Command::new(NSD)
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nsd")?;
        let mut nsd = Self {
            addr,
            child,
            _dir: dir,
        };
        // Ready once it answers.
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        let start = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            if let Some(status) = nsd.child.try_wait()? {
                let log =
                    std::fs::read_to_string(nsd._dir.path().join("nsd.log")).unwrap_or_default();
                bail!("nsd exited with {status}: {log}");
            }
            sock.send_to(&query_packet(1, "www.example.test", 1), addr)
                .await?;
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(100), sock.recv_from(&mut buf)).await
            {
                return Ok(nsd);
            }
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "nsd did not answer on {addr} in 10 s"
            );
        }
    }
}

/// Names outside the cluster go to the upstream, repeated ones come from
/// the cache, and the upstream's NXDOMAIN (with its SOA) reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_cluster_are_forwarded_to_the_upstream_and_cached() -> Result<()> {
    let nsd = Nsd::start().await?;
    let view = ClusterView::new("cluster.local", 5)?;
    for k in [
        WatchedKind::Services,
        WatchedKind::EndpointSlices,
        WatchedKind::Pods,
    ] {
        view.mark_synced(k);
    }
    let dns = Dns::start(view, vec![nsd.addr]).await?;
    assert_eq!(dns.short(&["www.example.test", "A"]).await?, ["192.0.2.10"]);
    assert_eq!(
        dns.short(&["www.example.test", "AAAA"]).await?,
        ["2001:db8::10"]
    );
    assert_eq!(
        dns.short(&["alias.example.test", "A"]).await?,
        ["192.0.2.10", "www.example.test."]
    );
    let before = dns.metrics.cache_hits();
    let again = dns.dig(&["www.example.test", "A"]).await?;
    assert_eq!(status(&again), "NOERROR", "{again}");
    assert!(
        !again.contains(" aa "),
        "forwarded answers are not authoritative: {again}"
    );
    assert_eq!(
        dns.metrics.cache_hits(),
        before + 1,
        "the second ask is a cache hit"
    );
    let nx = dns.dig(&["nope.example.test", "A"]).await?;
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    assert!(
        section(&nx, "AUTHORITY")
            .iter()
            .any(|l| l.contains("SOA") && l.contains("example.test")),
        "the upstream's SOA: {nx}"
    );
    // Cluster names never leave: NXDOMAIN from here, with our SOA.
    let local = dns
        .dig(&["www.example.test.default.svc.cluster.local", "A"])
        .await?;
    assert_eq!(status(&local), "NXDOMAIN", "{local}");
    assert!(
        section(&local, "AUTHORITY")
            .iter()
            .any(|l| l.contains("cluster.local")),
        "{local}"
    );
    dns.stop().await?;
    drop(nsd);
    Ok(())
}

/// Malformed packets, a wrong class, oversized queries and many idle TCP
/// connections: each answered or refused, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_or_refused_and_the_server_keeps_serving() -> Result<()> {
    let view = ClusterView::new("cluster.local", 5)?;
    for k in [
        WatchedKind::Services,
        WatchedKind::EndpointSlices,
        WatchedKind::Pods,
    ] {
        view.mark_synced(k);
    }
    view.apply_service(&service(
        "web",
        json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"]}),
    )?);
    let dns = Dns::start(view, Vec::new()).await?;
    let healthy = || async {
        let a = dns.short(&["web.default.svc.cluster.local", "A"]).await?;
        ensure!(a == ["10.96.0.20"], "over UDP: {a:?}");
        let t = dns
            .short(&["+tcp", "web.default.svc.cluster.local", "A"])
            .await?;
        ensure!(t == ["10.96.0.20"], "over TCP: {t:?}");
        anyhow::Ok(())
    };
    healthy().await?;

    // Malformed: too short for a header, a header promising a question that
    // is not there, a compression loop, a response sent as a query, junk.
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let mut loop_ptr = query_packet(9, "x", 1);
    loop_ptr.truncate(12);
    loop_ptr.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    let mut response = query_packet(10, "web.default.svc.cluster.local", 1);
    response[2] |= 0x80;
    let junk: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
    for p in [
        vec![0x12],
        vec![0, 8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        loop_ptr,
        response,
        junk,
        vec![0u8; 4000],
    ] {
        sock.send_to(&p, dns.addr).await?;
    }
    // A header that parses gets FORMERR back, not silence.
    let mut buf = [0u8; 1500];
    sock.send_to(&[0, 8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0], dns.addr)
        .await?;
    let mut formerr = false;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await
            && n >= 12
            && buf[0..2] == [0, 8]
            && buf[3] & 0x0f == 1
        {
            formerr = true;
            break;
        }
    }
    assert!(formerr, "a header without its question is answered FORMERR");
    healthy().await?;

    // The wrong class: refused.
    let chaos = dns.dig(&["-c", "CH", "version.bind", "TXT"]).await?;
    assert_eq!(status(&chaos), "REFUSED", "{chaos}");
    let hesiod = dns
        .dig(&["-c", "HS", "web.default.svc.cluster.local", "A"])
        .await?;
    assert_eq!(status(&hesiod), "REFUSED", "{hesiod}");

    // An oversized query over TCP: 65,535 bytes of a query plus junk.
    let mut big = query_packet(11, "web.default.svc.cluster.local", 1);
    big.resize(65_535, 0xab);
    let mut conn = TcpStream::connect(dns.addr).await?;
    conn.write_all(&(big.len() as u16).to_be_bytes()).await?;
    conn.write_all(&big).await?;
    let mut len = [0u8; 2];
    match tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut len)).await {
        // Answered (FORMERR or the record) or the connection closed: both are clean.
        Ok(Ok(_)) | Ok(Err(_)) => {}
        Err(_) => bail!("an oversized TCP query left the connection hanging for 5 s"),
    }
    drop(conn);
    healthy().await?;

    // 1,000 TCP connections held open (half sent half a length prefix):
    // queries over UDP and over a new TCP connection are still answered.
    let mut held = Vec::new();
    for i in 0..1000 {
        let mut c = TcpStream::connect(dns.addr)
            .await
            .with_context(|| format!("TCP connection {i}"))?;
        if i % 2 == 0 {
            c.write_all(&[0]).await?;
        }
        held.push(c);
    }
    let start = Instant::now();
    healthy().await?;
    eprintln!(
        "answered over UDP and TCP with 1,000 idle TCP connections in {:?}",
        start.elapsed()
    );
    drop(held);
    healthy().await?;
    dns.stop().await
}
