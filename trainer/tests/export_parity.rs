//! A trained network through the one exporter (`meshtune_policy::onnx`): the controller's
//! runtime (`OnnxPolicy`) loads the file, the contract metadata is there, and its output matches
//! candle's forward pass within 1e-5; `write_model` writes only models that export and
//! validate. With Python's onnx + onnxruntime installed, the file also passes `onnx.checker` and
//! onnxruntime agrees (skipped otherwise).

use candle_nn::VarMap;
use meshtune_core::{FEATURE_COUNT, KNOB_COUNT};
use meshtune_policy::onnx::{export_mlp, Activation, ExportError, ModelMeta};
use meshtune_policy::OnnxPolicy;
use meshtune_trainer::export::write_model;
use meshtune_trainer::mlp::{forward_rows, Mlp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn net(seed: u64, hidden: Activation) -> Mlp {
    let vm = VarMap::new();
    let mut rng = StdRng::seed_from_u64(seed);
    Mlp::new(
        &vm,
        "p",
        &[FEATURE_COUNT, 24, 16, KNOB_COUNT],
        hidden,
        Activation::Sigmoid,
        2.0,
        &mut rng,
    )
    .unwrap()
}

fn inputs(n: usize) -> Vec<[f32; FEATURE_COUNT]> {
    let mut rng = StdRng::seed_from_u64(99);
    (0..n)
        .map(|_| std::array::from_fn(|_| rng.random_range(-0.2f32..1.5)))
        .collect()
}

fn info() -> ModelMeta {
    ModelMeta {
        model_version: "parity-test".into(),
        provenance: "cargo test".into(),
    }
}

#[test]
fn tract_matches_candle_within_1e_5() {
    for act in [Activation::Tanh, Activation::Relu] {
        let mlp = net(5, act);
        let bytes = export_mlp(&mlp.to_layers().unwrap(), &info()).unwrap();
        assert!(bytes.len() < 16 * 1024, "{} bytes", bytes.len());
        let xs = inputs(32);
        // from_bytes checks the contract metadata, names and widths.
        let model = OnnxPolicy::from_bytes(&bytes, "test").unwrap();
        assert_eq!(model.model_version(), "parity-test");
        assert_eq!(model.provenance(), Some("cargo test"));
        let got = model.infer(&xs).unwrap();
        let rows: Vec<Vec<f32>> = xs.iter().map(|x| x.to_vec()).collect();
        let want = forward_rows(&mlp, &rows).unwrap();
        let mut max = 0f32;
        for (g, w) in got.iter().zip(&want) {
            for (a, b) in g.iter().zip(w) {
                max = max.max((a - b).abs());
            }
        }
        assert!(max <= 1e-5, "{act:?}: max diff {max}");
        // outputs are non-trivial (not all identical) and inside [0, 1]
        assert!(got.iter().flatten().all(|v| (0.0..=1.0).contains(v)));
        assert!(got[0] != got[1]);
    }
}

#[test]
fn export_refuses_wrong_shapes_and_nan() {
    let vm = VarMap::new();
    let mut rng = StdRng::seed_from_u64(1);
    let small = Mlp::new(
        &vm,
        "p",
        &[3, 4, KNOB_COUNT],
        Activation::Tanh,
        Activation::Sigmoid,
        1.0,
        &mut rng,
    )
    .unwrap();
    assert!(matches!(
        export_mlp(&small.to_layers().unwrap(), &info()),
        Err(ExportError::ContractShape {
            expected: FEATURE_COUNT,
            found: 3,
            ..
        })
    ));
    let mut layers = net(1, Activation::Tanh).to_layers().unwrap();
    layers[1].weight[3] = f32::NAN;
    assert_eq!(
        export_mlp(&layers, &info()),
        Err(ExportError::NonFinite {
            layer: 1,
            what: "weight",
            index: 3
        })
    );
}

#[test]
fn write_model_writes_only_valid_models() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/m.onnx");
    let layers = net(3, Activation::Tanh).to_layers().unwrap();
    let size = write_model(&path, &layers, &info()).unwrap();
    let written = std::fs::read(&path).unwrap();
    assert_eq!(written.len(), size);
    assert_eq!(written, export_mlp(&layers, &info()).unwrap());
    assert_eq!(
        meshtune_policy::validate_path(&path)
            .unwrap()
            .model_version(),
        "parity-test"
    );

    // Non-finite weights: refused by the exporter, nothing written.
    let mut bad = layers.clone();
    bad[0].bias[0] = f32::INFINITY;
    let bad_path = dir.path().join("bad.onnx");
    let e = write_model(&bad_path, &bad, &info()).unwrap_err();
    assert!(e.to_string().contains("non-finite"), "{e}");
    assert!(!bad_path.exists());

    // Exports, but the controller's smoke test refuses it (identity output far outside
    // [0, 1]): nothing written either.
    let mut wild = layers;
    let last = wild.len() - 1;
    wild[last].activation = Activation::Identity;
    wild[last].bias = vec![50.0; KNOB_COUNT];
    let e = write_model(&bad_path, &wild, &info()).unwrap_err();
    assert!(e.to_string().contains("refused by the controller"), "{e}");
    assert!(!bad_path.exists());
}

#[test]
fn onnx_checker_and_onnxruntime_agree_when_available() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import onnx, onnxruntime"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipping: python3 with onnx + onnxruntime not available");
        return;
    }
    let mlp = net(8, Activation::Tanh);
    let bytes = export_mlp(&mlp.to_layers().unwrap(), &info()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::write(&model, &bytes).unwrap();
    let xs = inputs(8);
    let rows: Vec<Vec<f32>> = xs.iter().map(|x| x.to_vec()).collect();
    let want = forward_rows(&mlp, &rows).unwrap();
    let script = r#"
import sys, json, onnx, onnxruntime as ort, numpy as np
m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True)
meta = {p.key: p.value for p in m.metadata_props}
x = np.array(json.loads(sys.argv[2]), dtype=np.float32)
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
y = s.run(["knobs"], {"features": x})[0]
print(json.dumps({"y": y.tolist(), "meta": meta}))
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            model.to_str().unwrap(),
            &serde_json::to_string(&rows).unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["meta"]["meshtune.contract_version"], "1");
    let y: Vec<Vec<f32>> = serde_json::from_value(v["y"].clone()).unwrap();
    for (g, w) in y.iter().zip(&want) {
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }
}
