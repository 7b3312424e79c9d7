//! Generates the peer protocol's gRPC client and server from
//! `api/proto/shoal/raft.proto`.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../api/proto");
    let proto = root.join("shoal/raft.proto");
    // The proto lives outside this package, so a change to it alone would
    // not rebuild the generated code otherwise.
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-changed=build.rs");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[proto], &[root])
}
