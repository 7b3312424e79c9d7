//! The shape every workload controller shares: reflector caches fed by
//! watches, trigger streams that map a watched object to the keys it
//! affects, and kube-runtime's `applier` running an idempotent reconcile per
//! key, with the keys whose object is gone handed to a clean-up.

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    fmt::Debug,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures_util::{
    StreamExt, TryStreamExt,
    stream::{self, BoxStream},
};
use kube::{
    Api, Resource,
    core::DynamicObject,
    runtime::{
        WatchStreamExt,
        controller::{self, Action, applier},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, warn};

/// How often an object is reconciled when nothing about it changed: the
/// safety net for a missed event.
pub(crate) const RESYNC: Duration = Duration::from_secs(300);

/// How soon a failed reconcile is retried.
pub(crate) const RETRY: Duration = Duration::from_secs(2);

/// A stream of keys (objects of kind `K`) to reconcile.
pub(crate) type Triggers<K> = BoxStream<'static, Result<ObjectRef<K>, watcher::Error>>;

tokio::task_local! {
    /// The controller manager's shared caches (see [`shared`]).
    static SHARED: Arc<Informers>;
}

/// Runs `controllers` with shared caches: every [`reflect`] of the same
/// resource inside shares one watch and one cache, as client-go's
/// SharedInformerFactory gives kube-controller-manager. Without it each
/// controller that reads pods kept its own copy of every pod. The watches
/// stop when `controllers` ends or is dropped.
pub(crate) async fn shared<F: Future>(controllers: F) -> F::Output {
    SHARED
        .scope(Arc::new(Informers::default()), controllers)
        .await
}

/// A watch of `api` kept in a cache; the stream yields every object that
/// changed (deleted ones included) once the cache holds the change. Inside
/// [`shared`] the watch and cache are the ones every controller of the
/// manager reads (a late subscriber first gets what the cache holds, as a
/// handler added to a running informer does); elsewhere they are its own,
/// and the stream must be polled (merged into a controller's triggers) or
/// the cache stays empty.
pub(crate) fn reflect<K>(api: Api<K>) -> (Store<K>, BoxStream<'static, Result<K, watcher::Error>>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    if let Ok(informers) = SHARED.try_with(Arc::clone) {
        return informers.reflect(api);
    }
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .boxed();
    (reader, stream)
}

/// One cache and watch per resource URL (kind and namespace).
#[derive(Default)]
struct Informers {
    by_resource: Mutex<HashMap<(TypeId, String), Box<dyn Any + Send + Sync>>>,
    /// The tasks feeding the caches; aborted with the manager.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A shared cache and the senders of everyone following it.
struct Informer<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<K>>>>,
}

impl Drop for Informers {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Informers {
    fn reflect<K>(&self, api: Api<K>) -> (Store<K>, BoxStream<'static, Result<K, watcher::Error>>)
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    {
        let url = api.resource_url().to_owned();
        let mut by_resource = lock(&self.by_resource);
        let entry = by_resource
            .entry((TypeId::of::<K>(), url.clone()))
            .or_insert_with(|| {
                let (store, writer) = reflector::store();
                let subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<K>>>> = Arc::default();
                let mut changes =
                    reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
                        .default_backoff()
                        .touched_objects()
                        .boxed();
                let feed = subscribers.clone();
                lock(&self.tasks).push(tokio::spawn(async move {
                    while let Some(change) = changes.next().await {
                        match change {
                            Ok(obj) => lock(&feed).retain(|tx| tx.send(obj.clone()).is_ok()),
                            Err(e) => warn!("watching {url}: {e}"),
                        }
                    }
                }));
                Box::new(Informer { store, subscribers })
            });
        let Some(informer) = entry.downcast_ref::<Informer<K>>() else {
            unreachable!("informers are keyed by their type");
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        {
            // Under the feed's lock: no change slips between the replay
            // and the subscription (one may come twice; reconciles are
            // idempotent).
            let mut subscribers = lock(&informer.subscribers);
            for obj in informer.store.state() {
                let _ = tx.send(K::clone(&obj));
            }
            subscribers.push(tx);
        }
        let stream = stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok))).boxed();
        (informer.store.clone(), stream)
    }
}

/// Maps each changed object of a watch to the keys it affects.
pub(crate) fn trigger<K, O, I>(
    stream: BoxStream<'static, Result<O, watcher::Error>>,
    map: impl Fn(&O) -> I + Send + 'static,
) -> Triggers<K>
where
    K: Resource + 'static,
    K::DynamicType: Default,
    O: Send + 'static,
    I: IntoIterator<Item = ObjectRef<K>>,
    I::IntoIter: Send + 'static,
{
    stream
        .map_ok(move |o| stream::iter(map(&o).into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}

/// Runs a controller until its triggers end: `reconcile` for every key
/// whose object is in `store`, `gone` for a key whose object is not (it
/// must check the API before acting: the cache may merely lag).
pub(crate) async fn run<K, Ctx, E, Fut, GoneFut>(
    name: &'static str,
    store: Store<K>,
    triggers: Vec<Triggers<K>>,
    ctx: Arc<Ctx>,
    reconcile: impl FnMut(Arc<K>, Arc<Ctx>) -> Fut + Send + 'static,
    gone: impl Fn(ObjectRef<DynamicObject>, Arc<Ctx>) -> GoneFut,
) where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Debug + Eq + Hash + Clone + Unpin,
    Ctx: Send + Sync + 'static,
    E: std::error::Error + Send + 'static,
    Fut: std::future::Future<Output = Result<Action, E>> + Send + Unpin + 'static,
    GoneFut: Future<Output = ()>,
{
    let queue = stream::select_all(triggers);
    let error_policy = move |_obj: Arc<K>, err: &E, _ctx: Arc<Ctx>| {
        warn!("{name}: {err}");
        Action::requeue(RETRY)
    };
    let mut results = applier(
        reconcile,
        error_policy,
        ctx.clone(),
        store,
        queue,
        controller::Config::default(),
    )
    .boxed();
    while let Some(result) = results.next().await {
        match result {
            Ok((obj, _)) => debug!("{name}: reconciled {obj}"),
            Err(controller::Error::ObjectNotFound(obj)) => gone(*obj, ctx.clone()).await,
            Err(controller::Error::ReconcilerFailed(..)) => {}
            Err(e) => warn!("{name}: {e}"),
        }
    }
}
