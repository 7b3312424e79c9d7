//! ConfigMaps and Secrets the node's pods read, kept current by one watch
//! per object (the kubelet's `Watch` change-detection strategy): a pod's
//! volumes are re-synced from memory, not with an API read per source per
//! resync, and a change reaches every pod that uses the object.
//!
//! An object is watched from its first use; a watch nobody asked for in
//! [`IDLE`] is dropped (running pods touch theirs at every volume resync).

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::debug;

/// How long an object nobody read stays watched.
const IDLE: Duration = Duration::from_secs(120);
/// How long a first read waits for the watch's initial list.
const FIRST_LOAD: Duration = Duration::from_secs(10);

/// What the watch knows of one object.
#[derive(Clone, Debug)]
enum State<K> {
    /// The initial list has not come back yet.
    Loading,
    /// It exists (as of the last event).
    Present(Arc<K>),
    /// It does not exist.
    Absent,
}

struct Entry<K> {
    rx: watch::Receiver<State<K>>,
    task: tokio::task::JoinHandle<()>,
    last_used: Instant,
}

impl<K> Drop for Entry<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watched objects of one kind, by (namespace, name).
pub(crate) struct ObjectCache<K> {
    client: Client,
    entries: Mutex<HashMap<(String, String), Entry<K>>>,
}

impl<K> ObjectCache<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    pub fn new(client: Client) -> Self {
        Self {
            client,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The object as the watch last saw it; None when it does not exist or
    /// the API could not be reached within [`FIRST_LOAD`] of its first use.
    pub async fn get(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        let mut rx = self.subscribe(ns, name);
        let loaded = tokio::time::timeout(FIRST_LOAD, async {
            loop {
                if !matches!(*rx.borrow_and_update(), State::Loading) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false);
        if !loaded {
            debug!(namespace = ns, name, kind = %K::kind(&()), "not loaded in time");
            return None;
        }
        match &*rx.borrow() {
            State::Present(obj) => Some(obj.clone()),
            State::Loading | State::Absent => None,
        }
    }

    /// The watch of `ns/name`, started on first use; drops idle ones.
    fn subscribe(&self, ns: &str, name: &str) -> watch::Receiver<State<K>> {
        let now = Instant::now();
        let Ok(mut entries) = self.entries.lock() else {
            // A poisoned lock: serve from a fresh, unshared watch.
            return self.start(ns, name).rx.clone();
        };
        entries.retain(|_, e| now.duration_since(e.last_used) < IDLE && !e.task.is_finished());
        let entry = entries
            .entry((ns.to_owned(), name.to_owned()))
            .or_insert_with(|| self.start(ns, name));
        entry.last_used = now;
        entry.rx.clone()
    }

    fn start(&self, ns: &str, name: &str) -> Entry<K> {
        let (tx, rx) = watch::channel(State::Loading);
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let task = tokio::spawn(async move {
            let stream = watcher(api, config).default_backoff();
            let mut stream = std::pin::pin!(stream);
            // During a (re)list: whether the object came back in it.
            let mut listed = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => listed = false,
                    Ok(watcher::Event::InitApply(obj)) => {
                        listed = true;
                        tx.send_replace(State::Present(Arc::new(obj)));
                    }
                    Ok(watcher::Event::InitDone) => {
                        if !listed {
                            tx.send_replace(State::Absent);
                        }
                    }
                    Ok(watcher::Event::Apply(obj)) => {
                        tx.send_replace(State::Present(Arc::new(obj)));
                    }
                    Ok(watcher::Event::Delete(_)) => {
                        tx.send_replace(State::Absent);
                    }
                    // The watcher retries with back-off; readers keep the
                    // last state meanwhile.
                    Err(e) => debug!(kind = %K::kind(&()), "watch error: {e}"),
                }
            }
        });
        Entry {
            rx,
            task,
            last_used: Instant::now(),
        }
    }
}
