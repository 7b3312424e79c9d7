//! etcd's Lease service: grants and revokes are proposed; keep-alives and
//! remaining TTLs come from the leader's lessor through the backend.

use std::sync::Arc;

use shoal_mvcc::{Command, KvError, LeaseId, Outcome};
use tokio::sync::mpsc;
use tonic::{
    Request, Response, Status, Streaming, codegen::tokio_stream::wrappers::ReceiverStream,
};

use crate::{
    backend::{Backend, BackendError},
    config::MAX_LEASE_TTL,
    proto::etcdserverpb::{self as pb, lease_server::Lease},
    server::{Shared, server_stopped, unexpected},
    status::{self, from_backend},
};

/// Keep-alive responses buffered per stream.
const KEEP_ALIVE_BUFFER: usize = 16;
/// Attempts at picking a free random lease id.
const PICK_ID_ATTEMPTS: usize = 8;

/// The Lease service.
pub(crate) struct LeaseService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> LeaseService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }
}

/// A random positive lease id (etcd uses positive ids only).
fn random_id() -> LeaseId {
    loop {
        let id = rand::random::<i64>() & i64::MAX;
        if id != 0 {
            return id;
        }
    }
}

impl<B: Backend> LeaseService<B> {
    async fn grant(&self, id: LeaseId, ttl: i64) -> Result<pb::LeaseGrantResponse, Status> {
        match self.shared.write(Command::LeaseGrant { id, ttl }).await? {
            (Outcome::LeaseGrant { id, ttl }, rev) => Ok(pb::LeaseGrantResponse {
                header: Some(self.shared.header(rev)),
                id,
                ttl,
                error: String::new(),
            }),
            (other, _) => Err(unexpected(&other)),
        }
    }
}

#[tonic::async_trait]
impl<B: Backend> Lease for LeaseService<B> {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let r = request.into_inner();
        if r.ttl > MAX_LEASE_TTL {
            return Err(Status::out_of_range(status::LEASE_TTL_TOO_LARGE));
        }
        let ttl = r.ttl.max(self.shared.config.min_lease_ttl);
        if r.id != 0 {
            return self.grant(r.id, ttl).await.map(Response::new);
        }
        // An id of our choosing: one not in use, and another if a grant
        // raced us to it.
        for _ in 0..PICK_ID_ATTEMPTS {
            let id = random_id();
            if self.shared.read(move |m| m.lease(id)).await?.is_some() {
                continue;
            }
            match self.grant(id, ttl).await {
                Err(s) if s.message() == KvError::LeaseExists.to_string() => continue,
                other => return other.map(Response::new),
            }
        }
        Err(Status::unavailable(
            "etcdserver: could not pick a free lease id; retry",
        ))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        match self.shared.write(Command::LeaseRevoke { id }).await? {
            (Outcome::LeaseRevoke, rev) => Ok(Response::new(pb::LeaseRevokeResponse {
                header: Some(self.shared.header(rev)),
            })),
            (other, _) => Err(unexpected(&other)),
        }
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEP_ALIVE_BUFFER);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    req = inbound.message() => req,
                    () = tx.closed() => return,
                    () = shared.stopped() => {
                        let _full_or_gone = tx.try_send(Err(server_stopped()));
                        return;
                    }
                };
                let id = match req {
                    Ok(Some(req)) => req.id,
                    // Client done, or its stream broke: nothing to answer.
                    Ok(None) | Err(_) => return,
                };
                // The header comes before the renewal, as in etcd: a revoke
                // can never look older than a keep-alive that succeeded.
                let header = shared.header_now();
                let response = match shared.backend.lease_keep_alive(id).await {
                    Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(header),
                        id,
                        ttl,
                    }),
                    // A lease that is gone answers TTL 0, not an error.
                    Err(BackendError::LeaseNotFound) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(header),
                        id,
                        ttl: 0,
                    }),
                    Err(e) => Err(from_backend(&e)),
                };
                let failed = response.is_err();
                if tx.send(response).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        let id = r.id;
        let lease = self.shared.read(move |m| m.lease(id)).await?;
        let remaining = match &lease {
            None => Err(BackendError::LeaseNotFound),
            Some(_) => self.shared.backend.lease_remaining(id).await,
        };
        let header = Some(self.shared.header_now());
        let response = match (lease, remaining) {
            (Some(lease), Ok(ttl)) => pb::LeaseTimeToLiveResponse {
                header,
                id,
                ttl,
                granted_ttl: lease.ttl,
                keys: if r.keys { lease.keys } else { Vec::new() },
            },
            // etcd answers an unknown or expired lease with TTL -1.
            (_, Err(BackendError::LeaseNotFound)) | (None, _) => pb::LeaseTimeToLiveResponse {
                header,
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: vec![],
            },
            (Some(_), Err(e)) => return Err(from_backend(&e)),
        };
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let leases = self.shared.read(|m| m.leases()).await?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.shared.header_now()),
            leases: leases
                .into_iter()
                .map(|l| pb::LeaseStatus { id: l.id })
                .collect(),
        }))
    }
}
