//! etcd's Cluster service: membership from the backend.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    backend::{Backend, MemberInfo},
    proto::etcdserverpb::{self as pb, cluster_server::Cluster},
    server::Shared,
    status::{self, from_backend},
};

/// The Cluster service.
pub(crate) struct ClusterService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> ClusterService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }
}

fn member_to_pb(m: MemberInfo) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

/// etcd's `types.NewURLs`: `scheme://host:port` with scheme http, https,
/// unix or unixs, a port for http(s), and no path.
pub(crate) fn valid_peer_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    if rest.is_empty() || rest.contains('/') {
        return false;
    }
    match scheme {
        "unix" | "unixs" => true,
        "http" | "https" => match rest.rsplit_once(':') {
            Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
            None => false,
        },
        _ => false,
    }
}

impl<B: Backend> ClusterService<B> {
    /// etcd's cluster responses carry no revision.
    fn header(&self) -> pb::ResponseHeader {
        self.shared.header(0)
    }

    fn members(&self) -> Vec<pb::Member> {
        self.shared
            .backend
            .members()
            .into_iter()
            .map(member_to_pb)
            .collect()
    }
}

#[tonic::async_trait]
impl<B: Backend> Cluster for ClusterService<B> {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let r = request.into_inner();
        if r.peer_ur_ls.is_empty() || !r.peer_ur_ls.iter().all(|u| valid_peer_url(u)) {
            return Err(status::invalid(status::MEMBER_BAD_URLS));
        }
        let member = self
            .shared
            .backend
            .member_add(r.peer_ur_ls, r.is_learner)
            .await
            .map_err(|e| from_backend(&e))?;
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.header()),
            member: Some(member_to_pb(member)),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        self.shared
            .backend
            .member_remove(id)
            .await
            .map_err(|e| from_backend(&e))?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.header()),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        _request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(Status::unimplemented(
            "shoal: member update is not supported; remove the member and add it again with the new peer URLs",
        ))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.header()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        self.shared
            .backend
            .member_promote(id)
            .await
            .map_err(|e| from_backend(&e))?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.header()),
            members: self.members(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::valid_peer_url;

    #[test]
    fn peer_urls_are_checked_like_etcd() {
        for ok in [
            "http://10.0.0.1:2380",
            "https://node-1:2380",
            "http://[::1]:2380",
            "unix://s",
        ] {
            assert!(valid_peer_url(ok), "{ok}");
        }
        for bad in [
            "10.0.0.1:2380",
            "http://10.0.0.1",
            "http://h:2380/path",
            "ftp://h:21",
            "http://:2380",
        ] {
            assert!(!valid_peer_url(bad), "{bad}");
        }
    }
}
