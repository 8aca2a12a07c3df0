//! The model store: holds the policy in service and swaps it for a validated candidate without
//! interrupting inference. A refused candidate is logged and counted; the last good model keeps
//! serving.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::runtime::{digest, validate, ModelError, OnnxPolicy};

/// Label set of `meshtune_model_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// [`ModelError::reason_label`].
    pub reason: String,
}

/// Label set of `meshtune_model_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

/// The store's Prometheus metrics.
#[derive(Clone, Debug, Default)]
pub struct StoreMetrics {
    /// `meshtune_model_refused_total{reason}`: candidates refused.
    pub refused: Family<ReasonLabels, Counter>,
    /// `meshtune_model_info{version}`: 1 for the model in service.
    pub info: Family<VersionLabels, Gauge>,
    /// `meshtune_model_swaps_total`: successful swaps.
    pub swaps: Counter,
}

impl StoreMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = StoreMetrics::default();
        registry.register(
            "meshtune_model_refused",
            "Candidate policy models refused by validation, by reason",
            m.refused.clone(),
        );
        registry.register(
            "meshtune_model_info",
            "Policy model in service (value 1, labelled with its version)",
            m.info.clone(),
        );
        registry.register(
            "meshtune_model_swaps",
            "Policy models swapped into service",
            m.swaps.clone(),
        );
        m
    }
}

/// What [`ModelStore::try_swap`] did with a valid candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapOutcome {
    /// The candidate is now in service.
    Swapped { version: String },
    /// The candidate is byte-identical to the model in service; nothing changed.
    Unchanged,
}

/// Holds the current policy; readers get an `Arc` snapshot, writers swap atomically.
#[derive(Debug)]
pub struct ModelStore {
    current: ArcSwap<OnnxPolicy>,
    metrics: StoreMetrics,
    /// Serialises validations so two sources cannot interleave.
    swap_lock: Mutex<()>,
}

impl ModelStore {
    /// A store serving `initial`, with metrics registered into `registry`.
    pub fn new(initial: OnnxPolicy, registry: &mut Registry) -> Self {
        ModelStore::with_metrics(initial, StoreMetrics::register(registry))
    }

    /// A store reporting into already-registered metrics.
    pub fn with_metrics(initial: OnnxPolicy, metrics: StoreMetrics) -> Self {
        metrics
            .info
            .get_or_create(&VersionLabels {
                version: initial.model_version().to_string(),
            })
            .set(1);
        tracing::info!(
            version = initial.model_version(),
            origin = initial.origin(),
            "policy model in service"
        );
        ModelStore {
            current: ArcSwap::from_pointee(initial),
            metrics,
            swap_lock: Mutex::new(()),
        }
    }

    /// The model in service (a cheap snapshot; keeps working across swaps).
    pub fn current(&self) -> Arc<OnnxPolicy> {
        self.current.load_full()
    }

    /// The store's metrics.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Validates `bytes` (contract, signature, smoke test) and, if valid, puts it in service.
    /// A refused candidate leaves the current model serving, is logged and counted.
    pub fn try_swap(&self, bytes: &[u8], origin: &str) -> Result<SwapOutcome, ModelError> {
        let _guard = self.swap_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.current.load().digest() == digest(bytes) {
            return Ok(SwapOutcome::Unchanged);
        }
        match validate(bytes, origin) {
            Ok(policy) => Ok(self.install(policy)),
            Err(e) => {
                self.refuse(&e);
                Err(e)
            }
        }
    }

    /// Puts an already validated policy in service.
    pub fn install(&self, policy: OnnxPolicy) -> SwapOutcome {
        let version = policy.model_version().to_string();
        let origin = policy.origin().to_string();
        let old = self.current.swap(Arc::new(policy));
        self.metrics.info.remove(&VersionLabels {
            version: old.model_version().to_string(),
        });
        self.metrics
            .info
            .get_or_create(&VersionLabels {
                version: version.clone(),
            })
            .set(1);
        self.metrics.swaps.inc();
        tracing::info!(
            version = %version,
            origin = %origin,
            previous = old.model_version(),
            "policy model swapped"
        );
        SwapOutcome::Swapped { version }
    }

    /// Counts and logs a refused candidate (for sources that fail before [`Self::try_swap`]).
    pub fn refuse(&self, e: &ModelError) {
        self.metrics
            .refused
            .get_or_create(&ReasonLabels {
                reason: e.reason_label().to_string(),
            })
            .inc();
        tracing::warn!(
            error = %e,
            reason = e.reason_label(),
            serving = self.current.load().model_version(),
            "candidate policy model refused; keeping the model in service"
        );
    }
}
