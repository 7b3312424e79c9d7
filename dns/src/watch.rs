//! Keeps a [`ClusterView`] fresh from the API: one kube-rs watcher per kind
//! (Services, EndpointSlices, Pods), all namespaces.

use std::fmt::Debug;

use futures_util::StreamExt;
use k8s_openapi::{
    api::{core::v1::Pod, core::v1::Service, discovery::v1::EndpointSlice},
    serde::de::DeserializeOwned,
};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt, watcher},
};

use crate::view::{ClusterView, Kind3};

/// Feeds `view` from the API until the process stops; lost watches are
/// re-established with kube-rs' default backoff, and each relist replaces
/// what the view held for that kind.
pub async fn watch(client: Client, view: ClusterView) {
    tokio::join!(
        run::<Service>(
            Api::all(client.clone()),
            &view,
            Kind3::Services,
            ClusterView::apply_service,
            ClusterView::delete_service,
            ClusterView::replace_services,
        ),
        run::<EndpointSlice>(
            Api::all(client.clone()),
            &view,
            Kind3::EndpointSlices,
            ClusterView::apply_endpoint_slice,
            ClusterView::delete_endpoint_slice,
            ClusterView::replace_endpoint_slices,
        ),
        run::<Pod>(
            Api::all(client),
            &view,
            Kind3::Pods,
            ClusterView::apply_pod,
            ClusterView::delete_pod,
            ClusterView::replace_pods,
        ),
    );
}

async fn run<K>(
    api: Api<K>,
    view: &ClusterView,
    kind: Kind3,
    apply: fn(&ClusterView, &K),
    delete: fn(&ClusterView, &str, &str),
    replace: fn(&ClusterView, &[K]),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(stream);
    let mut listing: Vec<K> = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(obj)) => apply(view, &obj),
            Ok(watcher::Event::Delete(obj)) => {
                let meta = obj.meta();
                if let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) {
                    delete(view, ns, name);
                }
            }
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(obj)) => listing.push(obj),
            Ok(watcher::Event::InitDone) => {
                replace(view, &listing);
                listing = Vec::new();
                view.mark_synced(kind);
            }
            Err(e) => {
                // The backoff retries; the view keeps answering from what it has.
                tracing::warn!(?kind, error = %e, "DNS watch failed; retrying");
            }
        }
    }
}
