//! ONNX policy runtime (tract): contract checks, validation, batched inference, ONNX export of MLPs, model store.
//!
//! - [`onnx`]: the one ONNX exporter of MLPs (contract-conforming files; the trainer writes
//!   `models/*.onnx` with it), reading an exported MLP back, reference forward pass.
//! - [`runtime`]: [`OnnxPolicy`] (load once, contract check, batched inference), validation,
//!   the embedded default model. The controller serves models with it, and the trainer
//!   evaluates and checks them with it.
//! - [`store`]: [`ModelStore`] hot swap with metrics; [`watch`] (file) and `configmap`
//!   (Kubernetes) sources, `model push`.
//! - [`guardrails`]: bounds, hysteresis, step limits, dwell, rollback, observe/enforce.
//! - [`source`]: `embedded` / `file:PATH` / `configmap:NS/NAME`: the one model-source
//!   implementation (first model from a list of sources, watchers for all of them).
//! - [`cli`]: `meshtune model inspect|validate|push`.
//!
//! Cargo feature `kube` (default): the `configmap` module, `model push` and `configmap:`
//! sources, with the Kubernetes client. Without it the crate exports, loads, validates and runs
//! models without pulling in kube (the trainer depends on it that way).

pub mod cli;
#[cfg(feature = "kube")]
pub mod configmap;
pub mod guardrails;
pub mod onnx;
pub mod runtime;
pub mod source;
pub mod store;
pub mod watch;

pub use runtime::{
    embedded_default, embedded_default_bytes, smoke_inputs, validate, validate_path, ModelError,
    OnnxPolicy,
};
pub use store::{ModelStore, SwapOutcome};
