//! shoal's end-to-end tests: real processes and traffic in lab hosts (see
//! `shoal_e2e::lab`). They need root and iproute2; without them they fail
//! with the reason, they do not skip.

mod lab;
mod metrics;
mod pods;
mod sock_lb;
mod workloads;
