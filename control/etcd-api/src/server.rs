//! Serving every etcd service on one listener, and what the services share.

use std::{convert::Infallible, future::Future, sync::Arc};

use shoal_mvcc::{Command, Mvcc, Outcome, Revision};
use tokio::{net::TcpListener, sync::watch};
use tonic::{
    Status,
    body::Body,
    codegen::{BoxFuture, Context, Poll, Service, http},
    server::NamedService,
    transport::server::TcpIncoming,
};

use crate::{
    auth::AuthService,
    backend::Backend,
    cluster::ClusterService,
    config::{Config, GRPC_OVERHEAD_BYTES},
    kv::KvService,
    lease::LeaseService,
    maintenance::MaintenanceService,
    proto::etcdserverpb::{
        self as pb, auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
        lease_server::LeaseServer, maintenance_server::MaintenanceServer,
        watch_server::WatchServer,
    },
    status::{self, from_backend, from_kv, from_storage},
    watch::WatchService,
};

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gRPC transport failed.
    #[error("etcd API server on {addr}: {source}")]
    Transport {
        /// The address it listened on.
        addr: String,
        /// The failure.
        source: tonic::transport::Error,
    },
}

/// Serves KV, Watch, Lease, Cluster, Maintenance and Auth on `listener`
/// until `shutdown` completes. Then it stops accepting, ends the open watch
/// and keep-alive streams with "etcdserver: server stopped" (Unavailable,
/// so clients move to another member), and waits for unary calls in flight.
/// A bad request or a broken connection ends only that request or
/// connection.
pub async fn serve<B: Backend>(
    backend: Arc<B>,
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let addr = listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    let max_decode = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let (stop, stopping) = watch::channel(false);
    let shared = Arc::new(Shared {
        backend,
        config,
        stopping,
    });
    let shutdown = async move {
        shutdown.await;
        tracing::info!("etcd v3 API shutting down");
        // Long-lived streams would hold the graceful shutdown forever.
        let _ = stop.send(true);
    };
    let tls = shared.config.tls.clone();
    tracing::info!(%addr, tls = tls.is_some(), "serving the etcd v3 API");
    let router = tonic::transport::Server::builder()
        .add_service(TooLarge(
            KvServer::new(KvService::new(shared.clone())).max_decoding_message_size(max_decode),
        ))
        .add_service(TooLarge(
            WatchServer::new(WatchService::new(shared.clone()))
                .max_decoding_message_size(max_decode),
        ))
        .add_service(TooLarge(
            LeaseServer::new(LeaseService::new(shared.clone()))
                .max_decoding_message_size(max_decode),
        ))
        .add_service(TooLarge(
            ClusterServer::new(ClusterService::new(shared.clone()))
                .max_decoding_message_size(max_decode),
        ))
        .add_service(TooLarge(
            MaintenanceServer::new(MaintenanceService::new(shared.clone()))
                .max_decoding_message_size(max_decode),
        ))
        .add_service(TooLarge(
            AuthServer::new(AuthService).max_decoding_message_size(max_decode),
        ));
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(crate::tls::incoming(listener, tls), shutdown)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await
        }
    }
    .map_err(|source| Error::Transport { addr, source })
}

/// The backend and settings every service uses.
pub(crate) struct Shared<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) config: Config,
    /// Becomes true when the server shuts down: streams end then.
    stopping: watch::Receiver<bool>,
}

impl<B> Shared<B> {
    /// Completes when the server shuts down.
    pub(crate) async fn stopped(&self) {
        let mut stopping = self.stopping.clone();
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }
}

/// What a stream ends with when the server shuts down.
pub(crate) fn server_stopped() -> Status {
    Status::unavailable("etcdserver: server stopped")
}

impl<B: Backend> Shared<B> {
    /// A response header at `revision`.
    pub(crate) fn header(&self, revision: Revision) -> pb::ResponseHeader {
        let s = self.backend.raft_status();
        pb::ResponseHeader {
            cluster_id: s.cluster_id,
            member_id: s.member_id,
            revision,
            raft_term: s.term,
        }
    }

    /// A response header at the current revision.
    pub(crate) fn header_now(&self) -> pb::ResponseHeader {
        self.header(self.backend.mvcc().revision())
    }

    /// Runs a keyspace read on a blocking thread (reads may touch disk).
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Mvcc) -> Result<T, shoal_mvcc::Error> + Send + 'static,
    ) -> Result<T, Status> {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || f(backend.mvcc()))
            .await
            .map_err(|e| Status::internal(format!("etcdserver: keyspace read failed: {e}")))?
            .map_err(|e| from_storage(&e))
    }

    /// Proposes a command; returns its outcome and revision, or the status
    /// etcd gives its refusal.
    pub(crate) async fn write(&self, cmd: Command) -> Result<(Outcome, Revision), Status> {
        let result = self
            .backend
            .write(cmd)
            .await
            .map_err(|e| from_backend(&e))?;
        result
            .outcome
            .map(|o| (o, result.revision))
            .map_err(|e| from_kv(&e))
    }

    /// etcd's limit on a proposal's size.
    pub(crate) fn check_size(&self, request: &impl prost::Message) -> Result<(), Status> {
        if request.encoded_len() > self.config.max_request_bytes {
            return Err(status::invalid(status::REQUEST_TOO_LARGE));
        }
        Ok(())
    }
}

/// The status for an outcome that does not belong to the command proposed.
pub(crate) fn unexpected(outcome: &Outcome) -> Status {
    Status::internal(format!(
        "etcdserver: unexpected result from the keyspace: {outcome:?}"
    ))
}

/// Turns tonic's "decoded message length too large" (a request beyond
/// [`Config::max_request_bytes`] + gRPC overhead, refused before any handler
/// runs) into etcd's "request is too large", which clients recognise.
#[derive(Clone)]
struct TooLarge<S>(S);

impl<S: NamedService> NamedService for TooLarge<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for TooLarge<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let response = self.0.call(req);
        Box::pin(async move {
            let response = response.await?;
            let too_large = response.extensions().get::<Status>().is_some_and(|s| {
                s.code() == tonic::Code::OutOfRange
                    && s.message()
                        .starts_with("Error, decoded message length too large")
            });
            if too_large {
                return Ok(status::invalid(status::REQUEST_TOO_LARGE).into_http());
            }
            Ok(response)
        })
    }
}
