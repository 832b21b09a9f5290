//! Compiles `protos/*.proto` with protox (pure Rust), so no machine needs a system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("protos");
    let files = [dir.join("averaging.proto"), dir.join("runtime.proto")];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&dir])?;
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        // Tensor buffers become `bytes::Bytes`, so transports hand them over without copying.
        .bytes(".")
        .build_client(grpc)
        .build_server(grpc)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
