use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    os::fd::AsFd,
};

use rustix::fs::OFlags;

use super::{AttachError, Consoles, hold_writer, prepare_fifo};

/// Reads what is there without waiting: `Ok(0)` is end of input,
/// `WouldBlock` means the stdin is open with nothing in it.
fn read_now(f: &mut File) -> std::io::Result<Vec<u8>> {
    let flags = rustix::fs::fcntl_getfl(f.as_fd())?;
    rustix::fs::fcntl_setfl(f.as_fd(), flags | OFlags::NONBLOCK)?;
    let mut buf = [0u8; 64];
    let n = f.read(&mut buf)?;
    Ok(buf[..n].to_vec())
}

#[test]
fn stdin_once_closes_when_the_first_session_ends() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let prepared = prepare_fifo(dir.path(), true)?;
    let mut container = prepared.stdin;
    let consoles = Consoles::new();
    hold_writer(
        &consoles,
        "c1",
        prepared.writer.expect("stdinOnce keeps a writer"),
    );
    // Before any session the container waits for input.
    assert_eq!(
        read_now(&mut container).map_err(|e| e.kind()),
        Err(ErrorKind::WouldBlock)
    );
    let mut first = consoles.attach("c1", dir.path(), true)?;
    first
        .stdin
        .as_mut()
        .expect("the first session gets stdin")
        .write_all(b"hello\n")?;
    assert_eq!(read_now(&mut container)?, b"hello\n");
    drop(first);
    // The first session ended: the container reads end of input, and a
    // second session gets no stdin.
    assert_eq!(read_now(&mut container)?, b"");
    let second = consoles.attach("c1", dir.path(), true)?;
    assert!(
        second.stdin.is_none(),
        "stdin was closed by the first session"
    );
    Ok(())
}

#[test]
fn stdin_without_once_stays_open_across_sessions() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let prepared = prepare_fifo(dir.path(), false)?;
    assert!(prepared.writer.is_none());
    let mut container = prepared.stdin;
    // No entry: sessions open the FIFO in the bundle, as a restarted agent
    // would.
    let consoles = Consoles::new();
    for word in [&b"one\n"[..], b"two\n"] {
        let mut session = consoles.attach("c2", dir.path(), true)?;
        session.stdin.as_mut().expect("stdin").write_all(word)?;
        drop(session);
        assert_eq!(read_now(&mut container)?, word);
        // The session ended; the container's stdin did not.
        assert_eq!(
            read_now(&mut container).map_err(|e| e.kind()),
            Err(ErrorKind::WouldBlock)
        );
    }
    Ok(())
}

#[test]
fn a_container_without_stdin_refuses_it_and_allows_output_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let consoles = Consoles::new();
    assert!(matches!(
        consoles.attach("c3", dir.path(), true),
        Err(AttachError::NoStdin)
    ));
    let output_only = consoles.attach("c3", dir.path(), false)?;
    assert!(output_only.stdin.is_none() && !output_only.is_terminal());
    Ok(())
}
