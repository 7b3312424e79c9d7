//! shoal's end-to-end tests: real processes and traffic in lab hosts (see
//! `shoal_e2e::lab`). They need root and iproute2; without them they fail
//! with the reason, they do not skip.

mod attach;
mod cert_rotation;
mod demo;
mod examples;
mod flows;
mod ha;
mod hostport;
mod lab;
mod mesh;
mod metrics;
mod nodeport;
mod nodeport_packets;
mod pod_packets;
mod pods;
mod policy;
mod roles;
mod services;
mod sock_lb;
mod workloads;

/// Whether a pod (kubectl's JSON) has condition Ready=True.
fn ready(pod: &serde_json::Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}
