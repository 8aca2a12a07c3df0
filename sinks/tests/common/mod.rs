//! Shared test helpers: locating the Istio CRD file and the Envoy binary (required under CI).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use meshtune_core::{Knob, Knobs};
use meshtune_sinks::schema::{CrdSchemas, CRD_PATH_ENV};

pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The CRD schemas, or `None` (with a message) when the file is missing outside CI. Under
/// CI=true a missing file fails the test.
pub fn crds() -> Option<Arc<CrdSchemas>> {
    static CRDS: OnceLock<Option<Arc<CrdSchemas>>> = OnceLock::new();
    CRDS.get_or_init(|| {
        let over = std::env::var_os(CRD_PATH_ENV);
        match CrdSchemas::locate(over.as_deref(), ci()) {
            Ok(Some(s)) => Some(Arc::new(s)),
            Ok(None) => {
                eprintln!(
                    "SKIP: Istio CRD file not found at {} (set {CRD_PATH_ENV})",
                    meshtune_sinks::schema::crd_path(over.as_deref()).display()
                );
                None
            }
            Err(e) => panic!("Istio CRD schemas are required under CI=true: {e}"),
        }
    })
    .clone()
}

/// The Envoy binary: $ENVOY_BIN, else `.envoy/envoy/_bin/envoy` in the repository, else
/// /work/main/.envoy/envoy/_bin/envoy. `None` (with a message) outside CI; panics under CI.
pub fn envoy_bin() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("ENVOY_BIN") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.envoy/envoy/_bin/envoy"),
            PathBuf::from("/work/main/.envoy/envoy/_bin/envoy"),
        ],
    };
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Some(p.clone());
    }
    let msg = format!(
        "Envoy binary not found (tried {candidates:?}; set ENVOY_BIN or run `cargo xtask setup`)"
    );
    if ci() {
        panic!("{msg}");
    }
    eprintln!("SKIP: {msg}");
    None
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
