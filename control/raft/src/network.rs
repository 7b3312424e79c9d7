//! The peer protocol's client side: openraft's `RaftNetwork` over gRPC,
//! plus forwarding proposals and read-index requests to the leader.
//!
//! Requests and replies are postcard-encoded openraft types framed by
//! `api/proto/shoal/raft.proto`. One HTTP/2 channel per peer URL is shared
//! by every replication stream, vote and forwarded request to that peer.

#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use openraft::{
    error::{InstallSnapshotError, NetworkError, RPCError, RemoteError, Unreachable},
    network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::{
    config::{FORWARD_TIMEOUT, MAX_PEER_MESSAGE_BYTES, PEER_CONNECT_TIMEOUT, UNREACHABLE_BACKOFF},
    faults::MemberFaults,
    lease::{LeaseError, LeaseRequest},
    proposal::{Applied, Proposal},
    proto::{PeerRequest, peer_reply, raft_peer_client::RaftPeerClient},
    types::{
        Member, NodeId, TypeConfig,
        typ::{CheckIsLeaderError, ClientWriteError, RaftError, RpcError},
    },
};

/// Why a peer could not be reached or answered nonsense. Wrapped in
/// openraft's `Unreachable` / `NetworkError`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    /// The member's peer URL does not parse.
    #[error("member {target}: invalid peer url {url:?}: {reason}")]
    BadUrl {
        /// The member.
        target: NodeId,
        /// Its URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The gRPC call failed.
    #[error("member {target} at {url}: {status}")]
    Status {
        /// The member.
        target: NodeId,
        /// Its URL.
        url: String,
        /// What gRPC said.
        status: tonic::Status,
    },
    /// A request or reply did not encode or decode.
    #[error("member {target} at {url}: {what}: {source}")]
    Codec {
        /// The member.
        target: NodeId,
        /// Its URL.
        url: String,
        /// Which message.
        what: &'static str,
        /// The postcard error.
        source: postcard::Error,
    },
    /// A fault campaign lost the message.
    #[error("member {target} at {url}: {what} (injected fault)")]
    Injected {
        /// The member.
        target: NodeId,
        /// Its URL.
        url: String,
        /// Which message was lost.
        what: &'static str,
    },
    /// The reply had neither a result nor an error.
    #[error("member {target} at {url}: empty reply")]
    EmptyReply {
        /// The member.
        target: NodeId,
        /// Its URL.
        url: String,
    },
}

/// When each peer last answered this member (etcd's transport
/// `ActiveSince`): a reply, even an error the peer raised, shows it is up
/// and reachable. The leader hears from every member at each heartbeat, so
/// on the leader this tells which members are active.
#[derive(Clone, Default)]
pub(crate) struct Contacts(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl Contacts {
    fn record(&self, peer: NodeId) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, Instant::now());
    }

    /// Whether `peer` answered within `within`.
    pub(crate) fn active(&self, peer: NodeId, within: Duration) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .is_some_and(|at| at.elapsed() <= within)
    }
}

/// Creates peer clients, one channel per peer URL. Clones share channels.
#[derive(Clone, Default)]
pub(crate) struct PeerNetwork {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// When each peer last answered.
    contacts: Contacts,
    /// TLS towards `https://` peer URLs.
    tls: Option<ClientTlsConfig>,
    /// Injected faults (fault campaigns only).
    faults: Option<MemberFaults>,
}

impl PeerNetwork {
    /// A network that speaks TLS to `https://` peers with `tls`.
    pub(crate) fn new(tls: Option<ClientTlsConfig>, faults: Option<MemberFaults>) -> Self {
        Self {
            channels: Arc::default(),
            contacts: Contacts::default(),
            tls,
            faults,
        }
    }

    /// When each peer last answered this member.
    pub(crate) fn contacts(&self) -> Contacts {
        self.contacts.clone()
    }

    /// A client for member `target` at `member.peer_url`.
    pub(crate) fn client(&self, target: NodeId, member: &Member) -> PeerClient {
        PeerClient {
            target,
            member: member.clone(),
            channel: self.channel(target, &member.peer_url),
            faults: self.faults.clone(),
            contacts: self.contacts.clone(),
        }
    }

    fn channel(&self, target: NodeId, url: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }
        let bad_url = |reason: String| {
            PeerError::BadUrl {
                target,
                url: url.to_string(),
                reason,
            }
            .to_string()
        };
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| bad_url(e.to_string()))?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let Some(tls) = &self.tls else {
                return Err(bad_url(
                    "an https:// peer needs peer TLS (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file)"
                        .to_owned(),
                ));
            };
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| bad_url(format!("TLS: {e}")))?;
        }
        // Connects on first use and reconnects after a failure.
        let channel = endpoint.connect_lazy();
        channels.insert(url.to_string(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        self.client(target, node)
    }
}

/// The peer RPCs.
#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Forward,
    ReadIndex,
    Lease,
    Removed,
}

/// A client for one peer.
pub(crate) struct PeerClient {
    target: NodeId,
    member: Member,
    /// The shared channel, or why the peer URL is unusable.
    channel: Result<Channel, String>,
    faults: Option<MemberFaults>,
    contacts: Contacts,
}

impl PeerClient {
    /// Hands a proposal to the peer, which must be the leader.
    pub(crate) async fn forward(
        &self,
        proposal: &Proposal,
    ) -> Result<Applied, RpcError<ClientWriteError>> {
        self.call(Rpc::Forward, proposal, FORWARD_TIMEOUT).await
    }

    /// Asks the peer, which must be the leader, for its read index.
    pub(crate) async fn read_index(&self) -> Result<u64, RpcError<CheckIsLeaderError>> {
        self.call(Rpc::ReadIndex, &(), FORWARD_TIMEOUT).await
    }

    /// Asks the peer, which must be the leader, for its lessor's answer.
    pub(crate) async fn lease(
        &self,
        request: LeaseRequest,
    ) -> Result<Option<i64>, RpcError<LeaseError>> {
        self.call(Rpc::Lease, &request, FORWARD_TIMEOUT).await
    }

    /// Tells the peer it was removed from the cluster by the membership
    /// change committed at log index `index`, so it stops.
    pub(crate) async fn removed(&self, index: u64) -> Result<(), RpcError> {
        self.call(Rpc::Removed, &index, FORWARD_TIMEOUT).await
    }

    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = &self.member.peer_url;
        let codec = |what, source| PeerError::Codec {
            target: self.target,
            url: url.clone(),
            what,
            source,
        };
        let channel = match &self.channel {
            Ok(channel) => channel.clone(),
            Err(reason) => {
                let e = PeerError::BadUrl {
                    target: self.target,
                    url: url.clone(),
                    reason: reason.clone(),
                };
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        };
        let drawn = self
            .faults
            .as_ref()
            .map(|f| f.faults.draw(f.id, self.target))
            .unwrap_or_default();
        let injected = |what: &'static str| PeerError::Injected {
            target: self.target,
            url: url.clone(),
            what,
        };
        if !drawn.delay.is_zero() {
            tokio::time::sleep(drawn.delay).await;
        }
        if drawn.drop_request {
            return Err(RPCError::Unreachable(Unreachable::new(&injected(
                "request dropped",
            ))));
        }
        let payload = postcard::to_stdvec(request)
            .map_err(|e| RPCError::Network(NetworkError::new(&codec("encoding request", e))))?;
        let mut request = tonic::Request::new(PeerRequest {
            target: self.target,
            payload,
        });
        request.set_timeout(timeout);
        let mut client = RaftPeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
            Rpc::Forward => client.forward(request).await,
            Rpc::ReadIndex => client.read_index(request).await,
            Rpc::Lease => client.lease(request).await,
            Rpc::Removed => client.removed(request).await,
        }
        .map_err(|status| status_error(self.target, url, status))?;
        self.contacts.record(self.target);
        if drawn.drop_reply {
            return Err(RPCError::Network(NetworkError::new(&injected(
                "reply dropped",
            ))));
        }
        match reply.into_inner().result {
            Some(peer_reply::Result::Ok(bytes)) => postcard::from_bytes(&bytes)
                .map_err(|e| RPCError::Network(NetworkError::new(&codec("decoding reply", e)))),
            Some(peer_reply::Result::Error(bytes)) => {
                let remote: RaftError<E> = postcard::from_bytes(&bytes).map_err(|e| {
                    RPCError::Network(NetworkError::new(&codec("decoding error", e)))
                })?;
                Err(RPCError::RemoteError(RemoteError::new_with_node(
                    self.target,
                    self.member.clone(),
                    remote,
                )))
            }
            None => Err(RPCError::Network(NetworkError::new(
                &PeerError::EmptyReply {
                    target: self.target,
                    url: url.clone(),
                },
            ))),
        }
    }
}

/// Maps a gRPC failure to openraft's: `Unreachable` (back off before
/// retrying) when the request cannot have been processed, `NetworkError`
/// (retry at once) otherwise.
pub(crate) fn status_error<E: std::error::Error>(
    target: NodeId,
    url: &str,
    status: tonic::Status,
) -> RpcError<E> {
    let unreachable = matches!(
        status.code(),
        // Connection refused or reset, no route: nothing was delivered.
        tonic::Code::Unavailable
        // Another member answers at this address now.
            | tonic::Code::FailedPrecondition
    );
    let e = PeerError::Status {
        target,
        url: url.to_string(),
        status,
    };
    if unreachable {
        RPCError::Unreachable(Unreachable::new(&e))
    } else {
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        self.call(Rpc::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        self.call(Rpc::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}
