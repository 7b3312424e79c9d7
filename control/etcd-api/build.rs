//! Generates the etcd v3 messages and gRPC servers from `api/proto/etcd`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../../api/proto/etcd");
    let rpc = root.join("etcdserverpb/rpc.proto");
    let kv = root.join("mvccpb/kv.proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_protos(&[rpc, kv], &[root])?;
    Ok(())
}
