//! The server's half of SPDY/3.1, as much as Kubernetes' streaming
//! protocols use (`portforward.k8s.io` runs on it, plain after an
//! `Upgrade: SPDY/3.1` or tunnelled in WebSocket messages): frames in and
//! out, and header blocks compressed as one zlib stream per direction with
//! SPDY/3's dictionary. No crate does this, so it is written out here; flow
//! control is not enforced (Go's spdystream, kubectl's side, does not
//! enforce it either).

use std::sync::OnceLock;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Control frame types (SPDY/3 section 2.6).
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
/// The last frame a sender puts on a stream.
const FLAG_FIN: u8 = 0x01;
/// The largest frame accepted: SPDY lengths are 24 bits.
const MAX_FRAME: usize = 1 << 24;
/// RST_STREAM status CANCEL.
const CANCEL: u32 = 5;

/// What went wrong on a SPDY connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the connection.
    #[error("spdy connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not SPDY/3.
    #[error("spdy protocol: {0}")]
    Protocol(String),
}

/// A frame the server acts on.
#[derive(Debug)]
pub enum Frame {
    /// The client opened a stream.
    SynStream {
        /// The stream.
        stream: u32,
        /// Its headers (names lowercase).
        headers: Vec<(String, String)>,
    },
    /// Bytes on a stream.
    Data {
        /// The stream.
        stream: u32,
        /// The bytes.
        data: Bytes,
        /// The client sends nothing more on it.
        fin: bool,
    },
    /// The client abandoned a stream.
    RstStream {
        /// The stream.
        stream: u32,
    },
    /// A liveness check to answer with the same id.
    Ping {
        /// Its id.
        id: u32,
    },
    /// The client is closing the connection.
    GoAway,
    /// A frame the server has no use for (SETTINGS, WINDOW_UPDATE...).
    Ignored,
}

/// Reads frames off a connection.
pub struct Reader<R> {
    io: R,
    inflate: Decompress,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// A reader of the client's half of a new connection.
    pub fn new(io: R) -> Self {
        Self {
            io,
            inflate: Decompress::new(true),
        }
    }

    /// The next frame; `None` at a clean end of the connection.
    pub async fn next(&mut self) -> Result<Option<Frame>, Error> {
        let mut head = [0u8; 8];
        match self.io.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let flags = head[4];
        let len = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
        if len >= MAX_FRAME {
            return Err(Error::Protocol(format!("frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).await?;
        let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if head[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                stream: word & 0x7fff_ffff,
                data: Bytes::from(body),
                fin: flags & FLAG_FIN != 0,
            }));
        }
        let version = (word >> 16) & 0x7fff;
        if version != 3 {
            return Err(Error::Protocol(format!(
                "SPDY version {version}; only 3 (SPDY/3.1) is served"
            )));
        }
        let stream_of = |b: &[u8]| -> Result<u32, Error> {
            b.get(..4)
                .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) & 0x7fff_ffff)
                .ok_or_else(|| Error::Protocol("control frame too short".into()))
        };
        Ok(Some(match (word & 0xffff) as u16 {
            SYN_STREAM => {
                let stream = stream_of(&body)?;
                let block = body
                    .get(10..)
                    .ok_or_else(|| Error::Protocol("SYN_STREAM too short".into()))?;
                let raw = self.inflate(block)?;
                Frame::SynStream {
                    stream,
                    headers: parse_headers(&raw)?,
                }
            }
            RST_STREAM => Frame::RstStream {
                stream: stream_of(&body)?,
            },
            PING => Frame::Ping {
                id: stream_of(&body)?,
            },
            GOAWAY => Frame::GoAway,
            _ => Frame::Ignored,
        }))
    }

    /// Inflates one header block: the next piece of the connection's zlib
    /// stream, which starts by asking for SPDY's dictionary.
    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(4096);
            }
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let result =
                self.inflate
                    .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            pos += usize::try_from(self.inflate.total_in() - in_before).unwrap_or(input.len());
            match result {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| Error::Protocol(format!("header dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(Error::Protocol(format!("header block: {e}"))),
            }
            let progressed = self.inflate.total_in() != in_before || out.len() != out_before;
            if pos >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if !progressed {
                return Err(Error::Protocol("header block does not inflate".into()));
            }
        }
    }
}

/// Splits an inflated header block into (name, value) pairs.
fn parse_headers(raw: &[u8]) -> Result<Vec<(String, String)>, Error> {
    let mut rest = raw;
    let take_u32 = |rest: &mut &[u8]| -> Result<usize, Error> {
        let (n, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| Error::Protocol("header block truncated".into()))?;
        *rest = tail;
        Ok(u32::from_be_bytes(*n) as usize)
    };
    let count = take_u32(&mut rest)?;
    let mut headers = Vec::new();
    for _ in 0..count {
        let field = |rest: &mut &[u8]| -> Result<String, Error> {
            let len = take_u32(rest)?;
            if len > rest.len() {
                return Err(Error::Protocol("header block truncated".into()));
            }
            let (s, tail) = rest.split_at(len);
            *rest = tail;
            Ok(String::from_utf8_lossy(s).into_owned())
        };
        let name = field(&mut rest)?;
        let value = field(&mut rest)?;
        headers.push((name.to_ascii_lowercase(), value));
    }
    Ok(headers)
}

/// Writes frames to a connection.
pub struct Writer<W> {
    io: W,
    deflate: Compress,
    primed: bool,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// A writer of the server's half of a new connection.
    pub fn new(io: W) -> Self {
        Self {
            io,
            deflate: Compress::new(Compression::default(), true),
            primed: false,
        }
    }

    /// Accepts stream `stream` (a SYN_REPLY with no headers).
    pub async fn syn_reply(&mut self, stream: u32) -> Result<(), Error> {
        let block = self.header_block(&[])?;
        let mut body = stream.to_be_bytes().to_vec();
        body.extend_from_slice(&block);
        self.control(SYN_REPLY, 0, &body).await
    }

    /// Bytes on `stream`; `fin` ends the server's side of it.
    pub async fn data(&mut self, stream: u32, data: &[u8], fin: bool) -> Result<(), Error> {
        // SPDY lengths are 24 bits; stay well under.
        let mut chunks = data.chunks(64 * 1024).peekable();
        if chunks.peek().is_none() {
            return self.data_frame(stream, &[], fin).await;
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.data_frame(stream, chunk, fin && last).await?;
        }
        Ok(())
    }

    async fn data_frame(&mut self, stream: u32, data: &[u8], fin: bool) -> Result<(), Error> {
        let mut f = Vec::with_capacity(data.len() + 8);
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.push(if fin { FLAG_FIN } else { 0 });
        f.extend_from_slice(&u24(data.len()));
        f.extend_from_slice(data);
        self.io.write_all(&f).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Abandons `stream` (status CANCEL).
    pub async fn rst_stream(&mut self, stream: u32) -> Result<(), Error> {
        let mut body = stream.to_be_bytes().to_vec();
        body.extend_from_slice(&CANCEL.to_be_bytes());
        self.control(RST_STREAM, 0, &body).await
    }

    /// Answers a PING.
    pub async fn ping(&mut self, id: u32) -> Result<(), Error> {
        self.control(PING, 0, &id.to_be_bytes()).await
    }

    async fn control(&mut self, kind: u16, flags: u8, body: &[u8]) -> Result<(), Error> {
        let mut f = Vec::with_capacity(body.len() + 8);
        f.extend_from_slice(&(0x8003u16).to_be_bytes());
        f.extend_from_slice(&kind.to_be_bytes());
        f.push(flags);
        f.extend_from_slice(&u24(body.len()));
        f.extend_from_slice(body);
        self.io.write_all(&f).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// The next piece of this direction's zlib stream, holding `headers`.
    fn header_block(&mut self, headers: &[(&str, &str)]) -> Result<Vec<u8>, Error> {
        if !self.primed {
            self.deflate
                .set_dictionary(dictionary())
                .map_err(|e| Error::Protocol(format!("header dictionary: {e}")))?;
            self.primed = true;
        }
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&raw[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| Error::Protocol(format!("compressing headers: {e}")))?;
            pos += usize::try_from(self.deflate.total_in() - before).unwrap_or(raw.len());
            if pos >= raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn u24(n: usize) -> [u8; 3] {
    [(n >> 16) as u8, (n >> 8) as u8, n as u8]
}

/// SPDY/3's header compression dictionary (draft-mbelshe-httpbis-spdy-00
/// section 2.6.10.1): length-prefixed words, then a run of text.
fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
            "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
            "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
            "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
            "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
            "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1424);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

#[cfg(test)]
mod tests;
