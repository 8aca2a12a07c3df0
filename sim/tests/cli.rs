//! The CLI subcommands end to end (small runs).

use meshtune_sim::cli::{run_to, GridChoice, PolicyChoice, SimCommand};

fn out(cmd: SimCommand) -> String {
    let mut buf = Vec::new();
    run_to(cmd, &mut buf).unwrap();
    String::from_utf8(buf).unwrap()
}

#[test]
fn run_prints_a_summary_per_policy() {
    let text = out(SimCommand::Run {
        scenario: meshtune_sim::train_dir().join("01_light_steady.toml"),
        policy: PolicyChoice::HandTuned,
        seed: Some(3),
        windows: true,
    });
    assert!(text.contains("scenario light_steady"), "{text}");
    assert!(text.contains("hand-tuned"), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.trim_start().starts_with('w'))
            .count(),
        60
    );
}

#[test]
fn bench_prints_throughput() {
    let text = out(SimCommand::Bench {
        requests: 30_000,
        scenario: None,
    });
    assert_eq!(
        text.matches("simulated requests/CPU-s").count(),
        2,
        "{text}"
    );
}

#[test]
fn sweep_writes_a_dataset_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.csv");
    let text = out(SimCommand::Sweep {
        scenarios: Some(meshtune_sim::heldout_dir().join("04_light_bimodal.toml")),
        out: path.clone(),
        seeds: 1,
        grid: GridChoice::Small,
    });
    assert!(text.contains("wrote 1440 rows"), "{text}");
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    assert_eq!(lines, 1441);
}

#[test]
fn bad_scenario_path_is_an_error_naming_it() {
    let mut buf = Vec::new();
    let e = run_to(
        SimCommand::Run {
            scenario: "/nonexistent/x.toml".into(),
            policy: PolicyChoice::IstioDefaults,
            seed: None,
            windows: false,
        },
        &mut buf,
    )
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/x.toml"), "{e}");
}
