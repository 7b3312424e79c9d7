//! Where an outbound connection was going before it reached the sidecar.
//! The eBPF capture will keep it in a map keyed by the socket, read by an
//! implementation of [`OriginalDst`]; until then it comes from the
//! configuration or from a PROXY protocol v1 line the client sends first.

use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest PROXY v1 line, CRLF included (the spec's limit).
const PROXY_V1_MAX: usize = 107;

/// Why a connection's original destination is unknown.
#[derive(Debug, thiserror::Error)]
pub enum DstError {
    /// Reading the connection failed.
    #[error("reading the original destination from {peer}: {source}")]
    Io {
        /// The client.
        peer: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The client sent something else than the expected header.
    #[error(
        "client {peer} sent no PROXY v1 line (\"PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n\"): {reason}"
    )]
    Header {
        /// The client.
        peer: SocketAddr,
        /// What was wrong.
        reason: String,
    },
}

/// Finds the original destination of an accepted outbound connection.
#[async_trait::async_trait]
pub trait OriginalDst: Send + Sync + 'static {
    /// The destination `conn` (from `peer`) was meant for; may consume a
    /// header from the stream.
    async fn original_dst(
        &self,
        conn: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<SocketAddr, DstError>;
}

/// Every connection goes to one configured destination.
#[derive(Debug, Clone, Copy)]
pub struct FixedDst(pub SocketAddr);

#[async_trait::async_trait]
impl OriginalDst for FixedDst {
    async fn original_dst(
        &self,
        _conn: &mut TcpStream,
        _peer: SocketAddr,
    ) -> Result<SocketAddr, DstError> {
        Ok(self.0)
    }
}

/// The client names the destination in a PROXY protocol v1 line
/// (`PROXY TCP4 <src> <dst> <sport> <dport>\r\n`) before its data.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyProtocolDst;

#[async_trait::async_trait]
impl OriginalDst for ProxyProtocolDst {
    async fn original_dst(
        &self,
        conn: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<SocketAddr, DstError> {
        // Byte by byte, so nothing after the line is consumed.
        let mut line = Vec::with_capacity(PROXY_V1_MAX);
        loop {
            let byte = conn
                .read_u8()
                .await
                .map_err(|source| DstError::Io { peer, source })?;
            line.push(byte);
            if line.ends_with(b"\r\n") {
                break;
            }
            if line.len() >= PROXY_V1_MAX {
                return Err(DstError::Header {
                    peer,
                    reason: format!("no CRLF in the first {PROXY_V1_MAX} bytes"),
                });
            }
        }
        parse_proxy_v1(&line).map_err(|reason| DstError::Header { peer, reason })
    }
}

/// The destination of a PROXY v1 line.
pub(crate) fn parse_proxy_v1(line: &[u8]) -> Result<SocketAddr, String> {
    let text = std::str::from_utf8(line).map_err(|_| "the line is not ASCII".to_owned())?;
    let fields: Vec<&str> = text.trim_end().split(' ').collect();
    let ["PROXY", family, _src, dst, _sport, dport] = fields.as_slice() else {
        return Err(format!(
            "{:?} has not six fields starting with PROXY",
            text.trim_end()
        ));
    };
    if !matches!(*family, "TCP4" | "TCP6") {
        return Err(format!("family {family:?} is neither TCP4 nor TCP6"));
    }
    let ip: std::net::IpAddr = dst
        .parse()
        .map_err(|e| format!("destination address {dst:?}: {e}"))?;
    let port: u16 = dport
        .parse()
        .map_err(|e| format!("destination port {dport:?}: {e}"))?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::parse_proxy_v1;

    #[test]
    fn proxy_v1_lines_name_the_destination() {
        assert_eq!(
            parse_proxy_v1(b"PROXY TCP4 10.0.0.1 10.96.0.7 40000 8080\r\n"),
            Ok("10.96.0.7:8080".parse().unwrap_or_else(|_| unreachable!()))
        );
        assert_eq!(
            parse_proxy_v1(b"PROXY TCP6 fd00::1 fd00:10:96::7 40000 443\r\n"),
            Ok("[fd00:10:96::7]:443"
                .parse()
                .unwrap_or_else(|_| unreachable!()))
        );
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY UNKNOWN\r\n",
            b"PROXY UDP4 10.0.0.1 10.0.0.2 1 2\r\n",
            b"PROXY TCP4 10.0.0.1 nowhere 1 2\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1 99999\r\n",
        ] {
            assert!(parse_proxy_v1(bad).is_err(), "{bad:?} parsed");
        }
    }
}
