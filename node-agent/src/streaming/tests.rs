use super::logs::LogRequest;

#[test]
fn log_request_reads_the_kubelet_parameters() {
    let r = LogRequest::parse(
        "default",
        "web",
        "app",
        Some("follow=true&previous=false&tailLines=3&limitBytes=100&podUID=u-1"),
    )
    .expect("should succeed");
    assert!(r.follow && !r.previous);
    assert_eq!(r.tail_lines, Some(3));
    assert_eq!(r.limit_bytes, Some(100));
    assert_eq!(r.pod_uid.as_deref(), Some("u-1"));
    let e = LogRequest::parse("default", "web", "app", Some("tailLines=many"))
        .expect_err("should be refused");
    assert!(e.contains("tailLines"), "{e}");
    // Names come from a URL path: nothing that walks out of the log tree.
    assert!(LogRequest::parse("default", "..", "app", None).is_err());
    assert!(LogRequest::parse("default", "a_b", "app", None).is_err());
}

#[tokio::test]
async fn logs_serve_the_current_attempt_tail_and_previous() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let dir = scratch.path().join("logs/default_web_u-1/app");
    std::fs::create_dir_all(&dir).expect("should succeed");
    std::fs::write(dir.join("0.log"), "old 1\nold 2\n").expect("should succeed");
    std::fs::write(dir.join("1.log"), "new 1\nnew 2\nnew 3\n").expect("should succeed");
    let config = super::Config::new("n", scratch.path(), "");
    let read = |query: &'static str| {
        let config = config.clone();
        async move {
            let r =
                LogRequest::parse("default", "web", "app", Some(query)).expect("should succeed");
            let body = super::logs::open(&config, r)
                .await
                .map_err(|e| e.to_string())?;
            let bytes = http_body_util::BodyExt::collect(body)
                .await
                .unwrap_or_else(|e| match e {})
                .to_bytes();
            Ok::<_, String>(String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    assert_eq!(
        read("").await.expect("should succeed"),
        "new 1\nnew 2\nnew 3\n"
    );
    assert_eq!(
        read("tailLines=1").await.expect("should succeed"),
        "new 3\n"
    );
    assert_eq!(
        read("previous=true").await.expect("should succeed"),
        "old 1\nold 2\n"
    );
    assert_eq!(read("limitBytes=3").await.expect("should succeed"), "new");
    std::fs::remove_file(dir.join("0.log")).expect("should succeed");
    assert_eq!(
        read("previous=true").await.expect_err("should be refused"),
        "previous terminated container \"app\" in pod \"web\" not found"
    );
}
