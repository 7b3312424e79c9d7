//! etcd's Auth service, as far as clients need it: authentication is not
//! enabled. clientv3 (and so etcdctl `--user`) goes on without a token
//! when Authenticate answers so.

use tonic::{Request, Response, Status};

use crate::{
    proto::etcdserverpb::{self as pb, auth_server::Auth},
    status,
};

/// The Auth service.
pub(crate) struct AuthService;

#[tonic::async_trait]
impl Auth for AuthService {
    async fn authenticate(
        &self,
        _request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        Err(Status::failed_precondition(status::AUTH_NOT_ENABLED))
    }
}
