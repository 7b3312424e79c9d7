//! One query in, one answer out: the cluster domain from the view, PTR for
//! cluster addresses, everything else through the forwarder.

use std::{sync::Arc, time::Instant};

use hickory_proto::{
    op::{Edns, Header, LowerQuery, MessageType, OpCode, ResponseCode},
    rr::{DNSClass, Name, Record, RecordType},
    serialize::binary::BinEncodable,
    xfer::Protocol,
};
use hickory_server::{
    authority::MessageResponseBuilder,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
};

use crate::{
    forward::Forwarder,
    metrics::Metrics,
    view::{ClusterView, Lookup, reverse_ip},
};

/// The largest UDP answer for a client without EDNS (RFC 1035).
const PLAIN_UDP_PAYLOAD: usize = 512;

/// The request handler hickory's server calls for every query.
pub(crate) struct Handler {
    pub(crate) view: ClusterView,
    pub(crate) forwarder: Forwarder,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) udp_payload: u16,
}

/// An answer before it is written: sections and flags.
struct Answer {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additionals: Vec<Record>,
}

impl Answer {
    fn code(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let qtype = request.queries().first().map(|q| q.query_type());
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        let mut builder = MessageResponseBuilder::from_message_request(request);

        let mut answer = match request.edns() {
            Some(edns) if edns.version() > 0 => {
                // RFC 6891: only version 0 exists; say so with BADVERS.
                let mut e = Edns::new();
                e.set_max_payload(self.udp_payload);
                e.set_rcode_high(ResponseCode::BADVERS.high());
                builder.edns(e);
                Answer::code(ResponseCode::BADVERS)
            }
            edns => {
                if let Some(edns) = edns {
                    let mut e = Edns::new();
                    // hickory sizes UDP answers by the EDNS payload of the response, so
                    // offer no more than the client can take.
                    e.set_max_payload(edns.max_payload().clamp(512, self.udp_payload.max(512)));
                    builder.edns(e);
                }
                self.answer(request).await
            }
        };

        if request.protocol() == Protocol::Udp
            && request.edns().is_none()
            && too_big(&answer, PLAIN_UDP_PAYLOAD, request.queries())
        {
            // hickory allows 4096 bytes to clients without EDNS; RFC 1035 allows 512.
            // Send the flag alone: the client retries over TCP and gets the whole set.
            header.set_truncated(true);
            answer.answers.clear();
            answer.authority.clear();
            answer.additionals.clear();
        }
        header.set_response_code(answer.rcode);
        header.set_authoritative(answer.authoritative);
        let response = builder.build(
            header,
            answer.answers.iter(),
            answer.authority.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending a DNS answer failed");
                let mut h = header;
                h.set_response_code(ResponseCode::ServFail);
                h.into()
            }
        };
        self.metrics
            .record(qtype, info.response_code(), started.elapsed());
        info
    }
}

impl Handler {
    async fn answer(&self, request: &Request) -> Answer {
        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            return Answer::code(ResponseCode::NotImp);
        }
        let [query] = request.queries() else {
            // No server answers several questions in one message; RFC 9619 makes it FORMERR.
            return Answer::code(ResponseCode::FormErr);
        };
        if query.query_class() != DNSClass::IN {
            return Answer::code(ResponseCode::Refused);
        }
        let qtype = query.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Answer::code(ResponseCode::Refused);
        }
        // A LowerName is lowercase already.
        let name = query.name().to_ascii();
        if self.view.is_cluster_name(&name) {
            return self.cluster(&name, qtype);
        }
        if matches!(qtype, RecordType::PTR | RecordType::ANY)
            && let Some(ip) = reverse_ip(&name)
            && let Some(ptr) = self.view.reverse(&Name::from(query.name().clone()), ip)
        {
            return Answer {
                rcode: ResponseCode::NoError,
                authoritative: true,
                answers: vec![ptr],
                authority: Vec::new(),
                additionals: Vec::new(),
            };
        }
        if !self.forwarder.enabled() {
            return Answer::code(ResponseCode::Refused);
        }
        let f = self
            .forwarder
            .resolve(&Name::from(query.name().clone()), qtype)
            .await;
        Answer {
            rcode: f.rcode,
            authoritative: false,
            answers: f.answers,
            authority: f.soa.into_iter().collect(),
            additionals: Vec::new(),
        }
    }

    fn cluster(&self, name: &str, qtype: RecordType) -> Answer {
        if !self.view.is_synced() {
            // Before the first full list a missing name may only be unseen: make clients retry.
            return Answer::code(ResponseCode::ServFail);
        }
        let soa = || vec![self.view.soa().clone()];
        match self.view.lookup(name, qtype) {
            Lookup::Records {
                answers,
                additionals,
            } => Answer {
                rcode: ResponseCode::NoError,
                authoritative: true,
                answers,
                authority: Vec::new(),
                additionals,
            },
            Lookup::NoData => Answer {
                rcode: ResponseCode::NoError,
                authoritative: true,
                answers: Vec::new(),
                authority: soa(),
                additionals: Vec::new(),
            },
            Lookup::NxDomain => Answer {
                rcode: ResponseCode::NXDomain,
                authoritative: true,
                answers: Vec::new(),
                authority: soa(),
                additionals: Vec::new(),
            },
        }
    }
}

/// Whether the answer could exceed `limit` bytes: an upper bound (names
/// uncompressed), checked only for clients without EDNS over UDP.
fn too_big(answer: &Answer, limit: usize, queries: &[LowerQuery]) -> bool {
    // The header, then each question: its name, type and class.
    let mut size = 12 + queries.iter().map(|q| q.name().len() + 5).sum::<usize>();
    for r in answer
        .answers
        .iter()
        .chain(&answer.authority)
        .chain(&answer.additionals)
    {
        size += r.to_bytes().map_or(limit, |b| b.len());
        if size > limit {
            return true;
        }
    }
    false
}
