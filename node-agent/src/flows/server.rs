//! `shoal flows` over a unix socket (`/run/shoal/<node>/flows.sock`,
//! mode 0600): a unix socket rather than the health port because flow
//! records say who talks to whom, and the health port listens on every
//! address without authentication; the socket is reachable by root on the
//! node only.
//!
//! Protocol: the client writes one JSON [`Request`] line; the agent
//! answers with the recent records that match, one JSON [`FlowRecord`] per
//! line, and with `follow` keeps the connection open and writes each new
//! matching record as it comes.

use std::{path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast::error::RecvError,
};

use super::{Error, Filter, FlowRecord, Hub};

/// What `shoal flows` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Which records.
    pub filter: Filter,
    /// At most this many recent records (the newest); 0: all kept.
    pub last: usize,
    /// Keep streaming new records.
    pub follow: bool,
}

/// Serves `hub` on `path` until an accept fails for good.
pub(super) async fn serve(path: PathBuf, hub: Arc<Hub>) -> Result<(), Error> {
    let err = |source| Error::Socket {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    // A socket left by an earlier agent.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(err)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    tracing::info!(socket = %path.display(), "serving shoal flows");
    loop {
        let (stream, _) = listener.accept().await.map_err(err)?;
        let hub = hub.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &hub).await {
                tracing::debug!(error = %e, "shoal flows client went away");
            }
        });
    }
}

async fn answer(stream: UnixStream, hub: &Hub) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let request: Request = serde_json::from_str(line.trim()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a flows request: {e}"),
        )
    })?;
    // Subscribe first so nothing falls between the snapshot and the stream.
    let mut rx = hub.subscribe();
    let mut recent = hub.snapshot(&request.filter);
    if request.last > 0 && recent.len() > request.last {
        recent.drain(..recent.len() - request.last);
    }
    for r in &recent {
        write.write_all(&line_of(r)).await?;
    }
    write.flush().await?;
    if !request.follow {
        return Ok(());
    }
    loop {
        match rx.recv().await {
            Ok(r) if request.filter.matches(&r) => {
                write.write_all(&line_of(&r)).await?;
                write.flush().await?;
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(
                    skipped = n,
                    "shoal flows follower too slow; records skipped"
                );
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

fn line_of(r: &FlowRecord) -> Vec<u8> {
    let mut v = serde_json::to_vec(r).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Client side: sends `request` to the agent at `path` and calls `each`
/// with every record it answers (until it closes the stream, or forever
/// with `follow`).
pub async fn follow(
    path: &std::path::Path,
    request: &Request,
    mut each: impl FnMut(FlowRecord),
) -> std::io::Result<()> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "connecting to {}: {e} (is the agent running with its dataplane on this node? pass --node or --socket)",
                path.display()
            ),
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut body = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    body.push(b'\n');
    write.write_all(&body).await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<FlowRecord>(&line) {
            Ok(r) => each(r),
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the agent sent something that is not a flow record: {e}"),
                ));
            }
        }
    }
    Ok(())
}
