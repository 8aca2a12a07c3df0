//! The models committed in `models/` load in tract, carry the contract metadata, and give
//! finite outputs in [0, 1] for typical and extreme inputs; `default.onnx` has a card.

use meshtune_core::contract::{check_metadata, META_MODEL_VERSION, META_PROVENANCE};
use meshtune_core::FEATURE_COUNT;
use meshtune_trainer::export::TractModel;
use std::path::PathBuf;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

#[test]
fn committed_models_follow_the_contract() {
    let inputs = vec![
        [0.0f32; FEATURE_COUNT],
        [0.5; FEATURE_COUNT],
        [1.0; FEATURE_COUNT],
        [1.5; FEATURE_COUNT],
    ];
    for name in ["supervised-v1", "ppo-v1", "default"] {
        let path = models_dir().join(format!("{name}.onnx"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(bytes.len() < 64 * 1024, "{name} is {} bytes", bytes.len());
        let m = TractModel::load(&bytes, name, inputs.len()).unwrap();
        check_metadata(|k| m.metadata.get(k).map(String::as_str)).unwrap();
        assert!(m.metadata[META_PROVENANCE].contains("meshtune train"));
        assert!(!m.metadata[META_MODEL_VERSION].is_empty());
        let out = m.run(&inputs).unwrap();
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
}
