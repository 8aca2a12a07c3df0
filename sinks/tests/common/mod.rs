//! Shared test helpers: the Istio CRD schemas (always required, never skipped) and knob sets.
//! The Envoy binary and the mocked API server come from `meshtune-test-support`.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use meshtune_core::{Knob, Knobs};
use meshtune_sinks::schema::{CrdSchemas, SchemaError};

/// The loaded CRD schemas; panics with the error (which names the path tried) otherwise:
/// schema tests fail when the file is missing, they never skip.
pub fn required(loaded: Result<CrdSchemas, SchemaError>) -> Arc<CrdSchemas> {
    Arc::new(loaded.unwrap_or_else(|e| panic!("{e}")))
}

/// The CRD schemas named by `MESHTUNE_ISTIO_CRDS`, else the vendored copy in
/// `third_party/istio-crds/` ([`required`]); loaded once per test binary.
pub fn crds() -> Arc<CrdSchemas> {
    static CRDS: OnceLock<Arc<CrdSchemas>> = OnceLock::new();
    CRDS.get_or_init(|| required(CrdSchemas::locate_from_env()))
        .clone()
}

/// A knob set with every knob away from its default.
pub fn tuned() -> Knobs {
    let mut k = Knobs::istio_defaults();
    k.set(Knob::MaxConnections, 100.0);
    k.set(Knob::Http1MaxPendingRequests, 50.0);
    k.set(Knob::Http2MaxRequests, 200.0);
    k.set(Knob::MaxRequestsPerConnection, 10.0);
    k.set(Knob::MaxRetries, 3.0);
    k.set(Knob::RouteTimeoutMs, 2_000.0);
    k.set(Knob::RetryAttempts, 3.0);
    k.set(Knob::PerTryTimeoutMs, 250.0);
    k.set(Knob::Consecutive5xxErrors, 4.0);
    k.set(Knob::BaseEjectionTimeMs, 30_000.0);
    k.set(Knob::MaxEjectionPercent, 25.0);
    k
}

/// Knob sets covering defaults, both bounds and a sweep of normalised policy outputs.
pub fn knob_sets() -> Vec<Knobs> {
    let mut sets = vec![Knobs::istio_defaults(), tuned()];
    for u in [0.0f32, 0.13, 0.5, 0.77, 1.0] {
        sets.push(Knobs::from_normalised(&[u; meshtune_core::KNOB_COUNT]));
    }
    sets
}
