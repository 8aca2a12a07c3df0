//! The deployed binary (`--no-default-features`) links none of the simulator's and trainer's
//! heavy dependencies; the developer build (default features) still has them.

use std::process::Command;

/// Packages that must never reach the image a platform team deploys.
const TRAINING_ONLY: &[&str] = &[
    "meshtune-sim",
    "meshtune-trainer",
    "candle-core",
    "candle-nn",
    "tokenizers",
    "plotters",
    "font-kit",
    "freetype-sys",
    "yeslogic-fontconfig-sys",
];

/// Package names in `cargo tree -e normal` of the meshtune binary.
fn normal_tree(features: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree", "--locked", "-p", "meshtune", "-e", "normal", "--prefix", "none", "--format",
            "{p}",
        ])
        .args(features)
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn deployment_build_links_no_training_dependencies() {
    let deploy = normal_tree(&["--no-default-features"]);
    assert!(
        deploy.iter().any(|p| p == "meshtune-controller"),
        "{deploy:?}"
    );
    let found: Vec<_> = TRAINING_ONLY
        .iter()
        .filter(|p| deploy.iter().any(|d| d == *p))
        .collect();
    assert!(found.is_empty(), "deployment build links {found:?}");
    // The check can fail: the developer build does link them.
    let dev = normal_tree(&[]);
    assert!(dev.iter().any(|p| p == "candle-core"), "{dev:?}");
}
