//! Generates the mesh CA's gRPC client and server from
//! `api/proto/shoal/meshca.proto`.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../api/proto");
    let proto = root.join("shoal/meshca.proto");
    // The proto lives outside this package: rebuild when it changes.
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-changed=build.rs");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[proto], &[root])
}
