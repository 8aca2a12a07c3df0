//! Kubernetes ConfigMap source and sink for policy models: the controller watches a ConfigMap
//! whose `binaryData` key [`MODEL_KEY`] holds the ONNX file and offers every change to the
//! [`ModelStore`]; `meshtune model push` validates a file locally, then writes it with
//! server-side apply (field manager [`FIELD_MANAGER`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};

use crate::runtime::{validate, ModelError};
use crate::store::{ModelStore, SwapOutcome};
use crate::watch::WatchEvent;

/// Kubernetes API access of the controller's model source (in the ConfigMap's namespace), as
/// (API group, resource, verbs): `get` of the first model (`source`), `list` + `watch` of
/// [`watch_configmap`]. `meshtune model push` (server-side apply, `patch`) runs with the
/// operator's credentials and is not part of it. Collected by `meshtune_controller::rbac`.
pub const CONTROLLER_KUBE_ACCESS: &[(&str, &str, &[&str])] =
    &[("", "configmaps", &["get", "list", "watch"])];

/// `binaryData` key holding the ONNX model.
pub const MODEL_KEY: &str = "model.onnx";
/// Server-side apply field manager.
pub const FIELD_MANAGER: &str = "meshtune";
/// Annotation carrying the model version of a pushed ConfigMap.
pub const VERSION_ANNOTATION: &str = "meshtune.io/model-version";
/// Annotation carrying the FNV-1a digest (hex) of a pushed model.
pub const DIGEST_ANNOTATION: &str = "meshtune.io/model-digest";
/// Kubernetes refuses objects over 1 MiB; leave room for metadata.
pub const MAX_MODEL_BYTES: usize = 1_000_000;

/// Origin string for a ConfigMap, as used in errors and logs.
pub fn configmap_origin(namespace: &str, name: &str) -> String {
    format!("configmap {namespace}/{name}")
}

/// Why `model push` failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("refusing to push an invalid model: {0}")]
    Invalid(#[from] ModelError),
    #[error("{origin}: model is {size} bytes, over the ConfigMap limit of {MAX_MODEL_BYTES}")]
    TooLarge { origin: String, size: usize },
    #[error("{origin}: server-side apply failed: {source}")]
    Kube {
        origin: String,
        #[source]
        source: kube::Error,
    },
}

/// Extracts the model bytes of a ConfigMap.
pub fn model_bytes(cm: &ConfigMap) -> Result<&[u8], ModelError> {
    let origin = configmap_origin(
        cm.metadata.namespace.as_deref().unwrap_or("?"),
        cm.metadata.name.as_deref().unwrap_or("?"),
    );
    cm.binary_data
        .as_ref()
        .and_then(|d| d.get(MODEL_KEY))
        .map(|b| b.0.as_slice())
        .ok_or_else(|| ModelError::Read {
            origin,
            reason: format!("binaryData has no key `{MODEL_KEY}`"),
        })
}

/// The ConfigMap `model push` applies.
pub fn model_configmap(namespace: &str, name: &str, bytes: &[u8], version: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    FIELD_MANAGER.to_string(),
                ),
                (
                    "app.kubernetes.io/component".to_string(),
                    "policy-model".to_string(),
                ),
            ])),
            annotations: Some(BTreeMap::from([
                (VERSION_ANNOTATION.to_string(), version.to_string()),
                (
                    DIGEST_ANNOTATION.to_string(),
                    format!("{:016x}", crate::runtime::digest(bytes)),
                ),
            ])),
            ..Default::default()
        },
        binary_data: Some(BTreeMap::from([(
            MODEL_KEY.to_string(),
            ByteString(bytes.to_vec()),
        )])),
        ..Default::default()
    }
}

/// Validates `bytes` locally (contract, signature, smoke test), then server-side applies the
/// model ConfigMap `namespace/name` as field manager [`FIELD_MANAGER`] (forcing conflicts).
/// Returns the model version pushed and the object the API server returned.
pub async fn push_model(
    client: kube::Client,
    namespace: &str,
    name: &str,
    bytes: &[u8],
    source: &str,
) -> Result<(String, ConfigMap), PushError> {
    let origin = configmap_origin(namespace, name);
    if bytes.len() > MAX_MODEL_BYTES {
        return Err(PushError::TooLarge {
            origin,
            size: bytes.len(),
        });
    }
    let policy = validate(bytes, source)?;
    let version = policy.model_version().to_string();
    let cm = model_configmap(namespace, name, bytes, &version);
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api
        .patch(name, &params, &Patch::Apply(&cm))
        .await
        .map_err(|source| PushError::Kube {
            origin: origin.clone(),
            source,
        })?;
    tracing::info!(origin = %origin, version = %version, size = bytes.len(), "model pushed");
    Ok((version, applied))
}

/// Watches ConfigMap `namespace/name` until `shutdown` resolves, offering every version of
/// `binaryData["model.onnx"]` to the store. Deletion and a missing key keep the model in
/// service. API errors are retried with kube's default backoff.
pub async fn watch_configmap(
    store: Arc<ModelStore>,
    client: kube::Client,
    namespace: &str,
    name: &str,
    events: Option<tokio::sync::mpsc::UnboundedSender<WatchEvent>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let origin = configmap_origin(namespace, name);
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api, config).default_backoff();
    tokio::pin!(stream);
    let mut last_refused: Option<u64> = None;
    tracing::info!(origin = %origin, "watching policy model ConfigMap");
    loop {
        let item = tokio::select! {
            _ = &mut shutdown => break,
            item = stream.next() => item,
        };
        let cm = match item {
            None => break,
            Some(Err(e)) => {
                tracing::warn!(origin = %origin, error = %e, "ConfigMap watch error; retrying");
                continue;
            }
            Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => cm,
            Some(Ok(watcher::Event::Delete(_))) => {
                tracing::warn!(origin = %origin, "model ConfigMap deleted; keeping the model in service");
                continue;
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => continue,
        };
        let event = match model_bytes(&cm) {
            Err(e) => {
                store.refuse(&e);
                WatchEvent::Refused {
                    reason: e.reason_label(),
                    error: e.to_string(),
                }
            }
            Ok(bytes) => {
                let d = crate::runtime::digest(bytes);
                if last_refused == Some(d) {
                    continue; // same bad content re-delivered (resync): already refused
                }
                let bytes = bytes.to_vec();
                let (store2, origin2) = (store.clone(), origin.clone());
                let result =
                    tokio::task::spawn_blocking(move || store2.try_swap(&bytes, &origin2)).await;
                match result {
                    Ok(Ok(SwapOutcome::Swapped { version })) => {
                        last_refused = None;
                        WatchEvent::Swapped { version }
                    }
                    Ok(Ok(SwapOutcome::Unchanged)) => WatchEvent::Unchanged,
                    Ok(Err(e)) => {
                        last_refused = Some(d);
                        WatchEvent::Refused {
                            reason: e.reason_label(),
                            error: e.to_string(),
                        }
                    }
                    Err(join) => {
                        tracing::error!(error = %join, "model validation task failed");
                        continue;
                    }
                }
            }
        };
        if let Some(tx) = &events {
            let _ = tx.send(event);
        }
    }
    tracing::info!(origin = %origin, "policy model ConfigMap watcher stopped");
}
