//! Loopback ports for servers a test starts and may restart on the same
//! address.
//!
//! Binding `127.0.0.1:0`, reading the port and dropping the listener races
//! with every outgoing connection on the machine: the kernel hands the same
//! ephemeral port to a client socket before the server binds it again
//! (`Address already in use`). Ports here come from below the kernel's
//! ephemeral range, so only another explicit pick can take them, and picks
//! within one process never repeat.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// The lowest port handed out: above the ports shoal and its references
/// listen on by default (2379, 2380, 6443, 10250, 10256).
const LOWEST: u16 = 11000;

/// Picks made by this process so far.
static PICKS: AtomicU32 = AtomicU32::new(0);

/// This process's offset into the window, drawn once.
static SEED: OnceLock<u32> = OnceLock::new();

/// A loopback address whose port was free a moment ago and lies outside
/// the kernel's ephemeral range.
pub fn free_loopback_addr() -> std::io::Result<SocketAddr> {
    let (start, end) = range();
    let span = u32::from(end - start);
    // Processes start at different offsets, so test binaries running side
    // by side rarely try the same ports; within a process the offset is
    // fixed and the pick counter walks the window, so picks never repeat.
    let seed = *SEED.get_or_init(|| {
        std::process::id().wrapping_mul(2_654_435_761)
            ^ SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
    });
    for _ in 0..span {
        let n = PICKS.fetch_add(1, Ordering::Relaxed);
        let port = start + ((seed.wrapping_add(n.wrapping_mul(7919))) % span) as u16;
        if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return l.local_addr();
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port in {start}..{end}"),
    ))
}

/// `[LOWEST, first ephemeral port)`, or a fixed window when the kernel's
/// range cannot be read or leaves no room below it.
fn range() -> (u16, u16) {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok());
    match low {
        Some(low) if low > LOWEST + 1000 => (LOWEST, low),
        _ => (LOWEST, LOWEST + 8000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_bindable_distinct_and_below_the_ephemeral_range() {
        let (_, end) = range();
        let picks: Vec<SocketAddr> = (0..50)
            .map(|_| free_loopback_addr().expect("a free port"))
            .collect();
        let mut ports: Vec<u16> = picks.iter().map(|a| a.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 50, "a port was handed out twice");
        for a in &picks {
            assert!(
                a.port() >= LOWEST && a.port() < end,
                "{a} outside the range"
            );
            TcpListener::bind(a).expect("the picked port binds");
        }
    }
}
