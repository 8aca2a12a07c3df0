//! `meshtune model inspect|validate` on real ONNX files, and argument parsing.

mod common;

use clap::Parser;
use common::*;
use meshtune_policy::cli::{run, CliError, ModelCommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: ModelCommand,
}

#[test]
fn parses_subcommands() {
    let c = Cli::try_parse_from(["model", "validate", "m.onnx"]).unwrap();
    assert_eq!(
        c.cmd,
        ModelCommand::Validate {
            file: "m.onnx".into()
        }
    );
    assert!(Cli::try_parse_from(["model", "validate"]).is_err());
}

#[cfg(feature = "kube")]
#[test]
fn parses_push_with_defaults() {
    use meshtune_policy::cli::{DEFAULT_CONFIGMAP, DEFAULT_NAMESPACE};
    let c = Cli::try_parse_from(["model", "push", "m.onnx"]).unwrap();
    assert_eq!(
        c.cmd,
        ModelCommand::Push {
            file: "m.onnx".into(),
            namespace: DEFAULT_NAMESPACE.into(),
            name: DEFAULT_CONFIGMAP.into()
        }
    );
    let c = Cli::try_parse_from(["model", "push", "m.onnx", "-n", "x", "--name", "y"]).unwrap();
    assert!(
        matches!(c.cmd, ModelCommand::Push { namespace, name, .. } if namespace == "x" && name == "y")
    );
}

#[cfg(not(feature = "kube"))]
#[test]
fn push_needs_the_kube_feature() {
    let e = Cli::try_parse_from(["model", "push", "m.onnx"])
        .err()
        .unwrap();
    assert_eq!(e.kind(), clap::error::ErrorKind::InvalidSubcommand);
}

#[tokio::test]
async fn validate_and_inspect_report_on_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.onnx");
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&good, good_model(1, "cli-good")).unwrap();
    std::fs::write(&bad, nan_output_model()).unwrap();

    let mut out = Vec::new();
    run(
        ModelCommand::Validate { file: good.clone() },
        &mut out,
        None,
    )
    .await
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("valid (model version cli-good"), "{text}");

    let mut out = Vec::new();
    let e = run(ModelCommand::Validate { file: bad.clone() }, &mut out, None)
        .await
        .unwrap_err();
    assert!(matches!(e, CliError::Model(_)), "{e}");
    assert!(e.to_string().contains("bad.onnx"), "{e}");

    let mut out = Vec::new();
    run(ModelCommand::Inspect { file: good }, &mut out, None)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("model version:  cli-good"), "{text}");
    assert!(text.contains("meshtune.contract_version = 2"), "{text}");
    assert!(text.contains("smoke test:     passed"), "{text}");
    assert!(text.contains("tcp.maxConnections (connections)"), "{text}");

    // Inspect still shows a model that fails the smoke test.
    let mut out = Vec::new();
    run(ModelCommand::Inspect { file: bad }, &mut out, None)
        .await
        .unwrap();
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("smoke test:     FAILED"));

    let e = run(
        ModelCommand::Validate {
            file: dir.path().join("missing.onnx"),
        },
        &mut Vec::new(),
        None,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("missing.onnx"), "{e}");
}
