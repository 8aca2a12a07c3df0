//! The `Sink` trait every config sink implements, the `Decision` it consumes and the
//! `ApplyReport` it returns.

use std::future::Future;
use std::pin::Pin;

use meshtune_core::Knobs;
use serde::Serialize;

/// One destination's new knobs, as decided by the controller (after guardrails).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The destination host as Istio names it (`reviews.default.svc.cluster.local`); for the
    /// Envoy file sink the key of a configured [`crate::envoy_file::EnvoyDestination`].
    /// [`crate::host_from_cluster_name`] turns an Envoy outbound cluster name into it.
    pub destination: String,
    /// Namespace the Istio objects are written to (usually the destination service's).
    pub namespace: String,
    /// The knobs to apply.
    pub knobs: Knobs,
    /// What is in force now, if known (for diffs and logs).
    pub previous: Option<Knobs>,
}

impl Decision {
    /// Whether this decision puts Istio's defaults in force, i.e. asks for no object at all
    /// (a rollback to before meshtune's first push): sinks remove what they wrote for the
    /// destination instead of writing default-valued config.
    pub fn is_removal(&self) -> bool {
        self.knobs == Knobs::istio_defaults()
    }
}

/// What happened to one decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Written; `objects` names what was written (`DestinationRule ns/name`, a file path, ...).
    Applied { objects: Vec<String> },
    /// Observe mode: only logged. `changes` is the number of knobs that differ.
    Logged { changes: usize },
    /// Not written on purpose (object not managed by meshtune, unknown destination, ...).
    Refused { reason: String },
    /// Writing failed (API error, conflict, I/O).
    Failed { error: String },
}

/// Per-decision result of one [`Sink::apply`] call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemReport {
    pub destination: String,
    pub namespace: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Result of one [`Sink::apply`] call: one item per decision, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ApplyReport {
    pub items: Vec<ItemReport>,
}

impl ApplyReport {
    pub(crate) fn push(&mut self, d: &Decision, outcome: Outcome) {
        self.items.push(ItemReport {
            destination: d.destination.clone(),
            namespace: d.namespace.clone(),
            outcome,
        });
    }

    /// Decisions that were applied (or logged, for the log sink).
    pub fn succeeded(&self) -> usize {
        self.items
            .iter()
            .filter(|i| matches!(i.outcome, Outcome::Applied { .. } | Outcome::Logged { .. }))
            .count()
    }

    /// Items that were refused or failed.
    pub fn problems(&self) -> impl Iterator<Item = &ItemReport> {
        self.items
            .iter()
            .filter(|i| matches!(i.outcome, Outcome::Refused { .. } | Outcome::Failed { .. }))
    }
}

/// The boxed future [`Sink::apply`] returns (keeps `Sink` usable as `dyn Sink`).
pub type ApplyFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ApplyReport, crate::SinkError>> + Send + 'a>>;

/// A destination for knob decisions. Per-decision problems (refusals, API errors) are reported
/// in the [`ApplyReport`]; `Err` means the sink as a whole could not do its job (e.g. the CDS
/// file could not be written) and nothing of this call took effect.
pub trait Sink: Send + Sync {
    /// Short name for logs and metrics (`istio`, `envoy-file`, `log`).
    fn name(&self) -> &'static str;

    /// Applies the decisions.
    fn apply<'a>(&'a self, decisions: &'a [Decision]) -> ApplyFuture<'a>;
}

/// Errors of a sink as a whole.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Render(#[from] crate::envoy::RenderError),
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
    #[error("serialising {what}: {message}")]
    Serialize { what: String, message: String },
}
