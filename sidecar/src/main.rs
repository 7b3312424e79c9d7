//! `shoal-sidecar`: the mesh proxy beside a pod's app. Gets its workload
//! certificate from the mesh CA with the pod's token, then serves the
//! outbound (15001), inbound (15006) and admin (15020) listeners.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use shoal_sidecar::{
    CaSource, Config, Destinations, FixedDst, IdentityManager, Metrics, Mode, OriginalDst,
    ProxyProtocolDst, Route,
};
use tokio::net::TcpListener;

/// The mesh proxy beside a pod's app.
#[derive(Parser)]
#[command(name = "shoal-sidecar", version)]
struct Args {
    /// The mesh CA (`https://HOST:15012`).
    #[arg(long)]
    ca_url: String,
    /// The CA certificate the mesh CA's serving certificate chains to (the
    /// cluster CA: the pod's service-account ca.crt).
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    ca_cert: PathBuf,
    /// The name the mesh CA's serving certificate must carry (default: the
    /// URL's host).
    #[arg(long)]
    ca_server_name: Option<String>,
    /// The pod's service-account token, read again at every renewal.
    #[arg(long, default_value = shoal_sidecar::DEFAULT_TOKEN_PATH)]
    token_path: PathBuf,
    /// The SPIFFE trust domain.
    #[arg(long, default_value = shoal_ca::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// The certificate lifetime to ask for (e.g. 24h, 90s); default: the CA's.
    #[arg(long, value_parser = parse_duration)]
    cert_lifetime: Option<Duration>,
    /// permissive (plaintext accepted inbound) or strict (mutual TLS only).
    #[arg(long, default_value = "permissive")]
    mode: Mode,
    /// The outbound listener.
    #[arg(long, default_value_t = shoal_sidecar::DEFAULT_OUTBOUND_LISTEN)]
    outbound_listen: SocketAddr,
    /// The inbound listener.
    #[arg(long, default_value_t = shoal_sidecar::DEFAULT_INBOUND_LISTEN)]
    inbound_listen: SocketAddr,
    /// The admin listener (/metrics, /ready).
    #[arg(long, default_value_t = shoal_sidecar::DEFAULT_ADMIN_LISTEN)]
    admin_listen: SocketAddr,
    /// The port of other sidecars' inbound listeners.
    #[arg(long, default_value_t = shoal_sidecar::INBOUND_PORT)]
    peer_inbound_port: u16,
    /// The app port plaintext connections to the inbound listener go to.
    #[arg(long)]
    app_port: Option<u16>,
    /// Every outbound connection's original destination (until the eBPF
    /// capture provides it); without it, clients send a PROXY v1 line first.
    #[arg(long)]
    original_dst: Option<SocketAddr>,
    /// Routes: DST=CONNECT[,SPIFFE-ID] (the sidecar of DST is at CONNECT and
    /// must be SPIFFE-ID) or DST=passthrough (unmeshed); repeatable.
    #[arg(long = "route", value_parser = Destinations::parse_route)]
    routes: Vec<(SocketAddr, Route)>,
    /// Pass destinations without a --route through unencrypted instead of
    /// meshing them.
    #[arg(long)]
    passthrough_by_default: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90s, 10m or 24h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?}: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // Two threads: a sidecar shares its pod's CPU with the app.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    if let Err(reason) = shoal_ca::check_trust_domain(&args.trust_domain) {
        anyhow::bail!("--trust-domain {:?}: {reason}", args.trust_domain);
    }
    let ca_pem = std::fs::read_to_string(&args.ca_cert)
        .with_context(|| format!("--ca-cert {}", args.ca_cert.display()))?;
    let client =
        shoal_mesh_ca::MeshCaClient::new(&args.ca_url, &ca_pem, args.ca_server_name.as_deref())?;
    let metrics = Arc::new(Metrics::default());
    let source = CaSource::new(client, args.token_path.clone(), args.cert_lifetime);
    let (identity, _renewal) =
        IdentityManager::start(Arc::new(source), &args.trust_domain, metrics.clone());
    let mut config = Config::new(&args.trust_domain);
    config.mode = args.mode;
    config.app_port = args.app_port;
    config.inbound_port = args.inbound_listen.port();
    let mut destinations = Destinations::new(args.peer_inbound_port);
    destinations.routes.extend(args.routes);
    destinations.mesh_by_default = !args.passthrough_by_default;
    let original_dst: Arc<dyn OriginalDst> = match args.original_dst {
        Some(dst) => Arc::new(FixedDst(dst)),
        None => Arc::new(ProxyProtocolDst),
    };
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the {what} listener on {addr}"))
    };
    let outbound = bind(args.outbound_listen, "outbound").await?;
    let inbound = bind(args.inbound_listen, "inbound").await?;
    let admin = bind(args.admin_listen, "admin").await?;
    tracing::info!(
        outbound = %args.outbound_listen, inbound = %args.inbound_listen,
        admin = %args.admin_listen, mode = ?args.mode, "shoal-sidecar listening"
    );
    tokio::spawn(shoal_sidecar::serve_admin(
        admin,
        metrics.clone(),
        identity.clone(),
    ));
    tokio::spawn(shoal_sidecar::serve_outbound(
        outbound,
        config.clone(),
        destinations,
        original_dst,
        identity.clone(),
        metrics.clone(),
    ));
    tokio::spawn(shoal_sidecar::serve_inbound(
        inbound, config, identity, metrics,
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
