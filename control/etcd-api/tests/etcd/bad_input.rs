//! Garbage and unsupported calls end only themselves: the server keeps
//! serving.

use anyhow::Result;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::Code;

use crate::common::{Server, grpc_error, within};

/// Writes `bytes` on a fresh connection and reads until the server closes it.
async fn send_raw(server: &Server, bytes: &[u8]) -> Result<()> {
    let mut conn = within(TcpStream::connect(server.addr)).await??;
    // The server may close before reading everything; that is fine.
    let _ = within(conn.write_all(bytes)).await?;
    let mut sink = Vec::new();
    let _ = within(conn.read_to_end(&mut sink)).await?;
    Ok(())
}

#[tokio::test]
async fn garbage_on_the_port_does_not_stop_the_server() -> Result<()> {
    let server = Server::start().await?;
    // Deterministic noise (xorshift), a plain HTTP/1 request, and an HTTP/2
    // preface followed by nonsense frames.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    send_raw(&server, &noise).await?;
    send_raw(&server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend_from_slice(&noise[..4096]);
    send_raw(&server, &h2).await?;

    let mut c = server.client().await?;
    within(c.put("still", "serving", None)).await??;
    let r = within(c.get("still", None)).await??;
    assert_eq!(r.kvs()[0].value(), b"serving");
    server.stop().await
}

#[tokio::test]
async fn calls_shoal_does_not_serve_are_unimplemented_and_harmless() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let (code, _) = grpc_error(c.user_add("alice", "secret", None).await);
    assert_eq!(code, Code::Unimplemented);
    let (code, message) = grpc_error(c.hash_kv(0).await);
    assert_eq!(code, Code::Unimplemented);
    assert!(message.contains("endpoint status"), "{message}");
    let auth = grpc_error(
        c.auth_client()
            .authenticate("root".to_owned(), "pw".to_owned())
            .await,
    );
    assert_eq!(
        auth,
        (
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled".to_owned()
        )
    );
    within(c.put("k", "v", None)).await??;
    server.stop().await
}
