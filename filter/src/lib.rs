//! proxy-wasm HTTP filter: records per-upstream request windows, reports them, applies hints.
//!
//! Pure, host-testable logic lives in [`config`], [`flags`], [`hash`], [`window`], [`hints`],
//! [`idle`], [`lease`], [`report`] and [`sampling`]; the proxy-wasm glue (only compiled for `wasm32`) is in `plugin`.
//! See `filter/README.md` for the Envoy wiring, the configuration schema and the metrics.

pub mod config;
pub mod flags;
pub mod hash;
pub mod hints;
pub mod idle;
pub mod lease;
pub mod report;
pub mod sampling;
pub mod window;

#[cfg(target_arch = "wasm32")]
mod plugin;

/// Filter version reported to the controller.
pub const FILTER_VERSION: &str = env!("CARGO_PKG_VERSION");
