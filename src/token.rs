//! `shoal token create|list|delete`: bootstrap tokens that let nodes join,
//! kept as kubeadm keeps them (Secrets `kube-system/bootstrap-token-<id>`).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
};
use shoal_ca::{
    BOOTSTRAP_TOKEN_NAMESPACE, BOOTSTRAP_TOKEN_SECRET_PREFIX, BOOTSTRAP_TOKEN_SECRET_TYPE,
    BootstrapToken, CaCertHash,
};

/// The extra group tokens made here put their nodes in, as kubeadm's
/// `system:bootstrappers:kubeadm:default-node-token`.
const DEFAULT_EXTRA_GROUP: &str = "system:bootstrappers:shoal:default-node-token";

#[derive(Args)]
pub(crate) struct TokenArgs {
    #[command(subcommand)]
    action: TokenAction,
    /// The kubeconfig to reach the API with; default
    /// `<--data-dir>/kubeconfig`, the server's admin kubeconfig.
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The server's data directory (where its admin kubeconfig is).
    #[arg(long, default_value = "shoal-server.data", global = true)]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Creates a bootstrap token and prints it with the command that
    /// joins a node with it.
    Create {
        /// How long the token is valid (Go duration: 24h, 30m); 0 never
        /// expires.
        #[arg(long, default_value = "24h", value_parser = crate::parse_duration)]
        ttl: Duration,
        /// A note on what the token is for.
        #[arg(long)]
        description: Option<String>,
        /// The API URL the join command names; default the kubeconfig's.
        #[arg(long)]
        server: Option<String>,
        /// A token that joins control-plane members (`shoal server
        /// --join`), not only nodes: whoever holds it gets the cluster CA's
        /// private key, so hand it out as you would the admin kubeconfig.
        #[arg(long)]
        server_join: bool,
    },
    /// Lists the bootstrap tokens.
    List,
    /// Deletes a bootstrap token (by id or whole token).
    Delete {
        /// The token id (`abcdef`) or the token (`abcdef.0123456789abcdef`).
        token: String,
    },
}

/// Runs `shoal token ...`.
pub(crate) async fn run(args: TokenArgs) -> Result<()> {
    let path = args
        .kubeconfig
        .clone()
        .unwrap_or_else(|| args.data_dir.join("kubeconfig"));
    let client = shoal_controllers::client_from_kubeconfig(&path)
        .await
        .with_context(|| {
            format!(
                "reaching the API with {} (give --kubeconfig, or --data-dir of the server)",
                path.display()
            )
        })?;
    let secrets: Api<Secret> = Api::namespaced(client, BOOTSTRAP_TOKEN_NAMESPACE);
    match args.action {
        TokenAction::Create {
            ttl,
            description,
            server,
            server_join,
        } => create(&secrets, &path, ttl, description, server, server_join).await,
        TokenAction::List => list(&secrets).await,
        TokenAction::Delete { token } => delete(&secrets, &token).await,
    }
}

async fn create(
    secrets: &Api<Secret>,
    kubeconfig: &std::path::Path,
    ttl: Duration,
    description: Option<String>,
    server: Option<String>,
    server_join: bool,
) -> Result<()> {
    let (url, ca_pem) = cluster_of(kubeconfig)?;
    let hash = CaCertHash::of_pem(&ca_pem)
        .with_context(|| format!("the CA of {}", kubeconfig.display()))?;
    let token = BootstrapToken::generate();
    let mut data = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
    };
    put("token-id", token.id());
    put("token-secret", token.secret());
    put("usage-bootstrap-authentication", "true");
    put("usage-bootstrap-signing", "true");
    put(
        "auth-extra-groups",
        if server_join {
            shoal_ca::SERVER_JOIN_GROUP
        } else {
            DEFAULT_EXTRA_GROUP
        },
    );
    if let Some(d) = &description {
        put("description", d);
    }
    let expires = (!ttl.is_zero())
        .then(|| {
            let span = jiff::SignedDuration::try_from(ttl).context("--ttl is too long")?;
            jiff::Timestamp::now()
                .checked_add(span)
                .context("--ttl is too long")
        })
        .transpose()?
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string());
    if let Some(at) = &expires {
        put("expiration", at);
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(token.secret_name()),
            namespace: Some(BOOTSTRAP_TOKEN_NAMESPACE.to_owned()),
            ..Default::default()
        },
        type_: Some(BOOTSTRAP_TOKEN_SECRET_TYPE.to_owned()),
        data: Some(data),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| {
            format!(
                "creating secrets {BOOTSTRAP_TOKEN_NAMESPACE}/{}",
                token.secret_name()
            )
        })?;
    let server = server.unwrap_or(url);
    println!("{token}");
    match &expires {
        Some(at) => println!("(expires {at})"),
        None => println!("(never expires)"),
    }
    println!("Join a node with:");
    println!("  shoal agent --server {server} --token {token} --ca-cert-hash {hash}");
    if server_join {
        println!(
            "Join a control-plane member with (its --store-peer-listen an address the members reach):"
        );
        println!("  shoal server --join {server} --token {token} --ca-cert-hash {hash}");
    }
    Ok(())
}

/// The API URL and CA (PEM) of a kubeconfig's current cluster.
pub(crate) fn cluster_of(path: &std::path::Path) -> Result<(String, String)> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let wanted = kubeconfig
        .current_context
        .as_deref()
        .and_then(|c| kubeconfig.contexts.iter().find(|n| n.name == c))
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| wanted.as_ref().is_none_or(|w| *w == c.name))
        .and_then(|c| c.cluster.as_ref())
        .with_context(|| format!("{} names no cluster", path.display()))?;
    let url = cluster
        .server
        .clone()
        .with_context(|| format!("{}: the cluster has no server", path.display()))?;
    let ca = cluster
        .certificate_authority_data
        .as_deref()
        .and_then(|b64| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .with_context(|| {
            format!(
                "{}: the cluster has no certificate-authority-data",
                path.display()
            )
        })?;
    Ok((url, ca))
}

fn data(secret: &Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default()
}

async fn list(secrets: &Api<Secret>) -> Result<()> {
    let list = secrets
        .list(&ListParams::default())
        .await
        .context("listing the secrets of kube-system")?;
    println!(
        "{:<24} {:<10} {:<22} {:<30} EXTRA GROUPS",
        "TOKEN", "TTL", "EXPIRES", "DESCRIPTION"
    );
    let now = jiff::Timestamp::now();
    for s in list
        .items
        .iter()
        .filter(|s| s.type_.as_deref() == Some(BOOTSTRAP_TOKEN_SECRET_TYPE))
    {
        let token = format!("{}.{}", data(s, "token-id"), data(s, "token-secret"));
        let expires = data(s, "expiration");
        let ttl = match expires.parse::<jiff::Timestamp>() {
            Ok(at) if at <= now => "<expired>".to_owned(),
            Ok(at) => {
                let secs = at.duration_since(now).as_secs();
                if secs >= 3600 {
                    format!("{}h", secs / 3600)
                } else {
                    format!("{}m", secs / 60)
                }
            }
            Err(_) => "<forever>".to_owned(),
        };
        let expires = if expires.is_empty() {
            "<never>".to_owned()
        } else {
            expires
        };
        println!(
            "{token:<24} {ttl:<10} {expires:<22} {:<30} {}",
            data(s, "description"),
            data(s, "auth-extra-groups")
        );
    }
    Ok(())
}

async fn delete(secrets: &Api<Secret>, token: &str) -> Result<()> {
    let id = match BootstrapToken::parse(token) {
        Ok(t) => t.id().to_owned(),
        Err(_) => {
            BootstrapToken::check_id(token)?;
            token.to_owned()
        }
    };
    let name = format!("{BOOTSTRAP_TOKEN_SECRET_PREFIX}{id}");
    secrets
        .delete(&name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting secrets {BOOTSTRAP_TOKEN_NAMESPACE}/{name}"))?;
    println!("bootstrap token {id:?} deleted");
    Ok(())
}
