//! Where the controller's policy model comes from (`embedded`, `file:PATH`, `configmap:NS/NAME`),
//! how the first model is loaded, and the matching hot-swap watcher.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::{embedded_default, validate_path, ModelError, OnnxPolicy};
use crate::store::ModelStore;
use crate::watch::{watch_file, WatchEvent, DEFAULT_POLL_INTERVAL};

/// A model source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// `models/default.onnx` compiled into the binary; never changes.
    Embedded,
    /// A file polled every `poll` (replace it by rename to swap atomically).
    File { path: PathBuf, poll: Duration },
    /// `binaryData["model.onnx"]` of a ConfigMap, watched through the API server.
    ConfigMap { namespace: String, name: String },
}

/// Why a model source string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid model source `{input}`: {reason} (expected embedded, file:PATH or configmap:NAMESPACE/NAME)")]
pub struct SourceParseError {
    pub input: String,
    pub reason: &'static str,
}

impl std::str::FromStr for ModelSource {
    type Err = SourceParseError;

    fn from_str(s: &str) -> Result<Self, SourceParseError> {
        let err = |reason| SourceParseError {
            input: s.to_string(),
            reason,
        };
        if s == "embedded" {
            return Ok(ModelSource::Embedded);
        }
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(err("empty path"));
            }
            return Ok(ModelSource::File {
                path: PathBuf::from(path),
                poll: DEFAULT_POLL_INTERVAL,
            });
        }
        if let Some(rest) = s.strip_prefix("configmap:") {
            let (ns, name) = rest.split_once('/').ok_or_else(|| err("missing `/`"))?;
            if ns.is_empty() || name.is_empty() || name.contains('/') {
                return Err(err("namespace and name must be non-empty"));
            }
            return Ok(ModelSource::ConfigMap {
                namespace: ns.to_string(),
                name: name.to_string(),
            });
        }
        Err(err("unknown scheme"))
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Embedded => write!(f, "embedded"),
            ModelSource::File { path, .. } => write!(f, "file:{}", path.display()),
            ModelSource::ConfigMap { namespace, name } => write!(f, "configmap:{namespace}/{name}"),
        }
    }
}

/// The model to start serving with. A file source must hold a valid model (a bad file at start
/// is an error, not a silent fallback); a ConfigMap source starts from the embedded model and
/// the watcher swaps the ConfigMap's model in as soon as it is read.
pub fn load_initial(source: &ModelSource) -> Result<OnnxPolicy, ModelError> {
    match source {
        ModelSource::Embedded | ModelSource::ConfigMap { .. } => embedded_default(),
        ModelSource::File { path, .. } => validate_path(path),
    }
}

/// Keeps the store in sync with the source until `shutdown` resolves (returns at once for
/// `embedded`). `client` is required for a ConfigMap source.
pub async fn watch_source(
    store: Arc<ModelStore>,
    source: ModelSource,
    client: Option<kube::Client>,
    events: Option<tokio::sync::mpsc::UnboundedSender<WatchEvent>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), kube::Error> {
    match source {
        ModelSource::Embedded => {}
        ModelSource::File { path, poll } => watch_file(store, path, poll, events, shutdown).await,
        ModelSource::ConfigMap { namespace, name } => {
            let client = match client {
                Some(c) => c,
                None => kube::Client::try_default().await?,
            };
            crate::configmap::watch_configmap(store, client, &namespace, &name, events, shutdown)
                .await
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_sources() {
        for s in [
            "embedded",
            "file:/etc/meshtune/model.onnx",
            "configmap:mesh/policy",
        ] {
            let src: ModelSource = s.parse().unwrap();
            assert_eq!(src.to_string(), s);
        }
        assert_eq!(
            "configmap:mesh/policy".parse::<ModelSource>().unwrap(),
            ModelSource::ConfigMap {
                namespace: "mesh".into(),
                name: "policy".into()
            }
        );
        for bad in [
            "",
            "file:",
            "configmap:mesh",
            "configmap:/x",
            "configmap:a/b/c",
            "s3://x",
        ] {
            let e = bad.parse::<ModelSource>().unwrap_err();
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
    }
}
