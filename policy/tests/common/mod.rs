//! Helpers shared by the integration tests: random MLPs and deliberately broken models, all
//! built with the real exporter; the next event of a model watcher.
#![allow(dead_code)]

use meshtune_core::contract::{
    feature_names_csv, knob_names_csv, CONTRACT_VERSION, META_CONTRACT_VERSION, META_FEATURES,
    META_KNOBS, META_MODEL_VERSION,
};
use meshtune_core::features::FEATURE_COUNT;
use meshtune_core::knobs::KNOB_COUNT;
use meshtune_policy::onnx::{export_mlp, export_mlp_raw, Activation, MlpLayer, ModelMeta};
use meshtune_policy::watch::WatchEvent;
use rand::{Rng, SeedableRng};

pub fn random_layer(rng: &mut impl Rng, i: usize, o: usize, act: Activation) -> MlpLayer {
    let scale = 1.0 / (i as f32).sqrt();
    MlpLayer {
        in_dim: i,
        out_dim: o,
        weight: (0..i * o)
            .map(|_| rng.random_range(-scale..scale))
            .collect(),
        bias: (0..o).map(|_| rng.random_range(-0.1..0.1)).collect(),
        activation: act,
    }
}

/// A random contract-shaped MLP: F → 32 (tanh) → 32 (relu) → K (sigmoid).
pub fn random_mlp(seed: u64) -> Vec<MlpLayer> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    vec![
        random_layer(&mut rng, FEATURE_COUNT, 32, Activation::Tanh),
        random_layer(&mut rng, 32, 32, Activation::Relu),
        random_layer(&mut rng, 32, KNOB_COUNT, Activation::Sigmoid),
    ]
}

pub fn meta(version: &str) -> ModelMeta {
    ModelMeta {
        model_version: version.into(),
        provenance: "meshtune-policy integration test".into(),
    }
}

/// A valid model whose outputs depend on `seed`.
pub fn good_model(seed: u64, version: &str) -> Vec<u8> {
    export_mlp(&random_mlp(seed), &meta(version)).unwrap()
}

fn raw_with(layers: &[MlpLayer], replace: (&str, &str)) -> Vec<u8> {
    let features = feature_names_csv();
    let knobs = knob_names_csv();
    let mut props = vec![
        (META_CONTRACT_VERSION, CONTRACT_VERSION),
        (META_FEATURES, features.as_str()),
        (META_KNOBS, knobs.as_str()),
        (META_MODEL_VERSION, "bad"),
    ];
    for p in props.iter_mut() {
        if p.0 == replace.0 {
            p.1 = replace.1;
        }
    }
    export_mlp_raw(layers, &props).unwrap()
}

/// Feature names in a different order.
pub fn wrong_feature_names() -> Vec<u8> {
    let mut names: Vec<&str> = meshtune_core::features::FEATURE_NAMES.to_vec();
    names.swap(0, 1);
    let joined = names.join(",");
    raw_with(&random_mlp(1), (META_FEATURES, &joined))
}

pub fn wrong_contract_version() -> Vec<u8> {
    raw_with(&random_mlp(1), (META_CONTRACT_VERSION, "999"))
}

/// Finite weights whose outputs are NaN on large inputs: two hidden units overflow to +inf
/// (relu keeps them), and each output is their difference, inf - inf = NaN.
pub fn nan_output_model() -> Vec<u8> {
    let layers = vec![
        MlpLayer {
            in_dim: FEATURE_COUNT,
            out_dim: 2,
            weight: vec![3e38; 2 * FEATURE_COUNT],
            bias: vec![0.0; 2],
            activation: Activation::Relu,
        },
        MlpLayer {
            in_dim: 2,
            out_dim: KNOB_COUNT,
            weight: [1.0f32, -1.0].repeat(KNOB_COUNT),
            bias: vec![0.5; KNOB_COUNT],
            activation: Activation::Identity,
        },
    ];
    export_mlp(&layers, &meta("nan-out")).unwrap()
}

/// Weights containing NaN (refused before any inference).
pub fn nan_model() -> Vec<u8> {
    let mut layers = random_mlp(1);
    layers[2].weight[5] = f32::NAN;
    layers[2].bias[0] = f32::NAN;
    raw_with(&layers, ("", ""))
}

/// Identity output with a large bias: finite but far outside [-0.5, 1.5].
pub fn out_of_range_model() -> Vec<u8> {
    let mut layers = random_mlp(1);
    let last = layers.len() - 1;
    layers[last].activation = Activation::Identity;
    layers[last].bias = vec![10.0; KNOB_COUNT];
    raw_with(&layers, ("", ""))
}

/// Correct metadata but K+1 outputs.
pub fn wrong_width_model() -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let layers = vec![random_layer(
        &mut rng,
        FEATURE_COUNT,
        KNOB_COUNT + 1,
        Activation::Sigmoid,
    )];
    raw_with(&layers, ("", ""))
}

/// A valid model truncated in the middle.
pub fn corrupt_model() -> Vec<u8> {
    let mut b = good_model(1, "corrupt");
    b.truncate(b.len() / 2);
    b
}

pub fn random_batch(seed: u64, n: usize) -> Vec<[f32; FEATURE_COUNT]> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| std::array::from_fn(|_| rng.random_range(0.0..1.5)))
        .collect()
}

/// The next event a watcher reports (at most 20 s).
pub async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
        .await
        .expect("watcher event in time")
        .expect("watcher alive")
}
