use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::*;

/// A server that answers every connection with its name, then echoes.
async fn named_server(name: &'static str) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            conns.push(tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }));
        }
    });
    (url, task)
}

async fn greeting(s: &mut TcpStream) -> String {
    let mut buf = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("greeting in time")
        .expect("greeting");
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn server_urls_become_host_and_port() {
    assert_eq!(
        authority_of("https://10.0.0.1:6443").expect("ok"),
        "10.0.0.1:6443"
    );
    assert_eq!(
        authority_of("https://[fd00::1]").expect("ok"),
        "[fd00::1]:443"
    );
    let err = authority_of("http://10.0.0.1:6443").expect_err("http");
    assert!(err.to_string().contains("https://"), "{err}");
}

#[tokio::test]
async fn connections_fail_over_when_the_server_in_use_dies() {
    let (a, a_task) = named_server("s1").await;
    let (b, b_task) = named_server("s2").await;
    let lb = ApiBalancer::start(&[a, b]).await.expect("start");
    let mut first = TcpStream::connect(lb.addr()).await.expect("connect");
    assert_eq!(
        greeting(&mut first).await,
        "s1",
        "the first server is preferred"
    );

    // s1 dies while a connection through it is open: the check closes it
    // and new connections reach s2.
    a_task.abort();
    let _ = a_task.await;
    let mut buf = [0u8; 8];
    let closed = tokio::time::timeout(
        HEALTH_INTERVAL + CONNECT_TIMEOUT + Duration::from_secs(3),
        first.read(&mut buf),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the connection to the dead server stays open: {closed:?}"
    );
    let mut second = TcpStream::connect(lb.addr()).await.expect("connect");
    assert_eq!(greeting(&mut second).await, "s2");
    second.write_all(b"hi").await.expect("write");
    assert_eq!(greeting(&mut second).await, "hi", "bytes pass through");
    b_task.abort();
}
