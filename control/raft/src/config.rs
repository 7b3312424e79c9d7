//! A member's Raft configuration. Every default is a named constant here.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tonic::transport::{ClientTlsConfig, ServerTlsConfig};

use crate::{error::Error, faults::Faults, types::NodeId};

/// How often the leader sends heartbeats (AppendEntries) to its followers.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// A follower starts an election after a random timeout in
/// `[min, max)` without hearing from a leader.
pub const DEFAULT_ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(300);
/// See [`DEFAULT_ELECTION_TIMEOUT_MIN`].
pub const DEFAULT_ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(600);
/// Build a snapshot after this many log entries were applied since the
/// last one.
pub const DEFAULT_SNAPSHOT_LOGS_SINCE_LAST: u64 = 10_000;
/// Entries kept in the log behind a snapshot, so that a briefly lagging
/// follower catches up from the log rather than with a whole snapshot.
pub const DEFAULT_LOGS_TO_KEEP: u64 = 1_000;
/// Snapshot chunk size for InstallSnapshot; below the gRPC message limit.
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// At most this many entries in one AppendEntries.
pub const DEFAULT_MAX_PAYLOAD_ENTRIES: u64 = 256;
/// The keyspace commits applied entries without an fsync (the log is
/// durable and replays them after a crash) and makes them durable once
/// this many commands were applied since the last durable commit...
pub const DEFAULT_APPLY_SYNC_COMMANDS: u64 = 10_000;
/// ...or, at the next apply, once the oldest unsynced apply is this old:
/// bounds what a crash makes a member replay. Snapshots and a clean
/// shutdown make every apply durable too.
pub const DEFAULT_APPLY_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Client writes queued on the leader while earlier batches commit are
/// proposed together, as one log entry of at most this many commands...
pub const MAX_BATCH_COMMANDS: usize = 1024;
/// ...and about this many encoded bytes (a single larger command goes
/// alone). With [`DEFAULT_MAX_PAYLOAD_ENTRIES`] it keeps an AppendEntries
/// of full batches well under [`MAX_PEER_MESSAGE_BYTES`].
pub const MAX_BATCH_BYTES: usize = 128 * 1024;
/// Batches proposed and not yet applied at once: a second one is appended
/// while the first is applied and answered.
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;
/// Client writes that may wait for a batch; more wait to be queued.
pub const WRITE_QUEUE: usize = 8192;
/// How long `write`, `read_index` and membership changes keep retrying
/// while there is no leader (an election) before returning
/// [`Error::NoLeader`](crate::Error::NoLeader).
pub const DEFAULT_LEADER_WAIT: Duration = Duration::from_secs(3);
/// How often a request that needs the leader is retried during an
/// election.
pub const LEADER_RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// Largest gRPC message a member sends or accepts on the peer protocol
/// (an AppendEntries batch of large values, a snapshot chunk).
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How long a member waits to connect to a peer.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long openraft waits before retrying a peer that was unreachable.
pub const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);
/// How long a forwarded proposal or read-index request may take.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `shutdown` waits for the storage files to be closed.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The Raft log file inside the data directory.
pub const LOG_FILE: &str = "raft-log.redb";
/// The keyspace (state machine) file inside the data directory.
pub const STATE_FILE: &str = "state.redb";
/// The last snapshot built or installed, inside the data directory.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";
/// Written into the data directory when the member learns it was removed
/// from its cluster; a member refuses to start while it is there (etcd
/// refuses to run a removed member too).
pub const REMOVED_FILE: &str = "removed";

/// How long a peer may take to finish a TLS handshake on the peer listener.
pub const PEER_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS on the peer protocol (etcd's `--peer-cert-file`, `--peer-key-file`,
/// `--peer-trusted-ca-file`, `--peer-client-cert-auth`): what the peer
/// listener presents and asks of connecting members, and what this member
/// presents to and trusts in the members at `https://` peer URLs.
#[derive(Clone, Debug)]
pub struct PeerTls {
    /// The peer listener's TLS.
    pub server: ServerTlsConfig,
    /// TLS towards other members.
    pub client: ClientTlsConfig,
}

/// One member's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The member id (non-zero, unique, never reused).
    pub id: NodeId,
    /// The member name.
    pub name: String,
    /// Directory for the Raft log, the keyspace and the snapshot.
    pub data_dir: PathBuf,
    /// Where to serve the peer protocol.
    pub peer_listen: SocketAddr,
    /// How peers reach this member (`http://host:port`, `https://` with
    /// [`Config::tls`]).
    pub peer_url: String,
    /// TLS on the peer protocol; `None` = plain HTTP/2.
    pub tls: Option<PeerTls>,
    /// How clients reach this member's etcd API.
    pub client_url: String,
    /// Leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// Lower bound of the election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the election timeout.
    pub election_timeout_max: Duration,
    /// Snapshot after this many applied entries.
    pub snapshot_logs_since_last: u64,
    /// Entries kept behind a snapshot.
    pub logs_to_keep: u64,
    /// InstallSnapshot chunk size in bytes.
    pub snapshot_chunk_bytes: usize,
    /// Entries per AppendEntries.
    pub max_payload_entries: u64,
    /// How long to retry while there is no leader.
    pub leader_wait: Duration,
    /// Make applied commands durable after this many.
    pub apply_sync_commands: u64,
    /// Make applied commands durable after this long.
    pub apply_sync_interval: Duration,
    /// Faults injected into this member's peer network and log store, for
    /// fault campaigns; `None` in production.
    pub faults: Option<Faults>,
}

impl Config {
    /// A configuration with the default timeouts and snapshot policy.
    pub fn new(
        id: NodeId,
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        peer_listen: SocketAddr,
        peer_url: impl Into<String>,
        client_url: impl Into<String>,
    ) -> Self {
        Self {
            id,
            name: name.into(),
            data_dir: data_dir.into(),
            peer_listen,
            peer_url: peer_url.into(),
            tls: None,
            client_url: client_url.into(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            election_timeout_min: DEFAULT_ELECTION_TIMEOUT_MIN,
            election_timeout_max: DEFAULT_ELECTION_TIMEOUT_MAX,
            snapshot_logs_since_last: DEFAULT_SNAPSHOT_LOGS_SINCE_LAST,
            logs_to_keep: DEFAULT_LOGS_TO_KEEP,
            snapshot_chunk_bytes: DEFAULT_SNAPSHOT_CHUNK_BYTES,
            max_payload_entries: DEFAULT_MAX_PAYLOAD_ENTRIES,
            leader_wait: DEFAULT_LEADER_WAIT,
            apply_sync_commands: DEFAULT_APPLY_SYNC_COMMANDS,
            apply_sync_interval: DEFAULT_APPLY_SYNC_INTERVAL,
            faults: None,
        }
    }

    /// openraft's configuration, validated.
    pub(crate) fn raft_config(&self) -> Result<openraft::Config, Error> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        openraft::Config {
            cluster_name: "shoal".to_string(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.logs_to_keep,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes as u64,
            max_payload_entries: self.max_payload_entries,
            ..Default::default()
        }
        .validate()
        .map_err(|source| Error::Config {
            id: self.id,
            source: Box::new(source),
        })
    }
}
