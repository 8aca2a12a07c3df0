//! Evaluation end to end on a shortened real scenario: PPO on the simulator for a few updates,
//! export, then `evaluate` with baselines + the model writes a table and plots.

use meshtune_policy::onnx::{export_mlp, ModelMeta};
use meshtune_trainer::evaluate::{evaluate, EvalOptions, OracleGrid, ScenarioSet};
use meshtune_trainer::pipeline::{ppo_to_files, PpoPaths};
use meshtune_trainer::ppo::PpoConfig;

fn short_scenarios(dir: &std::path::Path) {
    let src = meshtune_sim::scenarios_dir()
        .join("train")
        .join("01_light_steady.toml");
    let text = std::fs::read_to_string(&src).unwrap();
    let short = text.replace("windows = 60", "windows = 4");
    assert_ne!(short, text, "scenario format changed: no `windows = 60`");
    for split in ["train", "heldout"] {
        std::fs::create_dir_all(dir.join(split)).unwrap();
        let named = short.replace(
            "name = \"light_steady\"",
            &format!("name = \"{split}_light\""),
        );
        std::fs::write(dir.join(split).join("a.toml"), named).unwrap();
    }
}

#[test]
fn ppo_on_sim_then_eval_writes_table_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    short_scenarios(dir.path());
    let set = ScenarioSet::load(Some(dir.path())).unwrap();
    assert_eq!((set.train.len(), set.heldout.len()), (1, 1));
    let model = dir.path().join("ppo.onnx");
    let run = dir.path().join("run");
    let cfg = PpoConfig {
        updates: 2,
        steps_per_update: 16,
        minibatch: 8,
        epochs: 2,
        checkpoint_every: 1,
        ..PpoConfig::default()
    };
    let info = ModelMeta {
        model_version: "t".into(),
        provenance: "t".into(),
    };
    let rep = ppo_to_files(
        &mut set.train_envs(),
        &mut set.heldout_envs(),
        &cfg,
        &info,
        &PpoPaths {
            model: model.clone(),
            run_dir: run.clone(),
        },
    )
    .unwrap();
    assert_eq!(rep.env_steps, 32);
    assert!(run.join("checkpoints/ppo-0002.safetensors").exists());
    // The checkpoint re-exports to the same network.
    let layers = meshtune_trainer::export::actor_from_checkpoint(
        &run.join("checkpoints/ppo-0002.safetensors"),
    )
    .unwrap();
    let again = export_mlp(&layers, &info).unwrap();
    assert_eq!(again, std::fs::read(&model).unwrap());

    let out = dir.path().join("eval");
    let report = evaluate(
        &set,
        &[("ppo".into(), model)],
        &EvalOptions {
            seeds: 1,
            oracle_grid: OracleGrid::Small,
            out_dir: out.clone(),
            ppo_run: Some(run),
            guardrails: true,
            decision_window_s: 10.0,
            progress: false,
        },
    )
    .unwrap();
    for p in [
        "oracle",
        "istio-defaults",
        "hand-tuned",
        "ppo",
        "ppo+guardrails",
    ] {
        assert!(
            report.policies.iter().any(|x| x == p),
            "{p} missing: {:?}",
            report.policies
        );
    }
    // 2 splits x 1 scenario x (4 baselines + 1 model + the model behind guardrails)
    assert_eq!(report.rows.len(), 12);
    // Behind the guardrails the knobs change at most once in these 4 s episodes (the first
    // push, then at least the 10 s urgent dwell); changes/min counts per simulated minute.
    for g in report.rows.iter().filter(|r| r.policy == "ppo+guardrails") {
        assert!(g.changes_per_min * 4.0 / 60.0 <= 1.0 + 1e-9, "{g:?}");
    }
    let oracle = report.rows.iter().find(|r| r.policy == "oracle").unwrap();
    assert!((oracle.pct_of_oracle - 100.0).abs() < 1e-9);
    assert!(report
        .rows
        .iter()
        .all(|r| (0.0..=1.0).contains(&r.slo_goodput_fraction)));
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(md.contains("### train scenarios") && md.contains("### heldout scenarios"));
    for f in [
        "plots/ppo-reward.svg",
        "plots/ppo-reward.png",
        "plots/latency-cdf-heldout-heldout_light.png",
        "plots/knobs-train-train_light.svg",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
}
