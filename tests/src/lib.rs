//! shoal's lab: hosts in network namespaces joined by a bridge in a fabric
//! namespace, and the helpers the end-to-end tests share.

#[cfg(feature = "bench")]
pub mod bench;
pub mod cluster;
pub mod lab;
pub mod linearizability;
pub mod ports;
pub mod test_run;
