//! etcd's Maintenance service: status, snapshot download, defragmentation,
//! and an alarm list that is always empty.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, codegen::tokio_stream::wrappers::ReceiverStream};

use crate::{
    backend::Backend,
    config::SERVER_VERSION,
    proto::etcdserverpb::{self as pb, maintenance_server::Maintenance},
    server::Shared,
    snapshot, status,
};

/// Snapshot bytes per response (etcd's `snapshotSendBufferSize`).
const SNAPSHOT_CHUNK: usize = 32 * 1024;
/// Snapshot responses buffered ahead of the client.
const SNAPSHOT_BUFFER: usize = 4;

/// The Maintenance service.
pub(crate) struct MaintenanceService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> MaintenanceService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl<B: Backend> Maintenance for MaintenanceService<B> {
    async fn alarm(
        &self,
        _request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        // shoal raises no alarms (no space quota, no corruption check), so
        // listing finds none and disarming has nothing to do.
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.shared.header_now()),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let st = self.shared.read(|m| m.status()).await?;
        let raft = self.shared.backend.raft_status();
        let errors = match raft.leader {
            Some(_) => Vec::new(),
            None => vec![status::NO_LEADER.to_owned()],
        };
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.shared.header(st.revision)),
            version: SERVER_VERSION.to_owned(),
            db_size: st.db_size,
            leader: raft.leader.unwrap_or(0),
            raft_index: raft.commit_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            errors,
            db_size_in_use: st.db_size_in_use,
            is_learner: raft.is_learner,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        tracing::info!("defragmenting the keyspace database");
        self.shared.read(|m| m.defragment()).await?;
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.shared.header_now()),
        }))
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        Err(Status::unimplemented(
            "shoal: Hash is not supported; compare members with `etcdctl endpoint status` (revision, raft index)",
        ))
    }

    async fn hash_kv(
        &self,
        _request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        Err(Status::unimplemented(
            "shoal: HashKV is not supported; compare members with `etcdctl endpoint status` (revision, raft index)",
        ))
    }

    type SnapshotStream = ReceiverStream<Result<pb::SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let encoded = self
            .shared
            .read(|m| m.snapshot().map(|s| snapshot::encode(&s)))
            .await?;
        let header = self.shared.header_now();
        tracing::info!(bytes = encoded.len(), "sending a keyspace snapshot");
        let (tx, rx) = mpsc::channel(SNAPSHOT_BUFFER);
        tokio::spawn(async move {
            let mut sha = Sha256::new();
            let mut remaining = encoded.len();
            for chunk in encoded.chunks(SNAPSHOT_CHUNK) {
                sha.update(chunk);
                remaining -= chunk.len();
                let response = pb::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: remaining as u64,
                    blob: chunk.to_vec(),
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
            // Last, the sha256 of everything sent, as etcd does; etcdctl
            // checks the download's length against it.
            let trailer = pb::SnapshotResponse {
                header: Some(header),
                remaining_bytes: 0,
                blob: sha.finalize().to_vec(),
            };
            let _client_gone = tx.send(Ok(trailer)).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn move_leader(
        &self,
        _request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(Status::unimplemented(
            "shoal: leadership transfer is not supported yet",
        ))
    }
}
