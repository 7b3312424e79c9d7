use std::net::SocketAddr;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::{
    ADMIN_USER, ClusterCa, MASTERS_GROUP, NODES_GROUP, default_apiserver_names, node_user,
};

/// What the server saw of one connection.
#[derive(Debug)]
struct Seen {
    identity: Option<Identity>,
    alpn: Option<Vec<u8>>,
}

/// A TLS server on loopback that accepts one connection, reports what it
/// saw, and greets the client.
async fn serve_once(
    config: ServerConfig,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<Seen>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let conn = tls.get_ref().1;
        let seen = Seen {
            identity: conn.peer_certificates().and_then(identity_from_peer),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        };
        tls.write_all(b"hello").await?;
        tls.shutdown().await?;
        Ok(seen)
    });
    Ok((addr, task))
}

/// Connects with `config`, naming the server `localhost`, and reads the greeting.
async fn connect(addr: SocketAddr, config: ClientConfig) -> anyhow::Result<String> {
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let mut greeting = String::new();
    tls.read_to_string(&mut greeting).await?;
    Ok(greeting)
}

fn apiserver(ca: &ClusterCa) -> anyhow::Result<ServerConfig> {
    let serving = ca.issue_serving(&default_apiserver_names())?;
    Ok(server_config(&serving, ca.cert_pem())?)
}

#[tokio::test]
async fn a_client_certificate_identifies_its_user_and_groups() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let (addr, server) = serve_once(apiserver(&ca)?).await?;
    let admin = ca.issue_client(ADMIN_USER, &[MASTERS_GROUP, "ops"])?;
    let greeting = connect(addr, client_config(ca.cert_pem(), Some(&admin))?).await?;
    assert_eq!(greeting, "hello");
    let seen = server.await??;
    assert_eq!(
        seen.identity,
        Some(Identity {
            user: "shoal-admin".into(),
            groups: vec!["system:masters".into(), "ops".into()],
        })
    );
    Ok(())
}

#[tokio::test]
async fn a_node_is_identified_as_system_node() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let (addr, server) = serve_once(apiserver(&ca)?).await?;
    let node = ca.issue_client(&node_user("node-1"), &[NODES_GROUP])?;
    connect(addr, client_config(ca.cert_pem(), Some(&node))?).await?;
    let identity = server.await??.identity;
    assert_eq!(
        identity,
        Some(Identity {
            user: "system:node:node-1".into(),
            groups: vec!["system:nodes".into()],
        })
    );
    Ok(())
}

#[tokio::test]
async fn an_anonymous_client_connects_without_an_identity() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let (addr, server) = serve_once(apiserver(&ca)?).await?;
    let greeting = connect(addr, client_config(ca.cert_pem(), None)?).await?;
    assert_eq!(greeting, "hello");
    assert_eq!(server.await??.identity, None);
    Ok(())
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_rejected() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let stranger_ca = ClusterCa::generate()?;
    let (addr, server) = serve_once(apiserver(&ca)?).await?;
    let forged = stranger_ca.issue_client(ADMIN_USER, &[MASTERS_GROUP])?;
    // The client trusts the real server, so only the server can refuse it.
    let client = connect(addr, client_config(ca.cert_pem(), Some(&forged))?).await;
    assert!(client.is_err(), "the client read {client:?}");
    let server = server.await?;
    let err = server.err().map(|e| e.to_string()).unwrap_or_default();
    // Every shoal CA is CN=shoal-ca, so the verifier finds an issuer by
    // name whose key does not match: BadSignature rather than UnknownIssuer.
    assert!(err.contains("invalid peer certificate"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_client_refuses_a_server_from_another_ca() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let impostor = ClusterCa::generate()?;
    let (addr, _server) = serve_once(apiserver(&impostor)?).await?;
    let err = connect(addr, client_config(ca.cert_pem(), None)?)
        .await
        .err();
    let err = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("invalid peer certificate"), "{err}");
    Ok(())
}

#[tokio::test]
async fn the_server_offers_http2_and_http1_by_alpn() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    for (offered, chosen) in [
        (
            vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Some(b"h2".to_vec()),
        ),
        (vec![b"http/1.1".to_vec()], Some(b"http/1.1".to_vec())),
        (vec![], None),
    ] {
        let (addr, server) = serve_once(apiserver(&ca)?).await?;
        let mut config = client_config(ca.cert_pem(), None)?;
        config.alpn_protocols = offered;
        connect(addr, config).await?;
        assert_eq!(server.await??.alpn, chosen);
    }
    Ok(())
}

#[test]
fn no_identity_comes_from_an_empty_chain_or_garbage() {
    assert_eq!(identity_from_peer(&[]), None);
    assert_eq!(
        identity_from_peer(&[CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])]),
        None
    );
}

#[test]
fn a_config_from_a_pem_without_certificates_is_an_error_saying_which() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let err = client_config("not pem", None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(err, "reading the CA certificate: no CERTIFICATE block");
    let mut serving = ca.issue_serving(&default_apiserver_names())?;
    serving.key_pem = "nothing".into();
    let err = server_config(&serving, ca.cert_pem())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.starts_with("reading the serving key"), "{err}");
    Ok(())
}
