//! The store with etcd's TLS flags, driven by real `etcdctl` 3.4: clients
//! over TLS with client-certificate auth, and a cluster whose members speak
//! TLS to each other.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use common::{Member, WAIT, free_addr, start_all};
use shoal_ca::{ClusterCa, SubjectAltName};
use shoal_store::{InitialCluster, Listener, StoreConfig, TlsFiles};

/// A CA, and files it signed: a serving certificate for 127.0.0.1 and a
/// client certificate, each with its key.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn write(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca = ClusterCa::generate()?;
        let serving = ca.issue_serving(&[
            SubjectAltName::parse("127.0.0.1"),
            SubjectAltName::parse("localhost"),
        ])?;
        let client = ca.issue_client("root", &[])?;
        let pki = Self {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        };
        std::fs::write(&pki.ca, ca.cert_pem())?;
        std::fs::write(&pki.server_cert, &serving.cert_pem)?;
        std::fs::write(&pki.server_key, &serving.key_pem)?;
        std::fs::write(&pki.client_cert, &client.cert_pem)?;
        std::fs::write(&pki.client_key, &client.key_pem)?;
        Ok(pki)
    }

    /// etcd's client flags for this CA's serving certificate.
    fn client_files(&self, client_cert_auth: bool) -> TlsFiles {
        TlsFiles {
            cert_file: Some(self.server_cert.clone()),
            key_file: Some(self.server_key.clone()),
            trusted_ca_file: Some(self.ca.clone()),
            client_cert_auth,
        }
    }
}

/// Runs etcdctl with `args`; returns whether it succeeded, stdout and stderr.
async fn etcdctl(args: &[String]) -> Result<(bool, String, String)> {
    let mut cmd = tokio::process::Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=5s")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .context("running etcdctl (installed by `cargo xtask setup` from Debian's etcd-client)")?;
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .context("etcdctl hung")??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// What `openssl s_client` prints connecting to `addr` trusting `ca`,
/// without a client certificate, and sending a line once connected.
async fn s_client(addr: SocketAddr, ca: &Path) -> Result<String> {
    let mut child = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-alpn", "h2"])
        .arg("-CAfile")
        .arg(ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running openssl (installed by `cargo xtask setup`)")?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        // A TLS 1.3 server checks the client's certificate after the client
        // finished its side; the alert arrives when the client reads, and
        // openssl may be gone by the time this is written.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = stdin.write_all(b"hello\n").await;
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .context("openssl s_client hung")??;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_talks_tls_with_a_client_certificate_and_nothing_else_gets_in() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::write(&dir.path().join("pki"))?;
    let mut config = StoreConfig::single(
        dir.path().join("data"),
        "127.0.0.1:0".parse()?,
        free_addr()?,
    );
    config.client_tls = pki.client_files(true).load(Listener::Client)?;
    let mut m = Member::start(config).await?;
    let https = format!("--endpoints=https://{}", m.client);
    let with_cert = |cmd: &[&str]| {
        let mut a = args(&[
            &https,
            &format!("--cacert={}", path(&pki.ca)),
            &format!("--cert={}", path(&pki.client_cert)),
            &format!("--key={}", path(&pki.client_key)),
        ]);
        a.extend(args(cmd));
        a
    };

    let (ok, out, err) = etcdctl(&with_cert(&["put", "/tls/a", "1"])).await?;
    ensure!(ok && out.trim() == "OK", "put over TLS: {out}{err}");
    let (ok, out, err) = etcdctl(&with_cert(&["get", "/tls/a"])).await?;
    ensure!(ok && out == "/tls/a\n1\n", "get over TLS: {out}{err}");
    // The member advertises its https:// client URL.
    let (ok, out, err) = etcdctl(&with_cert(&["member", "list"])).await?;
    ensure!(
        ok && out.contains(&format!("https://{}", m.client)),
        "member list: {out}{err}"
    );

    // Trusting the CA is not enough: the member asks for a certificate.
    // etcdctl 3.4 reports only the timeout (as it does against etcd, whose
    // log says "client didn't provide a certificate"); `openssl s_client`
    // shows the TLS alert the member sends.
    let no_cert = args(&[
        &https,
        &format!("--cacert={}", path(&pki.ca)),
        "get",
        "/tls/a",
    ]);
    let (ok, out, err) = etcdctl(&no_cert).await?;
    ensure!(!ok, "a client without a certificate got in: {out}");
    ensure!(
        err.contains("context deadline exceeded"),
        "etcdctl without a certificate: {err}"
    );
    let alert = s_client(m.client, &pki.ca).await?;
    ensure!(
        alert.contains("alert certificate required"),
        "want the TLS alert \"certificate required\", openssl said: {alert}"
    );

    // A client speaking plain HTTP/2 to the TLS port gets nothing.
    let plain = args(&[&format!("--endpoints=http://{}", m.client), "get", "/tls/a"]);
    let (ok, out, err) = etcdctl(&plain).await?;
    ensure!(!ok, "a plain-HTTP client got an answer: {out}");
    ensure!(!err.is_empty(), "etcdctl failed without saying why");

    // The failed handshakes did not stop the listener.
    let (ok, out, err) = etcdctl(&with_cert(&["get", "/tls/a", "--print-value-only"])).await?;
    ensure!(
        ok && out.trim() == "1",
        "get after refused clients: {out}{err}"
    );
    m.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_client_cert_auth_any_client_trusting_the_ca_gets_in() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::write(&dir.path().join("pki"))?;
    let mut config = StoreConfig::single(
        dir.path().join("data"),
        "127.0.0.1:0".parse()?,
        free_addr()?,
    );
    config.client_tls = pki.client_files(false).load(Listener::Client)?;
    let mut m = Member::start(config).await?;
    let (ok, out, err) = etcdctl(&args(&[
        &format!("--endpoints=https://{}", m.client),
        &format!("--cacert={}", path(&pki.ca)),
        "put",
        "/tls/b",
        "2",
    ]))
    .await?;
    ensure!(ok && out.trim() == "OK", "put over TLS: {out}{err}");
    m.stop().await
}

/// Three members whose Raft traffic is TLS with client-certificate auth
/// (each member's certificate serves and connects) elect a leader and
/// replicate a put to every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_with_tls_peers_elect_a_leader_and_replicate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = ClusterCa::generate()?;
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.cert_pem())?;
    let peers: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect::<Result<_>>()?;
    let spec = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{}=https://{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let initial = InitialCluster::parse(&spec)?;
    let mut configs = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let name = format!("m{}", i + 1);
        let cert = ca.issue_peer(&name, &[SubjectAltName::parse("127.0.0.1")])?;
        let (cert_file, key_file) = (
            dir.path().join(format!("{name}.crt")),
            dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, &cert.cert_pem)?;
        std::fs::write(&key_file, &cert.key_pem)?;
        let mut c = StoreConfig::single(dir.path().join(&name), free_addr()?, *peer);
        c.name = name;
        c.initial_cluster = Some(initial.clone());
        c.peer_tls = TlsFiles {
            cert_file: Some(cert_file),
            key_file: Some(key_file),
            trusted_ca_file: Some(ca_file.clone()),
            client_cert_auth: true,
        }
        .load(Listener::Peer)?;
        configs.push(c);
    }
    let mut members = start_all(configs).await?;
    let endpoint = |m: &Member| format!("--endpoints={}", m.client);

    // A leader: every member's status names the same one.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut leaders = Vec::new();
        for m in &members {
            let (ok, out, _) =
                etcdctl(&args(&[&endpoint(m), "endpoint", "status", "-w", "json"])).await?;
            if ok && let Some(at) = out.find("\"leader\":") {
                let leader: String = out[at + 9..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                leaders.push(leader);
            }
        }
        if leaders.len() == 3 && leaders.iter().all(|l| l != "0" && *l == leaders[0]) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no leader over TLS peers within {WAIT:?}: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (ok, out, err) = etcdctl(&args(&[&endpoint(&members[0]), "put", "/peers/k", "v"])).await?;
    ensure!(ok && out.trim() == "OK", "put through member 1: {out}{err}");
    // Serializable reads answer from each member's own keyspace: the put
    // reached them through the TLS peer connections.
    for m in &members {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (ok, out, _) = etcdctl(&args(&[
                &endpoint(m),
                "get",
                "/peers/k",
                "--consistency=s",
                "--print-value-only",
            ]))
            .await?;
            if ok && out.trim() == "v" {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "member at {} never saw the put: {out}",
                m.client
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (ok, out, err) = etcdctl(&args(&[&endpoint(&members[1]), "member", "list"])).await?;
    ensure!(
        ok && out.matches("https://127.0.0.1:").count() == 3,
        "member list shows the https:// peer URLs: {out}{err}"
    );
    for m in &mut members {
        m.stop().await?;
    }
    Ok(())
}
