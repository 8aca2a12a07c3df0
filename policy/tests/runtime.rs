//! Real ONNX files from the exporter, loaded by tract: numerical agreement with the reference
//! forward pass, metadata, contract refusals, smoke-test refusals.

mod common;

use common::*;
use meshtune_core::contract::{ContractError, META_PROVENANCE};
use meshtune_core::env::Policy;
use meshtune_core::features::{Features, FEATURE_COUNT};
use meshtune_core::knobs::{Knobs, KNOB_COUNT, KNOB_SPECS};
use meshtune_policy::onnx::mlp_forward;
use meshtune_policy::{validate, validate_path, ModelError, OnnxPolicy};

fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".onnx").tempfile().unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
    f
}

#[test]
fn export_load_and_infer_match_reference_for_batch_1_and_64() {
    let layers = random_mlp(42);
    let bytes = meshtune_policy::onnx::export_mlp(&layers, &meta("rand-42")).unwrap();
    let file = write_temp(&bytes);
    let policy = OnnxPolicy::from_path(file.path()).unwrap();
    for n in [1usize, 64] {
        let batch = random_batch(n as u64, n);
        let got = policy.infer(&batch).unwrap();
        assert_eq!(got.len(), n);
        let flat: Vec<f32> = batch.iter().flatten().copied().collect();
        let want = mlp_forward(&layers, &flat);
        assert_eq!(want.len(), n * KNOB_COUNT);
        let mut max_diff = 0f32;
        for (row, w) in got.iter().zip(want.chunks_exact(KNOB_COUNT)) {
            for (a, b) in row.iter().zip(w) {
                max_diff = max_diff.max((a - b).abs());
            }
        }
        assert!(max_diff <= 1e-5, "batch {n}: max diff {max_diff}");
    }
    // Same plan, different batch sizes in any order (symbolic N).
    assert_eq!(policy.infer(&random_batch(5, 3)).unwrap().len(), 3);
    assert!(policy.infer(&[]).unwrap().is_empty());
}

#[test]
fn identity_and_all_activations_round_trip() {
    use meshtune_policy::onnx::{Activation, MlpLayer};
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(9);
    let acts = [
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Identity,
    ];
    let mut layers: Vec<MlpLayer> = Vec::new();
    let mut width = FEATURE_COUNT;
    for (i, a) in acts.iter().enumerate() {
        let out = if i == acts.len() - 1 {
            KNOB_COUNT
        } else {
            8 + i
        };
        layers.push(random_layer(&mut rng, width, out, *a));
        width = out;
    }
    let bytes = meshtune_policy::onnx::export_mlp(&layers, &meta("acts")).unwrap();
    let policy = OnnxPolicy::from_bytes(&bytes, "acts").unwrap();
    let batch = random_batch(11, 17);
    let got = policy.infer(&batch).unwrap();
    let want = mlp_forward(&layers, &batch.concat());
    for (a, b) in got.concat().iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
    }
}

#[test]
fn metadata_is_read_through_tract_properties() {
    let policy = validate(&good_model(7, "sup-v3"), "mem").unwrap();
    assert_eq!(policy.model_version(), "sup-v3");
    assert_eq!(
        policy.provenance(),
        Some("meshtune-policy integration test")
    );
    assert_eq!(
        policy.metadata().get(META_PROVENANCE).map(String::as_str),
        Some("meshtune-policy integration test")
    );
    assert_eq!(policy.origin(), "mem");
}

#[test]
fn contract_violations_are_refused_naming_the_source() {
    let f = write_temp(&wrong_feature_names());
    let e = validate_path(f.path()).unwrap_err();
    assert!(
        matches!(&e, ModelError::Contract { source: ContractError::Names { key, .. }, .. } if *key == "meshtune.features"),
        "{e}"
    );
    assert!(
        e.to_string().contains(&f.path().display().to_string()),
        "{e}"
    );

    let e = validate(&wrong_contract_version(), "configmap ns/m").unwrap_err();
    assert!(
        matches!(
            &e,
            ModelError::Contract {
                source: ContractError::Version { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().starts_with("configmap ns/m: "), "{e}");

    let e = validate(&corrupt_model(), "x.onnx").unwrap_err();
    assert_eq!(e.reason_label(), "decode", "{e}");

    let e = validate(&wrong_width_model(), "w.onnx").unwrap_err();
    assert_eq!(e.reason_label(), "signature", "{e}");
    assert!(e.to_string().contains("[N, 11]"), "{e}");
}

#[test]
fn nan_and_out_of_range_outputs_fail_the_smoke_test() {
    // Loads (contract fine, finite weights) but outputs NaN: the smoke test refuses it.
    let nan = nan_output_model();
    let p = OnnxPolicy::from_bytes(&nan, "nan.onnx").unwrap();
    assert!(p.infer(&[[0.0; FEATURE_COUNT]]).unwrap()[0]
        .iter()
        .all(|v| v.is_finite()));
    assert!(p.infer(&[[1.0; FEATURE_COUNT]]).unwrap()[0]
        .iter()
        .any(|v| v.is_nan()));
    let e = validate(&nan, "nan.onnx").unwrap_err();
    assert!(matches!(e, ModelError::Output { .. }), "{e}");
    assert!(e.to_string().contains("NaN"), "{e}");

    // NaN weights are refused up front, naming the tensor.
    let e = OnnxPolicy::from_bytes(&nan_model(), "nanw.onnx").unwrap_err();
    assert!(matches!(e, ModelError::Weights { .. }), "{e}");
    assert!(e.to_string().contains("layer2.weight"), "{e}");

    let e = validate(&out_of_range_model(), "big.onnx").unwrap_err();
    assert!(matches!(e, ModelError::Output { .. }), "{e}");
    assert!(e.to_string().contains("outside [-0.5, 1.5]"), "{e}");
}

#[test]
fn policy_trait_yields_knobs_within_bounds() {
    let mut p = validate(&good_model(3, "trait"), "mem").unwrap();
    assert_eq!(p.name(), "trait");
    let f: Features = meshtune_policy::runtime::typical_features()[1].1;
    let k = p.decide(&f, &Knobs::istio_defaults());
    let direct = Knobs::from_normalised(&p.infer(&[f.normalised()]).unwrap()[0]);
    assert_eq!(k, direct);
    for (v, s) in k.0.iter().zip(KNOB_SPECS.iter()) {
        assert!(*v >= s.min && *v <= s.max, "{} = {v}", s.name);
    }
    assert_eq!(p.decide_batch(&[f, f]).unwrap(), vec![direct, direct]);
}

#[test]
fn embedded_default_is_valid_or_clearly_absent() {
    match meshtune_policy::embedded_default_bytes() {
        Some(_) => {
            let p = meshtune_policy::embedded_default().unwrap();
            assert!(!p.model_version().is_empty());
        }
        None => {
            let e = meshtune_policy::embedded_default().unwrap_err();
            assert!(e.to_string().contains("no embedded model"), "{e}");
        }
    }
}

/// Fuzzing finding (`model` target): a graph output that no node produces made tract panic
/// inside `model_for_proto_model` (an index into its outlet map), which ended the loading task.
/// Now the model is refused with an error naming the origin.
#[test]
fn graph_output_no_node_produces_is_refused_not_a_panic() {
    use prost::Message;
    let layers = random_mlp(7);
    let bytes = meshtune_policy::onnx::export_mlp(&layers, &meta("dangling")).unwrap();
    let mut proto = meshtune_policy::onnx::decode_model(&bytes).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    // The node that produced `knobs` now writes another name: `knobs` dangles.
    for node in &mut graph.node {
        for out in &mut node.output {
            if out == "knobs" {
                *out = "knobs_elsewhere".into();
            }
        }
    }
    let bad = proto.encode_to_vec();
    match OnnxPolicy::from_bytes(&bad, "dangling.onnx") {
        Err(ModelError::Load { origin, reason }) => {
            assert_eq!(origin, "dangling.onnx");
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("refused, but not as a load error: {other}"),
        Ok(_) => panic!("a model whose output no node produces was accepted"),
    }
    // The store-facing entry point refuses it the same way.
    assert!(matches!(
        validate(&bad, "dangling.onnx"),
        Err(ModelError::Load { .. })
    ));
}
