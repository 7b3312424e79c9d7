//! Counters of the DNS server (queries by type and response code, forwarding
//! cache hits, latency), rendered as Prometheus text for the agent's /metrics.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use hickory_proto::{op::ResponseCode, rr::RecordType};

/// Query types counted on their own; everything else is `other`.
const TYPES: [&str; 11] = [
    "A", "AAAA", "SRV", "PTR", "CNAME", "SOA", "NS", "TXT", "MX", "ANY", "other",
];
/// Response codes counted on their own; everything else is `other`.
const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];
/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 500_000, 2_000_000,
];

/// The server's counters; shared by every listener.
#[derive(Debug)]
pub struct Metrics {
    queries: [[AtomicU64; RCODES.len()]; TYPES.len()],
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    latency_sum_ns: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            queries: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_ns: AtomicU64::new(0),
        }
    }
}

fn type_slot(t: Option<RecordType>) -> usize {
    match t {
        Some(RecordType::A) => 0,
        Some(RecordType::AAAA) => 1,
        Some(RecordType::SRV) => 2,
        Some(RecordType::PTR) => 3,
        Some(RecordType::CNAME) => 4,
        Some(RecordType::SOA) => 5,
        Some(RecordType::NS) => 6,
        Some(RecordType::TXT) => 7,
        Some(RecordType::MX) => 8,
        Some(RecordType::ANY) => 9,
        _ => 10,
    }
}

fn rcode_slot(r: ResponseCode) -> usize {
    match r {
        ResponseCode::NoError => 0,
        ResponseCode::FormErr => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::NXDomain => 3,
        ResponseCode::NotImp => 4,
        ResponseCode::Refused => 5,
        _ => 6,
    }
}

impl Metrics {
    /// Counts one answered query (`qtype` is `None` when the query did not parse).
    pub fn record(&self, qtype: Option<RecordType>, rcode: ResponseCode, took: Duration) {
        self.queries[type_slot(qtype)][rcode_slot(rcode)].fetch_add(1, Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let slot = BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.latency_sum_ns
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub(crate) fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Relaxed);
    }

    pub(crate) fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Relaxed);
    }

    /// Answered queries of one type and response code (`"A"`, `"NXDOMAIN"`).
    pub fn queries(&self, qtype: &str, rcode: &str) -> u64 {
        match (
            TYPES.iter().position(|t| *t == qtype),
            RCODES.iter().position(|r| *r == rcode),
        ) {
            (Some(t), Some(r)) => self.queries[t][r].load(Relaxed),
            _ => 0,
        }
    }

    /// Forwarded questions answered from the cache.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Relaxed)
    }

    /// Forwarded questions that went to an upstream.
    pub fn cache_misses(&self) -> u64 {
        self.cache_misses.load(Relaxed)
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP shoal_dns_queries_total DNS queries answered, by query type and response code.\n");
        out.push_str("# TYPE shoal_dns_queries_total counter\n");
        for (t, row) in TYPES.iter().zip(&self.queries) {
            for (r, n) in RCODES.iter().zip(row) {
                let n = n.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "shoal_dns_queries_total{{type=\"{t}\",rcode=\"{r}\"}} {n}"
                    );
                }
            }
        }
        out.push_str("# HELP shoal_dns_forward_cache_hits_total Forwarded questions answered from the cache.\n");
        out.push_str("# TYPE shoal_dns_forward_cache_hits_total counter\n");
        let _ = writeln!(
            out,
            "shoal_dns_forward_cache_hits_total {}",
            self.cache_hits()
        );
        out.push_str("# HELP shoal_dns_forward_cache_misses_total Forwarded questions sent to an upstream.\n");
        out.push_str("# TYPE shoal_dns_forward_cache_misses_total counter\n");
        let _ = writeln!(
            out,
            "shoal_dns_forward_cache_misses_total {}",
            self.cache_misses()
        );
        out.push_str(
            "# HELP shoal_dns_request_duration_seconds Time from a parsed query to its answer.\n",
        );
        out.push_str("# TYPE shoal_dns_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Relaxed);
            let le = BUCKETS_US
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |us| format!("{}", *us as f64 / 1e6));
            let _ = writeln!(
                out,
                "shoal_dns_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "shoal_dns_request_duration_seconds_sum {}",
            self.latency_sum_ns.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "shoal_dns_request_duration_seconds_count {cumulative}");
        out
    }
}
