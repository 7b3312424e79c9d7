//! Starting the API server: the cluster CA and serving certificate, the
//! operator's kubeconfig, the store connection, the watch cache, and the
//! objects every cluster has from its first second.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{
    admission::{Cidr, ClusterAdmission, ServiceNetwork},
    authn::Authenticator,
    authz::{Rbac, default_objects},
    encryption::{Encryption, EncryptionError},
    kubelet::{KUBELET_CLIENT_CERT, KUBELET_CLIENT_USER, KubeletClient},
    rest::{Resources, now, object_key},
    server::ApiServer,
    storage::{Storage, StorageError, Written},
    watch_cache::WatchCache,
};

/// Default HTTPS address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6443";
/// Default IPv4 service CIDR.
pub const DEFAULT_SERVICE_CIDR_V4: &str = "10.96.0.0/16";
/// Default IPv6 service CIDR.
pub const DEFAULT_SERVICE_CIDR_V6: &str = "fd00:10:96::/112";
/// kube-apiserver's default `--etcd-compaction-interval`.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(300);
use shoal_ca::{ADMIN_USER, MASTERS_GROUP};
/// How long startup waits for the store.
const STORE_WAIT: Duration = Duration::from_secs(30);

/// How the API server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTPS address.
    pub listen: SocketAddr,
    /// etcd v3 endpoints (`http://host:port`, `https://` with `store_tls`).
    pub store: Vec<String>,
    /// TLS towards the store; `None` = plain HTTP/2.
    pub store_tls: Option<crate::storage::StoreTls>,
    /// Where the CA, certificates and the admin kubeconfig live.
    pub data_dir: PathBuf,
    /// IPv4 service CIDR.
    pub service_cidr_v4: String,
    /// IPv6 service CIDR.
    pub service_cidr_v6: String,
    /// Extra names and addresses the serving certificate covers.
    pub extra_sans: Vec<String>,
    /// Where the secrets every control-plane member must share live (the
    /// cluster CA, the service-account key, the Secret encryption keys);
    /// `None` = `DATA_DIR/pki`. See [`cluster_secrets`].
    pub ca_dir: Option<PathBuf>,
    /// How often the store's history is compacted (kube-apiserver's
    /// `--etcd-compaction-interval`, 5 minutes); `None` never compacts.
    pub compaction_interval: Option<Duration>,
    /// Whether new control-plane members may join through this server
    /// (`POST /shoal/v1/server-join`): the bundled store's members only.
    pub server_join: bool,
    /// The mesh CA's URL as pods reach it (`https://HOST:15012`), which the
    /// injected sidecar is given; `None`: pods asking for the sidecar are
    /// refused.
    pub mesh_ca_url: Option<String>,
}

impl Config {
    /// Defaults for a data directory and store endpoints.
    pub fn new(data_dir: impl Into<PathBuf>, store: Vec<String>) -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 6443))),
            store,
            store_tls: None,
            data_dir: data_dir.into(),
            service_cidr_v4: DEFAULT_SERVICE_CIDR_V4.into(),
            service_cidr_v6: DEFAULT_SERVICE_CIDR_V6.into(),
            extra_sans: Vec::new(),
            ca_dir: None,
            compaction_interval: Some(DEFAULT_COMPACTION_INTERVAL),
            server_join: false,
            mesh_ca_url: None,
        }
    }

    /// Where the shared secrets live: `ca_dir`, else `DATA_DIR/pki`.
    pub fn secrets_dir(&self) -> PathBuf {
        self.ca_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("pki"))
    }

    /// The address every `kubernetes` Service gets: the first of each range.
    fn network(&self) -> Result<ServiceNetwork, Error> {
        let v4 = Cidr::parse(&self.service_cidr_v4).map_err(Error::Config)?;
        let v6 = Cidr::parse(&self.service_cidr_v6).map_err(Error::Config)?;
        if !v4.addr.is_ipv4() || v6.addr.is_ipv4() {
            return Err(Error::Config(format!(
                "service CIDRs must be one IPv4 and one IPv6 range, got {} and {}",
                self.service_cidr_v4, self.service_cidr_v6
            )));
        }
        Ok(ServiceNetwork {
            v4,
            v6,
            reserved: reserved_ips(v4, v6).to_vec(),
        })
    }
}

/// The reserved Service addresses: the API's (first) and DNS's (tenth).
fn reserved_ips(v4: Cidr, v6: Cidr) -> [IpAddr; 4] {
    let nth = |c: Cidr, n: u128| -> IpAddr {
        match c.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) + n as u32).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) + n).into()),
        }
    };
    [nth(v4, 1), nth(v6, 1), nth(v4, 10), nth(v6, 10)]
}

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is wrong.
    #[error("apiserver config: {0}")]
    Config(String),
    /// The CA or a certificate could not be loaded or made.
    #[error("apiserver identity: {0}")]
    Ca(#[from] shoal_ca::CaError),
    /// The TLS configuration could not be built.
    #[error("apiserver TLS: {0}")]
    Tls(#[from] shoal_ca::TlsError),
    /// The service-account signing key could not be loaded or made.
    #[error("apiserver service-account key: {0}")]
    Token(#[from] shoal_ca::TokenError),
    /// The Secret encryption keys could not be loaded or made.
    #[error("apiserver: {0}")]
    Encryption(#[from] EncryptionError),
    /// The admin kubeconfig could not be written.
    #[error("apiserver: {0}")]
    Kubeconfig(#[from] shoal_ca::KubeconfigError),
    /// The store did not answer.
    #[error("apiserver: {0}")]
    Store(#[from] StorageError),
    /// Bootstrapping an object failed.
    #[error("apiserver bootstrap: {0}")]
    Bootstrap(String),
    /// The HTTPS address could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What every member of one control plane must hold the same copy of.
pub struct ClusterSecrets {
    /// Signs every certificate; members trust each other through it.
    pub ca: shoal_ca::ClusterCa,
    /// Signs and verifies service-account tokens.
    pub signer: shoal_ca::TokenSigner,
    /// Encrypts Secrets at rest.
    pub encryption: Encryption,
    /// Signs the mesh's workload certificates (another root than `ca`).
    pub mesh_ca: shoal_ca::MeshCa,
}

/// Name of the lock file that serialises creating the shared secrets.
const SECRETS_LOCK_FILE: &str = ".lock";

/// Loads the cluster CA, the service-account key, the Secret encryption
/// keys and the mesh CA from `dir`, creating those missing. Members started at once on one
/// machine with the same `dir` take turns (a lock file), so they all end
/// up with the same secrets; members on other machines need a copy of the
/// directory made after the first member created it.
pub fn cluster_secrets(dir: &std::path::Path) -> Result<ClusterSecrets, Error> {
    let fail =
        |what: &str, e: std::io::Error| Error::Config(format!("{what} {}: {e}", dir.display()));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail("creating the CA directory", e))?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(SECRETS_LOCK_FILE))
        .map_err(|e| fail("opening the lock file in", e))?;
    lock.lock().map_err(|e| fail("locking", e))?;
    let secrets = ClusterSecrets {
        ca: shoal_ca::ClusterCa::load_or_create(dir)?,
        signer: shoal_ca::TokenSigner::load_or_create(dir)?,
        encryption: Encryption::load_or_create(dir)?,
        mesh_ca: shoal_ca::MeshCa::load_or_create(dir)?,
    };
    drop(lock);
    Ok(secrets)
}

/// A started API server, ready to serve.
pub struct Apiserver {
    server: Arc<ApiServer>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    kubeconfig: PathBuf,
    /// The history compactor; stops with the server.
    _compactor: Option<AbortOnDrop>,
}

/// Reviews service-account tokens with the API server's authenticator
/// (TokenReview semantics), usable after the server started serving.
#[derive(Clone)]
pub struct TokenReviewer(Arc<ApiServer>);

impl TokenReviewer {
    /// The user `token` authenticates as, or why it does not.
    pub async fn review(&self, token: &str) -> Result<crate::authz::User, String> {
        self.0.authn.review_service_account(token).await
    }
}

/// A background task that ends when its owner is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Apiserver {
    /// Loads (or creates) the CA, binds the address, connects to the store,
    /// starts the watch cache, writes the admin kubeconfig and creates the
    /// bootstrap objects.
    pub async fn start(config: Config) -> Result<Self, Error> {
        let net = config.network()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
        let pki = config.data_dir.join("pki");
        let ClusterSecrets {
            ca,
            signer,
            encryption,
            ..
        } = cluster_secrets(&config.secrets_dir())?;
        let mut names = shoal_ca::default_apiserver_names();
        names.extend(
            config
                .extra_sans
                .iter()
                .map(|s| shoal_ca::SubjectAltName::parse(s)),
        );
        if !addr.ip().is_unspecified() {
            names.push(shoal_ca::SubjectAltName::parse(&addr.ip().to_string()));
        }
        let serving = ca.ensure_serving(&pki, &names)?;
        let tls = Arc::new(shoal_ca::server_config(&serving, ca.cert_pem())?);
        let admin = ca.ensure_client(&pki, "admin", ADMIN_USER, &[MASTERS_GROUP])?;
        // Who the apiserver is to node agents when it proxies logs and exec:
        // a user of its own in no group, so the certificate grants nothing
        // on the API itself.
        let kubelet_client =
            ca.ensure_client(&pki, KUBELET_CLIENT_CERT, KUBELET_CLIENT_USER, &[])?;
        let kubelet = KubeletClient::new(&kubelet_client)?;
        let host = if addr.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            addr.ip()
        };
        let server_url = format!("https://{}", SocketAddr::new(host, addr.port()));
        let kubeconfig = config.data_dir.join("kubeconfig");
        shoal_ca::Kubeconfig::new(&server_url, &admin, ADMIN_USER).write(&kubeconfig)?;
        let encryption = Arc::new(encryption);

        let storage = tokio::time::timeout(
            STORE_WAIT,
            Storage::connect(&config.store, config.store_tls.as_ref()),
        )
        .await
        .map_err(|_| {
            Error::Config(format!(
                "the store at {:?} did not answer in {STORE_WAIT:?}",
                config.store
            ))
        })??
        .with_encryption(encryption);
        bootstrap(&storage, &net, addr.port(), &server_url, ca.cert_pem()).await?;
        let compactor = config
            .compaction_interval
            .map(|every| AbortOnDrop(tokio::spawn(crate::compactor::run(storage.client(), every))));
        let cache = WatchCache::start(&storage);
        let mut admission = ClusterAdmission::new(storage.clone(), cache.clone(), net);
        if let Some(ca_url) = &config.mesh_ca_url {
            admission = admission.with_sidecar_injection(shoal_sidecar::inject::Injection {
                image: shoal_sidecar::inject::IMAGE.to_owned(),
                ca_url: ca_url.clone(),
                token_audience: shoal_ca::SERVICE_ACCOUNT_ISSUER.to_owned(),
            });
        }
        let admission = Arc::new(admission);
        let authorizer = Arc::new(Rbac::new(cache.clone()));
        let authn = Authenticator::new(signer, storage.clone(), cache.clone());
        let server_join = config.server_join.then(|| crate::server_join::ServerJoin {
            secrets_dir: config.secrets_dir(),
            store: storage.client(),
        });
        let server = Arc::new(ApiServer {
            resources: Resources {
                storage,
                cache,
                admission,
            },
            authorizer,
            authn,
            kubelet,
            server_join,
        });
        tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "apiserver started");
        Ok(Self {
            server,
            listener,
            tls,
            kubeconfig,
            _compactor: compactor,
        })
    }

    /// The bound HTTPS address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The admin kubeconfig written at start.
    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    /// Reviews service-account tokens as this server authenticates them,
    /// for services beside the API (the mesh CA).
    pub fn token_reviewer(&self) -> TokenReviewer {
        TokenReviewer(self.server.clone())
    }

    /// Store watches the watch cache holds open.
    pub fn store_watches(&self) -> usize {
        self.server.resources.cache.store_watches()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
        self.server.serve(self.listener, self.tls, shutdown).await
    }
}

/// The default StorageClass: node-local directories made by the
/// controllers' local-path provisioner where a claim's first pod goes.
fn local_path_storage_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {
            "name": "local-path",
            "annotations": {crate::admission::DEFAULT_CLASS_ANNOTATION: "true"},
        },
        "provisioner": "shoal.io/local-path",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": false,
    })
}

/// Objects every cluster has: the system namespaces and their default
/// service accounts, the reserved `default/kubernetes` and
/// `kube-system/kube-dns` Services, the default `local-path` StorageClass,
/// and `kube-public/cluster-info` with the Role that lets joining nodes
/// read it. Created once; an existing object is left as
/// the operator changed it.
async fn bootstrap(
    storage: &Storage,
    net: &ServiceNetwork,
    port: u16,
    server_url: &str,
    ca_pem: &str,
) -> Result<(), Error> {
    let [api_v4, api_v6, dns_v4, dns_v6] = reserved_ips(net.v4, net.v6);
    let ns = |name: &str| {
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        })
    };
    let service =
        |ns: &str, name: &str, ips: [IpAddr; 2], ports: Value, labels: Value, selector: Value| {
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": ips[0].to_string(),
                    "clusterIPs": [ips[0].to_string(), ips[1].to_string()],
                    "ipFamilies": ["IPv4", "IPv6"],
                    "ipFamilyPolicy": "RequireDualStack",
                    "ports": ports,
                    "selector": selector,
                    "sessionAffinity": "None",
                    "internalTrafficPolicy": "Cluster",
                },
                "status": {"loadBalancer": {}},
            })
        };
    let namespaces = shoal_api::find_resource("", "v1", "namespaces")
        .ok_or_else(|| Error::Bootstrap("namespaces are not served".into()))?;
    let services = shoal_api::find_resource("", "v1", "services")
        .ok_or_else(|| Error::Bootstrap("services are not served".into()))?;
    let accounts = shoal_api::find_resource("", "v1", "serviceaccounts")
        .ok_or_else(|| Error::Bootstrap("serviceaccounts are not served".into()))?;
    let mut objects = Vec::new();
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        objects.push((object_key(namespaces, None, name), ns(name)));
        // The service account controller makes these too; made here, pods
        // in the system namespaces pass ServiceAccount admission before the
        // controllers have started.
        objects.push((
            object_key(accounts, Some(name), "default"),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}}),
        ));
    }
    objects.push((
        object_key(services, Some("default"), "kubernetes"),
        service(
            "default",
            "kubernetes",
            [api_v4, api_v6],
            json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]),
            json!({"component": "apiserver", "provider": "kubernetes"}),
            Value::Null,
        ),
    ));
    objects.push((
        object_key(services, Some("kube-system"), "kube-dns"),
        service(
            "kube-system",
            "kube-dns",
            [dns_v4, dns_v6],
            json!([
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ]),
            json!({"k8s-app": "kube-dns", "kubernetes.io/name": "shoal-dns"}),
            json!({"k8s-app": "kube-dns"}),
        ),
    ));
    let classes = shoal_api::find_resource("storage.k8s.io", "v1", "storageclasses")
        .ok_or_else(|| Error::Bootstrap("storageclasses are not served".into()))?;
    objects.push((
        object_key(classes, None, "local-path"),
        local_path_storage_class(),
    ));
    // What a joining node reads before it has credentials.
    let configmaps = shoal_api::find_resource("", "v1", "configmaps")
        .ok_or_else(|| Error::Bootstrap("configmaps are not served".into()))?;
    objects.push((
        object_key(
            configmaps,
            Some(crate::cluster_info::NAMESPACE),
            crate::cluster_info::NAME,
        ),
        crate::cluster_info::config_map(server_url, ca_pem),
    ));
    for obj in crate::cluster_info::rbac_objects() {
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .and_then(|k| shoal_api::find_kind("rbac.authorization.k8s.io/v1", k))
            .ok_or_else(|| Error::Bootstrap(format!("unknown RBAC kind: {obj}")))?;
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        objects.push((
            object_key(kind, Some(crate::cluster_info::NAMESPACE), name),
            obj.clone(),
        ));
    }
    for obj in default_objects() {
        let kind = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .zip(obj.get("kind").and_then(Value::as_str))
            .and_then(|(v, k)| shoal_api::find_kind(v, k))
            .ok_or_else(|| {
                Error::Bootstrap(format!("default RBAC object of unknown kind: {obj}"))
            })?;
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        objects.push((object_key(kind, None, name), obj.clone()));
    }
    for (key, mut obj) in objects {
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), json!(now()));
        }
        if obj.pointer("/spec/selector").is_some_and(Value::is_null)
            && let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
        {
            spec.remove("selector");
        }
        // The reserved Services' addresses are held like any other's.
        let claims = if key.starts_with("/registry/services/") {
            crate::admission::service_claims(Some(&obj), None)
        } else {
            Default::default()
        };
        match storage.create_claiming(&key, &obj, &claims).await? {
            Written::Ok(_) => tracing::info!(key, "bootstrap object created"),
            Written::Rejected(_) => {}
            Written::Taken(claimed) => {
                tracing::warn!(
                    key,
                    claimed,
                    "bootstrap object not created: its address is held by another object"
                );
            }
        }
    }
    Ok(())
}
