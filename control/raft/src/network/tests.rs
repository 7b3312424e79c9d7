use std::net::SocketAddr;

use openraft::{
    error::{ForwardToLeader, Infallible},
    raft::VoteRequest,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

use super::*;
use crate::proto::{
    PeerReply,
    raft_peer_server::{RaftPeer, RaftPeerServer},
};

fn member(url: &str) -> Member {
    Member {
        name: "m".into(),
        peer_url: url.into(),
        client_url: String::new(),
    }
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

#[test]
fn unavailable_is_unreachable_other_failures_are_network_errors() {
    let e = status_error::<Infallible>(
        2,
        "http://127.0.0.1:1",
        Status::unavailable("connection refused"),
    );
    match e {
        RPCError::Unreachable(u) => {
            let msg = u.to_string();
            assert!(
                msg.contains("member 2") && msg.contains("http://127.0.0.1:1"),
                "{msg}"
            );
        }
        other => panic!("want Unreachable, got {other:?}"),
    }
    let e = status_error::<Infallible>(2, "u", Status::deadline_exceeded("slow"));
    assert!(matches!(e, RPCError::Network(_)), "{e:?}");
    let e = status_error::<Infallible>(2, "u", Status::failed_precondition("this is member 3"));
    assert!(matches!(e, RPCError::Unreachable(_)), "{e:?}");
}

#[tokio::test]
async fn one_channel_per_peer_url() {
    let network = PeerNetwork::default();
    let a = member("http://127.0.0.1:7001");
    network.client(1, &a);
    network.client(1, &a);
    network.client(2, &member("http://127.0.0.1:7002"));
    assert_eq!(network.channels.lock().expect("lock").len(), 2);
}

#[tokio::test]
async fn down_peer_is_unreachable() {
    let addr = closed_port().await;
    let mut client = PeerNetwork::default().client(7, &member(&format!("http://{addr}")));
    let vote = VoteRequest::new(openraft::Vote::new(1, 1), None);
    let err = client
        .vote(vote, RPCOption::new(Duration::from_secs(1)))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
}

#[tokio::test]
async fn bad_url_is_unreachable_and_named() {
    let client = PeerNetwork::default().client(3, &member("not a url"));
    let err = client.read_index().await.expect_err("bad url");
    match err {
        RPCError::Unreachable(u) => assert!(u.to_string().contains("not a url"), "{u}"),
        other => panic!("want Unreachable, got {other:?}"),
    }
}

/// A peer that is not the leader: refuses forwarded proposals with
/// ForwardToLeader naming member 9, answers read-index with 42.
struct Follower;

#[tonic::async_trait]
impl RaftPeer for Follower {
    async fn append_entries(&self, _: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn vote(&self, _: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn install_snapshot(
        &self,
        _: Request<PeerRequest>,
    ) -> Result<Response<PeerReply>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn forward(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let proposal: Proposal =
            postcard::from_bytes(&request.into_inner().payload).expect("proposal");
        assert!(matches!(proposal, Proposal::Write(_)));
        let e: RaftError<ClientWriteError> =
            RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader {
                leader_id: Some(9),
                leader_node: Some(member("http://leader")),
            }));
        let bytes = postcard::to_stdvec(&e).expect("encode");
        Ok(Response::new(PeerReply {
            result: Some(peer_reply::Result::Error(bytes)),
        }))
    }
    async fn read_index(&self, _: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let bytes = postcard::to_stdvec(&42_u64).expect("encode");
        Ok(Response::new(PeerReply {
            result: Some(peer_reply::Result::Ok(bytes)),
        }))
    }
    async fn lease(&self, _: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let e: RaftError<LeaseError> = RaftError::APIError(LeaseError::NotLeader { member: 5 });
        let bytes = postcard::to_stdvec(&e).expect("encode");
        Ok(Response::new(PeerReply {
            result: Some(peer_reply::Result::Error(bytes)),
        }))
    }
    async fn removed(&self, _: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        Err(Status::unimplemented("test"))
    }
}

#[tokio::test]
async fn remote_errors_and_results_decode() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftPeerServer::new(Follower))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let client = PeerNetwork::default().client(5, &member(&format!("http://{addr}")));

    assert_eq!(client.read_index().await.expect("read index"), 42);

    let command = shoal_mvcc::Command::Compact { revision: 1 };
    let err = client
        .forward(&Proposal::Write(command))
        .await
        .expect_err("not the leader");
    match err {
        RPCError::RemoteError(remote) => {
            assert_eq!(remote.target, 5);
            match remote.source {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    assert_eq!(f.leader_id, Some(9))
                }
                other => panic!("want ForwardToLeader, got {other:?}"),
            }
        }
        other => panic!("want RemoteError, got {other:?}"),
    }
    let err = client
        .lease(LeaseRequest::KeepAlive(7))
        .await
        .expect_err("not the leader");
    match err {
        RPCError::RemoteError(remote) => assert_eq!(
            remote.source,
            RaftError::APIError(LeaseError::NotLeader { member: 5 })
        ),
        other => panic!("want RemoteError, got {other:?}"),
    }
    server.abort();
}
