//! Service map sync with real traffic: the agent's sync loop watches
//! Services and EndpointSlices on a real API server and programs the eBPF
//! maps of a lab host (host-1, whose cgroup carries the socket-level load
//! balancer); probe servers on host-2 and host-3 are the endpoints. What a
//! user sees: ClusterIPs of both families reach both backends over TCP and
//! UDP, an endpoint that stops being ready stops getting connections within
//! a second, a Service without endpoints refuses at once, a deleted one is
//! gone, a restarted agent takes the pinned maps over, and
//! `shoal dataplane services|backends|drops` show what is programmed.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use shoal_agent::{
    Dataplane, DataplaneConfig, Frontend, PinnedMaps, Protocol, ServiceRow,
    services::{SyncConfig, run},
};
use shoal_e2e::lab::{Host, Lab, Probe, ProbeServer};
use tokio::task::JoinHandle;

use super::ControlPlane;

const TIMEOUT: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(15);
const BACKEND_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;

fn probe() -> Probe {
    Probe::new(env!("CARGO_BIN_EXE_probe"))
}

/// The API, a 3-host lab with the dataplane on host-1, probe servers `b2`
/// and `b3` on host-2 and host-3 (both families, TCP and UDP), and the
/// sync loop running against the API.
struct Setup {
    cp: ControlPlane,
    client: Client,
    lab: Lab,
    dataplane: Option<Arc<Mutex<Dataplane>>>,
    config: DataplaneConfig,
    sync: Option<JoinHandle<()>>,
    _servers: Vec<ProbeServer>,
}

impl Setup {
    async fn new(hosts: usize) -> Result<Self> {
        let cp = ControlPlane::start().await?;
        let client = shoal_controllers::client_from_kubeconfig(&cp.kubeconfig).await?;
        let lab = tokio::task::spawn_blocking(move || Lab::create(&Lab::unique_prefix(), hosts))
            .await?
            .context("creating the lab")?;
        let mut servers = Vec::new();
        for i in 2..=hosts {
            let host = lab.host(i);
            let addrs = [host.v4(BACKEND_PORT), host.v6(BACKEND_PORT)];
            servers.push(
                probe()
                    .serve(host, &format!("b{i}"), &addrs, &addrs)
                    .with_context(|| format!("backend b{i} on host-{i}"))?,
            );
        }
        let config = DataplaneConfig {
            pin_dir: lab.host(1).pin_dir().to_path_buf(),
            cgroup: lab.host(1).cgroup().to_path_buf(),
            ebpf_debug_logs: false,
        };
        let mut s = Self {
            cp,
            client,
            lab,
            dataplane: None,
            config,
            sync: None,
            _servers: servers,
        };
        s.start_agent()?;
        Ok(s)
    }

    /// Loads the dataplane on host-1 (taking over pinned maps) and starts
    /// the sync loop, as the agent does at start.
    fn start_agent(&mut self) -> Result<()> {
        let dataplane = Arc::new(Mutex::new(
            Dataplane::load(self.config.clone()).context("loading the dataplane on host-1")?,
        ));
        self.dataplane = Some(dataplane.clone());
        self.start_sync(dataplane);
        Ok(())
    }

    fn start_sync(&mut self, dataplane: Arc<Mutex<Dataplane>>) {
        let host = self.client_host();
        let config = SyncConfig::new(
            "node-1",
            vec![IpAddr::V4(host.ipv4()), IpAddr::V6(host.ipv6())],
        );
        let client = self.client.clone();
        self.sync = Some(tokio::spawn(async move {
            if let Err(e) = run(client, dataplane, config).await {
                eprintln!("service sync stopped: {e}");
            }
        }));
    }

    /// Stops the sync loop and unloads the dataplane, as an agent exit
    /// does: the programs detach, the pinned maps stay.
    async fn stop_agent(&mut self) -> Result<()> {
        if let Some(sync) = self.sync.take() {
            sync.abort();
            let _ = sync.await;
        }
        let dataplane = self.dataplane.take().context("no dataplane loaded")?;
        ensure!(
            Arc::strong_count(&dataplane) == 1,
            "the dataplane is still shared after the sync loop stopped"
        );
        drop(dataplane);
        Ok(())
    }

    fn client_host(&self) -> &Host {
        self.lab.host(1)
    }

    fn maps(&self) -> PinnedMaps {
        PinnedMaps::new(self.client_host().pin_dir())
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn slices(&self) -> Api<EndpointSlice> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Creates a dual-stack Service `name` of `type_` (ClusterIP or
    /// NodePort) with a TCP and a UDP port 80 (no selector: its slices are
    /// ours) and returns it with its ClusterIPs, IPv4 first.
    async fn create_service(&self, name: &str, type_: &str) -> Result<(Service, [IpAddr; 2])> {
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "type": type_,
                "ipFamilyPolicy": "RequireDualStack",
                "ipFamilies": ["IPv4", "IPv6"],
                "ports": [
                    {"name": "http", "port": SERVICE_PORT, "protocol": "TCP", "targetPort": BACKEND_PORT},
                    {"name": "echo", "port": SERVICE_PORT, "protocol": "UDP", "targetPort": BACKEND_PORT},
                ],
            },
        }))?;
        let svc = self
            .services()
            .create(&PostParams::default(), &svc)
            .await
            .with_context(|| format!("creating Service {name}"))?;
        let ips: Vec<IpAddr> = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ips.clone())
            .unwrap_or_default()
            .iter()
            .map(|ip| ip.parse())
            .collect::<Result<_, _>>()?;
        let (Some(v4), Some(v6)) = (
            ips.iter().find(|ip| ip.is_ipv4()),
            ips.iter().find(|ip| ip.is_ipv6()),
        ) else {
            bail!("Service {name} did not get a ClusterIP of each family: {ips:?}");
        };
        Ok((svc.clone(), [*v4, *v6]))
    }

    /// Writes Service `name`'s two slices (`<name>-v4`, `<name>-v6`) with
    /// the given lab hosts as endpoints: (host index, ready, serving,
    /// terminating).
    async fn put_slices(&self, name: &str, endpoints: &[(usize, bool, bool, bool)]) -> Result<()> {
        for (family, v6) in [("IPv4", false), ("IPv6", true)] {
            let slice_name = format!("{name}-{}", if v6 { "v6" } else { "v4" });
            let eps: Vec<Value> = endpoints
                .iter()
                .map(|(i, ready, serving, terminating)| {
                    let host = self.lab.host(*i);
                    let addr = if v6 {
                        host.ipv6().to_string()
                    } else {
                        host.ipv4().to_string()
                    };
                    json!({
                        "addresses": [addr],
                        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                        "nodeName": format!("node-{i}"),
                        "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("{name}-pod-{i}")},
                    })
                })
                .collect();
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name, "namespace": "default",
                    "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by": "shoal-e2e",
                    },
                },
                "addressType": family,
                "endpoints": eps,
                "ports": [
                    {"name": "http", "port": BACKEND_PORT, "protocol": "TCP"},
                    {"name": "echo", "port": BACKEND_PORT, "protocol": "UDP"},
                ],
            });
            let exists = self.slices().get_opt(&slice_name).await?.is_some();
            if exists {
                self.slices()
                    .patch(
                        &slice_name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"endpoints": slice["endpoints"]})),
                    )
                    .await
                    .with_context(|| format!("updating EndpointSlice {slice_name}"))?;
            } else {
                self.slices()
                    .create(&PostParams::default(), &serde_json::from_value(slice)?)
                    .await
                    .with_context(|| format!("creating EndpointSlice {slice_name}"))?;
            }
        }
        Ok(())
    }

    /// Polls the pinned maps until `pred` holds for the rows; returns how
    /// long it took.
    async fn wait_maps(
        &self,
        what: &str,
        pred: impl Fn(&[ServiceRow]) -> bool,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let rows = self.maps().services()?;
            if pred(&rows) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > WAIT {
                bail!(
                    "the maps never showed {what} in {WAIT:?}; they hold:\n{}",
                    shoal_agent::format_services(&rows)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn tcp(&self, addr: SocketAddr) -> Result<Value> {
        let host = self.client_host().clone();
        Ok(tokio::task::spawn_blocking(move || probe().tcp(&host, addr, TIMEOUT)).await??)
    }

    async fn udp(&self, addr: SocketAddr) -> Result<Value> {
        let host = self.client_host().clone();
        Ok(tokio::task::spawn_blocking(move || probe().udp(&host, addr, TIMEOUT)).await??)
    }

    async fn finish(mut self) -> Result<()> {
        self.stop_agent().await?;
        self.cp.stop().await
    }
}

/// The slot count of `frontend`, if the maps hold it.
fn slots(rows: &[ServiceRow], frontend: Frontend) -> Option<u16> {
    rows.iter()
        .find(|r| r.frontend == frontend)
        .map(|r| r.count)
}

fn frontend(ip: IpAddr, port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        address: ip,
        port,
        protocol,
    }
}

/// The backend name a probe reply came from; fails unless the request
/// succeeded and the client saw the address it asked for.
fn served_by(reply: &Value, seen_as: &str, asked: SocketAddr) -> Result<String> {
    ensure!(reply["ok"] == true, "request to {asked} failed: {reply}");
    let shown = reply[seen_as].as_str().unwrap_or_default();
    ensure!(
        shown == asked.to_string(),
        "the client must see {asked} as {seen_as}, saw {shown:?}: {reply}"
    );
    Ok(reply["body"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// Sends `n` TCP and `n` UDP requests to `addr` and counts who answered.
async fn spread(s: &Setup, addr: SocketAddr, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let reply = s.tcp(addr).await?;
        *seen.entry(served_by(&reply, "peer", addr)?).or_default() += 1;
        let reply = s.udp(addr).await?;
        *seen.entry(served_by(&reply, "from", addr)?).or_default() += 1;
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_service_follows_its_endpoint_slices_with_real_traffic() -> Result<()> {
    let s = Setup::new(3).await?;
    let (svc, [vip4, vip6]) = s.create_service("web", "NodePort").await?;
    s.put_slices("web", &[(2, true, true, false), (3, true, true, false)])
        .await?;
    let fronts: Vec<Frontend> = [vip4, vip6]
        .into_iter()
        .flat_map(|ip| {
            [Protocol::Tcp, Protocol::Udp]
                .map(|p| frontend(ip, SERVICE_PORT, p))
                .into_iter()
        })
        .collect();
    s.wait_maps("both ClusterIPs with 2 backends", |rows| {
        fronts.iter().all(|f| slots(rows, *f) == Some(2))
    })
    .await?;

    // TCP and UDP to each ClusterIP reach both backends.
    for vip in [vip4, vip6] {
        let addr = SocketAddr::new(vip, SERVICE_PORT);
        let seen = spread(&s, addr, 16).await?;
        ensure!(
            seen.len() == 2 && seen.contains_key("b2") && seen.contains_key("b3"),
            "requests to {addr} must reach b2 and b3: {seen:?}"
        );
    }

    // The NodePort answers on host-1's own address too.
    let node_port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.iter().find(|p| p.protocol.as_deref() == Some("TCP")))
        .and_then(|p| p.node_port)
        .context("the Service got no TCP NodePort")?;
    let np = SocketAddr::new(
        IpAddr::V4(s.client_host().ipv4()),
        u16::try_from(node_port)?,
    );
    s.wait_maps("the NodePort on host-1", |rows| {
        slots(rows, frontend(np.ip(), np.port(), Protocol::Tcp)) == Some(2)
    })
    .await?;
    let reply = s.tcp(np).await?;
    let name = served_by(&reply, "peer", np)?;
    ensure!(
        name == "b2" || name == "b3",
        "{np} answered by {name}: {reply}"
    );

    // b3 stops being ready: within a second no new connection goes there.
    s.put_slices("web", &[(2, true, true, false), (3, false, false, false)])
        .await?;
    let took = s
        .wait_maps("b3 out of the ClusterIPs", |rows| {
            fronts.iter().all(|f| slots(rows, *f) == Some(1))
        })
        .await?;
    ensure!(
        took < Duration::from_secs(1),
        "a not-ready endpoint left the maps only after {took:?}"
    );
    for vip in [vip4, vip6] {
        let addr = SocketAddr::new(vip, SERVICE_PORT);
        let seen = spread(&s, addr, 8).await?;
        ensure!(
            seen.keys().all(|k| k == "b2"),
            "after b3 became not ready, {addr} must only reach b2: {seen:?}"
        );
    }

    // Only b3 left, terminating but serving: it takes the traffic.
    s.put_slices("web", &[(2, false, false, false), (3, false, true, true)])
        .await?;
    s.wait_maps("b3 back as a terminating fallback", |rows| {
        fronts.iter().all(|f| slots(rows, *f) == Some(1))
    })
    .await?;
    let addr = SocketAddr::new(vip4, SERVICE_PORT);
    let seen = spread(&s, addr, 4).await?;
    ensure!(
        seen.keys().all(|k| k == "b3"),
        "with no ready endpoint, the serving terminating one takes {addr}: {seen:?}"
    );

    // No endpoints: connects are refused at once.
    s.put_slices("web", &[]).await?;
    s.wait_maps("the ClusterIPs without backends", |rows| {
        fronts.iter().all(|f| slots(rows, *f) == Some(0))
    })
    .await?;
    for vip in [vip4, vip6] {
        let addr = SocketAddr::new(vip, SERVICE_PORT);
        let started = Instant::now();
        let reply = s.tcp(addr).await?;
        ensure!(
            reply["ok"] == false && reply["raw_os_error"] == libc::ECONNREFUSED,
            "a connect to {addr} without endpoints must be refused: {reply}"
        );
        ensure!(
            started.elapsed() < Duration::from_secs(1),
            "the refusal took {:?}",
            started.elapsed()
        );
    }

    // Deleting the Service removes its frontends: the VIP is unreachable.
    s.services()
        .delete("web", &DeleteParams::default())
        .await
        .context("deleting Service web")?;
    s.wait_maps("no frontend left for web", |rows| {
        fronts.iter().all(|f| slots(rows, *f).is_none())
            && slots(rows, frontend(np.ip(), np.port(), Protocol::Tcp)).is_none()
    })
    .await?;
    for vip in [vip4, vip6] {
        let addr = SocketAddr::new(vip, SERVICE_PORT);
        let reply = s.tcp(addr).await?;
        let errno = reply["raw_os_error"].as_i64().unwrap_or_default();
        ensure!(
            reply["ok"] == false
                && [libc::EHOSTUNREACH, libc::ENETUNREACH].contains(&(errno as i32)),
            "after the delete, {addr} must hit the lab's unreachable route: {reply}"
        );
    }
    s.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_takes_the_maps_over_and_collects_services_deleted_meanwhile()
-> Result<()> {
    let mut s = Setup::new(3).await?;
    let (_, [vip4, vip6]) = s.create_service("web", "NodePort").await?;
    s.put_slices("web", &[(2, true, true, false), (3, true, true, false)])
        .await?;
    let (_, [old4, old6]) = s.create_service("old", "ClusterIP").await?;
    s.put_slices("old", &[(2, true, true, false)]).await?;
    let web = frontend(vip4, SERVICE_PORT, Protocol::Tcp);
    let old = [old4, old6].map(|ip| frontend(ip, SERVICE_PORT, Protocol::Tcp));
    let is_old = |r: &ServiceRow| r.frontend.address == old4 || r.frontend.address == old6;
    s.wait_maps("web and old programmed", |rows| {
        slots(rows, web) == Some(2) && old.iter().all(|f| slots(rows, *f) == Some(1))
    })
    .await?;
    let before: Vec<ServiceRow> = s
        .maps()
        .services()?
        .into_iter()
        .filter(|r| !is_old(r))
        .collect();

    // The agent stops; meanwhile "old" is deleted.
    s.stop_agent().await?;
    s.services()
        .delete("old", &DeleteParams::default())
        .await
        .context("deleting Service old")?;

    // The agent comes back: before its sync has listed anything, the maps
    // it took over serve web.
    let dataplane = Arc::new(Mutex::new(Dataplane::load(s.config.clone())?));
    s.dataplane = Some(dataplane.clone());
    let addr = SocketAddr::new(vip6, SERVICE_PORT);
    let reply = s.tcp(addr).await?;
    served_by(&reply, "peer", addr)?;

    s.start_sync(dataplane);
    s.wait_maps("old's frontends collected", |rows| !rows.iter().any(is_old))
        .await?;
    let after = s.maps().services()?;
    ensure!(
        after == before,
        "the services that still exist must be taken over unchanged (same generation, slots and backend ids)\nbefore:\n{}\nafter:\n{}",
        shoal_agent::format_services(&before),
        shoal_agent::format_services(&after)
    );
    for vip in [vip4, vip6] {
        let addr = SocketAddr::new(vip, SERVICE_PORT);
        let seen = spread(&s, addr, 12).await?;
        ensure!(seen.len() == 2, "{addr} after the restart: {seen:?}");
    }
    // And the restarted loop keeps following changes.
    s.put_slices("web", &[(3, true, true, false)]).await?;
    s.wait_maps("web down to b3 after the restart", |rows| {
        slots(rows, web) == Some(1)
    })
    .await?;
    s.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoal_dataplane_tables_list_the_programmed_frontends_backends_and_drops() -> Result<()> {
    let s = Setup::new(3).await?;
    let (_, [vip4, vip6]) = s.create_service("web", "NodePort").await?;
    s.put_slices("web", &[(2, true, true, false), (3, true, true, false)])
        .await?;
    let (_, [empty4, _]) = s.create_service("empty", "ClusterIP").await?;
    let web = frontend(vip4, SERVICE_PORT, Protocol::Tcp);
    let empty = frontend(empty4, SERVICE_PORT, Protocol::Tcp);
    s.wait_maps("web and empty", |rows| {
        slots(rows, web) == Some(2) && slots(rows, empty) == Some(0)
    })
    .await?;
    // One refused connect shows up as a drop.
    let reply = s.tcp(SocketAddr::new(empty4, SERVICE_PORT)).await?;
    ensure!(reply["ok"] == false, "{reply}");

    let maps = s.maps();
    let services = shoal_agent::format_services(&maps.services()?);
    let lines: Vec<&str> = services.lines().collect();
    ensure!(
        lines.first().is_some_and(|l| l.starts_with("FRONTEND")),
        "{services}"
    );
    for (vip, proto) in [(vip4, "TCP"), (vip4, "UDP"), (vip6, "TCP"), (vip6, "UDP")] {
        let fe = format!("{}/{proto}", SocketAddr::new(vip, SERVICE_PORT));
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("{fe} ")))
            .with_context(|| format!("no row for {fe} in:\n{services}"))?;
        let (h2, h3) = if vip.is_ipv4() {
            (
                s.lab.host(2).v4(BACKEND_PORT),
                s.lab.host(3).v4(BACKEND_PORT),
            )
        } else {
            (
                s.lab.host(2).v6(BACKEND_PORT),
                s.lab.host(3).v6(BACKEND_PORT),
            )
        };
        let rows = lines[at..at + 2].join("\n");
        ensure!(
            rows.contains(&h2.to_string()) && rows.contains(&h3.to_string()),
            "{fe} must list both backends in its slot rows:\n{services}"
        );
    }
    ensure!(
        lines.iter().any(|l| l
            .starts_with(&format!("{}/TCP ", SocketAddr::new(empty4, SERVICE_PORT)))
            && l.contains("connects refused")),
        "the empty service is listed as refusing:\n{services}"
    );

    let backends = shoal_agent::format_backends(&maps.backends()?);
    for host in [2, 3] {
        for addr in [
            s.lab.host(host).v4(BACKEND_PORT),
            s.lab.host(host).v6(BACKEND_PORT),
        ] {
            ensure!(
                backends.lines().any(|l| l.contains(&format!(" {addr} "))),
                "backend {addr} missing from:\n{backends}"
            );
        }
    }
    let drops = shoal_agent::format_verdicts(&maps.verdicts()?);
    let refused: u64 = drops
        .lines()
        .find(|l| l.starts_with("drop_no_backend "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no drop_no_backend row in:\n{drops}"))?;
    ensure!(refused >= 1, "the refused connect is not counted:\n{drops}");
    s.finish().await
}
