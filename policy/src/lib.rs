//! ONNX policy runtime (tract): contract checks, validation, batched inference, ONNX export of MLPs, model store.
//!
//! - [`onnx`]: export MLPs to contract-conforming ONNX files, reference forward pass.
//! - [`runtime`]: [`OnnxPolicy`] (load once, contract check, batched inference), validation,
//!   the embedded default model.
//! - [`store`]: [`ModelStore`] hot swap with metrics; [`watch`] (file) and [`configmap`]
//!   (Kubernetes) sources, `model push`.
//! - [`guardrails`]: bounds, hysteresis, step limits, dwell, rollback, observe/enforce.
//! - [`source`]: `embedded` / `file:PATH` / `configmap:NS/NAME`: the one model-source
//!   implementation (first model from a list of sources, watchers for all of them).
//! - [`cli`]: `meshtune model inspect|validate|push`.

pub mod cli;
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
