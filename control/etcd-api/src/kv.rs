//! etcd's KV service: range reads and read-only transactions served
//! locally (after a read barrier unless serializable), writes proposed
//! through the backend.

use std::sync::Arc;

use shoal_mvcc::{Command, Outcome};
use tonic::{Request, Response, Status};

use crate::{
    backend::Backend,
    convert,
    proto::etcdserverpb::{self as pb, kv_server::Kv},
    server::{Shared, unexpected},
    status::{from_backend, from_kv},
};

/// The KV service.
pub(crate) struct KvService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> KvService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl<B: Backend> Kv for KvService<B> {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let r = request.into_inner();
        let args = convert::range_args(&r)?;
        if !r.serializable {
            self.shared
                .backend
                .read_barrier()
                .await
                .map_err(|e| from_backend(&e))?;
        }
        let (result, revision) = self
            .shared
            .read(move |m| m.range(&args))
            .await?
            .map_err(|e| from_kv(&e))?;
        let header = self.shared.header(revision);
        Ok(Response::new(convert::range_response(result, header)))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let r = request.into_inner();
        self.shared.check_size(&r)?;
        let args = convert::put_args(r)?;
        match self.shared.write(Command::Put(args)).await? {
            (Outcome::Put(p), rev) => Ok(Response::new(convert::put_response(
                p,
                self.shared.header(rev),
            ))),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let r = request.into_inner();
        self.shared.check_size(&r)?;
        let args = convert::delete_args(r)?;
        match self.shared.write(Command::Delete(args)).await? {
            (Outcome::Delete(d), rev) => Ok(Response::new(convert::delete_response(
                d,
                self.shared.header(rev),
            ))),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let r = request.into_inner();
        self.shared.check_size(&r)?;
        let serializable = is_txn_serializable(&r);
        let args = convert::txn_args(r, self.shared.config.max_txn_ops)?;
        // As etcd: a transaction that only reads is served like a range,
        // not proposed (no log entry, no fsync, no revision).
        if args.is_read_only() {
            if !serializable {
                self.shared
                    .backend
                    .read_barrier()
                    .await
                    .map_err(|e| from_backend(&e))?;
            }
            let (result, revision) = self
                .shared
                .read(move |m| m.txn_read(&args))
                .await?
                .map_err(|e| from_kv(&e))?;
            return Ok(Response::new(convert::txn_response(
                result,
                self.shared.header(revision),
            )));
        }
        match self.shared.write(Command::Txn(args)).await? {
            (Outcome::Txn(t), rev) => Ok(Response::new(convert::txn_response(
                t,
                self.shared.header(rev),
            ))),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        // Compaction is applied synchronously, so `physical` needs no wait.
        let revision = request.into_inner().revision;
        match self.shared.write(Command::Compact { revision }).await? {
            (Outcome::Compact, rev) => Ok(Response::new(pb::CompactionResponse {
                header: Some(self.shared.header(rev)),
            })),
            (other, _) => Err(unexpected(&other)),
        }
    }
}

/// etcd's `isTxnSerializable`: every op of both branches is a
/// serializable range (then a read-only transaction needs no barrier).
fn is_txn_serializable(r: &pb::TxnRequest) -> bool {
    r.success.iter().chain(&r.failure).all(|op| {
        matches!(
            &op.request,
            Some(pb::request_op::Request::RequestRange(range)) if range.serializable
        )
    })
}
