use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

use super::{Frame, Reader, Writer, dictionary};

/// A header block as a SPDY/3 client sends it: the count, then
/// length-prefixed names and values, on the client's zlib stream.
fn client_block(deflate: &mut Compress, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
    for (k, v) in headers {
        raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
        raw.extend_from_slice(k.as_bytes());
        raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
        raw.extend_from_slice(v.as_bytes());
    }
    let mut out = Vec::with_capacity(raw.len() + 1024);
    deflate
        .compress_vec(&raw, &mut out, FlushCompress::Sync)
        .expect("compressing");
    out
}

fn syn_stream(deflate: &mut Compress, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
    let block = client_block(deflate, headers);
    let mut body = stream.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    body.extend_from_slice(&block);
    let mut f = vec![0x80, 0x03, 0x00, 0x01, 0x00];
    f.extend_from_slice(&super::u24(body.len()));
    f.extend_from_slice(&body);
    f
}

#[test]
fn the_dictionary_is_spdy3s() {
    // draft-mbelshe-httpbis-spdy-00: 1423 bytes, from "\0\0\0\x07options"
    // to "enq=0.".
    let d = dictionary();
    assert_eq!(d.len(), 1423);
    assert!(d.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
    assert!(d.ends_with(b"utf-,*,enq=0."));
}

#[tokio::test]
async fn reader_inflates_stream_headers_across_frames_and_reads_data() {
    let mut deflate = Compress::new(Compression::default(), true);
    deflate.set_dictionary(dictionary()).expect("dictionary");
    let mut wire = syn_stream(
        &mut deflate,
        1,
        &[
            ("streamType", "error"),
            ("port", "8080"),
            ("requestID", "0"),
        ],
    );
    // The second block continues the same zlib stream.
    wire.extend(syn_stream(
        &mut deflate,
        3,
        &[("streamtype", "data"), ("port", "8080"), ("requestid", "0")],
    ));
    // DATA on stream 3 with FIN, then a PING.
    wire.extend_from_slice(&[0, 0, 0, 3, 0x01, 0, 0, 2, b'h', b'i']);
    wire.extend_from_slice(&[0x80, 0x03, 0x00, 0x06, 0x00, 0, 0, 4, 0, 0, 0, 7]);

    let mut reader = Reader::new(&wire[..]);
    let Some(Frame::SynStream { stream, headers }) = reader.next().await.expect("frame") else {
        panic!("not a SYN_STREAM");
    };
    assert_eq!(stream, 1);
    assert!(headers.contains(&("streamtype".into(), "error".into())));
    let Some(Frame::SynStream { stream, headers }) = reader.next().await.expect("frame") else {
        panic!("not a SYN_STREAM");
    };
    assert_eq!(stream, 3);
    assert!(headers.contains(&("port".into(), "8080".into())));
    let Some(Frame::Data { stream, data, fin }) = reader.next().await.expect("frame") else {
        panic!("not DATA");
    };
    assert_eq!((stream, &data[..], fin), (3, &b"hi"[..], true));
    assert!(matches!(
        reader.next().await.expect("frame"),
        Some(Frame::Ping { id: 7 })
    ));
    assert!(reader.next().await.expect("end").is_none());
}

#[tokio::test]
async fn writer_replies_with_blocks_a_client_inflates_with_the_dictionary() {
    let mut wire = Vec::new();
    {
        let mut w = Writer::new(&mut wire);
        w.syn_reply(1).await.expect("reply");
        w.syn_reply(3).await.expect("reply");
        w.data(3, b"pong", true).await.expect("data");
    }
    let mut inflate = Decompress::new(true);
    let mut rest = &wire[..];
    for stream in [1u32, 3] {
        assert_eq!(&rest[..4], &[0x80, 0x03, 0x00, 0x02]);
        let len = usize::from(rest[5]) << 16 | usize::from(rest[6]) << 8 | usize::from(rest[7]);
        let body = &rest[8..8 + len];
        assert_eq!(
            u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            stream
        );
        let mut out = Vec::with_capacity(64);
        let mut input = &body[4..];
        loop {
            let before = inflate.total_in();
            match inflate.decompress_vec(input, &mut out, FlushDecompress::Sync) {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    inflate.set_dictionary(dictionary()).expect("dictionary");
                }
                Err(e) => panic!("inflating the reply: {e}"),
            }
            input = &input[usize::try_from(inflate.total_in() - before).expect("size")..];
            if input.is_empty() {
                break;
            }
        }
        // No headers.
        assert_eq!(out, [0, 0, 0, 0]);
        rest = &rest[8 + len..];
    }
    assert_eq!(rest, &[0, 0, 0, 3, 0x01, 0, 0, 4, b'p', b'o', b'n', b'g']);
}
