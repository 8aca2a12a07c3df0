//! Batched policy inference for 10,000 destinations (one tract run) versus one run per
//! destination and the plain-Rust reference forward pass. Prints the ratios.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use meshtune_core::features::FEATURE_COUNT;
use meshtune_core::knobs::KNOB_COUNT;
use meshtune_policy::onnx::{export_mlp, mlp_forward, Activation, MlpLayer, ModelMeta};
use meshtune_policy::OnnxPolicy;
use rand::{Rng, SeedableRng};

const DESTINATIONS: usize = 10_000;
const HIDDEN: usize = 64;

fn layer(rng: &mut impl Rng, i: usize, o: usize, activation: Activation) -> MlpLayer {
    let s = 1.0 / (i as f32).sqrt();
    MlpLayer {
        in_dim: i,
        out_dim: o,
        weight: (0..i * o).map(|_| rng.random_range(-s..s)).collect(),
        bias: (0..o).map(|_| rng.random_range(-0.1..0.1)).collect(),
        activation,
    }
}

fn setup() -> (Vec<MlpLayer>, OnnxPolicy, Vec<[f32; FEATURE_COUNT]>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let layers = vec![
        layer(&mut rng, FEATURE_COUNT, HIDDEN, Activation::Tanh),
        layer(&mut rng, HIDDEN, HIDDEN, Activation::Relu),
        layer(&mut rng, HIDDEN, KNOB_COUNT, Activation::Sigmoid),
    ];
    let meta = ModelMeta {
        model_version: "bench".into(),
        provenance: "policy/benches/inference.rs".into(),
    };
    let policy = OnnxPolicy::from_bytes(&export_mlp(&layers, &meta).unwrap(), "bench").unwrap();
    let batch = (0..DESTINATIONS)
        .map(|_| std::array::from_fn(|_| rng.random_range(0.0..1.5)))
        .collect();
    (layers, policy, batch)
}

fn time(reps: u32, mut f: impl FnMut()) -> Duration {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed() / reps
}

fn bench(c: &mut Criterion) {
    let (layers, policy, batch) = setup();
    let flat: Vec<f32> = batch.concat();

    let batched = time(20, || {
        black_box(policy.infer(black_box(&batch)).unwrap());
    });
    let single = time(2, || {
        for row in &batch {
            black_box(policy.infer(std::slice::from_ref(row)).unwrap());
        }
    });
    let reference = time(5, || {
        black_box(mlp_forward(&layers, black_box(&flat)));
    });
    println!(
        "policy inference, {DESTINATIONS} destinations, MLP {FEATURE_COUNT}-{HIDDEN}-{HIDDEN}-{KNOB_COUNT}:\n  \
         batched (1 tract run): {:?} ({:.2} µs/destination)\n  \
         one run per destination: {:?} ({:.1}× the batched time)\n  \
         plain-Rust reference: {:?} ({:.1}× the batched time)",
        batched,
        batched.as_secs_f64() * 1e6 / DESTINATIONS as f64,
        single,
        single.as_secs_f64() / batched.as_secs_f64(),
        reference,
        reference.as_secs_f64() / batched.as_secs_f64(),
    );

    let mut g = c.benchmark_group("inference_10k");
    g.sample_size(20);
    g.bench_function("batched", |b| {
        b.iter(|| policy.infer(black_box(&batch)).unwrap())
    });
    g.bench_function("reference_forward", |b| {
        b.iter(|| mlp_forward(&layers, black_box(&flat)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
