//! Response bodies: whole JSON documents, or a stream of watch events.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The body type every handler answers with.
pub type ResponseBody = BoxBody<Bytes, Infallible>;

/// The content type of a Table response.
pub const TABLE_CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// A response before it becomes an HTTP response.
pub struct Reply {
    /// HTTP status.
    pub code: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: ResponseBody,
    /// Whether the body streams (watch).
    pub streaming: bool,
    /// Headers beyond the content type (an upgrade's).
    pub headers: http::HeaderMap,
}

impl Reply {
    /// A JSON document.
    pub fn json(code: u16, value: &Value) -> Self {
        Self::raw(
            code,
            Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
        )
    }

    /// Bytes that already are JSON.
    pub fn raw(code: u16, bytes: Bytes) -> Self {
        Self {
            code,
            content_type: "application/json",
            body: Full::new(bytes).boxed(),
            streaming: false,
            headers: http::HeaderMap::new(),
        }
    }

    /// A `meta.k8s.io/v1` Table.
    pub fn table(value: Value) -> Self {
        Self {
            content_type: TABLE_CONTENT_TYPE,
            ..Self::json(200, &value)
        }
    }

    /// A watch: one JSON event per chunk, for as long as the sender lives.
    pub fn stream(rx: mpsc::Receiver<Bytes>) -> Self {
        let frames = ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
        Self {
            code: 200,
            content_type: "application/json",
            body: BodyExt::boxed(StreamBody::new(frames)),
            streaming: true,
            headers: http::HeaderMap::new(),
        }
    }
}
