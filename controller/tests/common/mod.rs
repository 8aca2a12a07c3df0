//! Helpers shared by the controller's integration tests.
#![allow(dead_code)]

use meshtune_core::features::FEATURE_COUNT;
use meshtune_core::knobs::KNOB_COUNT;
use meshtune_policy::onnx::{export_mlp, Activation, MlpLayer, ModelMeta};
pub use meshtune_test_support::reports::{report, upstream};

/// An ONNX policy whose output is the constant `u` (zero weights, bias `u`).
pub fn const_model(u: [f32; KNOB_COUNT], version: &str) -> Vec<u8> {
    export_mlp(
        &[MlpLayer {
            in_dim: FEATURE_COUNT,
            out_dim: KNOB_COUNT,
            weight: vec![0.0; FEATURE_COUNT * KNOB_COUNT],
            bias: u.to_vec(),
            activation: Activation::Identity,
        }],
        &ModelMeta {
            model_version: version.into(),
            provenance: "controller test".into(),
        },
    )
    .unwrap()
}
