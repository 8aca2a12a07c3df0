//! meshtune's shared vocabulary: wasm-safe, no I/O.
//!
//! - [`histogram`]: the mergeable log-linear latency histogram the filter records into.
//! - [`window`]: one destination's counters over a window, and its feature vector.
//! - [`features`]: the policy's input schema and normalisation.
//! - [`knobs`]: the policy's output schema: Istio knobs with units, bounds and defaults.
//! - [`contract`]: the ONNX policy contract (tensor names, metadata keys, version).
//! - [`dataset`]: the (features, knobs, outcomes) row format shared by recorder and trainer.
//! - [`env`]: the RL environment and policy traits shared by sim, trainer and evaluation.

pub mod contract;
pub mod dataset;
pub mod env;
pub mod features;
pub mod histogram;
pub mod knobs;
pub mod window;

pub use features::{Features, FEATURE_COUNT, FEATURE_NAMES};
pub use histogram::LatencyHistogram;
pub use knobs::{Knob, Knobs, KNOB_COUNT};
pub use window::WindowStats;
