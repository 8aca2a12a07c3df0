//! Compiles `meshtune.v1` with protox (pure Rust), so no system `protoc` is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    let file = root.join("meshtune/v1/meshtune.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    if std::env::var_os("CARGO_FEATURE_GRPC").is_some() {
        #[cfg(feature = "grpc")]
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .compile_fds(fds)?;
    } else {
        prost_build::Config::new().compile_fds(fds)?;
    }
    Ok(())
}
