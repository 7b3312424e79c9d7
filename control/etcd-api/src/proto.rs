//! The etcd v3 wire types and gRPC servers, generated from
//! `api/proto/etcd` (etcd's package and field numbers).

/// etcd's `mvccpb` package: key-values and events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `etcdserverpb` package: requests, responses and services.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
