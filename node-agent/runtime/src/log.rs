//! Reading container logs: the raw stdout+stderr bytes the runtime appends
//! to each container's log file, for `kubectl logs` (tail, byte offset,
//! limit) and `kubectl logs -f` (a stream of new bytes as the file grows).

use std::{
    io::{self, SeekFrom},
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The most a single read or stream item returns.
const CHUNK: usize = 64 * 1024;

/// A log file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the container log {path}: {source}")]
pub struct LogError {
    /// The log file.
    pub path: PathBuf,
    /// The underlying error.
    pub source: io::Error,
}

/// What part of a log to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only the last N lines (`--tail`); a final line without a newline
    /// counts.
    pub tail_lines: Option<usize>,
    /// Start at this byte offset (e.g. where an earlier read ended).
    pub since_offset: u64,
    /// Return at most this many bytes from the start of the selection
    /// (`limitBytes`).
    pub limit_bytes: Option<u64>,
}

/// Bytes read from a log and where the selection ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogChunk {
    /// The log bytes.
    pub data: Vec<u8>,
    /// The offset after the last byte returned: pass it to [`follow_log`]
    /// to continue.
    pub next_offset: u64,
}

/// Reads the part of the log at `path` that `options` selects.
pub async fn read_log(path: &Path, options: &LogOptions) -> Result<LogChunk, LogError> {
    let err = |source| LogError {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(err)?;
    let len = file.metadata().await.map_err(err)?.len();
    let mut start = options.since_offset.min(len);
    if let Some(n) = options.tail_lines {
        start = start.max(tail_start(&mut file, len, n).await.map_err(err)?);
    }
    let mut end = len;
    if let Some(limit) = options.limit_bytes {
        end = end.min(start.saturating_add(limit));
    }
    file.seek(SeekFrom::Start(start)).await.map_err(err)?;
    let mut data = Vec::with_capacity(usize::try_from(end - start).unwrap_or(0));
    (&mut file)
        .take(end - start)
        .read_to_end(&mut data)
        .await
        .map_err(err)?;
    Ok(LogChunk {
        next_offset: start + data.len() as u64,
        data,
    })
}

/// The offset where the last `lines` lines of a `len`-byte file begin.
async fn tail_start(file: &mut tokio::fs::File, len: u64, lines: usize) -> io::Result<u64> {
    if lines == 0 {
        return Ok(len);
    }
    let mut pos = len;
    let mut buf = vec![0u8; CHUNK];
    // A final newline ends the last line rather than starting another.
    let mut newlines_needed = lines + 1;
    let mut first = true;
    while pos > 0 {
        let n = usize::try_from(pos.min(CHUNK as u64)).unwrap_or(CHUNK);
        pos -= n as u64;
        file.seek(SeekFrom::Start(pos)).await?;
        file.read_exact(&mut buf[..n]).await?;
        let mut slice = &buf[..n];
        if first {
            first = false;
            if slice.last() != Some(&b'\n') {
                newlines_needed -= 1;
            }
        }
        while let Some(i) = slice.iter().rposition(|b| *b == b'\n') {
            newlines_needed -= 1;
            if newlines_needed == 0 {
                return Ok(pos + i as u64 + 1);
            }
            slice = &slice[..i];
        }
    }
    Ok(0)
}

/// Follows the log at `path` from `offset`: yields new bytes as the file
/// grows, checking every `poll`; starts over at 0 if the file shrinks
/// (truncated). Endless: drop it when the client goes away or the
/// container has exited and the rest was read.
pub fn follow_log(
    path: &Path,
    offset: u64,
    poll: Duration,
) -> impl Stream<Item = Result<Vec<u8>, LogError>> + Send + 'static {
    struct State {
        path: PathBuf,
        offset: u64,
        file: Option<tokio::fs::File>,
        failed: bool,
    }
    let state = State {
        path: path.to_path_buf(),
        offset,
        file: None,
        failed: false,
    };
    futures_util::stream::unfold(state, move |mut s| async move {
        if s.failed {
            return None;
        }
        loop {
            let result: io::Result<Option<Vec<u8>>> = async {
                if s.file.is_none() {
                    s.file = Some(tokio::fs::File::open(&s.path).await?);
                }
                let Some(file) = s.file.as_mut() else {
                    return Ok(None);
                };
                let len = file.metadata().await?.len();
                if len < s.offset {
                    s.offset = 0;
                }
                if len == s.offset {
                    return Ok(None);
                }
                file.seek(SeekFrom::Start(s.offset)).await?;
                let want = usize::try_from(len - s.offset).unwrap_or(CHUNK).min(CHUNK);
                let mut buf = vec![0u8; want];
                let n = file.read(&mut buf).await?;
                buf.truncate(n);
                s.offset += n as u64;
                Ok(Some(buf))
            }
            .await;
            match result {
                Ok(Some(data)) if !data.is_empty() => return Some((Ok(data), s)),
                Ok(_) => tokio::time::sleep(poll).await,
                Err(source) => {
                    s.failed = true;
                    let path = s.path.clone();
                    return Some((Err(LogError { path, source }), s));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[tokio::test]
    async fn tail_offset_and_limit() -> Result<(), LogError> {
        let dir = tempfile::tempdir().map_err(|source| LogError {
            path: PathBuf::new(),
            source,
        })?;
        let path = dir.path().join("c.log");
        std::fs::write(&path, "one\ntwo\nthree\nfour").map_err(|source| LogError {
            path: path.clone(),
            source,
        })?;
        let read = |o: LogOptions| {
            let path = path.clone();
            async move { read_log(&path, &o).await }
        };
        let all = read(LogOptions::default()).await?;
        assert_eq!(all.data, b"one\ntwo\nthree\nfour");
        assert_eq!(all.next_offset, 18);
        let tail = |n| LogOptions {
            tail_lines: Some(n),
            ..LogOptions::default()
        };
        assert_eq!(read(tail(2)).await?.data, b"three\nfour");
        assert_eq!(read(tail(0)).await?.data, b"");
        assert_eq!(read(tail(9)).await?.data, b"one\ntwo\nthree\nfour");
        let since = LogOptions {
            since_offset: 4,
            limit_bytes: Some(5),
            ..LogOptions::default()
        };
        let part = read(since).await?;
        assert_eq!(
            (part.data.as_slice(), part.next_offset),
            (&b"two\nt"[..], 9)
        );

        std::fs::write(&path, "a\nb\n").map_err(|source| LogError {
            path: path.clone(),
            source,
        })?;
        assert_eq!(read(tail(1)).await?.data, b"b\n");
        Ok(())
    }

    #[tokio::test]
    async fn follow_yields_appended_bytes() -> Result<(), LogError> {
        use std::io::Write;
        let dir = tempfile::tempdir().map_err(|source| LogError {
            path: PathBuf::new(),
            source,
        })?;
        let path = dir.path().join("c.log");
        let mut f = std::fs::File::create(&path).map_err(|source| LogError {
            path: path.clone(),
            source,
        })?;
        let _ = f.write_all(b"old\n");
        let mut stream = Box::pin(follow_log(&path, 4, Duration::from_millis(10)));
        let _ = f.write_all(b"new\n");
        let got = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        assert!(
            matches!(got, Ok(Some(Ok(ref d))) if d == b"new\n"),
            "{got:?}"
        );
        Ok(())
    }
}
