//! The models committed in `models/` pass the controller's validation (`meshtune_policy`'s
//! runtime: contract metadata, signature, smoke test), give finite outputs in [0, 1] for typical
//! and extreme inputs, are byte for byte what the one exporter (`meshtune_policy::onnx`) makes
//! of their weights and metadata, and have a card.

use meshtune_core::contract::{META_MODEL_VERSION, META_PROVENANCE};
use meshtune_core::FEATURE_COUNT;
use meshtune_policy::onnx::{decode_model, export_mlp, read_mlp, ModelMeta};
use meshtune_policy::OnnxPolicy;
use std::path::PathBuf;

const MODELS: [&str; 5] = ["supervised-v2", "ppo-v2", "ppo-v3", "ppo-v4", "default"];

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn read(name: &str) -> Vec<u8> {
    let path = models_dir().join(format!("{name}.onnx"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn committed_models_follow_the_contract() {
    let inputs = vec![
        [0.0f32; FEATURE_COUNT],
        [0.5; FEATURE_COUNT],
        [1.0; FEATURE_COUNT],
        [1.5; FEATURE_COUNT],
    ];
    for name in MODELS {
        let bytes = read(name);
        assert!(bytes.len() < 64 * 1024, "{name} is {} bytes", bytes.len());
        let policy = meshtune_policy::validate(&bytes, name).unwrap();
        assert!(
            policy.provenance().unwrap().contains("meshtune train"),
            "{name}"
        );
        assert!(!policy.metadata()[META_MODEL_VERSION].is_empty(), "{name}");
        let out = policy.infer(&inputs).unwrap();
        assert!(
            out.iter()
                .flatten()
                .all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
            "{name}: {out:?}"
        );
        // The policy reacts to its input (not a constant function).
        assert_ne!(out[0], out[2], "{name}");
        assert!(
            models_dir().join(format!("{name}.md")).exists(),
            "{name} has no card"
        );
    }
    // models/default.md: "a byte-identical copy of ppo-v4.onnx".
    assert!(read("default") == read("ppo-v4"));
}

#[test]
fn committed_models_re_export_byte_for_byte() {
    for name in MODELS {
        let bytes = read(name);
        let proto = decode_model(&bytes).unwrap();
        let layers = read_mlp(&proto).unwrap_or_else(|e| panic!("{name}: {e}"));
        let metadata = OnnxPolicy::from_bytes(&bytes, name)
            .unwrap()
            .metadata()
            .clone();
        let meta = ModelMeta {
            model_version: metadata[META_MODEL_VERSION].clone(),
            provenance: metadata[META_PROVENANCE].clone(),
        };
        let again = export_mlp(&layers, &meta).unwrap();
        // producer_version is the crate version, compared first so that a version bump reads
        // as such rather than as an unexplained byte difference.
        assert_eq!(
            proto.producer_version,
            decode_model(&again).unwrap().producer_version,
            "{name}: written by another meshtune version"
        );
        assert!(again == bytes, "{name}: the exporter's output differs");
    }
}
