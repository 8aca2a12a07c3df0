//! JSON types of the admin API (`GET /api/destinations`), shared by the server and `meshtune
//! top`. Field names are a contract with the end-to-end tests: add fields, never rename.

use crate::aggregate::DestinationView;
use crate::hints::Hint;
use meshtune_core::WindowStats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Body of `GET /api/destinations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationsResponse {
    pub window_secs: u64,
    /// Reports merged into the aggregates since start.
    pub reports_accepted: u64,
    /// Reports refused with INVALID_ARGUMENT since start.
    pub reports_rejected: u64,
    /// Reports ignored as duplicates (sequence already seen) since start.
    #[serde(default)]
    pub reports_duplicate: u64,
    /// Reporters currently tracked.
    #[serde(default)]
    pub reporters: u64,
    /// How reporters are authenticated: `none`, `client-cert` or `xfcc`.
    #[serde(default)]
    pub auth: String,
    /// Authenticated reporter identities seen (SPIFFE IDs), sorted; empty with `auth: none`.
    #[serde(default)]
    pub identities: Vec<IdentityJson>,
    /// Tracked destinations, sorted by (namespace, name).
    pub destinations: Vec<DestinationJson>,
}

/// An authenticated reporter identity and its accepted-or-checked reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityJson {
    /// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
    pub spiffe_id: String,
    /// Reports from it that passed the identity check.
    pub reports: u64,
    pub last_unix_ms: u64,
}

/// One destination: the reporters' namespace and the upstream cluster name they report
/// ([`meshtune_core::DestKey`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationJson {
    /// Namespace of the reporting (client) sidecars.
    #[serde(default)]
    pub namespace: String,
    /// Upstream cluster name as reported.
    pub name: String,
    /// Distinct reporters with a report in the window.
    pub reporters: u64,
    pub last_report_unix_ms: u64,
    pub window: WindowJson,
    pub lifetime: LifetimeJson,
    /// The hint currently given to filters for this destination, if any.
    pub hint: Option<Hint>,
    /// Knobs in force by knob name (what meshtune pushed, else what the cluster's own
    /// DestinationRule/VirtualService set, else Istio's defaults); `null` before the decision
    /// loop first decided for this destination.
    #[serde(default)]
    pub knobs: Option<BTreeMap<String, f64>>,
    /// Where `knobs` come from: `pushed`, `cluster` (see `knobs_objects`) or `istio_defaults`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knobs_source: Option<String>,
    /// With `knobs_source` `cluster`: the objects read (`DestinationRule ns/name`,
    /// `VirtualService ns/name (route ...)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub knobs_objects: Vec<String>,
    /// The decision loop's last decision for this destination, if any.
    #[serde(default)]
    pub last_decision: Option<LastDecisionJson>,
}

/// The last decision for a destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastDecisionJson {
    pub unix_ms: u64,
    /// `observe` or `enforce`.
    pub mode: String,
    /// Knob names that changed (pushed, recommended or rolled back).
    pub changed: Vec<String>,
    /// `pushed`, `recommended`, `no_change`, `hold_dwell`, `hold_watching`, `rolled_back`,
    /// `push_failed`.
    pub outcome: String,
}

/// `GET /api/model`: the policy model in service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ModelJson {
    /// Model version from its metadata; `null` when no model is loaded (no decisions).
    pub version: Option<String>,
    /// Where it came from (`embedded`, a file path, `configmap ns/name`).
    pub source: Option<String>,
    /// FNV digest of the model bytes (hex).
    pub digest: Option<String>,
    /// `observe` or `enforce`; `null` when the decision loop is not running.
    pub mode: Option<String>,
    /// Decision cycles run so far.
    pub cycles: u64,
}

/// The sliding window (`window_secs`) of a destination, merged over all reporters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowJson {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// status_5xx / requests (0 without requests); likewise for the other rates.
    pub error_5xx_rate: f64,
    /// Envoy UO (circuit breaker overflow).
    pub overflow_rate: f64,
    /// Envoy UT (upstream timeout).
    pub timeout_rate: f64,
    pub inflight_avg: f64,
    pub inflight_max: u64,
    /// Wall-clock span the window covers, seconds.
    #[serde(default)]
    pub duration_s: f64,
    #[serde(default)]
    pub conn_failure_rate: f64,
    #[serde(default)]
    pub retries: u64,
    #[serde(default)]
    pub shed: u64,
    /// Requests actually measured; less than `requests` when filters sampled (the figures
    /// above are then estimates scaled from these, see `filter/README.md` *Sampling*).
    /// What `--min-requests` counts.
    #[serde(default)]
    pub measured_requests: u64,
    /// Whether any figure of the window is an estimate (`measured_requests < requests`).
    #[serde(default)]
    pub estimated: bool,
}

/// Totals since the destination was first seen: exact while every request was measured,
/// estimates (scaled from samples) for the part that was not (`unmeasured_requests`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifetimeJson {
    pub requests: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub flag_uo: u64,
    pub flag_ut: u64,
    pub flag_conn_failure: u64,
    pub retries: u64,
    pub shed: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// 1xx, 3xx and requests without a response code.
    #[serde(default)]
    pub status_other: u64,
    #[serde(default)]
    pub request_bytes: u64,
    #[serde(default)]
    pub response_bytes: u64,
    #[serde(default)]
    pub latency_samples: u64,
    /// Requests whose figures were estimated, not measured (filter sampling).
    #[serde(default)]
    pub unmeasured_requests: u64,
}

fn rate(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

fn ms(w: &WindowStats, q: f64) -> f64 {
    w.latency.quantile_us(q) / 1000.0
}

impl From<&WindowStats> for WindowJson {
    fn from(w: &WindowStats) -> Self {
        Self {
            requests: w.requests,
            rps: w.rps(),
            p50_ms: ms(w, 0.5),
            p90_ms: ms(w, 0.9),
            p99_ms: ms(w, 0.99),
            error_5xx_rate: rate(w.status_5xx, w.requests),
            overflow_rate: rate(w.flag_uo, w.requests),
            timeout_rate: rate(w.flag_ut, w.requests),
            inflight_avg: w.inflight_avg,
            inflight_max: w.inflight_max,
            duration_s: w.duration_s,
            conn_failure_rate: rate(w.flag_conn_failure, w.requests),
            retries: w.retries,
            shed: w.shed,
            measured_requests: w.measured_requests(),
            estimated: w.is_estimated(),
        }
    }
}

impl From<&WindowStats> for LifetimeJson {
    fn from(w: &WindowStats) -> Self {
        Self {
            requests: w.requests,
            status_2xx: w.status_2xx,
            status_4xx: w.status_4xx,
            status_5xx: w.status_5xx,
            flag_uo: w.flag_uo,
            flag_ut: w.flag_ut,
            flag_conn_failure: w.flag_conn_failure,
            retries: w.retries,
            shed: w.shed,
            p50_ms: ms(w, 0.5),
            p90_ms: ms(w, 0.9),
            p99_ms: ms(w, 0.99),
            status_other: w.status_other,
            request_bytes: w.request_bytes,
            response_bytes: w.response_bytes,
            latency_samples: w.latency.count(),
            unmeasured_requests: w.unmeasured_requests,
        }
    }
}

impl DestinationJson {
    /// Builds the JSON of one destination view with its hint.
    pub fn new(v: &DestinationView, hint: Option<Hint>) -> Self {
        Self {
            namespace: v.key.namespace.clone(),
            name: v.key.cluster.clone(),
            reporters: v.reporters as u64,
            last_report_unix_ms: v.last_report_unix_ms,
            window: WindowJson::from(&v.window),
            lifetime: LifetimeJson::from(&v.lifetime),
            hint,
            knobs: None,
            knobs_source: None,
            knobs_objects: Vec::new(),
            last_decision: None,
        }
    }
}
