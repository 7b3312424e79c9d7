//! EndpointSlices (and the legacy core Endpoints) for every Service with a
//! selector, as Kubernetes' endpointslice and endpoints controllers make
//! them: one set of slices per address family of the Service, endpoints
//! from the matching pods that have an IP of that family, ready / serving /
//! terminating conditions, ports resolved per pod, at most
//! [`MAX_ENDPOINTS_PER_SLICE`] endpoints per slice.
//!
//! The reconcile lists the Service's slices and pods from the API (a
//! consistent read), so a slice it created a moment ago is never created
//! twice however far the watch caches lag; the caches only decide which
//! Services to look at. Nothing is written when the slices already say
//! what they should.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use futures_util::{FutureExt, future::BoxFuture};
use k8s_openapi::{
    api::{
        core::v1::{
            EndpointAddress, EndpointPort as CoreEndpointPort, EndpointSubset, Endpoints,
            ObjectReference, Pod, Service, ServicePort,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::OwnerReference, util::intstr::IntOrString},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    core::{DynamicObject, Selector, SelectorExt},
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use tracing::info;

use crate::control_loop::{self, RESYNC};

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`] (Kubernetes' own, so
/// tools that look for it find shoal's slices).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// The label Kubernetes 1.33 puts on the Endpoints its controller manages.
pub const ENDPOINTS_MANAGED_BY_LABEL: &str = "endpoints.kubernetes.io/managed-by";
/// This controller's value of [`ENDPOINTS_MANAGED_BY_LABEL`].
pub const ENDPOINTS_MANAGED_BY: &str = "endpoint-controller";
/// The label marking the slices of a headless Service.
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Kubernetes' default (`--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("service {namespace}/{service}: {what}: {source}")]
    Api {
        /// The Service's namespace.
        namespace: String,
        /// The Service.
        service: String,
        /// What was being done.
        what: String,
        /// The API's answer.
        source: kube::Error,
    },
}

struct Ctx {
    client: Client,
}

/// Runs the controller until its watches end.
pub async fn run(client: Client) {
    let (services, service_events) = control_loop::reflect(Api::<Service>::all(client.clone()));
    let (_pods, pod_events) = control_loop::reflect(Api::<Pod>::all(client.clone()));
    let (slices, slice_events) = control_loop::reflect(Api::<EndpointSlice>::all(client.clone()));
    let by_pod = {
        let services = services.clone();
        move |pod: &Pod| services_of_pod(&services, &slices, pod)
    };
    let triggers = vec![
        control_loop::trigger(service_events, |s: &Service| [ObjectRef::from_obj(s)]),
        control_loop::trigger(pod_events, by_pod),
        control_loop::trigger(slice_events, |s: &EndpointSlice| {
            let ns = s.namespace();
            s.labels()
                .get(SERVICE_NAME_LABEL)
                .filter(|_| {
                    s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
                })
                .map(|svc| ObjectRef::new(svc).within(ns.as_deref().unwrap_or_default()))
        }),
    ];
    control_loop::run(
        "endpointslice controller",
        services,
        triggers,
        Arc::new(Ctx { client }),
        |svc, ctx| reconcile(svc, ctx).boxed(),
        gone,
    )
    .await;
}

/// The Services a pod change may affect: those selecting it now, and those
/// whose slices list it (it may have stopped matching).
fn services_of_pod(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    pod: &Pod,
) -> Vec<ObjectRef<Service>> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let mut out: BTreeSet<String> = services
        .state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(&ns))
        .filter(|s| selector_of(s).is_some_and(|sel| sel.matches(pod.labels())))
        .map(|s| s.name_any())
        .collect();
    for slice in slices.state() {
        if slice.namespace().as_deref() != Some(&ns) {
            continue;
        }
        let lists_pod = slice.endpoints.iter().any(|e| {
            e.target_ref
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(&name))
        });
        if lists_pod && let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) {
            out.insert(svc.clone());
        }
    }
    out.into_iter()
        .map(|svc| ObjectRef::new(&svc).within(&ns))
        .collect()
}

/// The Service's selector, or none when this controller leaves it alone
/// (no selector, or an ExternalName Service).
fn selector_of(svc: &Service) -> Option<Selector> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    Some(selector.clone().into_iter().collect())
}

fn api_err(svc: &Service, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let namespace = svc.namespace().unwrap_or_default();
    let service = svc.name_any();
    let what = what.into();
    move |source| Error::Api {
        namespace,
        service,
        what,
        source,
    }
}

fn managed_slices_selector(service: &str) -> String {
    format!("{SERVICE_NAME_LABEL}={service},{MANAGED_BY_LABEL}={MANAGED_BY}")
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let slices_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = slices_api
        .list(&ListParams::default().labels(&managed_slices_selector(&name)))
        .await
        .map_err(api_err(&svc, "listing its EndpointSlices"))?
        .items;
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(selector) = selector_of(&svc) else {
        // A Service that lost its selector keeps no slices of ours.
        for slice in existing {
            delete_slice(&slices_api, &svc, &slice).await?;
        }
        return Ok(Action::requeue(RESYNC));
    };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = pods_api
        .list(&ListParams::default().labels_from(&selector))
        .await
        .map_err(api_err(
            &svc,
            format!("listing the pods selected by {selector}"),
        ))?
        .items;

    let desired = desired_slices(&svc, &pods);
    sync_slices(&slices_api, &svc, existing, desired).await?;
    sync_endpoints(&ctx.client, &svc, &pods).await?;
    Ok(Action::requeue(RESYNC))
}

/// A Service the cache no longer has: once the API confirms it is gone,
/// its slices (and the Endpoints this controller made) go too.
fn gone(obj: ObjectRef<DynamicObject>, ctx: Arc<Ctx>) -> BoxFuture<'static, ()> {
    async move {
        let ns = obj.namespace.clone().unwrap_or_default();
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
        match services.get_opt(&obj.name).await {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return,
        }
        let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
        let dp = DeleteParams::default();
        let lp = ListParams::default().labels(&managed_slices_selector(&obj.name));
        if let Ok(list) = slices.list(&lp).await {
            for slice in list.items {
                let _ = slices.delete(&slice.name_any(), &dp).await;
            }
        }
        let endpoints: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
        if let Ok(Some(ep)) = endpoints.get_opt(&obj.name).await
            && ep
                .labels()
                .get(ENDPOINTS_MANAGED_BY_LABEL)
                .map(String::as_str)
                == Some(ENDPOINTS_MANAGED_BY)
        {
            let _ = endpoints.delete(&obj.name, &dp).await;
        }
        info!(service = %obj, "endpointslice controller: removed the slices of a deleted service");
    }
    .boxed()
}

/// The address families the Service serves, as slice address types.
fn address_types(svc: &Service) -> Vec<&'static str> {
    let spec = svc.spec.as_ref();
    let families: Vec<&str> = spec
        .and_then(|s| s.ip_families.as_ref())
        .map(|f| f.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let mut out: Vec<&'static str> = families
        .iter()
        .filter_map(|f| match *f {
            "IPv4" => Some("IPv4"),
            "IPv6" => Some("IPv6"),
            _ => None,
        })
        .collect();
    if out.is_empty() {
        // No families recorded (an old object): the cluster IP tells, else IPv4.
        let v6 = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .is_some_and(|ip| ip.is_ipv6());
        out.push(if v6 { "IPv6" } else { "IPv4" });
    }
    out.dedup();
    out
}

/// The pod's IP of one family ("IPv4" / "IPv6").
fn pod_ip(pod: &Pod, family: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    let mut ips: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip.as_deref());
    }
    ips.into_iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv6() == (family == "IPv6"))
        .map(|ip| ip.to_string())
}

/// Whether the pod's Ready condition is True.
pub(crate) fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// A Service port as this pod serves it; none when a named target port
/// is not among the pod's container ports.
fn resolve_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .map(|p| p.container_port),
    }
}

fn slice_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(resolve_port(pod, p)?),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect()
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.namespace(),
        name: Some(pod.name_any()),
        uid: pod.uid(),
        ..ObjectReference::default()
    }
}

fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = spec.hostname.as_ref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == Some(svc.name_any().as_str())).then(|| host.clone())
}

/// One slice as it should be: its family, ports and endpoints.
#[derive(Clone, Debug, PartialEq)]
struct DesiredSlice {
    address_type: &'static str,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
}

/// The slices the Service should have: per family, pods grouped by the
/// ports they resolve to, sorted, cut into slices of at most 100; a family
/// without endpoints keeps one empty placeholder slice, as Kubernetes does.
fn desired_slices(svc: &Service, pods: &[Pod]) -> Vec<DesiredSlice> {
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut out = Vec::new();
    for family in address_types(svc) {
        // Keyed by the ports' JSON so equal port lists group together.
        let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
        for pod in pods {
            if pod_terminal(pod) {
                continue;
            }
            let Some(ip) = pod_ip(pod, family) else {
                continue;
            };
            let ready = pod_ready(pod);
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let endpoint = Endpoint {
                addresses: vec![ip],
                conditions: Some(EndpointConditions {
                    ready: Some(publish_not_ready || (ready && !terminating)),
                    serving: Some(ready || publish_not_ready),
                    terminating: Some(terminating),
                }),
                hostname: hostname(svc, pod),
                node_name: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .filter(|n| !n.is_empty()),
                target_ref: Some(target_ref(pod)),
                ..Endpoint::default()
            };
            let ports = slice_ports(svc, pod);
            let key = serde_json::to_string(&ports).unwrap_or_default();
            groups
                .entry(key)
                .or_insert_with(|| (ports, Vec::new()))
                .1
                .push(endpoint);
        }
        if groups.is_empty() {
            out.push(DesiredSlice {
                address_type: family,
                ports: Vec::new(),
                endpoints: Vec::new(),
            });
            continue;
        }
        for (_, (ports, mut endpoints)) in groups {
            endpoints.sort_by(|a, b| {
                let key = |e: &Endpoint| {
                    (
                        e.target_ref.as_ref().and_then(|r| r.name.clone()),
                        e.addresses.clone(),
                    )
                };
                key(a).cmp(&key(b))
            });
            for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
                out.push(DesiredSlice {
                    address_type: family,
                    ports: ports.clone(),
                    endpoints: chunk.to_vec(),
                });
            }
        }
    }
    out
}

fn owner_ref(svc: &Service) -> Option<OwnerReference> {
    let mut owner = svc.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    labels.remove(HEADLESS_LABEL);
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels
}

fn slice_matches(slice: &EndpointSlice, want: &DesiredSlice, svc: &Service) -> bool {
    slice.address_type == want.address_type
        && slice.ports.clone().unwrap_or_default() == want.ports
        && slice.endpoints == want.endpoints
        && slice.labels() == &slice_labels(svc)
        && slice.owner_references() == owner_ref(svc).as_slice()
}

async fn delete_slice(
    api: &Api<EndpointSlice>,
    svc: &Service,
    slice: &EndpointSlice,
) -> Result<(), Error> {
    let name = slice.name_any();
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(api_err(svc, format!("deleting EndpointSlice {name}"))(e)),
    }
}

async fn sync_slices(
    api: &Api<EndpointSlice>,
    svc: &Service,
    existing: Vec<EndpointSlice>,
    desired: Vec<DesiredSlice>,
) -> Result<(), Error> {
    // Pair each wanted slice with an existing one of the same family and
    // ports (oldest name first), so an unchanged slice is left alone.
    let mut pool: Vec<EndpointSlice> = existing;
    pool.sort_by_key(|s| s.name_any());
    let mut to_write: Vec<(Option<EndpointSlice>, DesiredSlice)> = Vec::new();
    let mut unpaired = Vec::new();
    for want in desired {
        if let Some(i) = pool.iter().position(|s| slice_matches(s, &want, svc)) {
            pool.remove(i);
        } else {
            unpaired.push(want);
        }
    }
    for want in unpaired {
        let same_kind = pool.iter().position(|s| {
            s.address_type == want.address_type && s.ports.clone().unwrap_or_default() == want.ports
        });
        let reuse = same_kind
            .or_else(|| {
                pool.iter()
                    .position(|s| s.address_type == want.address_type)
            })
            .map(|i| pool.remove(i));
        to_write.push((reuse, want));
    }
    for slice in &pool {
        delete_slice(api, svc, slice).await?;
    }
    for (current, want) in to_write {
        let mut slice = current.unwrap_or_else(|| EndpointSlice {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!("{}-", svc.name_any())),
                namespace: svc.namespace(),
                ..Default::default()
            },
            ..EndpointSlice::default()
        });
        slice.address_type = want.address_type.into();
        slice.ports = Some(want.ports);
        slice.endpoints = want.endpoints;
        slice.metadata.labels = Some(slice_labels(svc));
        slice.metadata.owner_references = owner_ref(svc).map(|o| vec![o]);
        match &slice.metadata.name {
            Some(name) => {
                let name = name.clone();
                api.replace(&name, &PostParams::default(), &slice)
                    .await
                    .map_err(api_err(svc, format!("updating EndpointSlice {name}")))?;
            }
            None => {
                api.create(&PostParams::default(), &slice)
                    .await
                    .map_err(api_err(svc, "creating an EndpointSlice"))?;
            }
        }
    }
    Ok(())
}

/// The legacy Endpoints object: the Service's primary family only; ready
/// addresses and not-ready ones, terminating pods left out unless the
/// Service publishes not-ready addresses.
fn desired_subsets(svc: &Service, pods: &[Pod]) -> Vec<EndpointSubset> {
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let Some(family) = address_types(svc).first().copied() else {
        return Vec::new();
    };
    let mut groups: BTreeMap<String, EndpointSubset> = BTreeMap::new();
    for pod in pods {
        if pod_terminal(pod) || (pod.metadata.deletion_timestamp.is_some() && !publish_not_ready) {
            continue;
        }
        let Some(ip) = pod_ip(pod, family) else {
            continue;
        };
        let ports: Vec<CoreEndpointPort> = slice_ports(svc, pod)
            .into_iter()
            .map(|p| CoreEndpointPort {
                name: p.name.filter(|n| !n.is_empty()),
                port: p.port.unwrap_or_default(),
                protocol: p.protocol,
                app_protocol: p.app_protocol,
            })
            .collect();
        if ports.is_empty() {
            continue;
        }
        let address = EndpointAddress {
            ip,
            hostname: hostname(svc, pod),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            target_ref: Some(target_ref(pod)),
        };
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let subset = groups.entry(key).or_insert_with(|| EndpointSubset {
            ports: Some(ports),
            ..EndpointSubset::default()
        });
        let list = if pod_ready(pod) || publish_not_ready {
            &mut subset.addresses
        } else {
            &mut subset.not_ready_addresses
        };
        list.get_or_insert_with(Vec::new).push(address);
    }
    let mut out: Vec<EndpointSubset> = groups.into_values().collect();
    for subset in &mut out {
        for list in [&mut subset.addresses, &mut subset.not_ready_addresses]
            .into_iter()
            .flatten()
        {
            list.sort_by(|a, b| a.ip.cmp(&b.ip));
        }
    }
    out
}

async fn sync_endpoints(client: &Client, svc: &Service, pods: &[Pod]) -> Result<(), Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let api: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
    let subsets = desired_subsets(svc, pods);
    let mut labels = svc.labels().clone();
    labels.insert(
        ENDPOINTS_MANAGED_BY_LABEL.into(),
        ENDPOINTS_MANAGED_BY.into(),
    );
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    let current = api
        .get_opt(&name)
        .await
        .map_err(api_err(svc, "reading its Endpoints"))?;
    let subsets = (!subsets.is_empty()).then_some(subsets);
    match current {
        Some(mut ep) => {
            let have = ep.subsets.clone().filter(|s| !s.is_empty());
            if have == subsets && ep.labels() == &labels {
                return Ok(());
            }
            ep.subsets = subsets;
            ep.metadata.labels = Some(labels);
            api.replace(&name, &PostParams::default(), &ep)
                .await
                .map_err(api_err(svc, "updating its Endpoints"))?;
        }
        None => {
            let ep = Endpoints {
                metadata: kube::api::ObjectMeta {
                    name: Some(name),
                    namespace: Some(ns),
                    labels: Some(labels),
                    ..Default::default()
                },
                subsets,
            };
            api.create(&PostParams::default(), &ep)
                .await
                .map_err(api_err(svc, "creating its Endpoints"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
