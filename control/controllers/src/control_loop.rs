//! The shape every workload controller shares: reflector caches fed by
//! watches, trigger streams that map a watched object to the keys it
//! affects, and kube-runtime's `applier` running an idempotent reconcile per
//! key, with the keys whose object is gone handed to a clean-up.

use std::{fmt::Debug, future::Future, hash::Hash, sync::Arc, time::Duration};

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
use tracing::{debug, warn};

/// How often an object is reconciled when nothing about it changed: the
/// safety net for a missed event.
pub(crate) const RESYNC: Duration = Duration::from_secs(300);

/// How soon a failed reconcile is retried.
pub(crate) const RETRY: Duration = Duration::from_secs(2);

/// A stream of keys (objects of kind `K`) to reconcile.
pub(crate) type Triggers<K> = BoxStream<'static, Result<ObjectRef<K>, watcher::Error>>;

/// A watch of `api` kept in a cache; the stream yields every object that
/// changed (deleted ones included) once the cache holds the change. Poll the
/// stream (merge it into a controller's triggers) or the cache stays empty.
pub(crate) fn reflect<K>(api: Api<K>) -> (Store<K>, BoxStream<'static, Result<K, watcher::Error>>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .boxed();
    (reader, stream)
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
