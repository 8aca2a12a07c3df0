//! `meshtune model …` subcommands: inspect a model, validate it, push it to a ConfigMap (`push`
//! needs the `kube` feature).

use std::io::Write;
use std::path::PathBuf;

use meshtune_core::features::Features;
use meshtune_core::knobs::{Knobs, KNOB_SPECS};

#[cfg(feature = "kube")]
use crate::configmap::{push_model, PushError};
use crate::runtime::{ModelError, OnnxPolicy};
use crate::source::KubeClient;

/// Default namespace of the model ConfigMap.
pub const DEFAULT_NAMESPACE: &str = "meshtune-system";
/// Default name of the model ConfigMap.
pub const DEFAULT_CONFIGMAP: &str = "meshtune-model";

/// `meshtune model` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum ModelCommand {
    /// Print a model's metadata and signature, validate it, and show its knobs for a few
    /// typical traffic patterns.
    Inspect {
        /// ONNX model file.
        file: PathBuf,
    },
    /// Validate a model (contract, signature, smoke test); exits non-zero if it is refused.
    Validate {
        /// ONNX model file.
        file: PathBuf,
    },
    /// Validate a model locally, then write it into a ConfigMap (server-side apply, field
    /// manager `meshtune`) that controllers watch.
    #[cfg(feature = "kube")]
    Push {
        /// ONNX model file.
        file: PathBuf,
        /// Namespace of the ConfigMap.
        #[arg(long, short = 'n', default_value = DEFAULT_NAMESPACE)]
        namespace: String,
        /// Name of the ConfigMap.
        #[arg(long, default_value = DEFAULT_CONFIGMAP)]
        name: String,
    },
}

/// Why a `model` subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[cfg(feature = "kube")]
    #[error(transparent)]
    Push(#[from] PushError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[cfg(feature = "kube")]
    #[error("cannot reach Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("writing output: {0}")]
    Output(#[source] std::io::Error),
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Runs a subcommand, writing human-readable output to `out`. `client` is used for `push`
/// (tests pass a mocked one); when `None`, `push` connects with `kube::Client::try_default`.
/// Without the `kube` feature there is no `push` (and [`KubeClient`] has no values).
pub async fn run(
    cmd: ModelCommand,
    out: &mut (dyn Write + Send),
    client: Option<KubeClient>,
) -> Result<(), CliError> {
    #[cfg(not(feature = "kube"))]
    let _ = client;
    let w =
        |out: &mut (dyn Write + Send), s: String| writeln!(out, "{s}").map_err(CliError::Output);
    match cmd {
        ModelCommand::Validate { file } => {
            let policy = crate::runtime::validate(&read(&file)?, &file.display().to_string())?;
            w(
                out,
                format!(
                    "{}: valid (model version {}, {} bytes)",
                    file.display(),
                    policy.model_version(),
                    policy.size()
                ),
            )?;
        }
        ModelCommand::Inspect { file } => {
            let origin = file.display().to_string();
            let bytes = read(&file)?;
            let policy = OnnxPolicy::from_bytes(&bytes, &origin)?;
            w(
                out,
                format!("file:           {origin} ({} bytes)", bytes.len()),
            )?;
            w(out, format!("model version:  {}", policy.model_version()))?;
            for (k, v) in policy.metadata() {
                w(out, format!("metadata:       {k} = {v}"))?;
            }
            match policy.smoke_test() {
                Ok(()) => w(out, "smoke test:     passed".into())?,
                Err(e) => w(out, format!("smoke test:     FAILED: {e}"))?,
            }
            let samples = crate::runtime::typical_features();
            let samples = &samples[1..];
            let features: Vec<Features> = samples.iter().map(|(_, f)| *f).collect();
            if let Ok(knobs) = policy.decide_batch(&features) {
                let header: Vec<String> = samples.iter().map(|(n, _)| format!("{n:>12}")).collect();
                w(out, format!("{:<48}{}", "knob (unit)", header.join("")))?;
                for spec in &KNOB_SPECS {
                    let cells: Vec<String> = knobs
                        .iter()
                        .map(|k: &Knobs| format!("{:>12}", k.get(spec.knob)))
                        .collect();
                    w(
                        out,
                        format!(
                            "{:<48}{}",
                            format!("{} ({})", spec.name, spec.unit),
                            cells.join("")
                        ),
                    )?;
                }
            }
        }
        #[cfg(feature = "kube")]
        ModelCommand::Push {
            file,
            namespace,
            name,
        } => {
            let bytes = read(&file)?;
            let client = match client {
                Some(c) => c,
                None => kube::Client::try_default().await?,
            };
            let (version, _) = push_model(
                client,
                &namespace,
                &name,
                &bytes,
                &file.display().to_string(),
            )
            .await?;
            w(
                out,
                format!("pushed model version {version} to configmap {namespace}/{name}"),
            )?;
        }
    }
    Ok(())
}
