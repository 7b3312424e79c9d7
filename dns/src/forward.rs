//! Names outside the cluster domain: sent to the configured upstream
//! resolvers through hickory-resolver, with a cache in front so repeated
//! names (and the search-path expansions ndots 5 causes) are answered locally.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_proto::{
    ProtoErrorKind,
    op::ResponseCode,
    rr::{Name, Record, RecordType},
    xfer::Protocol,
};
use hickory_resolver::{
    ResolveErrorKind, TokioResolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    name_server::TokioConnectionProvider,
};

use crate::{Config, metrics::Metrics};

/// What the upstream said about one question.
#[derive(Debug, Clone)]
pub(crate) struct Forwarded {
    /// NOERROR, NXDOMAIN, or SERVFAIL when no upstream answered.
    pub rcode: ResponseCode,
    /// The answer section (CNAME chains included).
    pub answers: Vec<Record>,
    /// The SOA of a negative answer.
    pub soa: Option<Record>,
}

struct Entry {
    stored: Instant,
    expires: Instant,
    answer: Arc<Forwarded>,
}

/// The forwarder: a resolver over the upstreams and a bounded cache.
pub(crate) struct Forwarder {
    resolver: Option<TokioResolver>,
    cache: Mutex<HashMap<(Name, RecordType), Entry>>,
    capacity: usize,
    max_ttl: Duration,
    negative_max_ttl: Duration,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// A forwarder over `config.upstreams`; with none it refuses.
    pub(crate) fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let resolver = (!config.upstreams.is_empty()).then(|| {
            let servers: Vec<NameServerConfig> = config
                .upstreams
                .iter()
                .flat_map(|addr: &SocketAddr| {
                    [
                        NameServerConfig::new(*addr, Protocol::Udp),
                        NameServerConfig::new(*addr, Protocol::Tcp),
                    ]
                })
                .collect();
            let mut opts = ResolverOpts::default();
            opts.timeout = config.upstream_timeout;
            opts.attempts = 2;
            // The cache here counts hits and caps TTLs; hickory's own would hide both.
            opts.cache_size = 0;
            opts.use_hosts_file = ResolveHosts::Never;
            opts.edns0 = true;
            opts.preserve_intermediates = true;
            opts.try_tcp_on_error = true;
            opts.ndots = 0;
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                TokioConnectionProvider::default(),
            )
            .with_options(opts)
            .build()
        });
        Self {
            resolver,
            cache: Mutex::new(HashMap::new()),
            capacity: config.cache_size,
            max_ttl: config.cache_max_ttl,
            negative_max_ttl: config.cache_negative_max_ttl,
            metrics,
        }
    }

    /// Whether any upstream is configured.
    pub(crate) fn enabled(&self) -> bool {
        self.resolver.is_some()
    }

    /// Answers from the cache or asks the upstreams.
    pub(crate) async fn resolve(&self, name: &Name, qtype: RecordType) -> Forwarded {
        let key = (name.to_lowercase(), qtype);
        let now = Instant::now();
        if let Some(hit) = self.cached(&key, now) {
            self.metrics.cache_hit();
            return hit;
        }
        self.metrics.cache_miss();
        let Some(resolver) = &self.resolver else {
            return Forwarded {
                rcode: ResponseCode::Refused,
                answers: Vec::new(),
                soa: None,
            };
        };
        let (answer, ttl) = match resolver.lookup(name.clone(), qtype).await {
            Ok(lookup) => {
                let ttl = lookup.records().iter().map(Record::ttl).min().unwrap_or(0);
                (
                    Forwarded {
                        rcode: ResponseCode::NoError,
                        answers: lookup.records().to_vec(),
                        soa: None,
                    },
                    Duration::from_secs(u64::from(ttl)).min(self.max_ttl),
                )
            }
            Err(e) => match e.kind() {
                ResolveErrorKind::Proto(p) => match p.kind() {
                    ProtoErrorKind::NoRecordsFound {
                        soa,
                        negative_ttl,
                        response_code,
                        ..
                    } => {
                        let soa = soa.as_ref().map(|s| (**s).clone().into_record_of_rdata());
                        let ttl = negative_ttl.unwrap_or(0);
                        (
                            Forwarded {
                                rcode: *response_code,
                                answers: Vec::new(),
                                soa,
                            },
                            Duration::from_secs(u64::from(ttl)).min(self.negative_max_ttl),
                        )
                    }
                    _ => return servfail(name, qtype, &e),
                },
                _ => return servfail(name, qtype, &e),
            },
        };
        let answer = Arc::new(answer);
        if !ttl.is_zero() && self.capacity > 0 {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= self.capacity {
                // Expired entries first; if none, any entry makes room (the cache is a bound, not an LRU).
                cache.retain(|_, e| e.expires > now);
                if cache.len() >= self.capacity
                    && let Some(k) = cache.keys().next().cloned()
                {
                    cache.remove(&k);
                }
            }
            cache.insert(
                key,
                Entry {
                    stored: now,
                    expires: now + ttl,
                    answer: Arc::clone(&answer),
                },
            );
        }
        (*answer).clone()
    }

    fn cached(&self, key: &(Name, RecordType), now: Instant) -> Option<Forwarded> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(key)?;
        if entry.expires <= now {
            return None;
        }
        // Clients see the time left, as from any caching resolver.
        let age = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        let mut answer = (*entry.answer).clone();
        for r in answer.answers.iter_mut().chain(answer.soa.iter_mut()) {
            r.set_ttl(r.ttl().saturating_sub(age).max(1));
        }
        Some(answer)
    }
}

fn servfail(name: &Name, qtype: RecordType, e: &hickory_resolver::ResolveError) -> Forwarded {
    tracing::debug!(%name, ?qtype, error = %e, "no upstream answered");
    Forwarded {
        rcode: ResponseCode::ServFail,
        answers: Vec::new(),
        soa: None,
    }
}
