//! The benchmark's Kubernetes API client: HTTP/2 over TLS with the admin
//! client certificate from a kubeconfig, as kubectl and client-go talk to
//! an apiserver (a few connections, many concurrent streams on each).

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::{Context, Result, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A list or watch can carry tens of megabytes: windows large enough that
/// flow control does not pace a local client (client-go's are 4 MiB / 1 GiB
/// by default; these are in between).
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;

/// What the benchmark needs from a kubeconfig: the server and the
/// credentials of its current context.
pub struct Kubeconfig {
    /// `https://host:port`.
    pub server: String,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    clusters: Vec<NamedCluster>,
    users: Vec<NamedUser>,
    contexts: Vec<NamedContext>,
    current_context: String,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority_data: String,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate_data: String,
    client_key_data: String,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: ContextEntry,
}

#[derive(Deserialize)]
struct ContextEntry {
    cluster: String,
    user: String,
}

impl Kubeconfig {
    /// Reads `path` and resolves its current context.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: File = serde_saphyr::from_str(&text)
            .with_context(|| format!("parsing the kubeconfig {}", path.display()))?;
        let context = file
            .contexts
            .iter()
            .find(|c| c.name == file.current_context)
            .with_context(|| format!("no context {:?} in the kubeconfig", file.current_context))?;
        let cluster = file
            .clusters
            .iter()
            .find(|c| c.name == context.context.cluster)
            .with_context(|| {
                format!("no cluster {:?} in the kubeconfig", context.context.cluster)
            })?;
        let user = file
            .users
            .iter()
            .find(|u| u.name == context.context.user)
            .with_context(|| format!("no user {:?} in the kubeconfig", context.context.user))?;
        let decode = |what: &str, b64: &str| {
            STANDARD
                .decode(b64)
                .with_context(|| format!("the kubeconfig's {what} is not base64"))
        };
        Ok(Self {
            server: cluster.cluster.server.clone(),
            ca_pem: decode(
                "certificate-authority-data",
                &cluster.cluster.certificate_authority_data,
            )?,
            cert_pem: decode(
                "client-certificate-data",
                &user.user.client_certificate_data,
            )?,
            key_pem: decode("client-key-data", &user.user.client_key_data)?,
        })
    }
}

/// Opens HTTP/2 connections to one API server.
pub struct ApiClient {
    addr: SocketAddr,
    base: Arc<str>,
    tls: TlsConnector,
}

impl ApiClient {
    /// A client for the kubeconfig's server, with its CA and client
    /// certificate, offering only `h2` by ALPN.
    pub fn new(kubeconfig: &Kubeconfig) -> Result<Self> {
        let authority = kubeconfig
            .server
            .strip_prefix("https://")
            .with_context(|| format!("server {:?} is not https://", kubeconfig.server))?;
        let addr: SocketAddr = authority.trim_end_matches('/').parse().with_context(|| {
            format!(
                "server {:?}: the benchmark connects to an IP:port",
                kubeconfig.server
            )
        })?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&kubeconfig.ca_pem) {
            roots.add(cert.context("reading the kubeconfig's CA")?)?;
        }
        let chain = CertificateDer::pem_slice_iter(&kubeconfig.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .context("reading the kubeconfig's client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&kubeconfig.key_pem)
            .context("reading the kubeconfig's client key")?;
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            addr,
            base: format!("https://{addr}").into(),
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// One new HTTP/2 connection; its requests share it as streams.
    pub async fn connect(&self) -> Result<Conn> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = self
            .tls
            .connect(ServerName::IpAddress(self.addr.ip().into()), tcp)
            .await
            .context("TLS handshake with the API server")?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!("the API server did not agree to HTTP/2 by ALPN");
        }
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(TokioIo::new(tls))
            .await
            .context("HTTP/2 handshake with the API server")?;
        // A connection error fails its requests, which report it.
        tokio::spawn(conn);
        Ok(Conn {
            send,
            base: self.base.clone(),
        })
    }
}

/// One HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct Conn {
    send: SendRequest<Full<Bytes>>,
    base: Arc<str>,
}

impl Conn {
    /// Sends a request and returns the response head with its body
    /// unread (for watches).
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Incoming)> {
        self.open_typed(method, path, accept, "application/json", body)
            .await
    }

    /// As [`Conn::open`], with the body's content type (a patch's).
    async fn open_typed(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        content_type: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Incoming)> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::ACCEPT, accept);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, content_type);
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let mut send = self.send.clone();
        send.ready().await.context("the API connection closed")?;
        let resp = send.send_request(req).await?;
        Ok((resp.status(), resp.into_body()))
    }

    /// Sends a request and reads the whole response.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes)> {
        let (status, body) = self.open(method, path, accept, body).await?;
        Ok((status, body.collect().await?.to_bytes()))
    }

    /// A JSON merge patch (`application/merge-patch+json`), read whole.
    pub async fn merge_patch(&self, path: &str, body: Bytes) -> Result<(StatusCode, Bytes)> {
        let (status, body) = self
            .open_typed(
                Method::PATCH,
                path,
                "application/json",
                "application/merge-patch+json",
                Some(body),
            )
            .await?;
        Ok((status, body.collect().await?.to_bytes()))
    }
}
