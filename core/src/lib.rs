//! meshtune's shared vocabulary: wasm-safe, no I/O.
//!
//! - [`key`]: [`DestKey`], (reporter namespace, destination cluster), the key of aggregates,
//!   decisions and hints.
//! - [`histogram`]: the mergeable log-linear latency histogram the filter records into.
//! - [`window`]: one destination's counters over a window, and its feature vector.
//! - [`features`]: the policy's input schema and normalisation.
//! - [`availability`]: which window fields a source measured, and the policy input's
//!   documented fallback for those it did not (Prometheus windows).
//! - [`knobs`]: the policy's output schema: Istio knobs with units, bounds and defaults.
//! - [`contract`]: the ONNX policy contract (tensor names, metadata keys, version).
//! - [`outcomes`]: a window's outcomes (SLO goodput, error/shed/timeout rates) and the
//!   objective that scores them: one definition for controller, simulator and trainer.
//! - [`dataset`]: the (features, knobs, outcomes) row format shared by recorder and trainer.
//! - [`env`]: the RL environment and policy traits shared by sim, trainer and evaluation.

pub mod availability;
pub mod contract;
pub mod dataset;
pub mod env;
pub mod features;
pub mod histogram;
pub mod key;
pub mod knobs;
pub mod outcomes;
pub mod window;

/// Kubernetes namespace assumed when nothing names one: the filter's reporter namespace when
/// neither its configuration nor node metadata give one, and the controller's destination
/// namespace for plain Envoy cluster names.
pub const DEFAULT_NAMESPACE: &str = "default";

pub use features::{Context, Features, FEATURE_COUNT, FEATURE_NAMES};
pub use histogram::LatencyHistogram;
pub use key::DestKey;
pub use knobs::{Knob, Knobs, KNOB_COUNT};
pub use outcomes::{Objective, Outcomes, SloGood};
pub use window::WindowStats;
