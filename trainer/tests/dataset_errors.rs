//! Bad dataset files are refused with errors naming the file, line and column; good files train.

use meshtune_core::dataset::{header, DatasetRow, Outcomes};
use meshtune_core::{Features, Knobs, FEATURE_COUNT};
use meshtune_trainer::supervised::{best_knob_examples, load_dataset, ContextKey};

fn row(window: u64, knob_u: f32, reward: f64) -> DatasetRow {
    DatasetRow {
        source: "sim".into(),
        scenario: "s".into(),
        destination: "d".into(),
        window,
        features: Features([window as f64; FEATURE_COUNT]),
        knobs: Knobs::from_normalised(&[knob_u; 11]),
        outcomes: Outcomes {
            reward,
            ..Default::default()
        },
    }
}

fn write(rows: &[Vec<String>]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("data.csv");
    let mut w = csv::WriterBuilder::new()
        .flexible(true)
        .from_path(&p)
        .unwrap();
    for r in rows {
        w.write_record(r).unwrap();
    }
    w.flush().unwrap();
    (dir, p)
}

#[test]
fn bad_number_names_file_line_and_column() {
    let mut bad = row(2, 0.5, 1.0).to_record();
    bad[5] = "fast".into();
    let (_d, p) = write(&[header(), row(1, 0.5, 1.0).to_record(), bad]);
    let err = load_dataset(std::slice::from_ref(&p))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&p.display().to_string()), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("column `latency_p50_ms`"), "{err}");
}

#[test]
fn bad_header_and_short_row_are_named() {
    let mut h = header();
    h[7] = "p99".into();
    let (_d, p) = write(&[h]);
    let err = load_dataset(std::slice::from_ref(&p))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 1") && err.contains("column `latency_p99_ms`"),
        "{err}"
    );

    let mut short = row(1, 0.5, 1.0).to_record();
    short.truncate(10);
    let (_d2, p2) = write(&[header(), short]);
    let err = load_dataset(std::slice::from_ref(&p2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("fields"), "{err}");

    let missing = std::path::PathBuf::from("/nonexistent/meshtune.csv");
    let err = load_dataset(&[missing]).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/meshtune.csv"), "{err}");
}

#[test]
fn best_knobs_are_picked_per_context() {
    let rows = [
        row(1, 0.2, 1.0),
        row(1, 0.8, 3.0),
        row(1, 0.5, 2.0),
        row(2, 0.2, 5.0),
        row(2, 0.8, -1.0),
    ];
    let (_d, p) = write(
        &std::iter::once(header())
            .chain(rows.iter().map(DatasetRow::to_record))
            .collect::<Vec<_>>(),
    );
    let loaded = load_dataset(&[p]).unwrap();
    assert_eq!(loaded.len(), 5);
    let ex = best_knob_examples(&loaded, ContextKey::Window);
    assert_eq!(ex.len(), 5);
    let w1: Vec<_> = ex.iter().filter(|e| e.context.ends_with("|1")).collect();
    assert!(w1
        .iter()
        .all(|e| (e.target[0] - 0.8).abs() < 0.01 && e.best_reward == 3.0));
    let w2: Vec<_> = ex.iter().filter(|e| e.context.ends_with("|2")).collect();
    assert!(w2.iter().all(|e| (e.target[0] - 0.2).abs() < 0.01));
    // Scenario context: mean reward per setting over windows: 0.2 → 3.0, 0.8 → 1.0.
    let ex = best_knob_examples(&loaded, ContextKey::Scenario);
    assert!(ex
        .iter()
        .all(|e| (e.target[0] - 0.2).abs() < 0.01 && e.best_reward == 3.0));
}
