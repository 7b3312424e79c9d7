//! The peer protocol's server side: hands openraft's RPCs to the local
//! Raft, proposes forwarded proposals, answers read-index requests.

use serde::{Serialize, de::DeserializeOwned};
use tonic::{Request, Response, Status};

use crate::{
    lease::{LeaseError, LeaseRequest, OracleSlot},
    node::Removal,
    proposal::{Proposal, Proposer},
    proto::{PeerReply, PeerRequest, peer_reply, raft_peer_server::RaftPeer},
    types::{
        NodeId,
        typ::{Raft, RaftError},
    },
};

/// The gRPC service every member serves on its peer address.
pub(crate) struct PeerService {
    id: NodeId,
    raft: Raft,
    /// Forwarded writes join the leader's own batches.
    proposer: Proposer,
    /// The lessor that answers forwarded lease requests while this member
    /// leads.
    lessor: OracleSlot,
    /// Set when another member says it removed this one.
    removal: std::sync::Arc<Removal>,
}

impl PeerService {
    pub(crate) fn new(
        id: NodeId,
        raft: Raft,
        proposer: Proposer,
        lessor: OracleSlot,
        removal: std::sync::Arc<Removal>,
    ) -> Self {
        Self {
            id,
            raft,
            proposer,
            lessor,
            removal,
        }
    }

    /// Checks the request is meant for this member and decodes it.
    fn open<T: DeserializeOwned>(&self, request: Request<PeerRequest>) -> Result<T, Status> {
        let request = request.into_inner();
        if request.target != self.id {
            return Err(Status::failed_precondition(format!(
                "this is member {}, not member {}",
                self.id, request.target
            )));
        }
        postcard::from_bytes(&request.payload).map_err(|e| {
            Status::invalid_argument(format!("member {}: decoding request: {e}", self.id))
        })
    }
}

/// Encodes openraft's answer: the result, or the error for the caller to
/// see as a remote error.
fn reply<T: Serialize, E: Serialize>(result: Result<T, E>) -> Result<Response<PeerReply>, Status> {
    let encoded = match &result {
        Ok(value) => postcard::to_stdvec(value).map(peer_reply::Result::Ok),
        Err(error) => postcard::to_stdvec(error).map(peer_reply::Result::Error),
    }
    .map_err(|e| Status::internal(format!("encoding reply: {e}")))?;
    Ok(Response::new(PeerReply {
        result: Some(encoded),
    }))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        request: Request<PeerRequest>,
    ) -> Result<Response<PeerReply>, Status> {
        let rpc = self.open(request)?;
        reply(self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let rpc = self.open(request)?;
        reply(self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<PeerRequest>,
    ) -> Result<Response<PeerReply>, Status> {
        let rpc = self.open(request)?;
        reply(self.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let proposal: Proposal = self.open(request)?;
        reply(self.proposer.propose(proposal).await)
    }

    async fn read_index(
        &self,
        request: Request<PeerRequest>,
    ) -> Result<Response<PeerReply>, Status> {
        self.open::<()>(request)?;
        let read = self.raft.get_read_log_id().await;
        reply(read.map(|(read_log_id, _applied)| read_log_id.map_or(0, |id| id.index)))
    }

    async fn lease(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let request: LeaseRequest = self.open(request)?;
        let member = self.id;
        let leads = self.raft.metrics().borrow().current_leader == Some(member);
        let answer = if !leads {
            Err(LeaseError::NotLeader { member })
        } else if let Some(lessor) = self.lessor.get() {
            Ok(request.answer(lessor.as_ref()))
        } else {
            Err(LeaseError::NoLessor { member })
        };
        reply(answer.map_err(RaftError::APIError))
    }

    async fn removed(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let index: u64 = self.open(request)?;
        self.removal.mark(
            self.id,
            &format!("another member removed it (membership at log index {index})"),
        );
        reply(Ok::<(), RaftError>(()))
    }
}
