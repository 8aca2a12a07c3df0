//! Cross-crate end-to-end tests with real Envoy, the real wasm filter, controller and workload.
