//! Compiles `meshtune.v1` with protox (pure Rust), so no system `protoc` is needed.
use std::path::PathBuf;

/// With the crate's `serde` feature, `Hint` is also the controller's JSON hint (hints file,
/// admin API): one type from the hints file to the filter. Unknown fields are refused.
const HINT_TYPE_ATTRS: [(&str, &str); 1] = [(
    "meshtune.v1.Hint",
    "#[cfg_attr(feature = \"serde\", derive(serde::Serialize, serde::Deserialize), serde(deny_unknown_fields))]",
)];
/// Omitted JSON fields mean "no hint", and a hint without `ttl_ms` gets the default TTL.
const HINT_FIELD_ATTRS: [(&str, &str); 4] = [
    (
        "meshtune.v1.Hint.timeout_ms",
        "#[cfg_attr(feature = \"serde\", serde(default))]",
    ),
    (
        "meshtune.v1.Hint.max_retries",
        "#[cfg_attr(feature = \"serde\", serde(default))]",
    ),
    (
        "meshtune.v1.Hint.concurrency_limit",
        "#[cfg_attr(feature = \"serde\", serde(default))]",
    ),
    (
        "meshtune.v1.Hint.ttl_ms",
        "#[cfg_attr(feature = \"serde\", serde(default = \"crate::default_hint_ttl_ms\"))]",
    ),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    let file = root.join("meshtune/v1/meshtune.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    if std::env::var_os("CARGO_FEATURE_GRPC").is_some() {
        #[cfg(feature = "grpc")]
        {
            let mut b = tonic_prost_build::configure()
                .build_client(true)
                .build_server(true);
            for (path, attr) in HINT_TYPE_ATTRS {
                b = b.type_attribute(path, attr);
            }
            for (path, attr) in HINT_FIELD_ATTRS {
                b = b.field_attribute(path, attr);
            }
            b.compile_fds(fds)?;
        }
    } else {
        let mut c = prost_build::Config::new();
        for (path, attr) in HINT_TYPE_ATTRS {
            c.type_attribute(path, attr);
        }
        for (path, attr) in HINT_FIELD_ATTRS {
            c.field_attribute(path, attr);
        }
        c.compile_fds(fds)?;
    }
    Ok(())
}
