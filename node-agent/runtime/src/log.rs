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

/// Rotates the log at `path` when it holds more than `max_bytes`, as the
/// kubelet does with `containerLogMaxSize`/`containerLogMaxFiles`: the
/// content moves to `<path>.<YYYYmmdd-HHMMSS.micros>` and the live file starts
/// empty; of the rotated files the newest `max_files - 1` are kept. The
/// container keeps writing through its O_APPEND descriptor, which the
/// truncation rewinds, so nothing it writes later is lost; bytes written
/// between the copy and the truncation (microseconds) are. `kubectl logs`
/// reads the live file only, as with the kubelet. Returns whether it
/// rotated.
pub fn rotate(path: &Path, max_bytes: u64, max_files: usize) -> io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    // Fixed-width stamps sort by age.
    let mut rotated;
    loop {
        let stamp = jiff::Zoned::now().strftime("%Y%m%d-%H%M%S.%6f").to_string();
        rotated = dir.join(format!("{name}.{stamp}"));
        if !rotated.exists() {
            break;
        }
        std::thread::sleep(Duration::from_micros(1));
    }
    std::fs::copy(path, &rotated)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    // The oldest go.
    let prefix = format!("{name}.");
    let mut old: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|e| e.path())
        .collect();
    old.sort();
    let keep = max_files.saturating_sub(1);
    let excess = old.len().saturating_sub(keep);
    for p in old.into_iter().take(excess) {
        std::fs::remove_file(&p)?;
    }
    Ok(true)
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

    #[test]
    fn rotation_keeps_the_newest_files_and_appends_go_on() -> io::Result<()> {
        use std::io::Write;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("0.log");
        // The container's descriptor: O_APPEND, kept across rotations.
        let mut writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writer.write_all(b"small\n")?;
        assert!(!rotate(&path, 100, 3)?, "rotated below the limit");
        for round in 0..4 {
            writer.write_all(format!("round {round} {}\n", "x".repeat(120)).as_bytes())?;
            assert!(rotate(&path, 100, 3)?, "round {round} did not rotate");
            assert_eq!(
                std::fs::metadata(&path)?.len(),
                0,
                "the live log was not emptied"
            );
        }
        writer.write_all(b"after\n")?;
        // The live file holds only what came after the last rotation, from
        // its start (the append descriptor followed the truncation).
        assert_eq!(std::fs::read(&path)?, b"after\n");
        let mut rotated: Vec<String> = std::fs::read_dir(dir.path())?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != "0.log")
            .collect();
        rotated.sort();
        assert_eq!(rotated.len(), 2, "kept {rotated:?}, want max_files - 1 = 2");
        let newest = std::fs::read_to_string(dir.path().join(&rotated[1]))?;
        assert!(newest.starts_with("round 3 "), "newest rotated: {newest:?}");
        let older = std::fs::read_to_string(dir.path().join(&rotated[0]))?;
        assert!(older.starts_with("round 2 "), "older rotated: {older:?}");
        Ok(())
    }
}
