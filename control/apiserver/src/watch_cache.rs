//! Lists and watches served from memory. One store watch per resource
//! feeds an in-memory copy of every object and a window of recent events;
//! every API watcher reads from here, so a thousand `kubectl get -w` cost
//! the store nothing.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use bytes::Bytes;
use etcd_client::{EventType, GetOptions, WatchOptions};
use serde_json::Value;
use shoal_api::{KINDS, Kind};
use tokio::sync::{broadcast, watch};

use crate::storage::{Storage, StorageError, prefix_end};

/// Events kept per resource for watchers resuming from a revision.
const HISTORY: usize = 8192;
/// Live events buffered per watcher before it is cut off as too slow.
const FANOUT: usize = 16384;
/// Pause before re-establishing a failed store watch.
const RETRY: Duration = Duration::from_millis(200);

/// An object in the cache: parsed, and serialized once for every reader.
#[derive(Debug)]
pub struct Entry {
    /// The object with its `resourceVersion`.
    pub value: Value,
    /// `value` as JSON.
    pub json: Bytes,
    /// The revision it was written (or deleted) at.
    pub rev: i64,
}

impl Entry {
    fn new(value: Value, rev: i64) -> Arc<Self> {
        let json = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        Arc::new(Self { value, json, rev })
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted; the object is its last state.
    Deleted,
}

impl Change {
    /// The watch event `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "ADDED",
            Change::Modified => "MODIFIED",
            Change::Deleted => "DELETED",
        }
    }
}

/// One change to one object.
#[derive(Debug)]
pub struct Event {
    /// What happened.
    pub change: Change,
    /// The object's key.
    pub key: String,
    /// The store revision of the change.
    pub rev: i64,
    /// The object after the change (its last state for a delete).
    pub object: Arc<Entry>,
    /// The object before the change.
    pub prev: Option<Arc<Entry>>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Arc<Entry>>,
    /// The newest revision this cache has caught up with.
    rev: i64,
    history: VecDeque<Arc<Event>>,
    /// Events after this revision are all in `history`.
    complete_from: i64,
    ready: bool,
}

/// The cache of one resource.
pub struct ResourceCache {
    kind: &'static Kind,
    prefix: String,
    state: RwLock<State>,
    events: broadcast::Sender<Arc<Event>>,
    progress: watch::Sender<i64>,
}

/// A consistent view handed to a new watcher: what it must send first and
/// the live events after that.
pub struct Subscription {
    /// Events (or synthetic ADDED for a fresh watch) to send first.
    pub backlog: Vec<Arc<Event>>,
    /// The revision the backlog brings the watcher to.
    pub rev: i64,
    /// Live events; skip those at or below the last revision sent.
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The cache's revision, for bookmarks.
    pub progress: watch::Receiver<i64>,
}

/// Why a watch cannot start.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchFrom {
    /// The cache has not loaded yet.
    NotReady,
    /// The revision is older than the cache's window.
    TooOld {
        /// The oldest revision a watch can start from.
        oldest: i64,
    },
}

impl ResourceCache {
    fn new(kind: &'static Kind) -> Arc<Self> {
        let (events, _) = broadcast::channel(FANOUT);
        let (progress, _) = watch::channel(0);
        Arc::new(Self {
            kind,
            prefix: kind.storage_prefix(),
            state: RwLock::new(State::default()),
            events,
            progress,
        })
    }

    /// The kind cached.
    pub fn kind(&self) -> &'static Kind {
        self.kind
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every cached object under `key_prefix` (a namespace's prefix or the
    /// whole resource), with the cache's revision; `None` until loaded.
    pub fn list(&self, key_prefix: &str) -> Option<(Vec<Arc<Entry>>, i64)> {
        let state = self.read();
        if !state.ready {
            return None;
        }
        let items = state
            .objects
            .range(key_prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(key_prefix))
            .map(|(_, e)| e.clone())
            .collect();
        Some((items, state.rev))
    }

    /// The cache's revision.
    pub fn revision(&self) -> i64 {
        self.read().rev
    }

    /// Starts a watch: `from` = `None` sends every current object as ADDED
    /// first; `Some(rev)` replays the changes after `rev`.
    pub fn subscribe(&self, from: Option<i64>) -> Result<Subscription, WatchFrom> {
        let state = self.read();
        if !state.ready {
            return Err(WatchFrom::NotReady);
        }
        // Subscribing under the lock: nothing applied after the snapshot
        // can be missed, and nothing before it is sent twice.
        let live = self.events.subscribe();
        let backlog = match from {
            None => state
                .objects
                .iter()
                .map(|(key, object)| {
                    Arc::new(Event {
                        change: Change::Added,
                        key: key.clone(),
                        rev: object.rev,
                        object: object.clone(),
                        prev: None,
                    })
                })
                .collect(),
            Some(rev) if rev < state.complete_from => {
                return Err(WatchFrom::TooOld {
                    oldest: state.complete_from,
                });
            }
            Some(rev) => state
                .history
                .iter()
                .filter(|e| e.rev > rev)
                .cloned()
                .collect(),
        };
        Ok(Subscription {
            backlog,
            rev: state.rev.max(from.unwrap_or(0)),
            live,
            progress: self.progress.subscribe(),
        })
    }

    fn load(&self, items: Vec<(String, Arc<Entry>)>, rev: i64) {
        let mut state = self.write();
        let fresh: BTreeMap<String, Arc<Entry>> = items.into_iter().collect();
        if state.ready {
            // A relist after the store compacted past us: tell watchers what
            // changed in between, as one step at the list's revision.
            let mut events = Vec::new();
            for (key, old) in &state.objects {
                match fresh.get(key) {
                    None => events.push(Event {
                        change: Change::Deleted,
                        key: key.clone(),
                        rev,
                        object: with_rev(old, rev),
                        prev: Some(old.clone()),
                    }),
                    Some(new) if new.rev != old.rev => events.push(Event {
                        change: Change::Modified,
                        key: key.clone(),
                        rev,
                        object: new.clone(),
                        prev: Some(old.clone()),
                    }),
                    Some(_) => {}
                }
            }
            for (key, new) in &fresh {
                if !state.objects.contains_key(key) {
                    events.push(Event {
                        change: Change::Added,
                        key: key.clone(),
                        rev,
                        object: new.clone(),
                        prev: None,
                    });
                }
            }
            state.objects = fresh;
            for e in events {
                push(&mut state, &self.events, Arc::new(e));
            }
            state.rev = state.rev.max(rev);
        } else {
            state.objects = fresh;
            state.rev = rev;
            state.complete_from = rev;
            state.ready = true;
        }
        self.progress.send_replace(state.rev);
    }

    fn apply(&self, events: Vec<Event>, header_rev: Option<i64>) {
        let mut state = self.write();
        for mut e in events {
            if e.rev <= state.rev {
                continue;
            }
            e.prev = match e.change {
                Change::Deleted => state.objects.remove(&e.key),
                _ => state.objects.insert(e.key.clone(), e.object.clone()),
            };
            if e.change == Change::Deleted {
                match &e.prev {
                    // The delete event carries the last state; keep ours if
                    // the store sent none.
                    Some(prev) if e.object.value.is_null() => e.object = with_rev(prev, e.rev),
                    _ => {}
                }
                if e.object.value.is_null() {
                    continue;
                }
            } else if e.prev.is_none() {
                e.change = Change::Added;
            } else {
                e.change = Change::Modified;
            }
            state.rev = e.rev;
            push(&mut state, &self.events, Arc::new(e));
        }
        // A response without events is a progress notification: the store
        // promises nothing in our range happened up to its revision.
        if let Some(rev) = header_rev {
            state.rev = state.rev.max(rev);
        }
        self.progress.send_replace(state.rev);
    }
}

fn push(state: &mut State, tx: &broadcast::Sender<Arc<Event>>, e: Arc<Event>) {
    if state.history.len() >= HISTORY
        && let Some(old) = state.history.pop_front()
    {
        state.complete_from = old.rev;
    }
    state.history.push_back(e.clone());
    // No receivers is fine: nobody is watching.
    let _ = tx.send(e);
}

/// A copy of `entry` stamped with `rev` as its `resourceVersion`.
fn with_rev(entry: &Entry, rev: i64) -> Arc<Entry> {
    let mut value = entry.value.clone();
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
    Entry::new(value, rev)
}

/// The caches of every served resource.
pub struct WatchCache {
    caches: HashMap<String, Arc<ResourceCache>>,
    /// How many store watches the caches hold open (one per resource).
    store_watches: Arc<std::sync::atomic::AtomicUsize>,
}

impl WatchCache {
    /// Starts one cache per resource, each loading and then following the
    /// store on its own task.
    pub fn start(storage: &Storage) -> Arc<Self> {
        let store_watches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut caches = HashMap::new();
        for kind in KINDS {
            let prefix = kind.storage_prefix();
            if caches.contains_key(&prefix) {
                continue;
            }
            let cache = ResourceCache::new(kind);
            tokio::spawn(follow(
                cache.clone(),
                storage.clone(),
                store_watches.clone(),
            ));
            caches.insert(prefix, cache);
        }
        Arc::new(Self {
            caches,
            store_watches,
        })
    }

    /// The cache of a kind.
    pub fn get(&self, kind: &Kind) -> Option<&Arc<ResourceCache>> {
        self.caches.get(&kind.storage_prefix())
    }

    /// Store watches currently open.
    pub fn store_watches(&self) -> usize {
        self.store_watches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether every cache has loaded.
    pub fn ready(&self) -> bool {
        self.caches.values().all(|c| c.read().ready)
    }
}

/// Loads a resource and follows its changes for as long as the process runs.
async fn follow(
    cache: Arc<ResourceCache>,
    storage: Storage,
    open: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut need_list = true;
    loop {
        if need_list {
            match list_all(&storage, &cache.prefix).await {
                Ok((items, rev)) => {
                    cache.load(items, rev);
                    need_list = false;
                }
                Err(e) => {
                    tracing::warn!(resource = cache.kind.plural, error = %e, "loading the watch cache");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = watch_store(&cache, &storage).await;
        open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(Ended::Compacted) => need_list = true,
            Ok(Ended::Closed) => {}
            Err(e) => {
                tracing::warn!(resource = cache.kind.plural, error = %e, "store watch failed; resuming")
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

enum Ended {
    Compacted,
    Closed,
}

async fn list_all(
    storage: &Storage,
    prefix: &str,
) -> Result<(Vec<(String, Arc<Entry>)>, i64), StorageError> {
    let resp = storage
        .kv()
        .get(
            prefix,
            Some(GetOptions::new().with_range(prefix_end(prefix))),
        )
        .await?;
    let rev = resp.header().map_or(0, |h| h.revision());
    let mut items = Vec::with_capacity(resp.kvs().len());
    for kv in resp.kvs() {
        match storage.decode(kv.key(), kv.value(), kv.mod_revision()) {
            Ok(s) => items.push((
                String::from_utf8_lossy(kv.key()).into_owned(),
                Entry::new(s.value, s.rev),
            )),
            Err(e) => tracing::warn!(error = %e, "skipping an undecodable object"),
        }
    }
    Ok((items, rev))
}

async fn watch_store(cache: &ResourceCache, storage: &Storage) -> Result<Ended, StorageError> {
    let start = cache.revision() + 1;
    let opts = WatchOptions::new()
        .with_range(prefix_end(&cache.prefix))
        .with_start_revision(start)
        .with_prev_key()
        .with_progress_notify();
    let mut stream = storage
        .watch_client()
        .watch(cache.prefix.as_str(), Some(opts))
        .await?;
    while let Some(resp) = stream.message().await? {
        if resp.compact_revision() > 0 {
            return Ok(Ended::Compacted);
        }
        if resp.canceled() {
            return Ok(Ended::Closed);
        }
        let header_rev = resp
            .events()
            .is_empty()
            .then(|| resp.header().map_or(0, |h| h.revision()));
        let mut events = Vec::with_capacity(resp.events().len());
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let rev = kv.mod_revision();
            let (change, object) = match ev.event_type() {
                EventType::Put => match storage.decode(kv.key(), kv.value(), rev) {
                    Ok(s) => (Change::Modified, Entry::new(s.value, rev)),
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping an undecodable object");
                        continue;
                    }
                },
                EventType::Delete => {
                    let last = ev
                        .prev_kv()
                        .and_then(|p| storage.decode(p.key(), p.value(), rev).ok())
                        .map_or(Value::Null, |s| s.value);
                    (Change::Deleted, Entry::new(last, rev))
                }
            };
            events.push(Event {
                change,
                key,
                rev,
                object,
                prev: None,
            });
        }
        cache.apply(events, header_rev);
    }
    Ok(Ended::Closed)
}

#[cfg(test)]
mod tests;
