//! etcd's Watch service. One task per gRPC stream owns its watchers and a
//! subscription to the keyspace's applied batches.
//!
//! No gaps, no duplicates: the stream subscribes before it reads the
//! current revision, so every batch after that revision reaches the
//! subscription. Each watcher remembers the first revision it has not been
//! sent (`next_rev`): a watcher created at revision C reads its history up
//! to C and then takes live events above C only. When the subscription
//! lags (batches dropped), every watcher re-reads history up to the current
//! revision instead, so a slow client never loses events; so does a
//! batch that skips revisions.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use shoal_mvcc::{AppliedBatch, Event, EventKind, KvError, Revision};
use tokio::{
    sync::{
        broadcast::{
            self,
            error::{RecvError, TryRecvError},
        },
        mpsc,
    },
    time::{Instant, MissedTickBehavior},
};
use tonic::{
    Request, Response, Status, Streaming, codegen::tokio_stream::wrappers::ReceiverStream,
};

use crate::{
    backend::Backend,
    convert::event_to_pb,
    proto::{
        etcdserverpb::{
            self as pb, watch_create_request::FilterType, watch_request::RequestUnion,
            watch_server::Watch,
        },
        mvccpb,
    },
    server::{Shared, server_stopped},
    status,
};

/// Responses buffered ahead of a slow client; beyond it the stream waits,
/// and its subscription may lag (then history is re-read).
const WATCH_SEND_BUFFER: usize = 128;
/// Revisions of history read per step while a watcher catches up (etcd's
/// `watchBatchMaxRevs`).
const HISTORY_WINDOW: Revision = 1000;
/// Event bytes in one catch-up response before it is split (at a revision
/// boundary, so a revision's events stay together).
const HISTORY_RESPONSE_BYTES: usize = 1024 * 1024;
/// Shortest progress interval (etcd's `minWatchProgressInterval`).
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// etcd's `AutoWatchID`: the client lets the server choose.
const AUTO_WATCH_ID: i64 = 0;
/// etcd's `InvalidWatchID`: a refused create, or a response for the whole
/// stream (progress).
const INVALID_WATCH_ID: i64 = -1;
/// etcd's `ErrEmptyWatcherRange`.
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// etcd's `ErrWatcherDuplicateID`.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// The Watch service.
pub(crate) struct WatchService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> WatchService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl<B: Backend> Watch for WatchService<B> {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(WATCH_SEND_BUFFER);
        let mvcc = self.shared.backend.mvcc();
        // Subscribe first, then read the revision: nothing after it is missed.
        let sub = mvcc.subscribe();
        let synced_rev = mvcc.revision();
        let stream = WatchStream {
            shared: self.shared.clone(),
            tx,
            sub,
            watchers: BTreeMap::new(),
            next_id: 0,
            synced_rev,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Whether `k` is in etcd's range `key`/`range_end` (empty end: just `key`;
/// `\0`: every key from `key`).
pub(crate) fn in_range(key: &[u8], range_end: &[u8], k: &[u8]) -> bool {
    match range_end {
        [] => k == key,
        [0] => k >= key,
        end => k >= key && k < end,
    }
}

/// One watcher on a stream.
struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// The first revision this watcher has not been sent.
    next_rev: Revision,
    /// Events were sent since the last progress tick (the next progress
    /// notification is skipped, as in etcd).
    active: bool,
}

impl Watcher {
    fn wants(&self, ev: &Event) -> bool {
        let kind_wanted = match ev.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        };
        kind_wanted && in_range(&self.key, &self.range_end, &ev.kv.key)
    }
}

/// The client stopped reading (or went away): the stream ends.
struct ClientGone;

/// What woke the stream's task.
enum Step {
    Gone,
    Stopped,
    Batch(Result<Arc<AppliedBatch>, RecvError>),
    Request(Result<Option<pb::WatchRequest>, Status>),
    Tick,
}

/// The state of one gRPC watch stream.
struct WatchStream<B> {
    shared: Arc<Shared<B>>,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    sub: broadcast::Receiver<Arc<AppliedBatch>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// Every watcher has been sent every event up to this revision.
    synced_rev: Revision,
}

async fn send(
    tx: &mpsc::Sender<Result<pb::WatchResponse, Status>>,
    response: pb::WatchResponse,
) -> Result<(), ClientGone> {
    tx.send(Ok(response)).await.map_err(|_| ClientGone)
}

impl<B: Backend> WatchStream<B> {
    async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>) {
        let interval = self
            .shared
            .config
            .progress_notify_interval
            .max(MIN_PROGRESS_INTERVAL);
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut reading = true;
        let shared = self.shared.clone();
        loop {
            let step = tokio::select! {
                () = self.tx.closed() => Step::Gone,
                () = shared.stopped() => Step::Stopped,
                batch = self.sub.recv() => Step::Batch(batch),
                request = inbound.message(), if reading => Step::Request(request),
                _ = ticker.tick() => Step::Tick,
            };
            let done = match step {
                Step::Gone => Err(ClientGone),
                // Best effort: a client that is not reading must not hold
                // up the shutdown; its stream just ends.
                Step::Stopped | Step::Batch(Err(RecvError::Closed)) => {
                    let _full_or_gone = self.tx.try_send(Err(server_stopped()));
                    Err(ClientGone)
                }
                Step::Batch(Ok(batch)) => self.deliver(&batch).await,
                Step::Batch(Err(RecvError::Lagged(missed))) => {
                    tracing::debug!(missed, "watch stream lagged; re-reading history");
                    self.resync().await
                }
                Step::Request(Ok(Some(request))) => self.on_request(request).await,
                // etcd keeps sending events after the client half-closes.
                Step::Request(Ok(None)) => {
                    reading = false;
                    Ok(())
                }
                Step::Request(Err(_)) => Err(ClientGone),
                Step::Tick => self.on_tick().await,
            };
            if done.is_err() {
                return;
            }
        }
    }

    fn header(&self, revision: Revision) -> Option<pb::ResponseHeader> {
        Some(self.shared.header(revision))
    }

    async fn on_request(&mut self, request: pb::WatchRequest) -> Result<(), ClientGone> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    let current = self.shared.backend.mvcc().revision();
                    let response = pb::WatchResponse {
                        header: self.header(current),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    send(&self.tx, response).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.drain().await?;
                let response = pb::WatchResponse {
                    header: self.header(self.synced_rev),
                    watch_id: INVALID_WATCH_ID,
                    ..Default::default()
                };
                send(&self.tx, response).await
            }
            // etcd ignores requests it does not know rather than end the stream.
            None => Ok(()),
        }
    }

    /// Answers a create request that cannot start a watcher.
    async fn refuse(&self, revision: Revision, reason: &str) -> Result<(), ClientGone> {
        let response = pb::WatchResponse {
            header: self.header(revision),
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_owned(),
            ..Default::default()
        };
        send(&self.tx, response).await
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), ClientGone> {
        let current = self.shared.backend.mvcc().revision();
        // etcd: an empty key means the smallest key.
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        if !c.range_end.is_empty() && c.range_end != [0] && key >= c.range_end {
            return self.refuse(current, EMPTY_RANGE).await;
        }
        if c.start_revision < 0 {
            return self.refuse(current, status::COMPACTED).await;
        }
        let id = if c.watch_id == AUTO_WATCH_ID {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else if self.watchers.contains_key(&c.watch_id) {
            return self.refuse(current, DUPLICATE_ID).await;
        } else {
            c.watch_id
        };
        let start = c.start_revision;
        let mut watcher = Watcher {
            key,
            range_end: c.range_end,
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            next_rev: if start == 0 || start > current {
                start.max(current + 1)
            } else {
                start
            },
            active: false,
        };
        let created = pb::WatchResponse {
            header: self.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        send(&self.tx, created).await?;
        if watcher.next_rev <= current && !self.catch_up(id, &mut watcher, current).await? {
            return Ok(());
        }
        self.watchers.insert(id, watcher);
        Ok(())
    }

    /// Sends a watcher its history up to `upto`; `false` if the watcher was
    /// canceled instead (its start revision is compacted).
    async fn catch_up(
        &mut self,
        id: i64,
        w: &mut Watcher,
        upto: Revision,
    ) -> Result<bool, ClientGone> {
        let mut from = w.next_rev;
        while from <= upto {
            let to = upto.min(from.saturating_add(HISTORY_WINDOW - 1));
            let (key, end) = (w.key.clone(), w.range_end.clone());
            let read = self
                .shared
                .read(move |m| m.events(from, to, &key, &end))
                .await;
            let (compact_revision, reason) = match read {
                Ok(Ok(events)) => {
                    self.send_history(id, w, &events, to).await?;
                    from = to + 1;
                    continue;
                }
                Ok(Err(KvError::Compacted { compact_revision })) => {
                    (compact_revision, status::COMPACTED.to_owned())
                }
                Ok(Err(e)) => (0, e.to_string()),
                Err(s) => (0, s.message().to_owned()),
            };
            let current = self.shared.backend.mvcc().revision();
            let canceled = pb::WatchResponse {
                header: self.header(current),
                watch_id: id,
                canceled: true,
                compact_revision,
                cancel_reason: reason,
                ..Default::default()
            };
            send(&self.tx, canceled).await?;
            return Ok(false);
        }
        w.next_rev = w.next_rev.max(upto + 1);
        Ok(true)
    }

    /// Sends history events read up to `to`, splitting large responses at
    /// revision boundaries.
    async fn send_history(
        &self,
        id: i64,
        w: &mut Watcher,
        events: &[(Revision, Event)],
        to: Revision,
    ) -> Result<(), ClientGone> {
        let mut batch: Vec<mvccpb::Event> = Vec::new();
        let mut bytes = 0;
        let mut last_rev = 0;
        for (rev, ev) in events {
            if *rev != last_rev && bytes >= HISTORY_RESPONSE_BYTES && !batch.is_empty() {
                let response = pb::WatchResponse {
                    header: self.header(last_rev),
                    watch_id: id,
                    events: std::mem::take(&mut batch),
                    ..Default::default()
                };
                send(&self.tx, response).await?;
                bytes = 0;
            }
            last_rev = *rev;
            if w.wants(ev) {
                let event = event_to_pb(ev, w.prev_kv);
                bytes += prost::Message::encoded_len(&event);
                batch.push(event);
            }
        }
        if !batch.is_empty() {
            w.active = true;
            let response = pb::WatchResponse {
                header: self.header(to),
                watch_id: id,
                events: batch,
                ..Default::default()
            };
            send(&self.tx, response).await?;
        }
        Ok(())
    }

    /// Sends a live batch: one response per revision per interested watcher.
    async fn deliver(&mut self, batch: &AppliedBatch) -> Result<(), ClientGone> {
        // Revisions come one after another; a jump means this stream missed
        // some (the keyspace was restored from a snapshot, say): re-read.
        if batch
            .events
            .first()
            .is_some_and(|(rev, _)| *rev > self.synced_rev + 1)
        {
            self.resync().await?;
        }
        for group in batch.events.chunk_by(|a, b| a.0 == b.0) {
            let Some((rev, _)) = group.first() else {
                continue;
            };
            let rev = *rev;
            for (id, w) in &mut self.watchers {
                if rev < w.next_rev {
                    continue;
                }
                let events: Vec<_> = group
                    .iter()
                    .filter(|(_, ev)| w.wants(ev))
                    .map(|(_, ev)| event_to_pb(ev, w.prev_kv))
                    .collect();
                if events.is_empty() {
                    continue;
                }
                w.active = true;
                let response = pb::WatchResponse {
                    header: Some(self.shared.header(rev)),
                    watch_id: *id,
                    events,
                    ..Default::default()
                };
                send(&self.tx, response).await?;
            }
        }
        for w in self.watchers.values_mut() {
            w.next_rev = w.next_rev.max(batch.revision + 1);
        }
        self.synced_rev = self.synced_rev.max(batch.revision);
        Ok(())
    }

    /// After the subscription dropped batches: every watcher re-reads
    /// history up to the current revision; later batches skip what it read.
    async fn resync(&mut self) -> Result<(), ClientGone> {
        let upto = self.shared.backend.mvcc().revision();
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(mut w) = self.watchers.remove(&id) else {
                continue;
            };
            if self.catch_up(id, &mut w, upto).await? {
                self.watchers.insert(id, w);
            }
        }
        self.synced_rev = self.synced_rev.max(upto);
        Ok(())
    }

    /// Delivers every batch already waiting, so progress is up to date.
    async fn drain(&mut self) -> Result<(), ClientGone> {
        loop {
            match self.sub.try_recv() {
                Ok(batch) => self.deliver(&batch).await?,
                Err(TryRecvError::Lagged(_)) => self.resync().await?,
                Err(TryRecvError::Empty | TryRecvError::Closed) => return Ok(()),
            }
        }
    }

    /// Progress notifications for idle watchers that asked for them.
    async fn on_tick(&mut self) -> Result<(), ClientGone> {
        if !self.watchers.values().any(|w| w.progress_notify) {
            return Ok(());
        }
        self.drain().await?;
        let header = self.header(self.synced_rev);
        for (id, w) in &mut self.watchers {
            if !w.progress_notify {
                continue;
            }
            if !w.active {
                let response = pb::WatchResponse {
                    header,
                    watch_id: *id,
                    ..Default::default()
                };
                send(&self.tx, response).await?;
            }
            w.active = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::in_range;

    #[test]
    fn ranges_follow_etcd() {
        assert!(in_range(b"a", b"", b"a"));
        assert!(!in_range(b"a", b"", b"ab"));
        assert!(in_range(b"a", b"\0", b"zzz"));
        assert!(!in_range(b"b", b"\0", b"a"));
        assert!(in_range(b"a", b"b", b"a\xff"));
        assert!(!in_range(b"a", b"b", b"b"));
        assert!(in_range(b"\0", b"\0", b"anything"));
    }
}
