//! `kubectl logs` on the agent: the log file of a container's current (or
//! previous) attempt under `<data dir>/logs/<ns>_<pod>_<uid>/<container>/`,
//! read with tail and byte limits, or followed until the attempt ends, a
//! newer one starts or the client goes away.

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::StatusCode;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use shoal_runtime::{LogError, LogOptions};
use tokio::sync::mpsc;

use super::{Config, ResponseBody};

/// How often a followed log checks whether its attempt has ended.
const END_CHECK: Duration = Duration::from_millis(500);

/// What `GET /containerLogs/{ns}/{pod}/{container}` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogRequest {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The container.
    pub container: String,
    /// The pod's uid (`podUID`), when the caller knows which incarnation of
    /// the name it means; otherwise the newest.
    pub pod_uid: Option<String>,
    /// `follow`: keep streaming new bytes.
    pub follow: bool,
    /// `previous`: the attempt before the current one.
    pub previous: bool,
    /// `tailLines`.
    pub tail_lines: Option<usize>,
    /// `limitBytes`.
    pub limit_bytes: Option<u64>,
}

impl LogRequest {
    /// Reads the kubelet's query parameters; a malformed number is an error
    /// naming the parameter.
    pub fn parse(
        ns: &str,
        pod: &str,
        container: &str,
        query: Option<&str>,
    ) -> Result<Self, String> {
        let mut r = LogRequest {
            namespace: ns.to_owned(),
            pod: pod.to_owned(),
            container: container.to_owned(),
            ..Default::default()
        };
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let flag = v == "1" || v.eq_ignore_ascii_case("true");
            let number = |name: &str| {
                v.parse::<u64>().map_err(|_| {
                    format!("invalid value for {name}: {v:?} is not a non-negative integer")
                })
            };
            match k.as_ref() {
                "follow" => r.follow = flag,
                "previous" => r.previous = flag,
                "tailLines" => {
                    r.tail_lines = Some(usize::try_from(number("tailLines")?).unwrap_or(usize::MAX))
                }
                "limitBytes" => r.limit_bytes = Some(number("limitBytes")?).filter(|n| *n > 0),
                "podUID" => r.pod_uid = Some(v.into_owned()).filter(|s| !s.is_empty()),
                _ => {}
            }
        }
        for (what, value) in [("namespace", ns), ("pod", pod), ("container", container)] {
            if value.is_empty() || value.contains(['/', '_']) || value.starts_with('.') {
                return Err(format!("invalid {what} name {value:?}"));
            }
        }
        Ok(r)
    }
}

/// Why logs could not be served.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// No log directory for the pod on this node.
    #[error(
        "pod \"{pod}\" in namespace \"{namespace}\" has no logs on this node: it is not running here (yet)"
    )]
    NoPod {
        /// The namespace.
        namespace: String,
        /// The pod.
        pod: String,
    },
    /// The container never started.
    #[error("container \"{container}\" in pod \"{pod}\" is waiting to start: no log yet")]
    NotStarted {
        /// The container.
        container: String,
        /// The pod.
        pod: String,
    },
    /// `--previous` without an earlier attempt (the kubelet's words).
    #[error("previous terminated container \"{container}\" in pod \"{pod}\" not found")]
    NoPrevious {
        /// The container.
        container: String,
        /// The pod.
        pod: String,
    },
    /// The file could not be read.
    #[error("{0}")]
    Read(#[from] LogError),
}

impl LogsError {
    /// The HTTP status the kubelet answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            LogsError::NoPod { .. } => StatusCode::NOT_FOUND,
            LogsError::NotStarted { .. } | LogsError::NoPrevious { .. } => StatusCode::BAD_REQUEST,
            LogsError::Read(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The log file chosen for a request.
struct Located {
    /// `<pod dir>/<container>`.
    dir: PathBuf,
    /// The attempt read.
    attempt: u32,
    /// The runtime id of that attempt: `<uid>.<container>.<attempt>`.
    id: String,
}

impl Located {
    fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.attempt))
    }
}

/// Opens the log `request` names: the whole selection at once, or a body
/// that keeps streaming when it follows.
pub async fn open(config: &Config, request: LogRequest) -> Result<ResponseBody, LogsError> {
    let located = locate(&config.logs_dir(), &request)?;
    let options = LogOptions {
        tail_lines: request.tail_lines,
        since_offset: 0,
        limit_bytes: request.limit_bytes,
    };
    let first = shoal_runtime::read_log(&located.path(), &options).await?;
    if !request.follow || request.previous {
        return Ok(Full::new(Bytes::from(first.data)).boxed());
    }
    let remaining = request
        .limit_bytes
        .map(|l| l.saturating_sub(first.data.len() as u64));
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    if !first.data.is_empty() {
        let _ = tx.send(Bytes::from(first.data)).await;
    }
    let runtime_root = config.data_dir.join("runtime");
    tokio::spawn(follow(
        located,
        first.next_offset,
        remaining,
        config.poll,
        runtime_root,
        tx,
    ));
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Ok(http_body_util::BodyExt::boxed(StreamBody::new(frames)))
}

/// Sends what is appended to the log from `offset` on until the attempt
/// ends, `remaining` bytes are sent, or the receiver is dropped.
async fn follow(
    located: Located,
    mut offset: u64,
    mut remaining: Option<u64>,
    poll: Duration,
    runtime_root: PathBuf,
    tx: mpsc::Sender<Bytes>,
) {
    let path = located.path();
    let mut stream = std::pin::pin!(shoal_runtime::follow_log(&path, offset, poll));
    let mut check = tokio::time::interval(END_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if remaining == Some(0) {
            return;
        }
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(data)) => {
                    offset += data.len() as u64;
                    if !send(&tx, data, &mut remaining).await {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::info!(error = %e, "following a container log");
                    return;
                }
                None => return,
            },
            _ = check.tick() => {
                if tx.is_closed() {
                    return;
                }
                if attempt_over(&located, &runtime_root) {
                    // What the container wrote before it ended still goes out.
                    let options = LogOptions { since_offset: offset, ..Default::default() };
                    if let Ok(rest) = shoal_runtime::read_log(&path, &options).await {
                        send(&tx, rest.data, &mut remaining).await;
                    }
                    return;
                }
            }
        }
    }
}

/// Sends `data` cut to `remaining`; false when the client is gone.
async fn send(tx: &mpsc::Sender<Bytes>, mut data: Vec<u8>, remaining: &mut Option<u64>) -> bool {
    if let Some(r) = remaining.as_mut() {
        data.truncate(usize::try_from(*r).unwrap_or(usize::MAX));
        *r -= data.len() as u64;
    }
    data.is_empty() || tx.send(Bytes::from(data)).await.is_ok()
}

/// Whether the followed attempt is over: its directory is gone (pod
/// removed), a newer attempt has a log, or the runtime no longer holds the
/// container (the agent deletes a container once it has exited). A node
/// without a runtime directory has only files to go by.
fn attempt_over(located: &Located, runtime_root: &Path) -> bool {
    if !located.dir.is_dir() {
        return true;
    }
    if attempts(&located.dir)
        .last()
        .is_some_and(|n| *n > located.attempt)
    {
        return true;
    }
    let Ok(handlers) = std::fs::read_dir(runtime_root) else {
        return false;
    };
    !handlers
        .flatten()
        .any(|h| h.path().join(&located.id).exists())
}

/// The runtime id (`<uid>.<container>.<attempt>`) of the container's
/// current attempt.
pub fn current_id(logs_dir: &Path, request: &LogRequest) -> Result<String, LogsError> {
    let request = LogRequest {
        previous: false,
        ..request.clone()
    };
    Ok(locate(logs_dir, &request)?.id)
}

/// Finds the container directory and the attempt `request` asks for.
fn locate(logs_dir: &Path, request: &LogRequest) -> Result<Located, LogsError> {
    let no_pod = || LogsError::NoPod {
        namespace: request.namespace.clone(),
        pod: request.pod.clone(),
    };
    let prefix = format!("{}_{}_", request.namespace, request.pod);
    let pod_dir = std::fs::read_dir(logs_dir)
        .map_err(|_| no_pod())?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            match &request.pod_uid {
                Some(uid) => name.strip_prefix(&prefix) == Some(uid.as_str()),
                None => name
                    .strip_prefix(&prefix)
                    .is_some_and(|uid| !uid.contains('_')),
            }
        })
        // Several incarnations of one name: the newest is the pod now.
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .ok_or_else(no_pod)?;
    let uid = pod_dir
        .file_name()
        .map(|n| n.to_string_lossy().trim_start_matches(&prefix).to_owned())
        .unwrap_or_default();
    let dir = pod_dir.join(&request.container);
    let list = attempts(&dir);
    let attempt = if request.previous {
        list.iter()
            .rev()
            .nth(1)
            .copied()
            .ok_or(LogsError::NoPrevious {
                container: request.container.clone(),
                pod: request.pod.clone(),
            })?
    } else {
        list.last().copied().ok_or(LogsError::NotStarted {
            container: request.container.clone(),
            pod: request.pod.clone(),
        })?
    };
    Ok(Located {
        id: format!("{uid}.{}.{attempt}", request.container),
        dir,
        attempt,
    })
}

/// The attempts with a log file in `dir`, ascending.
fn attempts(dir: &Path) -> Vec<u32> {
    let mut list: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse::<u32>()
                .ok()
        })
        .collect();
    list.sort_unstable();
    list
}
