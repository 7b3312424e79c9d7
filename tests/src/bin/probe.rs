//! `probe`: sends and answers real traffic inside lab hosts, reporting in
//! JSON lines.
//!
//! - `probe serve --name NAME [--tcp ADDR:PORT]... [--udp ADDR:PORT]...`
//!   prints `{"ready":true}` once every socket is bound, then answers each
//!   TCP connection and UDP datagram with `NAME local=<local> peer=<peer>\n`.
//!   IPv6 sockets are v6-only, so `0.0.0.0:80` and `[::]:80` can both be
//!   served.
//! - `probe tcp ADDR:PORT` / `probe udp ADDR:PORT [--connected]`: one
//!   request, `{"ok":true,...}` or `{"ok":false,"error":...}` with exit 1.
//! - `probe tcp-loop|udp-loop ADDR:PORT --duration-ms N`: requests one after
//!   another for N ms (a new socket, so a new flow, each time), then
//!   `{"attempts":N,"failures":M,"errors":[up to 5 distinct texts],
//!   "bodies":{"<first word of reply>":count}}`; exits 0 even if some failed.
//!
//! A read that times out is reported as `"kind":"TimedOut"`.

use std::collections::BTreeMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
    UdpSocket,
};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    SockaddrStorage, bind, listen, recvmsg, sendmsg, setsockopt, socket, sockopt,
};
use serde_json::{Value, json};

/// What one request may take in the loops.
const ATTEMPT_TIMEOUT_MS: u64 = 2000;
/// How many distinct error texts a loop summary keeps.
const MAX_ERRORS: usize = 5;
/// Pause after a failed attempt in a loop, so an instant error does not spin.
const FAILURE_PAUSE: Duration = Duration::from_millis(10);

#[derive(Parser)]
#[command(
    name = "probe",
    about = "Send and answer TCP/UDP traffic in lab hosts; JSON output"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer every connection and datagram with `NAME local=... peer=...`.
    Serve {
        /// First word of every reply.
        #[arg(long)]
        name: String,
        /// A TCP address to listen on (repeatable).
        #[arg(long)]
        tcp: Vec<SocketAddr>,
        /// A UDP address to answer on (repeatable).
        #[arg(long)]
        udp: Vec<SocketAddr>,
    },
    /// Connect, read the reply to EOF.
    Tcp {
        /// Where to connect.
        addr: SocketAddr,
        /// Connect and read timeout.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Send "ping", wait for the reply.
    Udp {
        /// Where to send.
        addr: SocketAddr,
        /// Use connect + send + recv instead of send_to + recv_from.
        #[arg(long)]
        connected: bool,
        /// How long to wait for the reply.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// `tcp` repeatedly for a while, then a summary.
    TcpLoop {
        /// Where to connect.
        addr: SocketAddr,
        /// How long to keep going.
        #[arg(long)]
        duration_ms: u64,
        /// Timeout of each attempt.
        #[arg(long, default_value_t = ATTEMPT_TIMEOUT_MS)]
        attempt_timeout_ms: u64,
    },
    /// `udp` (unconnected, a new socket each time) repeatedly, then a summary.
    UdpLoop {
        /// Where to send.
        addr: SocketAddr,
        /// How long to keep going.
        #[arg(long)]
        duration_ms: u64,
        /// Timeout of each attempt.
        #[arg(long, default_value_t = ATTEMPT_TIMEOUT_MS)]
        attempt_timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ms = Duration::from_millis;
    let result = match cli.command {
        Cmd::Serve { name, tcp, udp } => match serve(&name, &tcp, &udp) {
            Ok(never) => match never {},
            Err(e) => {
                eprintln!("probe serve: {e}");
                return ExitCode::FAILURE;
            }
        },
        Cmd::Tcp { addr, timeout_ms } => tcp_once(addr, ms(timeout_ms)),
        Cmd::Udp {
            addr,
            connected,
            timeout_ms,
        } => udp_once(addr, connected, ms(timeout_ms)),
        Cmd::TcpLoop {
            addr,
            duration_ms,
            attempt_timeout_ms,
        } => {
            print(&repeat(ms(duration_ms), || {
                tcp_once(addr, ms(attempt_timeout_ms))
            }));
            return ExitCode::SUCCESS;
        }
        Cmd::UdpLoop {
            addr,
            duration_ms,
            attempt_timeout_ms,
        } => {
            print(&repeat(ms(duration_ms), || {
                udp_once(addr, false, ms(attempt_timeout_ms))
            }));
            return ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(report) => {
            print(&report);
            ExitCode::SUCCESS
        }
        Err(e) => {
            print(&error_json(&e));
            ExitCode::FAILURE
        }
    }
}

fn print(value: &Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn error_json(e: &io::Error) -> Value {
    json!({
        "ok": false,
        "error": e.to_string(),
        "kind": format!("{:?}", e.kind()),
        "raw_os_error": e.raw_os_error(),
        "errno": e.raw_os_error().map(|n| format!("{:?}", nix::errno::Errno::from_raw(n))),
    })
}

fn reply(name: &str, local: SocketAddr, peer: SocketAddr) -> String {
    format!("{name} local={local} peer={peer}\n")
}

// ---- serve ----

enum Never {}

fn serve(name: &str, tcp: &[SocketAddr], udp: &[SocketAddr]) -> io::Result<Never> {
    if tcp.is_empty() && udp.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "give at least one --tcp or --udp address",
        ));
    }
    let listeners = tcp
        .iter()
        .map(|a| tcp_listener(*a))
        .collect::<io::Result<Vec<_>>>()?;
    let sockets = udp
        .iter()
        .map(|a| udp_socket(*a))
        .collect::<io::Result<Vec<_>>>()?;
    print(&json!({"ready": true}));

    let mut threads = Vec::new();
    for listener in listeners {
        let name = name.to_owned();
        threads.push(std::thread::spawn(move || serve_tcp(&name, &listener)));
    }
    for socket in sockets {
        let name = name.to_owned();
        threads.push(std::thread::spawn(move || serve_udp(&name, &socket)));
    }
    for thread in threads {
        if let Ok(Err(e)) = thread.join() {
            return Err(e);
        }
    }
    Err(io::Error::other("every listener stopped"))
}

fn family(addr: SocketAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A bound socket; IPv6 ones are v6-only so a v4 socket can share the port.
fn bound(addr: SocketAddr, kind: SockType) -> io::Result<OwnedFd> {
    let fd = socket(family(addr), kind, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(|e| with_addr(e.into(), "bind", addr))?;
    Ok(fd)
}

fn with_addr(e: io::Error, what: &str, addr: SocketAddr) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {addr}: {e}"))
}

fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let fd = bound(addr, SockType::Stream)?;
    listen(&fd, Backlog::MAXCONN)?;
    Ok(TcpListener::from(fd))
}

fn serve_tcp(name: &str, listener: &TcpListener) -> io::Result<()> {
    loop {
        let (mut stream, peer) = match listener.accept() {
            Ok(conn) => conn,
            // The peer gave up before accept: not the server's problem.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        };
        let name = name.to_owned();
        // A thread per connection: a slow client holds up nobody else.
        std::thread::spawn(move || {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            let Ok(local) = stream.local_addr() else {
                return;
            };
            if stream
                .write_all(reply(&name, local, peer).as_bytes())
                .is_err()
            {
                return;
            }
            // Half-close, then drain whatever the client sent, so closing
            // with unread data does not turn into a reset that eats the reply.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = io::copy(&mut stream, &mut io::sink());
        });
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let fd = bound(addr, SockType::Datagram)?;
    // Learn each datagram's destination, to report it and to answer from it
    // even on a wildcard socket.
    if addr.is_ipv4() {
        setsockopt(&fd, sockopt::Ipv4PacketInfo, &true)?;
    } else {
        setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)?;
    }
    Ok(UdpSocket::from(fd))
}

fn serve_udp(name: &str, socket: &UdpSocket) -> io::Result<()> {
    let bound = socket.local_addr()?;
    let mut buf = [0u8; 2048];
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
    loop {
        let (peer, dst) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )?;
            let Some(peer) = msg.address.as_ref().and_then(to_std) else {
                continue;
            };
            let mut dst = None;
            for c in msg.cmsgs()? {
                match c {
                    ControlMessageOwned::Ipv4PacketInfo(info) => dst = Some(Pktinfo::V4(info)),
                    ControlMessageOwned::Ipv6PacketInfo(info) => dst = Some(Pktinfo::V6(info)),
                    _ => {}
                }
            }
            (peer, dst)
        };
        let local = match &dst {
            Some(d) => SocketAddr::new(d.addr(), bound.port()),
            None => bound,
        };
        let text = reply(name, local, peer);
        let iov = [IoSlice::new(text.as_bytes())];
        let to = SockaddrStorage::from(peer);
        // Answer from the address the datagram was sent to.
        let sent = match &dst {
            Some(Pktinfo::V4(info)) => {
                let src = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: info.ipi_addr,
                    ipi_addr: info.ipi_addr,
                };
                sendmsg(
                    socket.as_raw_fd(),
                    &iov,
                    &[ControlMessage::Ipv4PacketInfo(&src)],
                    MsgFlags::empty(),
                    Some(&to),
                )
            }
            Some(Pktinfo::V6(info)) => {
                let src = libc::in6_pktinfo {
                    ipi6_addr: info.ipi6_addr,
                    ipi6_ifindex: 0,
                };
                sendmsg(
                    socket.as_raw_fd(),
                    &iov,
                    &[ControlMessage::Ipv6PacketInfo(&src)],
                    MsgFlags::empty(),
                    Some(&to),
                )
            }
            None => sendmsg(socket.as_raw_fd(), &iov, &[], MsgFlags::empty(), Some(&to)),
        };
        if let Err(e) = sent {
            eprintln!("probe serve: udp reply to {peer}: {e}");
        }
    }
}

enum Pktinfo {
    V4(libc::in_pktinfo),
    V6(libc::in6_pktinfo),
}

impl Pktinfo {
    fn addr(&self) -> IpAddr {
        match self {
            Pktinfo::V4(i) => IpAddr::V4(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr))),
            Pktinfo::V6(i) => IpAddr::V6(Ipv6Addr::from(i.ipi6_addr.s6_addr)),
        }
    }
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

// ---- clients ----

fn tcp_once(addr: SocketAddr, timeout: Duration) -> io::Result<Value> {
    let start = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    let local = stream.local_addr()?;
    let peer = stream.peer_addr()?;
    stream.set_read_timeout(Some(
        timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1)),
    ))?;
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .map_err(|e| timed_out(e, timeout))?;
    Ok(json!({
        "ok": true,
        "peer": peer.to_string(),
        "local": local.to_string(),
        "body": body,
        "elapsed_ms": start.elapsed().as_millis() as u64,
    }))
}

fn udp_once(addr: SocketAddr, connected: bool, timeout: Duration) -> io::Result<Value> {
    let start = Instant::now();
    let any = if addr.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let socket = UdpSocket::bind(any)?;
    socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let mut buf = [0u8; 2048];
    let mut report = json!({"ok": true});
    let n = if connected {
        socket.connect(addr)?;
        socket.send(b"ping")?;
        let n = socket.recv(&mut buf).map_err(|e| timed_out(e, timeout))?;
        report["peer"] = json!(socket.peer_addr()?.to_string());
        n
    } else {
        socket.send_to(b"ping", addr)?;
        let (n, from) = socket
            .recv_from(&mut buf)
            .map_err(|e| timed_out(e, timeout))?;
        report["from"] = json!(from.to_string());
        n
    };
    report["local"] = json!(socket.local_addr()?.to_string());
    report["body"] = json!(String::from_utf8_lossy(&buf[..n]));
    report["elapsed_ms"] = json!(start.elapsed().as_millis() as u64);
    Ok(report)
}

/// A read timeout (EAGAIN from SO_RCVTIMEO) reported as what it is.
fn timed_out(e: io::Error, timeout: Duration) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no reply within {} ms", timeout.as_millis()),
        )
    } else {
        e
    }
}

/// Runs `attempt` back to back for `duration` and summarises.
fn repeat(duration: Duration, mut attempt: impl FnMut() -> io::Result<Value>) -> Value {
    let start = Instant::now();
    let (mut attempts, mut failures) = (0u64, 0u64);
    let mut errors: Vec<String> = Vec::new();
    let mut bodies: BTreeMap<String, u64> = BTreeMap::new();
    while start.elapsed() < duration {
        attempts += 1;
        match attempt() {
            Ok(report) => {
                let body = report["body"].as_str().unwrap_or_default();
                let word = body
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                *bodies.entry(word).or_default() += 1;
            }
            Err(e) => {
                failures += 1;
                let text = e.to_string();
                if errors.len() < MAX_ERRORS && !errors.contains(&text) {
                    errors.push(text);
                }
                std::thread::sleep(FAILURE_PAUSE);
            }
        }
    }
    json!({
        "attempts": attempts,
        "failures": failures,
        "errors": errors,
        "bodies": bodies,
        "elapsed_ms": start.elapsed().as_millis() as u64,
    })
}
