//! PPO against a toy environment with a known optimum; the NaN guard.

mod common;

use common::{sq_err, ToyEnv};
use meshtune_core::KNOB_COUNT;
use meshtune_policy::onnx::{mlp_forward, MlpLayer, ModelMeta};
use meshtune_trainer::pipeline::{ppo_to_files, PpoPaths};
use meshtune_trainer::ppo::{train, NamedEnv, PpoConfig};

fn envs(n: usize) -> Vec<NamedEnv> {
    (0..n)
        .map(|i| NamedEnv {
            name: format!("toy{i}"),
            env: Box::new(ToyEnv::new(8)),
        })
        .collect()
}

/// Mean squared distance of the deterministic policy to the optimum over a grid of contexts.
fn policy_error(actor: &[MlpLayer]) -> f64 {
    let mut total = 0.0;
    let mut env = ToyEnv::new(8);
    for i in 0..9 {
        env.c = 0.1 + 0.1 * i as f32;
        let y = mlp_forward(actor, &env.obs());
        let mut a = [0f32; KNOB_COUNT];
        a.copy_from_slice(&y);
        total += sq_err(&a, env.c);
    }
    total / 9.0
}

fn cfg(updates: usize) -> PpoConfig {
    PpoConfig {
        seed: 11,
        updates,
        steps_per_update: 256,
        epochs: 6,
        minibatch: 64,
        hidden: vec![16],
        checkpoint_every: 0,
        ..PpoConfig::default()
    }
}

#[test]
fn ppo_improves_return_on_toy_env() {
    let before = train(&mut envs(2), &cfg(0), None).unwrap();
    let after = train(&mut envs(2), &cfg(40), None).unwrap();
    let (e0, e1) = (policy_error(&before.actor), policy_error(&after.actor));
    eprintln!("toy error before {e0:.4} after {e1:.4}");
    let first = after.history.first().unwrap().mean_step_reward;
    let last = after.history.last().unwrap().mean_step_reward;
    eprintln!("step reward first {first:.4} last {last:.4}");
    assert!(e1 < 0.25 * e0, "deterministic error {e0} -> {e1}");
    assert!(e1 < 0.01, "not near the optimum: {e1}");
    assert!(
        last > first,
        "rollout reward did not improve: {first} -> {last}"
    );
}

#[test]
fn ppo_is_reproducible_with_a_seed() {
    let a = train(&mut envs(2), &cfg(3), None).unwrap();
    let b = train(&mut envs(2), &cfg(3), None).unwrap();
    assert_eq!(a.actor, b.actor);
    let mut c2 = cfg(3);
    c2.seed = 12;
    let c = train(&mut envs(2), &c2, None).unwrap();
    assert_ne!(a.actor, c.actor);
}

#[test]
fn nan_reward_stops_training_and_writes_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let paths = PpoPaths {
        model: dir.path().join("ppo.onnx"),
        run_dir: dir.path().join("run"),
    };
    let mut bad = envs(1);
    bad[0].env = Box::new(ToyEnv {
        poison: true,
        ..ToyEnv::new(8)
    });
    let info = ModelMeta {
        model_version: "test".into(),
        provenance: "test".into(),
    };
    let err = ppo_to_files(&mut bad, &mut envs(1), &cfg(3), &info, &paths).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("not finite"), "{msg}");
    assert!(msg.contains("no model written"), "{msg}");
    assert!(!paths.model.exists());

    // The same run with a healthy env does write a model, traces and a report.
    let rep = ppo_to_files(&mut envs(1), &mut envs(1), &cfg(2), &info, &paths).unwrap();
    assert!(paths.model.exists());
    assert!(rep.model_bytes > 0 && rep.model_bytes < 64 * 1024);
    for f in [
        "train_trace.csv",
        "test_trace.csv",
        "updates.csv",
        "report.json",
    ] {
        assert!(paths.run_dir.join(f).exists(), "{f}");
    }
    let trace = std::fs::read_to_string(paths.run_dir.join("train_trace.csv")).unwrap();
    assert_eq!(trace.lines().count(), 1 + 2 * 256);
}
