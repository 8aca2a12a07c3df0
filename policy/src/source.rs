//! Where a controller's policy models come from (`embedded`, `file:PATH`,
//! `configmap:NS/NAME`): parsing a source, loading the first model from a list of sources, and
//! watching every source for hot swaps. The one model-source implementation; the controller's
//! `--model` / `--model-configmap` flags become a list of [`ModelSource`]s.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use crate::runtime::{
    embedded_default, embedded_default_bytes, validate_path, ModelError, OnnxPolicy,
};
use crate::store::ModelStore;
use crate::watch::{watch_file, WatchEvent, DEFAULT_POLL_INTERVAL};

/// The Kubernetes client ConfigMap sources are read with (uninhabited without the `kube`
/// feature, so the API is the same in both builds).
#[cfg(feature = "kube")]
pub type KubeClient = kube::Client;
/// The Kubernetes client ConfigMap sources are read with (uninhabited without the `kube`
/// feature, so the API is the same in both builds).
#[cfg(not(feature = "kube"))]
#[derive(Debug, Clone)]
pub enum KubeClient {}

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

/// Why the first model could not be loaded. Each variant names the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source's model was read but refused (or a file could not be read).
    #[error("{model_source}: {error}")]
    Model {
        model_source: ModelSource,
        error: ModelError,
    },
    /// The ConfigMap could not be read from the API server.
    #[error("{model_source}: {reason}")]
    Unavailable {
        model_source: ModelSource,
        reason: String,
    },
}

impl SourceError {
    /// The source that failed (`file:PATH`, `configmap:NS/NAME`, `embedded`).
    pub fn model_source(&self) -> &ModelSource {
        match self {
            SourceError::Model { model_source, .. }
            | SourceError::Unavailable { model_source, .. } => model_source,
        }
    }
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
            let (namespace, name) =
                parse_namespaced(rest).ok_or_else(|| err("expected NAMESPACE/NAME"))?;
            return Ok(ModelSource::ConfigMap { namespace, name });
        }
        Err(err("unknown scheme"))
    }
}

/// Parses `NAMESPACE/NAME` (both non-empty, one `/`).
pub fn parse_namespaced(s: &str) -> Option<(String, String)> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Some((ns.to_string(), name.to_string()))
        }
        _ => None,
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

/// The model to start serving with: the first source in `sources` that gives one.
///
/// - A file must hold a valid model: a bad or missing file is an error, never a silent
///   fallback.
/// - `embedded` gives the compiled-in model, and is skipped when none was compiled in.
/// - A ConfigMap is read once through `client` (required); a missing ConfigMap or a refused
///   model is an error naming it.
///
/// `Ok(None)` when no source gives a model (only `embedded`, and none compiled in).
pub async fn load_initial(
    sources: &[ModelSource],
    client: Option<&KubeClient>,
) -> Result<Option<OnnxPolicy>, SourceError> {
    for source in sources {
        let model_error = |error| SourceError::Model {
            model_source: source.clone(),
            error,
        };
        match source {
            ModelSource::Embedded if embedded_default_bytes().is_none() => continue,
            ModelSource::Embedded => return embedded_default().map(Some).map_err(model_error),
            ModelSource::File { path, .. } => {
                return validate_path(path).map(Some).map_err(model_error)
            }
            ModelSource::ConfigMap { namespace, name } => {
                #[cfg(feature = "kube")]
                {
                    let unavailable = |reason: String| SourceError::Unavailable {
                        model_source: source.clone(),
                        reason,
                    };
                    let client =
                        client.ok_or_else(|| unavailable("no Kubernetes client".into()))?;
                    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
                        kube::Api::namespaced(client.clone(), namespace);
                    let cm = api
                        .get(name)
                        .await
                        .map_err(|e| unavailable(e.to_string()))?;
                    let origin = crate::configmap::configmap_origin(namespace, name);
                    return crate::configmap::model_bytes(&cm)
                        .and_then(|bytes| crate::runtime::validate(bytes, &origin))
                        .map(Some)
                        .map_err(model_error);
                }
                #[cfg(not(feature = "kube"))]
                {
                    let _ = (client, namespace, name);
                    return Err(SourceError::Unavailable {
                        model_source: source.clone(),
                        reason: "built without the `kube` feature".into(),
                    });
                }
            }
        }
    }
    Ok(None)
}

/// Keeps `store` in sync with every source until `shutdown` resolves: file and ConfigMap
/// watchers run side by side (`embedded` never changes). A ConfigMap source without `client`
/// is skipped with an error log. Swap, refusal and error events go to `events` when given.
pub async fn watch_sources(
    store: Arc<ModelStore>,
    sources: Vec<ModelSource>,
    client: Option<KubeClient>,
    events: Option<tokio::sync::mpsc::UnboundedSender<WatchEvent>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let shutdown = shutdown.shared();
    let mut watchers: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
    for source in sources {
        match source {
            ModelSource::Embedded => {}
            ModelSource::File { path, poll } => watchers.push(
                watch_file(store.clone(), path, poll, events.clone(), shutdown.clone()).boxed(),
            ),
            ModelSource::ConfigMap { namespace, name } => {
                #[cfg(feature = "kube")]
                match &client {
                    Some(client) => {
                        let (store, client, events, shutdown) = (
                            store.clone(),
                            client.clone(),
                            events.clone(),
                            shutdown.clone(),
                        );
                        watchers.push(
                            async move {
                                crate::configmap::watch_configmap(
                                    store, client, &namespace, &name, events, shutdown,
                                )
                                .await
                            }
                            .boxed(),
                        );
                    }
                    None => tracing::error!(
                        source = %format!("configmap:{namespace}/{name}"),
                        "no Kubernetes client: the ConfigMap is not watched"
                    ),
                }
                #[cfg(not(feature = "kube"))]
                let _ = &client;
                #[cfg(not(feature = "kube"))]
                tracing::error!(
                    source = %format!("configmap:{namespace}/{name}"),
                    "built without the `kube` feature: the ConfigMap is not watched"
                );
            }
        }
    }
    futures::future::join_all(watchers).await;
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
