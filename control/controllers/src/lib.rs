//! shoal's control-plane controllers. Each one is a kube-rs client of the
//! API, as Kubernetes' controller-manager is; `shoal server` runs them next
//! to the apiserver.
//!
//! - [`node_ipam`]: every Node gets an IPv4 and an IPv6 pod CIDR.
//! - [`endpointslice`]: EndpointSlices and Endpoints for Services.
//! - [`lb_ipam`]: LoadBalancer Services get addresses from the pools.
//! - [`replicaset`]: pods for ReplicaSets.
//! - [`deployment`]: ReplicaSets for Deployments, rolled out and back.
//! - [`job`]: pods for Jobs until enough succeed, or the Job gives up.
//! - [`cronjob`]: Jobs for CronJobs on their schedule.
//! - [`daemonset`]: a pod on every node that fits, rolled node by node.
//! - [`statefulset`]: pods with stable names and claims, in order.
//! - [`node_lifecycle`]: nodes whose Lease lapses marked Unknown and
//!   tainted unreachable; pods evicted from NoExecute-tainted nodes.
//! - [`disruption`]: PodDisruptionBudget status for the eviction API.
//! - [`persistentvolume`]: claims bound to volumes, local-path volumes
//!   provisioned on the node a claim's first pod goes to.
//! - [`hpa`]: HorizontalPodAutoscalers scale their targets on the pods'
//!   CPU and memory from metrics.k8s.io.
//! - [`leader_election`]: the controllers and the scheduler run only
//!   while their Lease in kube-system is theirs.
//! - [`namespace`]: a deleted namespace's contents deleted, then it.
//! - [`service_account`]: every namespace's `default` ServiceAccount and
//!   `kube-root-ca.crt` ConfigMap; legacy token Secrets filled.
//! - [`garbage_collector`]: dependents of deleted owners deleted or
//!   orphaned, as their owner's deletion asked.
//! - [`certificates`]: node client certificate requests approved and
//!   signed by the cluster CA; expired bootstrap tokens deleted.

pub mod certificates;
mod control_loop;
mod controller_revision;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpointslice;
mod events;
pub mod garbage_collector;
pub mod hpa;
pub mod identity_gc;
pub mod job;
pub mod lb_ipam;
pub mod leader_election;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod persistentvolume;
pub mod replicaset;
pub mod service_account;
pub mod statefulset;
mod workload;

use std::{path::Path, sync::Arc};

use anyhow::Context;
use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};

/// A client built from a kubeconfig file (the one the apiserver writes).
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("the kubeconfig {}", path.display()))?;
    Client::try_from(config).with_context(|| format!("a client from {}", path.display()))
}

/// What the controllers run with.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The node IPAM ranges.
    pub ipam: node_ipam::Config,
    /// The LoadBalancer pools.
    pub lb_ipam: lb_ipam::Config,
    /// The cluster CA (PEM) published as `kube-root-ca.crt` and put in
    /// token Secrets; default: the CA the kubeconfig trusts.
    pub root_ca: Option<String>,
    /// The service-account key that signs legacy token Secrets
    /// (kube-controller-manager's `--service-account-private-key-file`);
    /// without it token Secrets are left unfilled.
    pub service_account_signer: Option<Arc<shoal_ca::TokenSigner>>,
    /// When a node counts as unreachable.
    pub node_lifecycle: node_lifecycle::Config,
    /// The leader election Leases' durations.
    pub leader_election: leader_election::Timing,
    /// What the Leases' holderIdentity starts with instead of the host
    /// name (`shoal server --name`: members on one machine differ by it).
    pub leader_identity: Option<String>,
    /// Where the cluster CA that signs node client certificates lives;
    /// `None` signs none (approved requests stay unsigned).
    pub signing_ca_dir: Option<std::path::PathBuf>,
    /// How long a signed node client certificate is valid (`shoal server
    /// --node-cert-lifetime`); `None` is [`shoal_ca::LEAF_LIFETIME`], a year.
    pub node_cert_lifetime: Option<std::time::Duration>,
    /// How unused security identities are collected.
    pub identity_gc: identity_gc::Config,
}

/// Starts every controller, and the scheduler, on a client from
/// `kubeconfig` with the default [`Config`] but for `ipam`.
pub fn start(kubeconfig: &Path, ipam: node_ipam::Config) -> tokio::task::JoinHandle<()> {
    start_with(
        kubeconfig,
        Config {
            ipam,
            ..Config::default()
        },
    )
}

/// Starts every controller, and the scheduler, on a client from
/// `kubeconfig`, each set while it holds its Lease (kube-system/
/// shoal-controller-manager, kube-system/shoal-scheduler); abort the
/// handle to stop them. A loop that fails logs why; the API keeps serving.
pub fn start_with(kubeconfig: &Path, config: Config) -> tokio::task::JoinHandle<()> {
    let kubeconfig = kubeconfig.to_path_buf();
    let Config {
        ipam,
        lb_ipam,
        root_ca,
        service_account_signer,
        node_lifecycle: lifecycle,
        leader_election: timing,
        leader_identity,
        signing_ca_dir,
        node_cert_lifetime,
        identity_gc: identity_gc_config,
    } = config;
    tokio::spawn(async move {
        let root_ca = root_ca.or_else(|| {
            Kubeconfig::read_from(&kubeconfig)
                .ok()
                .and_then(|k| service_account::root_ca_from_kubeconfig(&k))
        });
        let client = match client_from_kubeconfig(&kubeconfig).await {
            Ok(client) => client,
            Err(e) => {
                tracing::error!("controllers: {e:#}");
                return;
            }
        };
        let controllers = || {
            let client = client.clone();
            let ipam = ipam.clone();
            let lifecycle = lifecycle.clone();
            let signing_ca_dir = signing_ca_dir.clone();
            let identity_gc_config = identity_gc_config.clone();
            let lb_ipam = lb_ipam.clone();
            let root_ca = root_ca.clone();
            let signer = service_account_signer.clone();
            control_loop::shared(async move {
                let tokens = async {
                    match signer {
                        Some(signer) => {
                            service_account::run_tokens(client.clone(), signer, root_ca.clone())
                                .await;
                        }
                        None => tracing::info!(
                            "no service-account key given: token Secrets are not filled"
                        ),
                    }
                };
                let ipam = async {
                    if let Err(e) = node_ipam::run(client.clone(), ipam).await {
                        tracing::error!("node IPAM controller stopped: {e:#}");
                    }
                };
                tokio::join!(
                    ipam,
                    endpointslice::run(client.clone()),
                    lb_ipam::run(client.clone(), lb_ipam),
                    service_account::run_accounts(client.clone(), root_ca.clone()),
                    tokens,
                    replicaset::run(client.clone()),
                    deployment::run(client.clone()),
                    job::run(client.clone()),
                    cronjob::run(client.clone()),
                    daemonset::run(client.clone()),
                    statefulset::run(client.clone()),
                    namespace::run(client.clone()),
                    garbage_collector::run(client.clone()),
                    node_lifecycle::run(client.clone(), lifecycle),
                    disruption::run(client.clone()),
                    persistentvolume::run(client.clone()),
                    hpa::run(client.clone()),
                    certificates::run(client.clone(), signing_ca_dir, node_cert_lifetime),
                    identity_gc::run(client.clone(), identity_gc_config),
                );
            })
        };
        let scheduler = || {
            let client = client.clone();
            async move {
                if let Err(e) = shoal_scheduler::run(client).await {
                    tracing::error!("scheduler stopped: {e:#}");
                }
            }
        };
        tokio::join!(
            leader_election::run_leading(
                client.clone(),
                leader_election::Candidate::named(
                    leader_election::CONTROLLER_MANAGER_LEASE,
                    leader_identity.as_deref(),
                    timing.clone()
                ),
                controllers,
            ),
            leader_election::run_leading(
                client.clone(),
                leader_election::Candidate::named(
                    leader_election::SCHEDULER_LEASE,
                    leader_identity.as_deref(),
                    timing
                ),
                scheduler,
            ),
        );
    })
}
