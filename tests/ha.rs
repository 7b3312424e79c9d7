//! A control plane of three `shoal server` processes sharing one store
//! (their bundled store members form one Raft cluster over TLS, one CA in
//! a shared --ca-dir), as an operator runs it: SIGKILL the member whose
//! scheduler leads and another member's scheduler binds the next pod
//! within the lease duration; restart it, SIGKILL the member whose
//! controller manager leads and a new ReplicaSet still gets its pods;
//! nothing written before a kill is lost.

use std::{
    fs::File,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Namespace, Pod},
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::json;
use shoal_controllers::leader_election::{CONTROLLER_MANAGER_LEASE, NAMESPACE, SCHEDULER_LEASE};

/// The Leases' duration the members run with (renew deadline 2 s, retry
/// 300 ms): short, so the test sees a takeover in seconds.
const LEASE: Duration = Duration::from_secs(3);
/// The members' `--leader-elect-retry-period`.
const RETRY: Duration = Duration::from_millis(300);
/// Slack on top of the Lease for another member to take it: up to two
/// retry periods (seeing the last renewal, then trying), a store leader
/// election if the killed member led Raft too, and the API's latency on a
/// busy machine (takeovers measure 3 to 4.5 s here, on 2 busy cores).
const TAKEOVER_SLACK: Duration = Duration::from_secs(3);
/// How long a member may take to serve the API.
const START_WAIT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(15);

/// Who holds a Lease.
struct Holder {
    /// Index of the member whose --name the identity starts with.
    member: usize,
    /// The holderIdentity.
    identity: String,
    /// The renewTime.
    renewed: Option<String>,
}

/// One `shoal server` process.
struct Member {
    name: String,
    args: Vec<String>,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting shoal server {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no Lease is released, no store member leaves politely.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig")
    }
}

/// Three members on loopback; dropping it kills them.
struct ControlPlane {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

fn free_addr() -> Result<SocketAddr> {
    Ok(shoal_e2e::ports::free_loopback_addr()?)
}

impl ControlPlane {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let peers: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect::<Result<_>>()?;
        let initial_cluster = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("cp{}=https://{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let ca_dir = dir.path().join("ca");
        let mut members = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            let name = format!("cp{}", i + 1);
            let data_dir = dir.path().join(&name);
            let args = [
                "server",
                "--name",
                &name,
                "--initial-cluster",
                &initial_cluster,
                "--ca-dir",
                &ca_dir.display().to_string(),
                "--data-dir",
                &data_dir.display().to_string(),
                "--listen",
                &free_addr()?.to_string(),
                "--store-listen",
                &free_addr()?.to_string(),
                "--store-peer-listen",
                &peer.to_string(),
                "--leader-elect-lease-duration",
                &format!("{}s", LEASE.as_secs()),
                "--leader-elect-renew-deadline",
                "2s",
                "--leader-elect-retry-period",
                &format!("{}ms", RETRY.as_millis()),
            ]
            .map(str::to_owned)
            .to_vec();
            members.push(Member {
                log: dir.path().join(format!("{name}.log")),
                name,
                args,
                data_dir,
                child: None,
            });
        }
        let mut cp = Self { dir, members };
        for m in &mut cp.members {
            m.spawn()?;
        }
        Ok(cp)
    }

    /// Waits until member `i` serves the API; returns an admin client.
    async fn ready(&self, i: usize) -> Result<Client> {
        let m = &self.members[i];
        let deadline = Instant::now() + START_WAIT;
        let mut last = String::from("no kubeconfig yet");
        while Instant::now() < deadline {
            if m.kubeconfig().is_file() {
                match shoal_controllers::client_from_kubeconfig(&m.kubeconfig()).await {
                    Ok(client) => match Api::<Namespace>::all(client.clone())
                        .get_opt("kube-system")
                        .await
                    {
                        Ok(Some(_)) => return Ok(client),
                        Ok(None) => last = "no kube-system namespace yet".into(),
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = format!("{e:#}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(self.fail(format!(
            "member {} did not serve the API in {START_WAIT:?}: {last}",
            m.name
        )))
    }

    /// Who holds `lease`: the member (its holderIdentity starts with the
    /// member's --name), the identity and the last renewal.
    async fn holder(&self, client: &Client, lease: &str) -> Result<Option<Holder>> {
        let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
        let Some(spec) = leases.get_opt(lease).await?.and_then(|l| l.spec) else {
            return Ok(None);
        };
        let Some(identity) = spec.holder_identity else {
            return Ok(None);
        };
        let name = identity.rsplit_once('_').map_or("", |(n, _)| n);
        let member = self
            .members
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| anyhow!("{lease} is held by {identity:?}, no member of ours"))?;
        Ok(Some(Holder {
            member,
            identity,
            renewed: spec.renew_time.map(|t| t.0.to_string()),
        }))
    }

    /// Waits until a live process leads `lease`: one holder renewing it
    /// (a dead holder's Lease stays put until another member takes it).
    async fn leader(&self, client: &Client, lease: &str) -> Result<Holder> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(first) = self.holder(client, lease).await? {
                tokio::time::sleep(RETRY * 4).await;
                if let Some(then) = self.holder(client, lease).await?
                    && then.identity == first.identity
                    && then.renewed != first.renewed
                {
                    return Ok(then);
                }
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(self.fail(format!(
            "nobody kept renewing the Lease {NAMESPACE}/{lease}"
        )))
    }

    /// Waits until someone other than the killed `dead` holds `lease`;
    /// returns who and how long after `since` that was seen.
    async fn taken_over(
        &self,
        client: &Client,
        lease: &str,
        dead: &Holder,
        since: Instant,
    ) -> Result<(Holder, Duration)> {
        while since.elapsed() < WAIT {
            if let Some(h) = self.holder(client, lease).await?
                && h.identity != dead.identity
            {
                ensure!(
                    h.member != dead.member,
                    "{lease} went to {:?} of the killed member",
                    h.identity
                );
                return Ok((h, since.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(self.fail(format!(
            "{NAMESPACE}/{lease} still names the dead {} after {WAIT:?}",
            dead.identity
        )))
    }

    /// After `leader`'s process was killed at `killed`: another member
    /// takes `lease` within the lease (plus slack), the pods matching
    /// `bound_pods`' selector (as many as it says) get bound through
    /// `client`, and the pods made before and after the kill are listed.
    async fn handed_over(
        &self,
        client: &Client,
        what: &str,
        lease: &str,
        leader: &Holder,
        killed: Instant,
        (selector, count): (&str, usize),
    ) -> Result<()> {
        let dead = &self.members[leader.member].name;
        let (new, took) = self.taken_over(client, lease, leader, killed).await?;
        let new = &self.members[new.member].name;
        ensure!(
            took < LEASE + TAKEOVER_SLACK,
            "{new} took the {what} Lease {took:?} after its leader died (lease {LEASE:?})"
        );
        if let Err(e) = bound(client, selector, count, WAIT).await {
            return Err(self.fail(format!("after killing {dead} (the {what} leader): {e}")));
        }
        all_listed(client, &["before", "after"]).await?;
        eprintln!(
            "{what}: {dead} killed, {new} leads after {took:?}, pods bound after {:?}",
            killed.elapsed()
        );
        Ok(())
    }

    /// `msg` with the end of every member's log.
    fn fail(&self, msg: String) -> anyhow::Error {
        let mut text = msg;
        for m in &self.members {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            text.push_str(&format!("\n--- {} ({}):\n{tail}", m.name, m.log.display()));
        }
        anyhow!(text)
    }
}

fn pod(name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))?)
}

fn replica_set(name: &str) -> Result<ReplicaSet> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        },
    }))?)
}

/// Waits until `n` pods matching `selector` (or the pod `name`) are bound
/// to a node; returns how long it took.
async fn bound(client: &Client, selector: &str, n: usize, limit: Duration) -> Result<Duration> {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let start = Instant::now();
    let mut seen = 0;
    while start.elapsed() < limit {
        let list = pods.list(&ListParams::default().labels(selector)).await;
        if let Ok(list) = list {
            seen = list
                .items
                .iter()
                .filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .is_some_and(|n| !n.is_empty())
                })
                .count();
            if seen >= n {
                return Ok(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{seen} of {n} pods with {selector} bound in {limit:?}")
}

fn labelled(name: &str) -> Result<Pod> {
    let mut p = pod(name)?;
    p.metadata.labels = Some([("name".to_owned(), name.to_owned())].into());
    Ok(p)
}

/// Every name of `names` is listed through `client`.
async fn all_listed(client: &Client, names: &[&str]) -> Result<()> {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let have: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    for name in names {
        ensure!(
            have.iter().any(|h| h == name),
            "pod {name} is gone: the member lists {have:?}"
        );
    }
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    ensure!(
        cms.get_opt("written-first").await?.is_some(),
        "the ConfigMap written-first is gone"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leaders_member_hands_scheduling_and_controllers_to_another() -> Result<()> {
    let mut cp = ControlPlane::start()?;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(cp.ready(i).await?);
    }
    let mut node = shoal_agent::node::NodeConfig::new("n1", cp.dir.path());
    node.addresses = vec!["172.20.0.14".parse()?];
    node.capacity_cpu = Some("8".into());
    shoal_agent::node::register(&clients[0], &node).await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(clients[1].clone());
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "written-first"},
            "data": {"k": "v"},
        }))?,
    )
    .await?;

    // The scheduler leads on one member; a pod created through another
    // member is bound.
    let leader = cp.leader(&clients[0], SCHEDULER_LEASE).await?;
    let sched = leader.member;
    let other = (sched + 1) % 3;
    let pods: Api<Pod> = Api::default_namespaced(clients[other].clone());
    pods.create(&PostParams::default(), &labelled("before")?)
        .await?;
    if let Err(e) = bound(&clients[other], "name=before", 1, WAIT).await {
        return Err(cp.fail(format!("with every member up: {e}")));
    }

    // SIGKILL the scheduler leader's process.
    cp.members[sched].kill();
    let killed = Instant::now();
    pods.create(&PostParams::default(), &labelled("after")?)
        .await?;
    cp.handed_over(
        &clients[other],
        "scheduler",
        SCHEDULER_LEASE,
        &leader,
        killed,
        ("name=after", 1),
    )
    .await?;

    // The killed member comes back on its data directory and catches up.
    cp.members[sched].spawn()?;
    clients[sched] = cp.ready(sched).await?;
    all_listed(&clients[sched], &["before", "after"]).await?;

    // SIGKILL the controller manager leader's process; a ReplicaSet
    // created after that gets its pods, through the new leader.
    let leader = cp.leader(&clients[other], CONTROLLER_MANAGER_LEASE).await?;
    let cm = leader.member;
    let survivor = (cm + 1) % 3;
    cp.members[cm].kill();
    let killed = Instant::now();
    let rss: Api<ReplicaSet> = Api::default_namespaced(clients[survivor].clone());
    rss.create(&PostParams::default(), &replica_set("web")?)
        .await?;
    cp.handed_over(
        &clients[survivor],
        "controller manager",
        CONTROLLER_MANAGER_LEASE,
        &leader,
        killed,
        ("app=web", 2),
    )
    .await?;
    for m in &mut cp.members {
        m.kill();
    }
    Ok(())
}

/// Members of one control plane need one CA: `shoal server` says so
/// before it starts anything.
#[test]
fn several_members_without_a_shared_ca_dir_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "server",
            "--name",
            "cp1",
            "--initial-cluster",
            "cp1=https://127.0.0.1:12380,cp2=https://127.0.0.1:12381",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "it started: {stderr}");
    ensure!(
        stderr.contains("--initial-cluster names 2 members")
            && stderr.contains("the same --ca-dir"),
        "{stderr}"
    );
    Ok(())
}

/// The `--leader-elect-*` flags take Go durations and are checked as
/// kube-scheduler checks them, before anything starts.
#[test]
fn leader_election_flags_are_checked() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let run = |flags: &[&str]| -> Result<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("server")
            .arg("--data-dir")
            .arg(dir.path())
            .args(flags)
            .output()?;
        ensure!(!out.status.success(), "shoal server {flags:?} started");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let err = run(&[
        "--leader-elect-lease-duration",
        "2s",
        "--leader-elect-renew-deadline",
        "1m30s",
    ])?;
    ensure!(
        err.contains(
            "--leader-elect-lease-duration (2s) must be longer than --leader-elect-renew-deadline (90s)"
        ),
        "{err}"
    );
    let err = run(&["--leader-elect-retry-period", "2x"])?;
    ensure!(
        err.contains("\"2x\" is not a duration such as 15s, 1m30s or 500ms"),
        "{err}"
    );
    Ok(())
}

/// Two members whose CAs differ never form a store: each one's log names
/// the peer TLS failure and says what to check, and neither serves the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_different_cas_say_so_and_do_not_serve() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let peers: Vec<SocketAddr> = (0..2).map(|_| free_addr()).collect::<Result<_>>()?;
    let initial_cluster = format!("cp1=https://{},cp2=https://{}", peers[0], peers[1]);
    let mut members = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let name = format!("cp{}", i + 1);
        let data_dir = dir.path().join(&name);
        let args = [
            "server",
            "--name",
            &name,
            "--initial-cluster",
            &initial_cluster,
            // Each its own CA: a copy forgotten.
            "--ca-dir",
            &data_dir.join("ca").display().to_string(),
            "--data-dir",
            &data_dir.display().to_string(),
            "--listen",
            &free_addr()?.to_string(),
            "--store-listen",
            &free_addr()?.to_string(),
            "--store-peer-listen",
            &peer.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        let mut m = Member {
            log: dir.path().join(format!("{name}.log")),
            name,
            args,
            data_dir,
            child: None,
        };
        m.spawn()?;
        members.push(m);
    }
    let cp = ControlPlane { dir, members };
    let deadline = Instant::now() + START_WAIT;
    let said = |m: &Member| {
        let log = std::fs::read_to_string(&m.log).unwrap_or_default();
        log.contains("invalid peer certificate: BadSignature")
            && log.contains("the store has no leader yet")
            && log.contains("certificates of one CA (--ca-dir)")
    };
    while !cp.members.iter().all(said) {
        if Instant::now() > deadline {
            return Err(cp.fail(format!(
                "the members did not name the CA mismatch in {START_WAIT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for m in &cp.members {
        ensure!(
            !m.kubeconfig().exists(),
            "member {} started its API without a store leader",
            m.name
        );
    }
    Ok(())
}
