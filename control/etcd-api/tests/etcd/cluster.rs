//! Cluster through etcd-client, on a single member.

use anyhow::Result;
use tonic::Code;

use crate::common::{Server, grpc_error, within};

#[tokio::test]
async fn member_list_shows_the_single_member() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let list = within(c.member_list()).await??;
    let [member] = list.members() else {
        panic!("expected one member, got {:?}", list.members())
    };
    assert_eq!(member.name(), "shoal-test");
    assert_eq!(member.client_urls(), [server.endpoint()]);
    assert_eq!(member.peer_urls(), ["http://127.0.0.1:2380"]);
    assert!(!member.is_learner());
    assert_eq!(list.header().map(|h| h.member_id()), Some(member.id()));
    server.stop().await
}

#[tokio::test]
async fn membership_changes_say_what_is_wrong() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let bad = grpc_error(c.member_add(["not-a-url"], None).await);
    assert_eq!(
        bad,
        (
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid".to_owned()
        )
    );
    let (code, message) = grpc_error(c.member_add(["http://127.0.0.1:2381"], None).await);
    assert_eq!(code, Code::Unimplemented);
    assert!(message.contains("single member"), "{message}");
    let missing = grpc_error(c.member_remove(12345).await);
    assert_eq!(
        missing,
        (Code::NotFound, "etcdserver: member not found".to_owned())
    );
    let (code, _) = grpc_error(
        c.member_update(1, vec!["http://127.0.0.1:2382".to_owned()])
            .await,
    );
    assert_eq!(code, Code::Unimplemented);
    server.stop().await
}
