//! The mesh over real sockets on loopback: a real `shoal server` (its mesh
//! CA on its own port) signs for real service-account tokens; two sidecars
//! carry an app's HTTP request over mutual TLS through a relay that
//! records every byte between them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use shoal_ca::{CertificateRequest, MeshCa, SpiffeId};
use shoal_e2e::cluster::{KUBECTL, shoal_binary};
use shoal_e2e::ports::free_loopback_addr;
use shoal_mesh_ca::{MeshCaClient, SignedCert};
use shoal_sidecar::{
    CaSource, CertSource, Config, Destinations, FixedDst, IdentityManager, Metrics, Mode, Route,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A `shoal server` in a scratch directory, stopped on drop.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    mesh_ca: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(extra: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let out = dir.path().join("server.out");
        let mesh = free_loopback_addr()?;
        let child = Command::new(shoal_binary()?)
            .arg("server")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &free_loopback_addr()?.to_string()])
            .args(["--store-listen", &free_loopback_addr()?.to_string()])
            .args(["--store-peer-listen", &free_loopback_addr()?.to_string()])
            .args(["--mesh-ca-listen", &mesh.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(dir.path().join("server.err"))?)
            .spawn()
            .context("starting shoal server")?;
        let mut server = Self {
            child,
            dir,
            mesh_ca: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("mesh CA at ")) {
                let url = line
                    .split("mesh CA at ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .context("the mesh CA line has no URL")?;
                server.mesh_ca = url.to_owned();
                break;
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "shoal server exited ({status}): {}",
                    std::fs::read_to_string(server.dir.path().join("server.err"))
                        .unwrap_or_default()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "shoal server announced no mesh CA in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ensure!(
            server.mesh_ca == format!("https://{mesh}"),
            "mesh CA at {}, asked for {mesh}",
            server.mesh_ca
        );
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(self.data().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .args(args)
            .output()
            .with_context(|| format!("running {KUBECTL}"))?;
        ensure!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A token for a new service account `name` in `default`, in a file.
    fn token_file(&self, name: &str) -> Result<PathBuf> {
        // The API may still be starting: retry the account's creation.
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = self.kubectl(&["create", "serviceaccount", name]) {
            ensure!(Instant::now() < deadline, "{e}");
            std::thread::sleep(Duration::from_millis(300));
        }
        let token = self.kubectl(&["create", "token", name])?;
        let path = self.dir.path().join(format!("{name}.token"));
        std::fs::write(&path, token.trim())?;
        Ok(path)
    }

    fn client(&self) -> Result<MeshCaClient> {
        let ca = std::fs::read_to_string(self.data().join("pki").join("ca.crt"))?;
        Ok(MeshCaClient::new(&self.mesh_ca, &ca, None)?)
    }
}

/// One in-process sidecar on loopback ports.
struct Sidecar {
    outbound: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    identity: IdentityManager,
    metrics: Arc<Metrics>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Sidecar {
    async fn start(
        source: Arc<dyn CertSource>,
        mode: Mode,
        original_dst: SocketAddr,
        routes: Vec<(SocketAddr, Route)>,
    ) -> Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let (identity, renewal) = IdentityManager::start(source, "cluster.local", metrics.clone());
        tokio::time::timeout(Duration::from_secs(30), identity.ready())
            .await
            .context("no workload certificate in 30 s")?
            .context("the identity manager stopped")?;
        let outbound = TcpListener::bind("127.0.0.1:0").await?;
        let inbound = TcpListener::bind("127.0.0.1:0").await?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let (o, i, a) = (
            outbound.local_addr()?,
            inbound.local_addr()?,
            admin.local_addr()?,
        );
        let mut config = Config::new("cluster.local");
        config.mode = mode;
        config.inbound_port = i.port();
        let mut destinations = Destinations::new(shoal_sidecar::INBOUND_PORT);
        destinations.routes.extend(routes);
        let tasks = vec![
            renewal,
            tokio::spawn(shoal_sidecar::serve_outbound(
                outbound,
                config.clone(),
                destinations,
                Arc::new(FixedDst(original_dst)),
                identity.clone(),
                metrics.clone(),
            )),
            tokio::spawn(shoal_sidecar::serve_inbound(
                inbound,
                config,
                identity.clone(),
                metrics.clone(),
            )),
            tokio::spawn(shoal_sidecar::serve_admin(
                admin,
                metrics.clone(),
                identity.clone(),
            )),
        ];
        Ok(Self {
            outbound: o,
            inbound: i,
            admin: a,
            identity,
            metrics,
            tasks,
        })
    }

    async fn admin(&self, path: &str) -> Result<String> {
        http_get(self.admin, path).await
    }
}

/// The server app: answers every request with 200 and the client identity
/// header it got; records each request head.
async fn app() -> Result<(SocketAddr, Arc<Mutex<Vec<String>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(end) = find(&buf, b"\r\n\r\n") {
                        break end + 4;
                    }
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let client = head
                    .lines()
                    .find_map(|l| l.strip_prefix("shoal-client-id:"))
                    .map_or("none".to_owned(), |v| v.trim().to_owned());
                if let Ok(mut seen) = record.lock() {
                    seen.push(String::from_utf8_lossy(&buf).into_owned());
                }
                let body = format!("client={client}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    Ok((addr, seen))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A relay between two sidecars that keeps every byte it carries.
async fn relay(to: SocketAddr) -> Result<(SocketAddr, Arc<Mutex<Vec<u8>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let captured = Arc::new(Mutex::new(Vec::new()));
    let keep = captured.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(to).await else {
                continue;
            };
            let keep = keep.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up_keep = keep.clone();
                let up = async move {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if let Ok(mut k) = up_keep.lock() {
                            k.extend_from_slice(&buf[..n]);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async move {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if let Ok(mut k) = keep.lock() {
                            k.extend_from_slice(&buf[..n]);
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Ok((addr, captured))
}

/// Sends one HTTP/1.1 request with `marker` in its path, a header and its
/// body, on a new connection to `to`; returns the whole answer.
async fn request(to: SocketAddr, marker: &str) -> Result<String> {
    let mut tcp = TcpStream::connect(to).await?;
    let body = format!("payload {marker}");
    let req = format!(
        "POST /{marker} HTTP/1.1\r\nhost: app\r\nx-marker: {marker}\r\nshoal-client-id: spiffe://cluster.local/ns/kube-system/sa/forged\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .context("no answer in 10 s")??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

async fn http_get(to: SocketAddr, path: &str) -> Result<String> {
    let mut tcp = TcpStream::connect(to).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn ca_source(
    server: &Server,
    token: &Path,
    lifetime: Option<Duration>,
) -> Result<Arc<dyn CertSource>> {
    Ok(Arc::new(CaSource::new(
        server.client()?,
        token.to_owned(),
        lifetime,
    )))
}

/// Signs with a mesh CA of its own (not the cluster's), trusting both roots.
struct OtherCa {
    ca: MeshCa,
    also_trusted: Vec<String>,
}

#[async_trait::async_trait]
impl CertSource for OtherCa {
    async fn sign(&self, csr_pem: &str) -> Result<SignedCert, String> {
        let csr = CertificateRequest::from_pem(csr_pem).map_err(|e| e.to_string())?;
        let id = SpiffeId::new("cluster.local", "default", "web-client");
        let pem = self
            .ca
            .sign_workload(&csr, &id, Duration::from_secs(3600))
            .map_err(|e| e.to_string())?;
        let mut bundle = vec![self.ca.trust_bundle().to_owned()];
        bundle.extend(self.also_trusted.iter().cloned());
        Ok(SignedCert {
            chain_pem: vec![pem],
            trust_bundle: bundle,
            spiffe_id: id,
            expires_at: SystemTime::now() + Duration::from_secs(3600),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_between_sidecars_hides_the_payload_and_names_the_client() -> Result<()> {
    let server = Server::start(&[])?;
    let client_token = server.token_file("web-client")?;
    let server_token = server.token_file("web-server")?;

    // The mesh CA itself: a real token gets the token's identity, a forged
    // one is Unauthenticated, a bad request InvalidArgument.
    let ca = server.client()?;
    let key = shoal_ca::WorkloadKey::generate()?;
    let token = std::fs::read_to_string(&client_token)?;
    let signed = ca.sign(&token, &key.csr_pem(None)?, None).await?;
    assert_eq!(
        signed.spiffe_id.to_string(),
        "spiffe://cluster.local/ns/default/sa/web-client"
    );
    let left = signed.expires_at.duration_since(SystemTime::now())?;
    assert!(
        left > Duration::from_secs(23 * 3600),
        "default lifetime is not 24 h: {left:?}"
    );
    let forged = format!("{}x", token.trim());
    let err = ca
        .sign(&forged, &key.csr_pem(None)?, None)
        .await
        .err()
        .context("a forged token was signed for")?;
    assert_eq!(err.code(), Some(tonic_code_unauthenticated()), "{err}");
    let err = ca
        .sign(&token, "garbage", None)
        .await
        .err()
        .context("a bad CSR was signed")?;
    assert_eq!(err.code(), Some(tonic_code_invalid_argument()), "{err}");

    let (app_addr, seen) = app().await?;
    let b = Sidecar::start(
        ca_source(&server, &server_token, None)?,
        Mode::Permissive,
        app_addr,
        vec![],
    )
    .await?;
    let (relay_addr, captured) = relay(b.inbound).await?;
    let b_id: SpiffeId = "spiffe://cluster.local/ns/default/sa/web-server".parse()?;
    let a = Sidecar::start(
        ca_source(&server, &client_token, None)?,
        Mode::Permissive,
        app_addr,
        vec![(
            app_addr,
            Route::Meshed {
                connect: relay_addr,
                identity: Some(b_id),
            },
        )],
    )
    .await?;

    // client app → A → relay → B → server app.
    let marker = "marker-7f3a9c";
    let answer = request(a.outbound, marker).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("client=spiffe://cluster.local/ns/default/sa/web-client"),
        "the app did not get the client's SPIFFE ID: {answer}"
    );
    let requests = seen.lock().map_err(|e| anyhow::anyhow!("{e}"))?.clone();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].contains(marker),
        "the app did not see the request: {requests:?}"
    );
    assert!(
        !requests[0].contains("forged"),
        "the client's own identity header reached the app"
    );
    let wire = captured.lock().map_err(|e| anyhow::anyhow!("{e}"))?.clone();
    assert!(
        wire.len() > 1000,
        "the relay carried only {} bytes",
        wire.len()
    );
    assert!(
        find(&wire, marker.as_bytes()).is_none(),
        "the marker crossed the relay in plaintext"
    );
    assert!(find(&wire, b"payload").is_none() && find(&wire, b"POST").is_none());
    assert_eq!(a.metrics.connections("outbound", true), 1);
    assert_eq!(b.metrics.connections("inbound", true), 1);
    let metrics = b.admin("/metrics").await?;
    assert!(
        metrics.contains("shoal_sidecar_inbound_client_connections_total{client_id=\"spiffe://cluster.local/ns/default/sa/web-client\"} 1"),
        "{metrics}"
    );
    assert!(b.admin("/ready").await?.starts_with("HTTP/1.1 200"));

    // Permissive: a plaintext client straight to B's inbound reaches the
    // app (with --app-port), without an identity, counted as tls=false.
    let mut config_b = Config::new("cluster.local");
    config_b.app_port = Some(app_addr.port());
    let permissive = inbound_only(&b, config_b.clone()).await?;
    let answer = request(permissive, "plain-1").await?;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("client=none"),
        "{answer}"
    );
    // Strict: the same plaintext client is refused, mutual TLS still works.
    config_b.mode = Mode::Strict;
    let strict = inbound_only(&b, config_b).await?;
    let refused = request(strict, "plain-2").await;
    assert!(
        refused.as_ref().map_or(true, |a| a.is_empty()),
        "strict mode answered a plaintext client: {refused:?}"
    );
    let a_strict = Sidecar::start(
        ca_source(&server, &client_token, None)?,
        Mode::Permissive,
        app_addr,
        vec![(
            app_addr,
            Route::Meshed {
                connect: strict,
                identity: None,
            },
        )],
    )
    .await?;
    let answer = request(a_strict.outbound, "strict-mtls").await?;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("sa/web-client"),
        "{answer}"
    );

    // A client certificate from another CA (with the same name) is refused.
    let other = Sidecar::start(
        Arc::new(OtherCa {
            ca: MeshCa::generate()?,
            also_trusted: signed.trust_bundle.clone(),
        }),
        Mode::Permissive,
        app_addr,
        vec![(
            app_addr,
            Route::Meshed {
                connect: b.inbound,
                identity: None,
            },
        )],
    )
    .await?;
    let before = b.metrics.handshake_failures("inbound");
    let answer = request(other.outbound, "other-ca")
        .await
        .unwrap_or_default();
    assert!(
        answer.is_empty(),
        "a certificate of another CA got through: {answer}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        b.metrics.handshake_failures("inbound") > before,
        "B counted no handshake failure"
    );
    // A server that is not the identity the route expects is refused too.
    let wrong: SpiffeId = "spiffe://cluster.local/ns/default/sa/someone-else".parse()?;
    let picky = Sidecar::start(
        ca_source(&server, &client_token, None)?,
        Mode::Permissive,
        app_addr,
        vec![(
            app_addr,
            Route::Meshed {
                connect: b.inbound,
                identity: Some(wrong),
            },
        )],
    )
    .await?;
    let answer = request(picky.outbound, "wrong-server")
        .await
        .unwrap_or_default();
    assert!(
        answer.is_empty(),
        "a server with the wrong identity got the request: {answer}"
    );
    assert_eq!(picky.metrics.handshake_failures("outbound"), 1);
    let total = seen.lock().map_err(|e| anyhow::anyhow!("{e}"))?.len();
    assert_eq!(total, 3, "the app got requests it should not have");
    Ok(())
}

/// Another inbound listener with B's identity and `config`.
async fn inbound_only(b: &Sidecar, mut config: Config) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    config.inbound_port = addr.port();
    tokio::spawn(shoal_sidecar::serve_inbound(
        listener,
        config,
        b.identity.clone(),
        b.metrics.clone(),
    ));
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() -> Result<()> {
    let server = Server::start(&[])?;
    let client_token = server.token_file("rot-client")?;
    let server_token = server.token_file("rot-server")?;
    let (app_addr, seen) = app().await?;
    // Short enough to rotate several times, long enough that a loaded
    // machine renews before expiry (renewal comes at half of it).
    let lifetime = Some(Duration::from_secs(4));
    let b = Sidecar::start(
        ca_source(&server, &server_token, lifetime)?,
        Mode::Strict,
        app_addr,
        vec![],
    )
    .await?;
    let a = Sidecar::start(
        ca_source(&server, &client_token, lifetime)?,
        Mode::Permissive,
        app_addr,
        vec![(
            app_addr,
            Route::Meshed {
                connect: b.inbound,
                identity: None,
            },
        )],
    )
    .await?;
    let first_a = a.identity.current().context("no identity")?.expires_at;
    let first_b = b.identity.current().context("no identity")?.expires_at;
    let until = Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    while Instant::now() < until {
        let answer = request(a.outbound, &format!("rot-{sent}")).await?;
        ensure!(
            answer.starts_with("HTTP/1.1 200"),
            "request {sent} failed during rotation: {answer:?}"
        );
        ensure!(
            answer.contains("client=spiffe://cluster.local/ns/default/sa/rot-client"),
            "request {sent} reached the app without the client's identity: {answer:?}"
        );
        sent += 1;
    }
    let renewed = |m: &Metrics| {
        m.render()
            .lines()
            .find_map(|l| l.strip_prefix("shoal_sidecar_cert_renewals_total{result=\"ok\"} "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        renewed(&a.metrics) >= 3 && renewed(&b.metrics) >= 3,
        "too few renewals in 10 s of 4 s certificates"
    );
    assert!(a.identity.current().context("lost")?.expires_at > first_a);
    assert!(b.identity.current().context("lost")?.expires_at > first_b);
    assert_eq!(seen.lock().map_err(|e| anyhow::anyhow!("{e}"))?.len(), sent);
    assert_eq!(a.metrics.handshake_failures("outbound"), 0);
    assert_eq!(b.metrics.handshake_failures("inbound"), 0);
    assert!(sent > 20, "only {sent} requests in 10 s");
    Ok(())
}

fn tonic_code_unauthenticated() -> shoal_mesh_ca::Code {
    shoal_mesh_ca::Code::Unauthenticated
}

fn tonic_code_invalid_argument() -> shoal_mesh_ca::Code {
    shoal_mesh_ca::Code::InvalidArgument
}

/// A `shoal-sidecar` process, stopped on drop.
struct SidecarProcess(Child);

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the `shoal-sidecar` binary with `args`; its admin address is
/// `admin`. Waits for /ready.
async fn sidecar_process(
    server: &Server,
    token: &Path,
    admin: SocketAddr,
    args: &[String],
) -> Result<SidecarProcess> {
    let log = server
        .dir
        .path()
        .join(format!("sidecar-{}.log", admin.port()));
    let child = Command::new(env!("CARGO_BIN_EXE_shoal-sidecar"))
        .args(["--ca-url", &server.mesh_ca])
        .arg("--ca-cert")
        .arg(server.data().join("pki").join("ca.crt"))
        .arg("--token-path")
        .arg(token)
        .args(["--admin-listen", &admin.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(log.with_extension("err"))?)
        .spawn()
        .context("starting shoal-sidecar")?;
    let mut process = SidecarProcess(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(answer) = http_get(admin, "/ready").await
            && answer.starts_with("HTTP/1.1 200")
        {
            return Ok(process);
        }
        if let Some(status) = process.0.try_wait()? {
            bail!(
                "shoal-sidecar exited ({status}): {}",
                std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
            );
        }
        ensure!(Instant::now() < deadline, "shoal-sidecar not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_binary_carries_requests_over_mutual_tls() -> Result<()> {
    let server = Server::start(&[])?;
    let client_token = server.token_file("bin-client")?;
    let server_token = server.token_file("bin-server")?;
    let (app_addr, seen) = app().await?;
    let addr = || -> Result<String> { Ok(free_loopback_addr()?.to_string()) };
    let (b_in, b_admin) = (addr()?, free_loopback_addr()?);
    let _b = sidecar_process(
        &server,
        &server_token,
        b_admin,
        &[
            "--mode".into(),
            "strict".into(),
            "--inbound-listen".into(),
            b_in.clone(),
            "--outbound-listen".into(),
            addr()?,
        ],
    )
    .await?;
    let route = format!("{app_addr}={b_in},spiffe://cluster.local/ns/default/sa/bin-server");
    // A takes the destination from a PROXY v1 line.
    let (a_out, a_admin) = (free_loopback_addr()?, free_loopback_addr()?);
    let _a = sidecar_process(
        &server,
        &client_token,
        a_admin,
        &[
            "--outbound-listen".into(),
            a_out.to_string(),
            "--inbound-listen".into(),
            addr()?,
            "--route".into(),
            route,
        ],
    )
    .await?;
    let mut tcp = TcpStream::connect(a_out).await?;
    let req = format!(
        "PROXY TCP4 127.0.0.1 {} 40000 {}\r\nGET /bin HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
        app_addr.ip(),
        app_addr.port()
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .context("no answer in 10 s")??;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200")
            && answer.contains("client=spiffe://cluster.local/ns/default/sa/bin-client"),
        "{answer}"
    );
    assert_eq!(seen.lock().map_err(|e| anyhow::anyhow!("{e}"))?.len(), 1);
    let metrics = http_get(a_admin, "/metrics").await?;
    assert!(
        metrics.contains("shoal_sidecar_connections_total{direction=\"outbound\",tls=\"true\"} 1"),
        "{metrics}"
    );
    let metrics = http_get(b_admin, "/metrics").await?;
    assert!(
        metrics.contains("shoal_sidecar_connections_total{direction=\"inbound\",tls=\"true\"} 1"),
        "{metrics}"
    );
    // B is strict: a plaintext client gets nothing and is counted.
    let b_in: SocketAddr = b_in.parse()?;
    let refused = request(b_in, "plain").await.unwrap_or_default();
    assert!(refused.is_empty(), "{refused}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = http_get(b_admin, "/metrics").await?;
    assert!(
        metrics
            .contains("shoal_sidecar_inbound_refused_total{reason=\"plaintext_in_strict_mode\"} 1"),
        "{metrics}"
    );
    Ok(())
}

/// Signs `id` with an in-process mesh CA (for tests of the proxying alone).
struct LocalCa {
    ca: Arc<MeshCa>,
    id: SpiffeId,
}

#[async_trait::async_trait]
impl CertSource for LocalCa {
    async fn sign(&self, csr_pem: &str) -> Result<SignedCert, String> {
        let csr = CertificateRequest::from_pem(csr_pem).map_err(|e| e.to_string())?;
        let pem = self
            .ca
            .sign_workload(&csr, &self.id, Duration::from_secs(3600))
            .map_err(|e| e.to_string())?;
        Ok(SignedCert {
            chain_pem: vec![pem],
            trust_bundle: vec![self.ca.trust_bundle().to_owned()],
            spiffe_id: self.id.clone(),
            expires_at: SystemTime::now() + Duration::from_secs(3600),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_upgrade_becomes_a_byte_stream_through_both_sidecars() -> Result<()> {
    // The app accepts any upgrade, then echoes.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while find(&head, b"\r\n\r\n").is_none() {
                    if !matches!(tcp.read(&mut byte).await, Ok(1)) {
                        return;
                    }
                    head.push(byte[0]);
                }
                let switch = "HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n";
                if tcp.write_all(switch.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let ca = Arc::new(MeshCa::generate()?);
    let source = |sa: &str| -> Arc<dyn CertSource> {
        Arc::new(LocalCa {
            ca: ca.clone(),
            id: SpiffeId::new("cluster.local", "default", sa),
        })
    };
    let b = Sidecar::start(source("echo"), Mode::Strict, app_addr, vec![]).await?;
    let a = Sidecar::start(
        source("caller"),
        Mode::Permissive,
        app_addr,
        vec![(
            app_addr,
            Route::Meshed {
                connect: b.inbound,
                identity: None,
            },
        )],
    )
    .await?;
    let mut tcp = TcpStream::connect(a.outbound).await?;
    tcp.write_all(
        b"GET /echo HTTP/1.1\r\nhost: app\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), async {
        while find(&head, b"\r\n\r\n").is_none() {
            tcp.read_exact(&mut byte).await?;
            head.push(byte[0]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .context("no upgrade answer in 10 s")??;
    let head = String::from_utf8_lossy(&head);
    ensure!(head.starts_with("HTTP/1.1 101"), "{head}");
    for round in 0..3 {
        let ping = format!("ping-{round}-over-the-upgraded-connection");
        tcp.write_all(ping.as_bytes()).await?;
        let mut echo = vec![0u8; ping.len()];
        tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut echo))
            .await
            .context("no echo in 10 s")??;
        assert_eq!(String::from_utf8_lossy(&echo), ping);
    }
    Ok(())
}
