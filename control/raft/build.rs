//! Generates the peer protocol's gRPC client and server from
//! `api/proto/shoal/raft.proto`.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../api/proto");
    let proto = root.join("shoal/raft.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[proto], &[root])
}
