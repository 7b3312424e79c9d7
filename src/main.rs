//! `shoal`: one binary for every role: `shoal server` (the control plane
//! over the bundled store or an external etcd; `--join` adds a member),
//! `shoal agent` (a node), `shoal up` (both in one process), `shoal store`
//! (the bundled etcd v3-compatible store alone) and the tools around them.

mod health;
mod token;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use shoal_store::{InitialCluster, Listener, ListenerTls, Store, StoreConfig, TlsFiles};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A Kubernetes-compatible cluster with an eBPF datapath"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The control plane: the Kubernetes API (HTTPS) over the bundled store
    /// (or an external etcd with --store-endpoints). Writes an admin
    /// kubeconfig to DATA_DIR/kubeconfig.
    Server(Box<ServerArgs>),
    /// The bundled store alone: the etcd v3 API over Raft (`etcdctl` works
    /// against it).
    Store(StoreArgs),
    /// Bootstrap tokens that let nodes join: `shoal token create` prints a
    /// token and the `shoal agent` command that joins with it; `list`,
    /// `delete <id>`.
    Token(token::TokenArgs),
    /// The node agent: registers this node with the API, posts its
    /// conditions and keeps its Lease fresh (pods, networking and the
    /// dataplane join as they land).
    Agent(Box<AgentArgs>),
    /// Inspects a node's eBPF load-balancing maps (read from their pins,
    /// whether or not the agent runs): `services`, `backends`, `drops`.
    Dataplane(DataplaneArgs),
    /// Follows a node's flows live, like `hubble observe`: one line per
    /// flow start and end (time, source pod/ip:port -> destination,
    /// protocol, verdict, bytes), read from the agent on this host.
    Flows(FlowsArgs),
    /// The node's local image store: `shoal image import ARCHIVE`, `shoal image ls`.
    Image(ImageArgs),
    /// A cluster of one on this host: `shoal server` and `shoal agent` in
    /// one process, the store a single member in DATA_DIR. Run it again on
    /// the same DATA_DIR to resume the same cluster. Takes the flags of
    /// both roles (the agent's without --server/--token/--kubeconfig).
    #[command(mut_arg("data_dir", |a| a.default_value("shoal.data")))]
    Up(Box<UpArgs>),
    /// Stops every container the agent started and removes the pods'
    /// sandboxes, cgroups and files (run with the agent stopped, to take a
    /// node down for good).
    Reset(ResetArgs),
    /// Takes this control-plane member out of the cluster on purpose: asks
    /// the running `shoal server` (or `shoal up`) of DATA_DIR to remove its
    /// store member from the Raft membership (the others must keep a
    /// quorum, as etcd checks), after which that server stops and
    /// `etcdctl member list` no longer shows it; the Node of a `shoal up`
    /// member is then deleted through another member. A member that is
    /// down is removed from another one with `etcdctl member remove <id>`.
    Leave(LeaveArgs),
}

#[derive(Args)]
struct LeaveArgs {
    /// The leaving server's data dir (`shoal up`'s default is shoal.data).
    #[arg(long, default_value = "shoal-server.data")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    node: NodeArgs,
    /// Register this node with the taint
    /// `node-role.kubernetes.io/control-plane:NoSchedule`, so only pods
    /// that tolerate it run here. The default taints the nodes of members
    /// that --join, not the first node of a cluster (a cluster of one must
    /// run its own pods).
    #[arg(long, conflicts_with = "no_taint")]
    taint: bool,
    /// Register a joining member's node without the control-plane taint.
    #[arg(long)]
    no_taint: bool,
}

#[derive(Args)]
struct ResetArgs {
    /// The agent's data directory.
    #[arg(long, default_value = "shoal-agent.data")]
    data_dir: PathBuf,
    /// The agent's pod cgroup parent (default /shoal/<node name>).
    #[arg(long)]
    cgroup_parent: String,
}

#[derive(Args)]
struct AgentArgs {
    /// A kubeconfig that reaches the API with the node's identity. Without
    /// it the agent uses DATA_DIR/kubeconfig, written when it joined with
    /// --server, --token and --ca-cert-hash.
    #[arg(long, conflicts_with_all = ["server", "token", "ca_cert_hash"])]
    kubeconfig: Option<PathBuf>,
    /// The API to join (`https://<address>:6443`), with --token and
    /// --ca-cert-hash, as `shoal token create` prints them. Give every
    /// control-plane server (comma-separated) and the agent fails over
    /// between them through a load balancer on loopback, as k3s's agent
    /// does: its Lease and pods keep going when the server in use dies.
    /// The list is kept in DATA_DIR/servers, so a restart needs neither
    /// this nor the token (give it again to change the list).
    #[arg(long, value_delimiter = ',')]
    server: Vec<String>,
    /// A bootstrap token (`abcdef.0123456789abcdef`) to join with.
    #[arg(long, requires_all = ["server", "ca_cert_hash"])]
    token: Option<String>,
    /// The hash of the cluster CA's public key (`sha256:<hex>`); the agent
    /// refuses a server whose CA does not match.
    #[arg(long, requires_all = ["server", "token"])]
    ca_cert_hash: Option<String>,
    /// Where the agent keeps its state.
    #[arg(long, default_value = "shoal-agent.data")]
    data_dir: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
}

/// What `shoal agent` and `shoal up` both take: the node and its pods.
#[derive(Args)]
struct NodeArgs {
    /// The Node's name; the host name if not given.
    #[arg(long)]
    node_name: Option<String>,
    /// The node's InternalIP addresses, IPv4 then IPv6 (comma-separated).
    #[arg(long, value_delimiter = ',')]
    node_ip: Vec<std::net::IpAddr>,
    /// CPU capacity to advertise (a quantity such as 4 or 3500m) instead
    /// of the machine's; lab nodes share one machine.
    #[arg(long)]
    capacity_cpu: Option<String>,
    /// Memory capacity to advertise (a quantity such as 8Gi) instead of
    /// the machine's.
    #[arg(long)]
    capacity_memory: Option<String>,
    /// Most pods this node runs.
    #[arg(long, default_value_t = shoal_agent::node::DEFAULT_MAX_PODS)]
    max_pods: u32,
    /// Seconds between Lease renewals and status posts.
    #[arg(long, default_value_t = 10)]
    heartbeat_seconds: u64,
    /// The cgroup parent of every pod (pod U runs in PARENT/pod-U); the
    /// default is /shoal/<node name>.
    #[arg(long)]
    cgroup_parent: Option<String>,
    /// The OCI runtime pods run under (a RuntimeClass handler `runc` or
    /// `crun` picks the other).
    #[arg(long, default_value = shoal_runtime::RUNC)]
    runtime: PathBuf,
    /// Nameservers of pods with dnsPolicy ClusterFirst (the cluster DNS
    /// service's addresses).
    #[arg(long, value_delimiter = ',', default_values_t = shoal_agent::pods::DEFAULT_CLUSTER_DNS.map(String::from))]
    cluster_dns: Vec<String>,
    /// The cluster domain.
    #[arg(long, default_value = shoal_agent::pods::DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// First restart back-off of a crashing container, in seconds (doubles
    /// up to five minutes).
    #[arg(long, default_value_t = 10)]
    backoff_seconds: u64,
    /// A container log above this size is rotated (the kubelet's flag; a
    /// quantity such as 10Mi).
    #[arg(long, default_value = "10Mi", value_parser = parse_bytes)]
    container_log_max_size: u64,
    /// Log files kept per container, the live one included (at least 2).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(2..))]
    container_log_max_files: u16,
    /// The cgroup v2 directory whose processes get socket-level service load
    /// balancing; pods must live below it. Default: the agent's own cgroup
    /// (pods go to its `pods` child unless --cgroup-parent says otherwise).
    #[arg(long)]
    lb_cgroup: Option<PathBuf>,
    /// Run without the eBPF service dataplane (no Service VIPs on this node).
    #[arg(long)]
    no_dataplane: bool,
    /// The node's external device: tc programs on it serve NodePorts,
    /// LoadBalancer IPs and externalIPs to traffic from outside the node.
    /// Default: the device holding the node's first address.
    #[arg(long)]
    lb_device: Option<String>,
    /// Entries of the IPv4 conntrack map of external traffic (LRU; a flow
    /// takes two).
    #[arg(long, default_value_t = shoal_agent::MapSizes::default().ct4)]
    ct4_entries: u32,
    /// Entries of the IPv6 conntrack map.
    #[arg(long, default_value_t = shoal_agent::MapSizes::default().ct6)]
    ct6_entries: u32,
    /// NodePort conntrack: an established TCP flow idle this long ends
    /// (Go duration; the agent's conntrack GC deletes it).
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    bpf_ct_timeout_regular_tcp: Duration,
    /// NodePort conntrack: a TCP flow idle this long after a FIN or RST ends.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    bpf_ct_timeout_regular_tcp_fin: Duration,
    /// NodePort conntrack: a TCP flow whose backend never answered ends
    /// after this long.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    bpf_ct_timeout_regular_tcp_syn: Duration,
    /// NodePort conntrack: a UDP flow idle this long ends.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    bpf_ct_timeout_regular_any: Duration,
    /// How often the conntrack GC looks for idle flows (flows of backends
    /// that left their Service are purged at once, not on this clock).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    conntrack_gc_interval: Duration,
    /// Entries of each family's session-affinity map (LRU; one per client
    /// and sessionAffinity: ClientIP Service).
    #[arg(long, default_value_t = shoal_agent::MapSizes::default().affinity)]
    affinity_entries: u32,
    /// Where the dataplane pins its maps; default /sys/fs/bpf/shoal/<node name>.
    #[arg(long)]
    bpf_pin_dir: Option<PathBuf>,
    /// Entries of the flow table of pod interfaces (LRU; one per flow and
    /// pod interface).
    #[arg(long, default_value_t = shoal_agent::MapSizes::default().flows)]
    flow_entries: u32,
    /// Size in bytes of the ring buffer flow events go through (a power of
    /// two, at least 4096); a full buffer loses events and counts them.
    #[arg(long, default_value_t = shoal_agent::MapSizes::default().flow_ring_bytes)]
    flow_ring_bytes: u32,
    /// A UDP flow without packets for this long ends (Go duration).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    flow_udp_idle: Duration,
    /// A TCP flow that never closed ends after this long without packets.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    flow_tcp_idle: Duration,
    /// The unix socket `shoal flows` reads; default /run/shoal/<node name>/flows.sock.
    #[arg(long)]
    flows_socket: Option<PathBuf>,
    /// The cluster's name, exported as `k8s.cluster.name` with flows.
    #[arg(long, default_value = "shoal")]
    cluster_name: String,
    /// Addresses of the node-local DNS server (put on the node's `lo`); the
    /// cluster DNS Service's ClusterIPs go to it. Empty: no DNS server.
    #[arg(long, value_delimiter = ',', default_values_t = [shoal_dns::DEFAULT_LISTEN_V4.ip().to_string(), shoal_dns::DEFAULT_LISTEN_V6.ip().to_string()])]
    local_dns: Vec<String>,
    /// Where the DNS server forwards names outside the cluster domain
    /// (`IP` or `IP:PORT`, comma-separated); default: the nameservers of
    /// /etc/resolv.conf. `none` refuses them.
    #[arg(long, value_delimiter = ',')]
    dns_upstreams: Vec<String>,
    /// Plain-HTTP `/healthz` and `/metrics` (the node-local DNS server's
    /// Prometheus counters).
    #[arg(long, default_value = health::DEFAULT_LISTEN)]
    health_listen: SocketAddr,
    /// The streaming server's address (kubectl logs and exec, proxied by
    /// the apiserver; mutual TLS, the apiserver's certificate only).
    #[arg(long, default_value = shoal_agent::streaming::DEFAULT_LISTEN)]
    streaming_listen: SocketAddr,
    /// A registry (`host` or `host:port`) to pull images from over plain
    /// HTTP, repeatable. Loopback registries need no flag.
    #[arg(long)]
    insecure_registry: Vec<String>,
    /// A registry to pull images from over HTTPS, repeatable; `*` allows
    /// every registry. Images of other registries come from the local store.
    #[arg(long)]
    registry: Vec<String>,
    /// Labels to register the Node with (`key=value`, comma-separated),
    /// as the kubelet's --node-labels.
    #[arg(long, value_delimiter = ',', value_parser = parse_label)]
    node_labels: Vec<(String, String)>,
    /// Taints to register the Node with (`key[=value]:Effect`,
    /// comma-separated), as the kubelet's --register-with-taints; set only
    /// when the Node is created.
    #[arg(long, value_delimiter = ',', value_parser = parse_taint)]
    register_with_taints: Vec<k8s_openapi::api::core::v1::Taint>,
}

#[derive(Args)]
struct ImageArgs {
    #[command(subcommand)]
    action: ImageAction,
    /// The agent's data directory (the image store is DATA_DIR/images).
    #[arg(long, default_value = "shoal-agent.data", global = true)]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum ImageAction {
    /// Imports the images of an OCI archive (an OCI layout as a tar file).
    Import {
        /// The archive.
        archive: PathBuf,
    },
    /// Lists the images in the store.
    Ls,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct StoreArgs {
    #[command(subcommand)]
    action: Option<StoreAction>,
    /// This member's name (must be in --initial-cluster when that is given).
    #[arg(long, default_value = shoal_store::DEFAULT_NAME)]
    name: String,
    /// Where the Raft log, the keyspace and snapshots live.
    #[arg(long, default_value = "shoal-store.data")]
    data_dir: PathBuf,
    /// Where clients connect (etcd v3 gRPC; TLS with --cert-file).
    #[arg(long, default_value = shoal_store::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Where the other members connect (Raft).
    #[arg(long, default_value = shoal_store::DEFAULT_PEER_LISTEN)]
    peer_listen: SocketAddr,
    /// The members of a new cluster, as etcd takes them:
    /// `n1=http://10.0.0.1:2380,n2=http://10.0.0.2:2380,...`. Without it
    /// this member forms a cluster of one.
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Shortest lease TTL in seconds (shorter grants are raised to it).
    #[arg(long, default_value_t = shoal_etcd_api::DEFAULT_MIN_LEASE_TTL)]
    min_lease_ttl: i64,
    /// The client listener's TLS certificate (PEM); clients then use https://.
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// CA certificates (PEM) client certificates are verified against.
    #[arg(long)]
    trusted_ca_file: Option<PathBuf>,
    /// Require clients to present a certificate signed by --trusted-ca-file.
    #[arg(long)]
    client_cert_auth: bool,
    /// The peer listener's TLS certificate (PEM), also presented to the
    /// other members; peer URLs are then https://.
    #[arg(long)]
    peer_cert_file: Option<PathBuf>,
    /// The private key of --peer-cert-file (PEM).
    #[arg(long)]
    peer_key_file: Option<PathBuf>,
    /// CA certificates (PEM) the members' certificates are verified against.
    #[arg(long)]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Require connecting members to present a certificate signed by
    /// --peer-trusted-ca-file.
    #[arg(long)]
    peer_client_cert_auth: bool,
}

#[derive(Args)]
struct ServerArgs {
    /// Where the store, the cluster CA and the admin kubeconfig live
    /// (`shoal up` keeps its agent's state in DATA_DIR/agent).
    #[arg(long, default_value = "shoal-server.data")]
    data_dir: PathBuf,
    /// Also write the admin kubeconfig here (as k3s's --write-kubeconfig),
    /// refreshed at every start.
    #[arg(long)]
    write_kubeconfig: Option<PathBuf>,
    /// Join the control plane of the server at this URL
    /// (`https://HOST:6443`) instead of starting a new cluster: this member
    /// gets the cluster CA and keys from it, joins its store (its
    /// --store-peer-listen must be an address the other members reach) and
    /// runs an apiserver, scheduler and controllers of its own
    /// (leader-elected). Needs --token (from `shoal token create
    /// --server-join`) and --ca-cert-hash; a restart finds its data dir and
    /// needs neither.
    #[arg(long, requires_all = ["token", "ca_cert_hash"], conflicts_with_all = ["initial_cluster", "store_endpoints"])]
    join: Option<String>,
    /// The server-join bootstrap token for --join.
    #[arg(long, requires = "join")]
    token: Option<String>,
    /// The hash of the cluster CA's public key (`sha256:<hex>`) for --join;
    /// a server whose CA does not match is refused before the token is sent.
    #[arg(long, requires = "join")]
    ca_cert_hash: Option<String>,
    /// The API's HTTPS address.
    #[arg(long, default_value = shoal_apiserver::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Use this etcd v3 store (`http://host:port`, comma-separated) instead
    /// of the bundled one.
    #[arg(long, value_delimiter = ',', conflicts_with = "initial_cluster")]
    store_endpoints: Vec<String>,
    /// This member's name in --initial-cluster; it also leads the
    /// holderIdentity of the Leases this member's scheduler and
    /// controllers take.
    #[arg(long, default_value = shoal_store::DEFAULT_NAME)]
    name: String,
    /// The members of a control plane of several `shoal server`s, as etcd
    /// takes them: `cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380,...`
    /// (each member's --store-peer-listen). Their bundled stores form one
    /// Raft cluster and speak TLS to each other with peer certificates
    /// each member issues itself from the shared CA (--ca-dir).
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Where the cluster CA, the service-account key and the Secret
    /// encryption keys live (created if missing); default DATA_DIR/pki.
    /// Every member of one control plane needs the same files: give the
    /// members one directory, or copy the first member's to the others
    /// before they start.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// How long a leader's Lease holds without renewal before another
    /// member takes over (Go duration: 15s, 1m, 500ms).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps trying to renew its Lease before it stops
    /// leading.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often candidates try to take the Lease and the leader renews it.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
    /// How long a node's Lease may go unrenewed before the node is marked
    /// Unknown and tainted unreachable (kube-controller-manager's flag).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// How often the store's history is compacted to what the previous
    /// round saw (kube-apiserver's flag); 0 never compacts.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    etcd_compaction_interval: Duration,
    /// The bundled store's client address.
    #[arg(long, default_value = shoal_store::DEFAULT_LISTEN)]
    store_listen: SocketAddr,
    /// The bundled store's peer (Raft) address.
    #[arg(long, default_value = shoal_store::DEFAULT_PEER_LISTEN)]
    store_peer_listen: SocketAddr,
    /// Service CIDRs, IPv4 then IPv6.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = [shoal_apiserver::DEFAULT_SERVICE_CIDR_V4.to_string(), shoal_apiserver::DEFAULT_SERVICE_CIDR_V6.to_string()]
    )]
    service_cidrs: Vec<String>,
    /// Extra DNS names or IPs for the API's serving certificate.
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Cluster (pod) CIDRs, IPv4 then IPv6; each Node gets a slice of
    /// each as its podCIDRs.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = [shoal_controllers::node_ipam::DEFAULT_CLUSTER_CIDR_V4.to_string(), shoal_controllers::node_ipam::DEFAULT_CLUSTER_CIDR_V6.to_string()]
    )]
    cluster_cidrs: Vec<String>,
    /// LoadBalancer pools (CIDRs, any number per family): each Service of
    /// type LoadBalancer gets an address of each of its IP families from
    /// them in status.loadBalancer.ingress.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = [shoal_controllers::lb_ipam::DEFAULT_POOL_V4.to_string(), shoal_controllers::lb_ipam::DEFAULT_POOL_V6.to_string()]
    )]
    lb_pool: Vec<String>,
    /// Prefix length of each Node's IPv4 pod CIDR.
    #[arg(long, default_value_t = shoal_controllers::node_ipam::DEFAULT_NODE_MASK_V4)]
    node_cidr_mask_v4: u8,
    /// Prefix length of each Node's IPv6 pod CIDR.
    #[arg(long, default_value_t = shoal_controllers::node_ipam::DEFAULT_NODE_MASK_V6)]
    node_cidr_mask_v6: u8,
    /// The mesh CA's gRPC (TLS) address, which signs SPIFFE workload
    /// certificates for pods' sidecars; default port 15012 on --listen's
    /// address. Without this flag a busy default port only logs a warning.
    #[arg(long)]
    mesh_ca_listen: Option<SocketAddr>,
    /// The trust domain of the mesh's SPIFFE IDs
    /// (spiffe://<trust-domain>/ns/<ns>/sa/<serviceaccount>).
    #[arg(long, default_value = shoal_ca::DEFAULT_TRUST_DOMAIN)]
    mesh_trust_domain: String,
    /// How long a workload certificate of the mesh CA is valid (Go
    /// duration), also the most a sidecar may ask for; sidecars renew at
    /// half of it.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    mesh_cert_lifetime: Duration,
    /// How long a node client certificate the controllers sign is valid
    /// (Go duration; a year, as k3s's). Agents renew theirs at 70-90% of
    /// it, authenticated with the current one.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    node_cert_lifetime: Duration,
}

#[derive(Subcommand)]
enum StoreAction {
    /// Seeds a NEW data directory from a snapshot taken with
    /// `etcdctl snapshot save`; then start `shoal store --data-dir DIR` on it.
    Restore {
        /// The snapshot file.
        snapshot: PathBuf,
        /// The new data directory (must not hold a member's data).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let _telemetry = shoal_telemetry::init("shoal").context("setting up telemetry")?;
        match cli.command {
            Command::Store(args) => store(args).await,
            Command::Server(args) => server(*args).await,
            Command::Token(args) => token::run(args).await,
            Command::Agent(args) => agent(*args).await,
            Command::Up(args) => up(*args).await,
            Command::Dataplane(args) => dataplane(&args),
            Command::Flows(args) => flows(args).await,
            Command::Image(args) => image(args),
            Command::Leave(args) => leave(args).await,
            Command::Reset(args) => {
                shoal_agent::pods::reset(&args.data_dir, &args.cgroup_parent).await
            }
        }
    })
}

async fn store(args: StoreArgs) -> Result<()> {
    if let Some(StoreAction::Restore { snapshot, data_dir }) = args.action {
        shoal_store::restore(&snapshot, &data_dir)?;
        println!(
            "restored {} into {}; start it with: shoal store --data-dir {}",
            snapshot.display(),
            data_dir.display(),
            data_dir.display()
        );
        return Ok(());
    }
    let initial_cluster = args
        .initial_cluster
        .as_deref()
        .map(InitialCluster::parse)
        .transpose()?;
    let mut config = StoreConfig::single(&args.data_dir, args.listen, args.peer_listen);
    config.name = args.name;
    config.initial_cluster = initial_cluster;
    config.api.min_lease_ttl = args.min_lease_ttl;
    config.client_tls = TlsFiles {
        cert_file: args.cert_file,
        key_file: args.key_file,
        trusted_ca_file: args.trusted_ca_file,
        client_cert_auth: args.client_cert_auth,
    }
    .load(Listener::Client)?;
    config.peer_tls = TlsFiles {
        cert_file: args.peer_cert_file,
        key_file: args.peer_key_file,
        trusted_ca_file: args.peer_trusted_ca_file,
        client_cert_auth: args.peer_client_cert_auth,
    }
    .load(Listener::Peer)?;
    let store = Store::start(config).await?;
    store.serve(shutdown_signal()).await?;
    Ok(())
}

async fn server(args: ServerArgs) -> Result<()> {
    run_server(args, None).await
}

/// What a started `shoal server` hands to the agent of `shoal up`.
struct ServerReady {
    /// The admin kubeconfig (its server URL and CA).
    kubeconfig: PathBuf,
    /// Where the cluster CA lives.
    ca_dir: PathBuf,
}

/// Runs the control plane until SIGTERM; `ready` hears once the API
/// serves and the controllers run.
async fn run_server(
    args: ServerArgs,
    ready: Option<tokio::sync::oneshot::Sender<ServerReady>>,
) -> Result<()> {
    let [v4, v6] = args.service_cidrs.as_slice() else {
        anyhow::bail!(
            "--service-cidrs takes two ranges, IPv4 then IPv6 (e.g. 10.96.0.0/16,fd00:10:96::/112), got {:?}",
            args.service_cidrs
        );
    };
    let ipam = node_ipam_config(&args)?;
    let lb_ipam = lb_ipam_config(&args)?;
    let timing = leader_election_timing(&args)?;
    if args.join.is_some() {
        join_control_plane(&args).await?;
    }
    // Turns true when this member leaves the store's cluster.
    let mut removed = None;
    let (stop_store, store_task, endpoints, store_tls) = if args.store_endpoints.is_empty() {
        let mut config = server_store_config(&args)?;
        let client_tls = store_client_tls(&args, &mut config)?;
        let joined = config.join.is_some();
        let store = Store::start(config).await?;
        if joined {
            promote_self(store.backend()).await?;
        }
        let addr = store
            .client_addr()
            .context("the bundled store has no client address")?;
        // The certificate names loopback; a wildcard listener answers there.
        let addr = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            }
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
            }
            _ => addr,
        };
        let etcdctl_env = client_tls.write_etcdctl_env(&args.data_dir, addr)?;
        let mut leadership = store.backend().node().leader_watch();
        removed = Some(store.backend().node().removed());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(store.serve(async {
            let _ = rx.await;
        }));
        // The apiserver's first writes need a store leader: with several
        // members, wait (as etcd does) for a quorum of them to start.
        let mut hint = tokio::time::Instant::now() + STORE_LEADER_HINT;
        while leadership.borrow_and_update().leader.is_none() {
            tokio::select! {
                changed = leadership.changed() => if changed.is_err() {
                    anyhow::bail!("the bundled store stopped before it had a leader");
                },
                () = tokio::time::sleep_until(hint) => {
                    tracing::warn!(
                        "the store has no leader yet: a majority of the --initial-cluster members must run and reach each other's peer URLs with certificates of one CA (--ca-dir); a peer TLS error such as \"invalid peer certificate: BadSignature\" or \"UnknownIssuer\" in this log means a member's CA is another one"
                    );
                    hint += STORE_LEADER_HINT;
                }
            }
        }
        println!(
            "shoal server: store at https://{addr} (client certificates required); etcdctl: . {} && etcdctl get /registry --prefix --keys-only",
            etcdctl_env.display()
        );
        (
            Some(tx),
            Some(task),
            vec![format!("https://{addr}")],
            Some(client_tls.api),
        )
    } else {
        (None, None, args.store_endpoints.clone(), None)
    };
    let mut config = shoal_apiserver::Config::new(&args.data_dir, endpoints);
    config.store_tls = store_tls;
    config.listen = args.listen;
    config.service_cidr_v4 = v4.clone();
    config.service_cidr_v6 = v6.clone();
    config.extra_sans = args.tls_san.clone();
    config.ca_dir = args.ca_dir.clone();
    config.compaction_interval =
        (!args.etcd_compaction_interval.is_zero()).then_some(args.etcd_compaction_interval);
    config.server_join = args.store_endpoints.is_empty();
    // Bound before the API serves, so the sidecar injector is given the
    // mesh CA's address only when the CA will be there.
    let mesh_listener = bind_mesh_ca(&args).await?;
    config.mesh_ca_url = mesh_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .and_then(mesh_ca_url);
    let api = shoal_apiserver::Apiserver::start(config).await?;
    if let Some(path) = &args.write_kubeconfig {
        write_kubeconfig_copy(api.kubeconfig(), path)?;
    }
    println!(
        "shoal server: API at https://{} ; kubectl --kubeconfig {}",
        api.local_addr()
            .map_or_else(|| args.listen.to_string(), |a| a.to_string()),
        args.write_kubeconfig
            .as_deref()
            .unwrap_or(api.kubeconfig())
            .display()
    );
    let secrets_dir = args
        .ca_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("pki"));
    let mesh_ca = match mesh_listener {
        Some(listener) => {
            Some(start_mesh_ca(&args, listener, &secrets_dir, api.token_reviewer()).await?)
        }
        None => None,
    };
    let signer = shoal_ca::TokenSigner::load_or_create(&secrets_dir)
        .context("the service-account key for token Secrets")?;
    let controllers = shoal_controllers::start_with(
        api.kubeconfig(),
        shoal_controllers::Config {
            ipam,
            lb_ipam,
            root_ca: None,
            service_account_signer: Some(std::sync::Arc::new(signer)),
            leader_election: timing,
            leader_identity: (args.initial_cluster.is_some() || args.join.is_some())
                .then(|| args.name.clone()),
            signing_ca_dir: Some(
                args.ca_dir
                    .clone()
                    .unwrap_or_else(|| args.data_dir.join("pki")),
            ),
            node_lifecycle: shoal_controllers::node_lifecycle::Config {
                grace_period: args.node_monitor_grace_period,
                ..shoal_controllers::node_lifecycle::Config::default()
            },
            identity_gc: shoal_controllers::identity_gc::Config::default(),
            node_cert_lifetime: Some(args.node_cert_lifetime),
        },
    );
    if let Some(ready) = ready {
        let _ = ready.send(ServerReady {
            kubeconfig: api.kubeconfig().to_owned(),
            ca_dir: secrets_dir.clone(),
        });
    }
    let left = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let leaving = left.clone();
    api.serve(async move {
        tokio::select! {
            () = shutdown_signal() => {}
            () = removed_from_store(removed) => {
                leaving.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    })
    .await?;
    controllers.abort();
    if let Some(mesh_ca) = mesh_ca {
        mesh_ca.abort();
    }
    if let Some(tx) = stop_store {
        let _ = tx.send(());
    }
    if let Some(task) = store_task {
        task.await.context("the bundled store's task failed")??;
    }
    if left.load(std::sync::atomic::Ordering::Relaxed) {
        println!(
            "shoal server: this member left the control plane (its store member was removed); {} cannot serve again: remove it to join anew",
            args.data_dir.display()
        );
    }
    Ok(())
}

/// The mesh CA's token reviews: the API server's own authenticator.
struct ApiTokenReview(shoal_apiserver::TokenReviewer);

#[async_trait::async_trait]
impl shoal_mesh_ca::TokenReviewer for ApiTokenReview {
    async fn review(&self, token: &str) -> Result<shoal_mesh_ca::ServiceAccount, String> {
        let user = self.0.review(token).await?;
        shoal_mesh_ca::service_account_from_user(&user.name).ok_or_else(|| {
            format!(
                "the token authenticates {}, not a service account",
                user.name
            )
        })
    }
}

/// The mesh CA's URL as pods reach it, which the sidecar injector gives
/// injected sidecars: its bound address, unless that is a wildcard or
/// loopback, which name no address a pod could dial.
fn mesh_ca_url(bound: SocketAddr) -> Option<String> {
    (!bound.ip().is_unspecified() && !bound.ip().is_loopback()).then(|| format!("https://{bound}"))
}

/// Binds the mesh CA's address (`--mesh-ca-listen`, else port 15012 on
/// `--listen`'s address); `None` when the default address is taken (a
/// warning: no mesh CA, and pods asking for the sidecar are refused).
async fn bind_mesh_ca(args: &ServerArgs) -> Result<Option<tokio::net::TcpListener>> {
    if let Err(reason) = shoal_ca::check_trust_domain(&args.mesh_trust_domain) {
        anyhow::bail!("--mesh-trust-domain {:?}: {reason}", args.mesh_trust_domain);
    }
    let addr = args
        .mesh_ca_listen
        .unwrap_or_else(|| SocketAddr::new(args.listen.ip(), shoal_mesh_ca::DEFAULT_PORT));
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if args.mesh_ca_listen.is_none() => {
            tracing::warn!(%addr, error = %e, "the mesh CA is not started: its default address is taken; give --mesh-ca-listen");
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("--mesh-ca-listen {addr}")),
    }
}

/// Starts the mesh CA on `listener` (its root in CA_DIR/mesh-ca.{crt,key},
/// its serving certificate from the cluster CA, which pods trust through
/// their ca.crt).
async fn start_mesh_ca(
    args: &ServerArgs,
    listener: tokio::net::TcpListener,
    secrets_dir: &std::path::Path,
    reviewer: shoal_apiserver::TokenReviewer,
) -> Result<tokio::task::JoinHandle<()>> {
    let bound = listener.local_addr().context("the mesh CA's address")?;
    let ca = shoal_ca::MeshCa::load_or_create(secrets_dir).context("the mesh CA")?;
    let cluster = shoal_ca::ClusterCa::load_or_create(secrets_dir).context("the cluster CA")?;
    let mut names = shoal_ca::default_apiserver_names();
    names.extend(
        args.tls_san
            .iter()
            .map(|s| shoal_ca::SubjectAltName::parse(s)),
    );
    if !bound.ip().is_unspecified() {
        names.push(shoal_ca::SubjectAltName::Ip(bound.ip()));
    }
    let serving = cluster
        .ensure_serving(&args.data_dir.join("pki").join("mesh-ca-serving"), &names)
        .context("the mesh CA's serving certificate")?;
    let config = shoal_mesh_ca::Config {
        trust_domain: args.mesh_trust_domain.clone(),
        lifetime: args.mesh_cert_lifetime,
        max_lifetime: args.mesh_cert_lifetime,
    };
    let service = shoal_mesh_ca::MeshCaService::new(
        std::sync::Arc::new(ca),
        std::sync::Arc::new(ApiTokenReview(reviewer)),
        config,
    );
    println!(
        "shoal server: mesh CA at https://{bound} (trust domain {})",
        args.mesh_trust_domain
    );
    Ok(tokio::spawn(async move {
        if let Err(e) =
            shoal_mesh_ca::serve(listener, &serving, service, std::future::pending()).await
        {
            tracing::error!(error = %e, "the mesh CA stopped");
        }
    }))
}

/// Completes once the bundled store's member was removed from its cluster
/// (`shoal leave`, `etcdctl member remove`); never without a bundled store.
async fn removed_from_store(removed: Option<tokio::sync::watch::Receiver<bool>>) {
    match removed {
        Some(mut removed) => {
            let gone = removed.wait_for(|r| *r).await.is_err();
            if gone {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// How long `shoal leave` waits for the server to stop after its removal.
const LEAVE_WAIT: Duration = Duration::from_secs(60);

/// `shoal leave`: removes the store member of the server running on
/// DATA_DIR through its own store (which forwards the change to the
/// leader), then waits until that server stopped serving.
async fn leave(args: LeaveArgs) -> Result<()> {
    let env_path = args.data_dir.join(ETCDCTL_ENV_FILE);
    let text = std::fs::read_to_string(&env_path).with_context(|| {
        format!(
            "reading {}: is {} the data dir of a `shoal server` or `shoal up` with the bundled store? (a server over --store-endpoints is no store member: just stop it)",
            env_path.display(),
            args.data_dir.display()
        )
    })?;
    let var = |name: &str| {
        text.lines()
            .filter_map(|l| l.trim().trim_start_matches("export ").split_once('='))
            .find_map(|(k, v)| (k == name).then(|| v.to_owned()))
            .with_context(|| format!("{} lacks {name}", env_path.display()))
    };
    let read = |name: &str| -> Result<String> {
        let path = var(name)?;
        std::fs::read_to_string(&path).with_context(|| format!("reading {path} ({name})"))
    };
    let endpoint = var("ETCDCTL_ENDPOINTS")?;
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read("ETCDCTL_CACERT")?))
        .identity(etcd_client::Identity::from_pem(
            read("ETCDCTL_CERT")?,
            read("ETCDCTL_KEY")?,
        ));
    let options = etcd_client::ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30));
    let unreachable = |e: etcd_client::Error| {
        anyhow::anyhow!(
            "the store of the server on {} does not answer at {endpoint}: {e}; is that server running? (a member that is down is removed from another member with `etcdctl member remove <id>`)",
            args.data_dir.display()
        )
    };
    let mut client = etcd_client::Client::connect([endpoint.as_str()], Some(options))
        .await
        .map_err(unreachable)?;
    let status = client.status().await.map_err(unreachable)?;
    let id = status
        .header()
        .map(etcd_client::ResponseHeader::member_id)
        .filter(|id| *id != 0)
        .with_context(|| format!("the store at {endpoint} did not say which member it is"))?;
    // The other members' peer hosts, to reach an API once this one stopped.
    let others: Vec<String> = match client.member_list().await {
        Ok(list) => list
            .members()
            .iter()
            .filter(|m| m.id() != id)
            .flat_map(|m| m.peer_urls().iter().cloned())
            .collect(),
        Err(_) => Vec::new(),
    };
    client.member_remove(id).await.map_err(|e| {
        anyhow::anyhow!(
            "removing store member {id:x} (the server on {}): {e}",
            args.data_dir.display()
        )
    })?;
    println!("shoal leave: store member {id:x} left the cluster; waiting for its server to stop");
    let deadline = tokio::time::Instant::now() + LEAVE_WAIT;
    while tokio::time::Instant::now() < deadline {
        if client.status().await.is_err() {
            println!(
                "shoal leave: the server on {} stopped",
                args.data_dir.display()
            );
            delete_own_node(&args.data_dir, &others).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!(
        "store member {id:x} was removed but the server on {} still answers after {LEAVE_WAIT:?}; stop it",
        args.data_dir.display()
    )
}

/// After `shoal leave` of a `shoal up` member (which was a node too, now
/// stopped): deletes its Node through another member's API with the admin
/// kubeconfig in DATA_DIR, trying the server it joined through, then every
/// other store member's host on this member's API port. When none can,
/// it says what to run instead; leaving succeeded either way.
async fn delete_own_node(data_dir: &std::path::Path, other_peers: &[String]) {
    let node_kubeconfig = data_dir
        .join(UP_AGENT_DIR)
        .join(shoal_agent::bootstrap::KUBECONFIG_FILE);
    // `shoal up`'s agent runs as user system:node:<name>.
    let Some(name) = std::fs::read_to_string(&node_kubeconfig)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.trim()
                    .trim_start_matches("- ")
                    .trim_start_matches("name:")
                    .trim()
                    .strip_prefix("system:node:")
                    .map(str::to_owned)
            })
        })
    else {
        // A `shoal server` alone: no node of its own.
        return;
    };
    let admin = data_dir.join("kubeconfig");
    let port = token::cluster_of(&admin)
        .ok()
        .and_then(|(url, _)| url.parse::<http::Uri>().ok()?.port_u16())
        .unwrap_or(6443);
    let mut urls: Vec<String> = std::fs::read_to_string(data_dir.join(JOINED_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["server"].as_str().map(str::to_owned))
        .into_iter()
        .collect();
    for peer in other_peers {
        if let Some(host) = peer
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_owned))
        {
            let url = format!("https://{host}:{port}");
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    let mut last =
        format!("no other member's API is known (no {JOINED_FILE}, no other store member)");
    for url in &urls {
        let deleted = async {
            let client = client_through(&admin, url).await?;
            let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
            match nodes.delete(&name, &Default::default()).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
                Err(e) => Err(anyhow::Error::from(e)),
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), deleted).await {
            Ok(Ok(true)) => {
                println!("shoal leave: deleted node {name} through {url}");
                return;
            }
            Ok(Ok(false)) => {
                println!("shoal leave: node {name} was already gone ({url})");
                return;
            }
            Ok(Err(e)) => last = format!("{url}: {e:#}"),
            Err(_) => last = format!("{url}: no answer in 10 s"),
        }
    }
    println!(
        "shoal leave: node {name} is still registered ({last}); delete it with `kubectl delete node {name}`"
    );
}

/// Copies the admin kubeconfig to `--write-kubeconfig` (owner-only: it
/// holds the admin's key).
fn write_kubeconfig_copy(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let text = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = to.with_extension("tmp");
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("--write-kubeconfig: creating {}", tmp.display()))?;
        file.write_all(&text)
            .with_context(|| format!("--write-kubeconfig: writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, to)
        .with_context(|| format!("--write-kubeconfig: renaming to {}", to.display()))?;
    Ok(())
}

/// `shoal up`: the control plane, then this host's node agent with a
/// client certificate issued here from the cluster CA, both until SIGTERM.
async fn up(mut args: UpArgs) -> Result<()> {
    // runc and the pods' mounts take paths from elsewhere: no relative ones.
    let data_dir = std::path::absolute(&args.server.data_dir)
        .with_context(|| format!("the data dir {}", args.server.data_dir.display()))?;
    args.server.data_dir = data_dir.clone();
    let name = node_name(args.node.node_name.take())?;
    let agent_dir = data_dir.join(UP_AGENT_DIR);
    std::fs::create_dir_all(&agent_dir)
        .with_context(|| format!("creating the agent's data dir {}", agent_dir.display()))?;
    args.node
        .node_labels
        .push((CONTROL_PLANE_ROLE.to_owned(), String::new()));
    let joins = args.server.join.is_some() || read_joined(&data_dir)?.is_some();
    if args.taint || (joins && !args.no_taint) {
        args.node
            .register_with_taints
            .push(k8s_openapi::api::core::v1::Taint {
                key: CONTROL_PLANE_ROLE.to_owned(),
                effect: "NoSchedule".to_owned(),
                ..Default::default()
            });
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut server = tokio::spawn(run_server(args.server, Some(tx)));
    let ready = tokio::select! {
        ready = rx => ready,
        done = &mut server => {
            done.context("the server's task failed")??;
            return Ok(());
        }
    };
    let Ok(ready) = ready else {
        return server.await.context("the server's task failed")?;
    };
    let kubeconfig = node_kubeconfig(&ready, &agent_dir, &name)?;
    let node = run_node(&agent_dir, name, args.node, kubeconfig, None);
    tokio::select! {
        done = &mut server => done.context("the server's task failed")?,
        done = node => {
            // The agent stops on SIGTERM too; the server stops with it.
            let stopped = server.await.context("the server's task failed")?;
            done.and(stopped)
        }
    }
}

/// `shoal up`'s agent state, in the server's data dir.
const UP_AGENT_DIR: &str = "agent";
/// The label (and taint key) of control-plane nodes.
const CONTROL_PLANE_ROLE: &str = "node-role.kubernetes.io/control-plane";
/// The node client certificate of `shoal up`'s agent (`.crt`, `.key`),
/// in the agent's data dir.
const UP_NODE_CERT: &str = "node-client";

/// The kubeconfig `shoal up`'s agent runs with: node `name`'s identity
/// (`system:node:<name>` in `system:nodes`), issued from the cluster CA
/// when missing or half expired, the API as the admin kubeconfig names it.
fn node_kubeconfig(
    ready: &ServerReady,
    agent_dir: &std::path::Path,
    name: &str,
) -> Result<PathBuf> {
    let (url, ca_pem) = token::cluster_of(&ready.kubeconfig)?;
    let ca = shoal_ca::ClusterCa::load_or_create(&ready.ca_dir).context("the cluster CA")?;
    let user = shoal_ca::node_user(name);
    let cert = ca
        .ensure_client(agent_dir, UP_NODE_CERT, &user, &[shoal_ca::NODES_GROUP])
        .with_context(|| format!("the client certificate of node {name}"))?;
    let path = agent_dir.join(shoal_agent::bootstrap::KUBECONFIG_FILE);
    shoal_ca::Kubeconfig {
        server_url: &url,
        ca_pem: &ca_pem,
        client_cert_pem: &cert.cert_pem,
        client_key_pem: &cert.key_pem,
        user_name: &user,
        cluster_name: shoal_ca::DEFAULT_KUBECONFIG_NAME,
        context_name: shoal_ca::DEFAULT_KUBECONFIG_NAME,
    }
    .write(&path)
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// How long `shoal server` waits for a store leader before it says why it
/// may be missing (it keeps waiting).
const STORE_LEADER_HINT: Duration = Duration::from_secs(10);

/// The bundled store of `shoal server`: a member alone, or with
/// `--initial-cluster` one of several whose peer traffic is TLS with a
/// certificate this member issues itself from the shared CA.
fn server_store_config(args: &ServerArgs) -> Result<StoreConfig> {
    let mut config = StoreConfig::single(
        args.data_dir.join("store"),
        args.store_listen,
        args.store_peer_listen,
    );
    config.name = args.name.clone();
    let own_url = if let Some(joined) = read_joined(&args.data_dir)? {
        let url = joined.peer_url.clone();
        config.join = Some(joined);
        url
    } else if let Some(flag) = &args.initial_cluster {
        let cluster = InitialCluster::parse(flag)?;
        cluster.id_of(&args.name)?;
        if cluster.members.len() > 1 && args.ca_dir.is_none() {
            anyhow::bail!(
                "--initial-cluster names {} members: they must share one cluster CA, service-account key and Secret encryption keys, so give each the same --ca-dir (a copy of the first member's, made before the others start)",
                cluster.members.len()
            );
        }
        let url = cluster
            .members
            .iter()
            .find(|(n, _)| *n == args.name)
            .map(|(_, url)| url.clone())
            .unwrap_or_default();
        config.initial_cluster = Some(cluster);
        url
    } else {
        // A member alone, whose peer URL servers joining later dial.
        format!("https://{}", args.store_peer_listen)
    };
    let host = own_url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()))
        .with_context(|| {
            format!(
                "store member {:?} has no host in its peer URL {own_url:?}",
                args.name
            )
        })?;
    let mut names = vec![shoal_ca::SubjectAltName::parse(&host)];
    if !args.store_peer_listen.ip().is_unspecified() {
        names.push(shoal_ca::SubjectAltName::parse(
            &args.store_peer_listen.ip().to_string(),
        ));
    }
    let secrets = shoal_apiserver::cluster_secrets(&secrets_dir(args))?;
    let peer = secrets
        .ca
        .ensure_peer(&args.data_dir.join("pki"), "store-peer", &args.name, &names)
        .context("the store's peer certificate")?;
    config.peer_tls = Some(ListenerTls {
        cert_pem: peer.cert_pem,
        key_pem: peer.key_pem,
        trusted_ca_pem: Some(secrets.ca.cert_pem().to_owned()),
        client_cert_auth: true,
    });
    Ok(config)
}

/// Where the secrets every control-plane member shares live: --ca-dir,
/// else DATA_DIR/pki.
fn secrets_dir(args: &ServerArgs) -> PathBuf {
    args.ca_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("pki"))
}

/// What `shoal server --join` was given by the server it joined, in its
/// data dir: the store member it is (a restart starts it again).
const JOINED_FILE: &str = "joined.json";

/// The store member a joined server is, if it joined.
fn read_joined(data_dir: &std::path::Path) -> Result<Option<shoal_store::JoinedMember>> {
    let path = data_dir.join(JOINED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let joined = (|| {
        Some(shoal_store::JoinedMember {
            id: v["memberId"].as_u64()?,
            cluster_id: v["clusterId"].as_u64()?,
            peer_url: v["peerURL"].as_str()?.to_owned(),
        })
    })()
    .with_context(|| {
        format!(
            "{} lacks memberId, clusterId or peerURL: remove the data dir and join again",
            path.display()
        )
    })?;
    Ok(Some(joined))
}

/// `--join`: unless this data dir joined before, checks the server's CA
/// against --ca-cert-hash, asks it (with the server-join token) to add
/// this member to the store, and writes the shared secrets it sends into
/// the secrets dir and the member's id into DATA_DIR/joined.json.
async fn join_control_plane(args: &ServerArgs) -> Result<()> {
    if read_joined(&args.data_dir)?.is_some() {
        tracing::info!("this member joined before: starting it again");
        return Ok(());
    }
    let (Some(server), Some(token), Some(hash)) = (&args.join, &args.token, &args.ca_cert_hash)
    else {
        anyhow::bail!(
            "--join needs --token and --ca-cert-hash (printed by `shoal token create --server-join`)"
        );
    };
    if args.store_peer_listen.ip().is_unspecified() || args.store_peer_listen.ip().is_loopback() {
        anyhow::bail!(
            "--store-peer-listen {} is not an address the other members can reach: give this host's address (e.g. 10.0.0.2:2380)",
            args.store_peer_listen
        );
    }
    let join = shoal_agent::bootstrap::Join {
        server: server.clone(),
        token: shoal_ca::BootstrapToken::parse(token).context("--token")?,
        ca_cert_hash: shoal_ca::CaCertHash::parse(hash).context("--ca-cert-hash")?,
        wait: shoal_agent::bootstrap::DEFAULT_SIGN_WAIT,
    };
    let ca_pem = join.discover_ca().await?;
    let mut config = kube::Config::new(
        server
            .parse::<http::Uri>()
            .with_context(|| format!("--join {server:?} is not a URL"))?,
    );
    config.root_cert = Some(
        <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_slice_iter(
            ca_pem.as_bytes(),
        )
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect(),
    );
    config.auth_info.token = Some(token.clone().into());
    let client = kube::Client::try_from(config).context("a client for --join")?;
    let peer_url = format!("https://{}", args.store_peer_listen);
    let body = serde_json::to_vec(&shoal_apiserver::ServerJoinRequest {
        name: args.name.clone(),
        peer_url: peer_url.clone(),
    })?;
    let request = http::Request::post(shoal_apiserver::SERVER_JOIN_PATH)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)?;
    let answer: shoal_apiserver::ServerJoinResponse =
        client.request(request).await.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 401 => anyhow::anyhow!(
                "the server at {server} refused the token (401 Unauthorized): it is unknown, expired or deleted; create one with `shoal token create --server-join` there"
            ),
            kube::Error::Api(s) => anyhow::anyhow!(
                "joining the control plane at {server}: {} ({})",
                s.message,
                s.code
            ),
            e => anyhow::anyhow!("joining the control plane at {server}: {e}"),
        })?;
    let dir = secrets_dir(args);
    answer.write_files(&dir).map_err(|e| {
        anyhow::anyhow!("writing the cluster's secrets into {}: {e}", dir.display())
    })?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let path = args.data_dir.join(JOINED_FILE);
    let text = serde_json::json!({
        "server": server,
        "memberId": answer.member_id,
        "clusterId": answer.cluster_id,
        "peerURL": peer_url,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&text)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "shoal server: joined the control plane at {server} as store member {:x}",
        answer.member_id
    );
    Ok(())
}

/// How long a joining member may take to receive the store's log.
const CATCH_UP_WAIT: Duration = Duration::from_secs(300);

/// A member added as a learner: once it has the leader's log up to the
/// read index, it asks the leader to make it a voter (promoting one that
/// lags would stall writes until it caught up).
async fn promote_self(store: &shoal_store::RaftBackend) -> Result<()> {
    let node = store.node();
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    loop {
        match node
            .members()
            .into_iter()
            .find(|(id, _, _)| *id == node.id())
        {
            Some((_, _, false)) => return Ok(()),
            Some((_, _, true)) => break,
            None if tokio::time::Instant::now() > deadline => anyhow::bail!(
                "store member {:x} heard nothing from the leader in {CATCH_UP_WAIT:?}: can it reach this member's --store-peer-listen?",
                node.id()
            ),
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let index = node
        .read_index()
        .await
        .context("asking the store's leader for its commit index")?;
    node.wait_applied(index, CATCH_UP_WAIT)
        .await
        .context("catching up with the store's log")?;
    node.promote(node.id())
        .await
        .context("becoming a voting store member")?;
    tracing::info!(member = node.id(), "this store member votes");
    Ok(())
}

/// The bundled store's client CA, under `DATA_DIR/pki`. The store has a CA
/// of its own, as kubeadm's etcd does: the cluster CA also signs the client
/// certificates of nodes and users, none of which may read the store.
const STORE_CA_DIR: &str = "store-ca";
/// The store's serving certificate (`.crt`, `.key`) in `DATA_DIR/pki`.
const STORE_SERVER_CERT: &str = "store-server";
/// The client certificate of the apiserver and etcdctl (`.crt`, `.key`).
const STORE_CLIENT_CERT: &str = "store-client";
/// Its user (CN).
const STORE_CLIENT_USER: &str = "shoal-apiserver";
/// What `etcdctl` needs to reach the bundled store, as environment
/// variables, in `DATA_DIR`.
const ETCDCTL_ENV_FILE: &str = "etcdctl.env";

/// The bundled store's client TLS: what the apiserver presents and the
/// files an operator's etcdctl uses.
struct StoreClientTls {
    api: shoal_apiserver::StoreTls,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl StoreClientTls {
    /// Writes `DATA_DIR/etcdctl.env` (`. etcdctl.env && etcdctl get ...`).
    fn write_etcdctl_env(&self, data_dir: &std::path::Path, addr: SocketAddr) -> Result<PathBuf> {
        let path = data_dir.join(ETCDCTL_ENV_FILE);
        let text = format!(
            "export ETCDCTL_API=3\nexport ETCDCTL_ENDPOINTS=https://{addr}\nexport ETCDCTL_CACERT={}\nexport ETCDCTL_CERT={}\nexport ETCDCTL_KEY={}\n",
            self.ca.display(),
            self.cert.display(),
            self.key.display()
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// Makes the bundled store's client port speak TLS and require client
/// certificates (etcd's `--client-cert-auth`) from the store's own CA,
/// issuing its serving certificate (loopback and the listen address) and
/// the apiserver's client certificate when missing or half expired.
fn store_client_tls(args: &ServerArgs, config: &mut StoreConfig) -> Result<StoreClientTls> {
    let pki = args.data_dir.join("pki");
    let ca_dir = pki.join(STORE_CA_DIR);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ca_dir)
            .with_context(|| format!("creating {}", ca_dir.display()))?;
    }
    let ca = shoal_ca::ClusterCa::load_or_create(&ca_dir).context("the store's client CA")?;
    let mut names: Vec<_> = ["127.0.0.1", "::1", "localhost"]
        .into_iter()
        .map(shoal_ca::SubjectAltName::parse)
        .collect();
    if !args.store_listen.ip().is_unspecified() {
        names.push(shoal_ca::SubjectAltName::parse(
            &args.store_listen.ip().to_string(),
        ));
    }
    let server = ca
        .ensure_peer(&pki, STORE_SERVER_CERT, &args.name, &names)
        .context("the store's serving certificate")?;
    let client = ca
        .ensure_client(&pki, STORE_CLIENT_CERT, STORE_CLIENT_USER, &[])
        .context("the apiserver's store client certificate")?;
    config.client_tls = Some(ListenerTls {
        cert_pem: server.cert_pem,
        key_pem: server.key_pem,
        trusted_ca_pem: Some(ca.cert_pem().to_owned()),
        client_cert_auth: true,
    });
    Ok(StoreClientTls {
        api: shoal_apiserver::StoreTls {
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem: client.cert_pem,
            key_pem: client.key_pem,
        },
        ca: ca_dir.join(shoal_ca::CA_CERT_FILE),
        cert: pki.join(format!("{STORE_CLIENT_CERT}.crt")),
        key: pki.join(format!("{STORE_CLIENT_CERT}.key")),
    })
}

/// The Leases' durations from the `--leader-elect-*` flags, checked as
/// kube-scheduler checks them.
fn leader_election_timing(args: &ServerArgs) -> Result<shoal_controllers::leader_election::Timing> {
    let timing = shoal_controllers::leader_election::Timing {
        lease_duration: args.leader_elect_lease_duration,
        renew_deadline: args.leader_elect_renew_deadline,
        retry_period: args.leader_elect_retry_period,
    };
    if timing.lease_duration <= timing.renew_deadline {
        anyhow::bail!(
            "--leader-elect-lease-duration ({:?}) must be longer than --leader-elect-renew-deadline ({:?})",
            timing.lease_duration,
            timing.renew_deadline
        );
    }
    if timing.renew_deadline <= timing.retry_period || timing.retry_period.is_zero() {
        anyhow::bail!(
            "--leader-elect-renew-deadline ({:?}) must be longer than --leader-elect-retry-period ({:?}), which must be above zero",
            timing.renew_deadline,
            timing.retry_period
        );
    }
    Ok(timing)
}

/// A `--node-labels` entry: `key=value` (or `key`, with an empty value).
fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').unwrap_or((text, ""));
    if key.trim().is_empty() {
        return Err(format!("{text:?} is not a label such as key=value"));
    }
    Ok((key.trim().to_owned(), value.trim().to_owned()))
}

/// A `--register-with-taints` entry: `key[=value]:Effect`, the effect one
/// of NoSchedule, PreferNoSchedule, NoExecute.
fn parse_taint(text: &str) -> Result<k8s_openapi::api::core::v1::Taint, String> {
    let bad = |why: &str| format!("{text:?} is not a taint such as key=value:NoSchedule ({why})");
    let (kv, effect) = text.rsplit_once(':').ok_or_else(|| bad("no :Effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(bad(
            "the effect is NoSchedule, PreferNoSchedule or NoExecute",
        ));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(bad("no key"));
    }
    Ok(k8s_openapi::api::core::v1::Taint {
        key: key.to_owned(),
        value,
        effect: effect.to_owned(),
        time_added: None,
    })
}

/// A byte count as a Kubernetes quantity: `10Mi`, `500k`, `1048576`.
fn parse_bytes(text: &str) -> Result<u64, String> {
    match shoal_api::parse_quantity(text.trim()) {
        Some(v) if v.is_finite() && v >= 1.0 && v < u64::MAX as f64 => Ok(v as u64),
        _ => Err(format!(
            "{text:?} is not a positive size such as 10Mi, 500Ki or 1048576"
        )),
    }
}

/// A Go duration as Kubernetes' flags take it: `15s`, `1m30s`, `500ms`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 15s, 1m30s or 500ms");
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest == "0" {
        return Ok(total);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit_end = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| digits + i);
        let unit = match &rest[digits..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(value * unit).map_err(|_| bad())?;
        rest = &rest[unit_end..];
    }
    Ok(total)
}

async fn agent(mut args: AgentArgs) -> Result<()> {
    // runc and the pods' mounts take paths from elsewhere: no relative ones.
    args.data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("the data dir {}", args.data_dir.display()))?;
    let name = node_name(args.node.node_name.take())?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data dir {}", args.data_dir.display()))?;
    let servers = shoal_agent::bootstrap::servers(&args.data_dir, &args.server)?;
    if args.token.is_some() && servers.is_empty() {
        anyhow::bail!("--token needs --server (the API to join, https://HOST:6443)");
    }
    let mut joins = Vec::new();
    if let (Some(token), Some(hash)) = (&args.token, &args.ca_cert_hash) {
        let token = shoal_ca::BootstrapToken::parse(token).context("--token")?;
        let hash = shoal_ca::CaCertHash::parse(hash).context("--ca-cert-hash")?;
        for server in &servers {
            joins.push(shoal_agent::bootstrap::Join {
                server: server.clone(),
                token: token.clone(),
                ca_cert_hash: hash.clone(),
                wait: shoal_agent::bootstrap::DEFAULT_SIGN_WAIT,
            });
        }
    }
    let kubeconfig = shoal_agent::bootstrap::kubeconfig_from_any(
        args.kubeconfig.as_deref(),
        &args.data_dir,
        &name,
        &joins,
    )
    .await?;
    // With several servers the agent's clients go through the balancer.
    let balancer = if servers.len() > 1 {
        Some(
            shoal_agent::api_balancer::ApiBalancer::start(&servers)
                .await
                .context("the agent's API load balancer")?,
        )
    } else {
        None
    };
    let api_url = balancer
        .as_ref()
        .map(shoal_agent::api_balancer::ApiBalancer::url);
    run_node(&args.data_dir, name, args.node, kubeconfig, api_url).await
}

/// A client with `kubeconfig`'s credentials that reaches the API at `url`
/// (the agent's load balancer on loopback, which every apiserver's
/// serving certificate names).
async fn client_through(kubeconfig: &std::path::Path, url: &str) -> Result<kube::Client> {
    let file = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading the kubeconfig {}", kubeconfig.display()))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await
            .with_context(|| format!("the kubeconfig {}", kubeconfig.display()))?;
    config.cluster_url = url
        .parse()
        .with_context(|| format!("the load balancer's URL {url:?}"))?;
    kube::Client::try_from(config).with_context(|| format!("a client through {url}"))
}

/// `--node-name`, or the host name.
fn node_name(flag: Option<String>) -> Result<String> {
    Ok(match flag {
        Some(name) => name,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name (or give --node-name)")?
            .trim()
            .to_string(),
    })
}

/// The node agent of `shoal agent` and `shoal up`: registers node `name`
/// through `kubeconfig` and runs its pods, dataplane, DNS and streaming
/// server until SIGTERM. `data_dir` is absolute and exists.
async fn run_node(
    data_dir: &std::path::Path,
    name: String,
    args: NodeArgs,
    kubeconfig: PathBuf,
    api_url: Option<String>,
) -> Result<()> {
    let mut config = shoal_agent::node::NodeConfig::new(name, data_dir);
    config.addresses = args.node_ip;
    config.capacity_cpu = args.capacity_cpu;
    config.capacity_memory = args.capacity_memory;
    config.max_pods = args.max_pods;
    config.heartbeat = std::time::Duration::from_secs(args.heartbeat_seconds.max(1));
    config.kubelet_port = args.streaming_listen.port();
    config.labels = args.node_labels;
    config.taints = args.register_with_taints;
    let mut pods = shoal_agent::pods::PodsConfig::new(&config.name, data_dir);
    pods.node_ips = config.addresses.clone();
    pods.registries = shoal_runtime::RegistryConfig {
        insecure: args.insecure_registry,
        secure: args.registry,
    };
    let own_cgroup = own_cgroup2().context("finding the agent's own cgroup v2 directory")?;
    pods.cgroup_parent = match args.cgroup_parent {
        Some(parent) => parent,
        None => format!("{}/pods", own_cgroup.1.trim_end_matches('/')),
    };
    let local_dns: Vec<std::net::IpAddr> = args
        .local_dns
        .iter()
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse()
                .with_context(|| format!("--local-dns: {a:?} is not an IP address"))
        })
        .collect::<Result<_>>()?;
    pods.local_addresses = local_dns.clone();
    pods.runtime_binary = args.runtime;
    pods.cluster_dns = args
        .cluster_dns
        .iter()
        .map(|a| {
            a.parse()
                .with_context(|| format!("--cluster-dns: {a:?} is not an IP address"))
        })
        .collect::<Result<_>>()?;
    let cluster_domain_dns = args.cluster_domain.clone();
    pods.cluster_domain = args.cluster_domain;
    pods.backoff_initial = std::time::Duration::from_secs(args.backoff_seconds.max(1));
    pods.container_log_max_size = args.container_log_max_size;
    pods.container_log_max_files = usize::from(args.container_log_max_files);
    let mut streaming = shoal_agent::streaming::Config::new(
        &config.name,
        data_dir,
        shoal_agent::streaming::client_ca_from_kubeconfig(&kubeconfig)?,
    );
    streaming.listen = args.streaming_listen;
    streaming.node_ips = config.addresses.clone();
    streaming.runtime_binary = pods.runtime_binary.clone();
    streaming.cgroup_parent = pods.cgroup_parent.clone();
    streaming.consoles = pods.consoles.clone();
    let client = match &api_url {
        Some(url) => client_through(&kubeconfig, url).await?,
        None => shoal_controllers::client_from_kubeconfig(&kubeconfig).await?,
    };
    // A node certificate is renewed before it expires and every task's
    // client follows it (see shoal_agent::cert_rotation).
    let client =
        match shoal_agent::cert_rotation::Rotation::of_kubeconfig(&config.name, &kubeconfig) {
            Some(rotation) => {
                let clients = shoal_agent::cert_rotation::RotatingClient::new(client);
                let rebuild = move |path: PathBuf| {
                    let url = api_url.clone();
                    async move {
                        match url {
                            Some(url) => client_through(&path, &url).await,
                            None => shoal_controllers::client_from_kubeconfig(&path).await,
                        }
                    }
                };
                tokio::spawn(shoal_agent::cert_rotation::run(
                    rotation,
                    clients.clone(),
                    rebuild,
                ));
                clients.client()
            }
            None => client,
        };
    if !args.no_dataplane {
        let cgroup = args
            .lb_cgroup
            .clone()
            .unwrap_or_else(|| own_cgroup.0.clone());
        let dataplane = shoal_agent::Dataplane::load_sized(
            shoal_agent::DataplaneConfig {
                pin_dir: args
                    .bpf_pin_dir
                    .clone()
                    .unwrap_or_else(|| shoal_agent::DataplaneConfig::pin_dir_for(&config.name)),
                cgroup,
                ebpf_debug_logs: false,
            },
            shoal_agent::MapSizes {
                ct4: args.ct4_entries,
                ct6: args.ct6_entries,
                affinity: args.affinity_entries,
                flows: args.flow_entries,
                flow_ring_bytes: args.flow_ring_bytes,
            },
        )
        .context("loading the eBPF service dataplane (or run with --no-dataplane)")?;
        let _ = health::DATAPLANE_PINS.set(dataplane.config().pin_dir.clone());
        let pin_dir = dataplane.config().pin_dir.clone();
        let mut sync =
            shoal_agent::services::SyncConfig::new(&config.name, config.addresses.clone());
        sync.node.local_dns = local_dns.clone();
        sync.conntrack = Some(shoal_agent::CtGcConfig {
            pin_dir: pin_dir.clone(),
            timeouts: shoal_agent::CtTimeouts {
                tcp: args.bpf_ct_timeout_regular_tcp,
                tcp_fin: args.bpf_ct_timeout_regular_tcp_fin,
                tcp_syn: args.bpf_ct_timeout_regular_tcp_syn,
                any: args.bpf_ct_timeout_regular_any,
            },
            interval: args.conntrack_gc_interval.max(Duration::from_millis(100)),
        });
        let maps = std::sync::Arc::new(std::sync::Mutex::new(dataplane));
        let flow_args = FlowArgs {
            udp_idle: args.flow_udp_idle,
            tcp_idle: args.flow_tcp_idle,
            socket: args.flows_socket.clone(),
            cluster_name: args.cluster_name.clone(),
        };
        spawn_flows(&config.name, &flow_args, client.clone(), maps.clone())?;
        tokio::spawn(shoal_agent::attach_nodeport_when_ready(
            client.clone(),
            maps.clone(),
            config.name.clone(),
            config.addresses.clone(),
            args.lb_device.clone(),
        ));
        let mut policy = shoal_agent::policy::PolicyConfig::new(&config.name, pin_dir);
        policy.local_dns = local_dns.clone();
        let policy_client = client.clone();
        tokio::spawn(async move {
            if let Err(e) = shoal_agent::policy::run(policy_client, policy).await {
                tracing::error!("policy sync stopped: {e}");
            }
        });
        let client = client.clone();
        tokio::spawn(async move {
            if let Err(e) = shoal_agent::services::run(client, maps, sync).await {
                tracing::error!("service sync stopped: {e}");
            }
        });
    }
    let dns_metrics = health::DnsMetrics::default();
    {
        let dns_metrics = dns_metrics.clone();
        let addr = args.health_listen;
        tokio::spawn(async move {
            if let Err(e) = health::serve(addr, dns_metrics).await {
                tracing::error!("{e:#}");
            }
        });
    }
    if !local_dns.is_empty() {
        let upstreams = dns_upstreams(&args.dns_upstreams)?;
        tokio::spawn(node_local_dns(
            client.clone(),
            local_dns,
            upstreams,
            cluster_domain_dns,
            dns_metrics,
        ));
    }
    let (tx, _rx) = tokio::sync::watch::channel(None);
    tokio::select! {
        r = shoal_agent::node::run(client.clone(), config, tx) => r,
        r = shoal_agent::pods::run(client, pods) => r,
        r = shoal_agent::streaming::run(streaming) => r.map_err(Into::into),
        () = shutdown_signal() => Ok(()),
    }
}

/// The agent's own cgroup v2 directory: (its path on disk, its path
/// relative to the cgroup2 root).
fn own_cgroup2() -> Result<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("the agent is in no cgroup v2 directory (is cgroup2 mounted?)")?
        .to_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let root = mounts
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .context("no cgroup2 file system is mounted")?;
    Ok((root.join(rel.trim_start_matches('/')), rel))
}

/// `--dns-upstreams`, or the nameservers of /etc/resolv.conf.
fn dns_upstreams(flag: &[String]) -> Result<Vec<SocketAddr>> {
    if flag.iter().any(|f| f == "none") {
        return Ok(Vec::new());
    }
    if flag.is_empty() {
        return Ok(
            shoal_dns::Config::upstreams_from_resolv_conf(std::path::Path::new("/etc/resolv.conf"))
                .unwrap_or_default(),
        );
    }
    flag.iter()
        .map(|u| {
            u.parse::<SocketAddr>()
                .or_else(|_| {
                    u.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .with_context(|| format!("--dns-upstreams: {u:?} is neither IP nor IP:PORT"))
        })
        .collect()
}

/// The node-local DNS server on `ips` port 53, answering the cluster
/// domain from its own view of the API. It binds once the pod network has
/// put the addresses on `lo`.
async fn node_local_dns(
    client: kube::Client,
    ips: Vec<std::net::IpAddr>,
    upstreams: Vec<SocketAddr>,
    domain: String,
    metrics: health::DnsMetrics,
) {
    let config = shoal_dns::Config {
        domain,
        listen: ips.iter().map(|ip| SocketAddr::new(*ip, 53)).collect(),
        upstreams,
        ..shoal_dns::Config::default()
    };
    let view = match shoal_dns::ClusterView::new(&config.domain, config.ttl) {
        Ok(view) => view,
        Err(e) => {
            tracing::error!("node-local DNS: {e}");
            return;
        }
    };
    tokio::spawn(shoal_dns::watch(client, view.clone()));
    let mut said = false;
    let server = loop {
        match shoal_dns::Server::bind(config.clone(), view.clone()).await {
            Ok(server) => break server,
            Err(e) => {
                if !said {
                    tracing::info!("node-local DNS waits for its addresses: {e}");
                    said = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    tracing::info!(addrs = ?server.local_addrs(), "node-local DNS serving");
    let _ = metrics.set(server.metrics());
    if let Err(e) = server.serve(std::future::pending()).await {
        tracing::error!("node-local DNS stopped: {e}");
    }
}

fn image(args: ImageArgs) -> Result<()> {
    let store = shoal_runtime::ImageStore::open(&args.data_dir.join("images"))
        .with_context(|| format!("opening the image store in {}", args.data_dir.display()))?;
    match args.action {
        ImageAction::Import { archive } => {
            for r in store
                .import(&archive)
                .with_context(|| format!("importing {}", archive.display()))?
            {
                println!("imported {}", r.reference);
            }
        }
        ImageAction::Ls => {
            println!("{:<50} {:<20} {:>10}", "IMAGE", "ID", "SIZE");
            for r in store.list()? {
                let id: String =
                    r.id.trim_start_matches("sha256:")
                        .chars()
                        .take(12)
                        .collect();
                println!("{:<50} {:<20} {:>10}", r.reference, id, r.size);
            }
        }
    }
    Ok(())
}

/// The LoadBalancer pools from `--lb-pool`.
fn lb_ipam_config(args: &ServerArgs) -> Result<shoal_controllers::lb_ipam::Config> {
    let pools = args
        .lb_pool
        .iter()
        .map(|p| {
            p.trim().parse::<ipnet::IpNet>().map_err(|e| {
                anyhow::anyhow!("--lb-pool: {p:?} is not a CIDR ({e}), e.g. 10.250.0.0/24")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(shoal_controllers::lb_ipam::Config { pools })
}

/// The node IPAM settings from `--cluster-cidrs` and the node masks.
fn node_ipam_config(args: &ServerArgs) -> Result<shoal_controllers::node_ipam::Config> {
    let mut config = shoal_controllers::node_ipam::Config {
        cluster_cidr_v4: None,
        cluster_cidr_v6: None,
        node_mask_v4: args.node_cidr_mask_v4,
        node_mask_v6: args.node_cidr_mask_v6,
    };
    for cidr in &args.cluster_cidrs {
        match cidr.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(v4)) if config.cluster_cidr_v4.is_none() => {
                config.cluster_cidr_v4 = Some(v4.trunc());
            }
            Ok(ipnet::IpNet::V6(v6)) if config.cluster_cidr_v6.is_none() => {
                config.cluster_cidr_v6 = Some(v6.trunc());
            }
            Ok(_) => anyhow::bail!(
                "--cluster-cidrs takes at most one IPv4 and one IPv6 range, got {:?}",
                args.cluster_cidrs
            ),
            Err(e) => {
                anyhow::bail!("--cluster-cidrs: {cidr:?} is not a CIDR ({e}), e.g. 10.244.0.0/16")
            }
        }
    }
    Ok(config)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

#[derive(Args)]
struct DataplaneArgs {
    #[command(subcommand)]
    view: DataplaneView,
    /// The node whose maps to read (pinned under /sys/fs/bpf/shoal/NODE);
    /// the host name if not given.
    #[arg(long, global = true)]
    node: Option<String>,
}

#[derive(Subcommand, Clone, Copy)]
enum DataplaneView {
    /// Every frontend (service address, port, protocol) with its reverse-NAT
    /// id, live generation, slot count, affinity and backend slots.
    Services,
    /// Every backend by id, with how many live slots name it.
    Backends,
    /// The verdict counters by reason (translations, refusals, drops).
    Drops,
    /// The conntrack entries of traffic from outside the node (NodePorts,
    /// LoadBalancer IPs, externalIPs): each direction's tuple, what it is
    /// rewritten to, backend, reverse-NAT id, flags, packets, last seen.
    Conntrack,
    /// The session-affinity entries (sessionAffinity: ClientIP): client
    /// network namespace, service, the backend it sticks to, whether that is
    /// still live in the service, last use.
    Affinity,
    /// The compiled NetworkPolicy of every local endpoint (pod veth):
    /// whether ingress / egress are enforced, and each allowed remote
    /// identity with protocol and ports, like `cilium bpf policy get`.
    Policy,
    /// The ipcache: every address prefix the node knows with its security
    /// identity (pods, nodes, ipBlock CIDRs, world).
    Identities,
}

/// The agent's flow settings from its flags.
struct FlowArgs {
    udp_idle: Duration,
    tcp_idle: Duration,
    socket: Option<PathBuf>,
    cluster_name: String,
}

/// Starts the flow pipeline of node `node` on `dataplane`, exporting over
/// OTLP when an `OTEL_EXPORTER_OTLP_*` endpoint is set.
fn spawn_flows(
    node: &str,
    args: &FlowArgs,
    client: kube::Client,
    dataplane: std::sync::Arc<std::sync::Mutex<shoal_agent::Dataplane>>,
) -> Result<()> {
    let pin_dir = dataplane
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .config()
        .pin_dir
        .clone();
    let mut cfg = shoal_agent::flows::Config::new(node, pin_dir);
    cfg.udp_idle = args.udp_idle;
    cfg.tcp_idle = args.tcp_idle;
    if let Some(socket) = &args.socket {
        cfg.socket = socket.clone();
    }
    let export = shoal_telemetry::flows::FlowExportConfig::from_lookup(
        |k| std::env::var(k).ok(),
        node,
        &args.cluster_name,
    )
    .context("reading the OTLP settings of flow export")?;
    let exporter = match export {
        Some(export) => {
            tracing::info!(logs = ?export.logs, metrics = ?export.metrics, "exporting flows over OTLP");
            Some(std::sync::Arc::new(
                shoal_telemetry::flows::FlowExporter::start(&export)
                    .context("starting the OTLP flow exporter")?,
            ))
        }
        None => None,
    };
    tokio::spawn(async move {
        if let Err(e) = shoal_agent::flows::run(client, dataplane, cfg, exporter).await {
            tracing::error!("flow pipeline stopped: {e}");
        }
    });
    Ok(())
}

#[derive(Args)]
struct FlowsArgs {
    /// The node whose agent to ask (its socket is /run/shoal/NODE/flows.sock,
    /// NODE being its pin directory's name, as for `shoal dataplane --node`);
    /// the host name if not given.
    #[arg(long)]
    node: Option<String>,
    /// The agent's socket, instead of the one --node names.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Only flows with this pod at either end.
    #[arg(long)]
    pod: Option<String>,
    /// Only flows with a pod of this namespace at either end.
    #[arg(long)]
    namespace: Option<String>,
    /// Only flows with this verdict (forwarded, dropped_policy, dropped).
    #[arg(long)]
    verdict: Option<String>,
    /// Only flows with this port at either end.
    #[arg(long)]
    port: Option<u16>,
    /// Only flows with a pod of this node at either end.
    #[arg(long)]
    from_node: Option<String>,
    /// At most this many recent flows (0: all the agent keeps).
    #[arg(long, default_value_t = 0)]
    last: usize,
    /// Keep following new flows.
    #[arg(long, short = 'f')]
    follow: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

/// `shoal flows`: recent (and with --follow, live) flows of a node.
async fn flows(args: FlowsArgs) -> Result<()> {
    let socket = match (&args.socket, &args.node) {
        (Some(socket), _) => socket.clone(),
        (None, Some(node)) => shoal_agent::flows::socket_for(node),
        (None, None) => shoal_agent::flows::socket_for(
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("reading the host name (or give --node)")?
                .trim(),
        ),
    };
    let request = shoal_agent::flows::Request {
        filter: shoal_agent::flows::Filter {
            pod: args.pod,
            namespace: args.namespace,
            node: args.from_node,
            verdict: args.verdict,
            port: args.port,
        },
        last: args.last,
        follow: args.follow,
    };
    let json = args.json;
    shoal_agent::flows::follow_socket(&socket, &request, |r| {
        if json {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
        } else {
            println!("{}", shoal_agent::flows::format_line(&r));
        }
    })
    .await
    .context("reading flows from the agent")
}

/// `shoal dataplane ...`: prints one of the pinned maps as a table.
fn dataplane(args: &DataplaneArgs) -> Result<()> {
    let node = match &args.node {
        Some(node) => node.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name (or give --node)")?
            .trim()
            .to_string(),
    };
    let maps = shoal_agent::PinnedMaps::new(shoal_agent::DataplaneConfig::pin_dir_for(&node));
    let table = match args.view {
        DataplaneView::Services => shoal_agent::format_services(&maps.services()?),
        DataplaneView::Backends => shoal_agent::format_backends(&maps.backends()?),
        DataplaneView::Drops => shoal_agent::format_verdicts(&maps.verdicts()?),
        DataplaneView::Conntrack => shoal_agent::format_conntrack(&maps.conntrack()?),
        DataplaneView::Affinity => shoal_agent::format_affinity(&maps.affinity()?),
        DataplaneView::Policy | DataplaneView::Identities => {
            use shoal_agent::policy::PolicyMaps as _;
            let pins = shoal_agent::DataplaneConfig::pin_dir_for(&node);
            let held = shoal_agent::policy::KernelPolicyMaps::open_existing(&pins)?
                .read()
                .map_err(|e| {
                    anyhow::anyhow!("reading the policy maps under {}: {e}", pins.display())
                })?;
            if matches!(args.view, DataplaneView::Policy) {
                shoal_agent::policy::format_policy(&held)
            } else {
                shoal_agent::policy::format_identities(&held)
            }
        }
    };
    print!("{table}");
    Ok(())
}
