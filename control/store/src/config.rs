//! What a store member needs to start, and etcd's `--initial-cluster`.

use std::{net::SocketAddr, path::PathBuf};

use crate::tls::ListenerTls;

/// The default client listen address (etcd's).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2379";
/// The default peer listen address (etcd's).
pub const DEFAULT_PEER_LISTEN: &str = "127.0.0.1:2380";
/// The member name when none is given.
pub const DEFAULT_NAME: &str = "default";

/// A bad flag or `--initial-cluster` entry.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An `--initial-cluster` entry is not `name=url`.
    #[error("--initial-cluster entry {entry:?} is not NAME=http://HOST:PORT")]
    ClusterEntry {
        /// The entry.
        entry: String,
    },
    /// The member's own name is not in `--initial-cluster`.
    #[error("--name {name:?} is not one of the --initial-cluster members ({members})")]
    NotAMember {
        /// This member's name.
        name: String,
        /// The names given.
        members: String,
    },
    /// A name appears twice.
    #[error("--initial-cluster names {name:?} twice")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A member's peer URL scheme does not match whether peer TLS is on.
    #[error(
        "--initial-cluster member {name:?} has peer URL {url:?}: {}",
        if *tls {
            "with --peer-cert-file peers speak TLS, so peer URLs are https://"
        } else {
            "https:// peer URLs need --peer-cert-file, --peer-key-file and --peer-trusted-ca-file"
        }
    )]
    PeerScheme {
        /// The member.
        name: String,
        /// Its peer URL.
        url: String,
        /// Whether peer TLS is on.
        tls: bool,
    },
}

/// The members a new cluster starts with, in order: member i (from 1) gets
/// Raft id i, so every member derives the same ids from the same flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialCluster {
    /// (name, peer URL), in the flag's order.
    pub members: Vec<(String, String)>,
}

impl InitialCluster {
    /// Parses etcd's `n1=http://127.0.0.1:2380,n2=http://...`.
    pub fn parse(flag: &str) -> Result<Self, ConfigError> {
        let mut members: Vec<(String, String)> = Vec::new();
        for entry in flag.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| ConfigError::ClusterEntry {
                    entry: entry.to_owned(),
                })?;
            if name.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::ClusterEntry {
                    entry: entry.to_owned(),
                });
            }
            if members.iter().any(|(n, _)| n == name) {
                return Err(ConfigError::DuplicateName {
                    name: name.to_owned(),
                });
            }
            members.push((name.to_owned(), url.to_owned()));
        }
        Ok(Self { members })
    }

    /// The Raft id of `name` (its position from 1).
    pub fn id_of(&self, name: &str) -> Result<u64, ConfigError> {
        self.members
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| i as u64 + 1)
            .ok_or_else(|| ConfigError::NotAMember {
                name: name.to_owned(),
                members: self
                    .members
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// A member added to a running cluster through `MemberAdd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedMember {
    /// The id `MemberAdd` gave it.
    pub id: u64,
    /// The cluster's id (the `MemberAdd` response header's).
    pub cluster_id: u64,
    /// Its peer URL as added (what the others dial).
    pub peer_url: String,
}

/// One store member's settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The member name.
    pub name: String,
    /// Where the Raft log, keyspace and snapshots live.
    pub data_dir: PathBuf,
    /// Where clients connect (etcd v3 gRPC).
    pub listen: SocketAddr,
    /// Where peers connect (Raft).
    pub peer_listen: SocketAddr,
    /// The cluster to bootstrap; `None` = this member alone.
    pub initial_cluster: Option<InitialCluster>,
    /// This member was added to a running cluster (etcd's
    /// `--initial-cluster-state existing`): it bootstraps nothing and waits
    /// for the leader's log. Overrides `initial_cluster`.
    pub join: Option<JoinedMember>,
    /// Settings of the etcd API (limits, lease minimum, ...). Its `tls`
    /// is set from `client_tls` at start.
    pub api: shoal_etcd_api::Config,
    /// TLS on the client listener; `None` = plain HTTP/2.
    pub client_tls: Option<ListenerTls>,
    /// TLS on the peer listener and towards the other members; `None` =
    /// plain HTTP/2.
    pub peer_tls: Option<ListenerTls>,
    /// Faults injected into the member's peer network and log store
    /// (fault campaigns); `None` in production.
    pub faults: Option<shoal_raft::Faults>,
}

impl StoreConfig {
    /// A single member with etcd's defaults, storing in `data_dir`.
    pub fn single(
        data_dir: impl Into<PathBuf>,
        listen: SocketAddr,
        peer_listen: SocketAddr,
    ) -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            data_dir: data_dir.into(),
            listen,
            peer_listen,
            initial_cluster: None,
            join: None,
            api: shoal_etcd_api::Config::default(),
            client_tls: None,
            peer_tls: None,
            faults: None,
        }
    }

    /// The cluster this member bootstraps: the given one, or itself alone.
    pub fn cluster(&self) -> InitialCluster {
        self.initial_cluster
            .clone()
            .unwrap_or_else(|| InitialCluster {
                members: vec![(
                    self.name.clone(),
                    format!("{}://{}", self.peer_scheme(), self.peer_listen),
                )],
            })
    }

    /// `https` with peer TLS, else `http`.
    pub fn peer_scheme(&self) -> &'static str {
        if self.peer_tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `https` with client TLS, else `http`.
    pub fn client_scheme(&self) -> &'static str {
        if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Checks that every peer URL's scheme matches whether peer TLS is on:
    /// the members would not understand each other otherwise.
    pub fn check_peer_urls(&self) -> Result<(), ConfigError> {
        let tls = self.peer_tls.is_some();
        let scheme = format!("{}://", self.peer_scheme());
        match self
            .cluster()
            .members
            .into_iter()
            .find(|(_, url)| !url.starts_with(&scheme))
        {
            Some((name, url)) => Err(ConfigError::PeerScheme { name, url, tls }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_gives_ids_by_position() {
        let c = InitialCluster::parse("a=http://127.0.0.1:1,b=http://127.0.0.1:2").expect("parse");
        assert_eq!(c.id_of("a").expect("a"), 1);
        assert_eq!(c.id_of("b").expect("b"), 2);
        let err = c.id_of("z").expect_err("z is not a member");
        assert_eq!(
            err.to_string(),
            "--name \"z\" is not one of the --initial-cluster members (a, b)"
        );
    }

    #[test]
    fn bad_initial_cluster_entries_are_named() {
        let err = InitialCluster::parse("a=http://x:1,b").expect_err("b has no url");
        assert!(err.to_string().contains("\"b\""), "{err}");
        let err = InitialCluster::parse("a=http://x:1,a=http://y:2").expect_err("dup");
        assert!(err.to_string().contains("twice"), "{err}");
        let err = InitialCluster::parse("a=ftp://x:1").expect_err("scheme");
        assert!(err.to_string().contains("NAME=http://HOST:PORT"), "{err}");
    }

    #[test]
    fn peer_urls_must_say_https_exactly_when_peers_speak_tls() {
        let tls = crate::tls::ListenerTls {
            cert_pem: String::new(),
            key_pem: String::new(),
            trusted_ca_pem: None,
            client_cert_auth: false,
        };
        let mut c = StoreConfig::single(
            "/d",
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2".parse().expect("addr"),
        );
        c.name = "a".into();
        c.initial_cluster = Some(
            InitialCluster::parse("a=https://127.0.0.1:2,b=http://127.0.0.1:3").expect("parse"),
        );
        let err = c.check_peer_urls().expect_err("https without peer TLS");
        assert_eq!(
            err.to_string(),
            "--initial-cluster member \"a\" has peer URL \"https://127.0.0.1:2\": https:// peer URLs need --peer-cert-file, --peer-key-file and --peer-trusted-ca-file"
        );
        c.peer_tls = Some(tls);
        let err = c.check_peer_urls().expect_err("http with peer TLS");
        assert!(err.to_string().contains("member \"b\""), "{err}");
        assert!(err.to_string().contains("peer URLs are https://"), "{err}");
        // A member alone advertises the scheme that matches.
        c.initial_cluster = None;
        c.check_peer_urls().expect("its own https:// URL");
        assert_eq!(c.cluster().members[0].1, "https://127.0.0.1:2");
    }
}
