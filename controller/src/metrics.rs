//! Prometheus metrics of the controller (prometheus-client, text exposition on `/metrics`).

use crate::aggregate::DestinationView;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    pub sink: String,
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KnobLabels {
    pub destination: String,
    pub knob: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// All controller metrics, registered in one [`Registry`].
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub reports_accepted: Counter,
    pub reports_rejected: Family<ReasonLabels, Counter>,
    pub reports_duplicate: Counter,
    pub reporter_restarts: Counter,
    pub filter_dropped_reports: Counter,
    pub destinations_dropped: Counter,
    pub destinations_tracked: Gauge,
    pub reporters_tracked: Gauge,
    pub report_ingest_seconds: Histogram,
    pub hints_reloads: Family<ReasonLabels, Counter>,
    pub destination_rps: Family<DestinationLabels, FloatGauge>,
    pub destination_p99_ms: Family<DestinationLabels, FloatGauge>,
    pub destination_error_5xx_rate: Family<DestinationLabels, FloatGauge>,
    /// Decision cycles that ran inference.
    pub decision_cycles: Counter,
    /// Per-destination decisions that changed knobs (pushed or recommended), by mode.
    pub decisions: Family<ModeLabels, Counter>,
    /// Decisions sent to a sink, by sink and result (ok, refused, failed, error).
    pub pushes: Family<PushLabels, Counter>,
    pub rollbacks: Counter,
    pub inference_errors: Counter,
    pub inference_seconds: Histogram,
    /// Knobs in force per destination.
    pub knob: Family<KnobLabels, FloatGauge>,
    /// The model store's metrics (refused, info{version}, swaps).
    pub store: meshtune_policy::store::StoreMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            reports_accepted: Counter::default(),
            reports_rejected: Family::default(),
            reports_duplicate: Counter::default(),
            reporter_restarts: Counter::default(),
            filter_dropped_reports: Counter::default(),
            destinations_dropped: Counter::default(),
            destinations_tracked: Gauge::default(),
            reporters_tracked: Gauge::default(),
            report_ingest_seconds: Histogram::new(exponential_buckets(1e-6, 4.0, 10)),
            hints_reloads: Family::default(),
            destination_rps: Family::default(),
            destination_p99_ms: Family::default(),
            destination_error_5xx_rate: Family::default(),
            decision_cycles: Counter::default(),
            decisions: Family::default(),
            pushes: Family::default(),
            rollbacks: Counter::default(),
            inference_errors: Counter::default(),
            inference_seconds: Histogram::new(exponential_buckets(1e-5, 4.0, 10)),
            knob: Family::default(),
            store: meshtune_policy::store::StoreMetrics::register(&mut registry),
            registry: Registry::default(),
        };
        registry.register(
            "meshtune_decision_cycles",
            "Decision cycles that ran the policy",
            m.decision_cycles.clone(),
        );
        registry.register(
            "meshtune_decisions",
            "Per-destination decisions that changed knobs, by mode (observe, enforce)",
            m.decisions.clone(),
        );
        registry.register(
            "meshtune_pushes",
            "Decisions sent to a sink, by sink and result (ok, refused, failed, error)",
            m.pushes.clone(),
        );
        registry.register(
            "meshtune_rollbacks",
            "Pushes rolled back after the objective worsened",
            m.rollbacks.clone(),
        );
        registry.register(
            "meshtune_inference_errors",
            "Decision cycles whose inference failed",
            m.inference_errors.clone(),
        );
        registry.register(
            "meshtune_inference_seconds",
            "Time of one batched policy inference",
            m.inference_seconds.clone(),
        );
        registry.register(
            "meshtune_knob",
            "Knob in force per destination (knob unit; Istio unlimited = 4294967295)",
            m.knob.clone(),
        );
        registry.register(
            "meshtune_reports_accepted",
            "Reports merged into the aggregates",
            m.reports_accepted.clone(),
        );
        registry.register(
            "meshtune_reports_rejected",
            "Reports refused with INVALID_ARGUMENT, by reason",
            m.reports_rejected.clone(),
        );
        registry.register(
            "meshtune_reports_duplicate",
            "Reports ignored because their sequence was already seen",
            m.reports_duplicate.clone(),
        );
        registry.register(
            "meshtune_reporter_restarts",
            "Reporters whose sequence went back (restart)",
            m.reporter_restarts.clone(),
        );
        registry.register(
            "meshtune_filter_dropped_reports",
            "Reports the filters say they failed to deliver",
            m.filter_dropped_reports.clone(),
        );
        registry.register(
            "meshtune_destinations_dropped",
            "Upstream windows not tracked because max_destinations was reached",
            m.destinations_dropped.clone(),
        );
        registry.register(
            "meshtune_destinations_tracked",
            "Destinations currently tracked",
            m.destinations_tracked.clone(),
        );
        registry.register(
            "meshtune_reporters_tracked",
            "Reporters currently tracked",
            m.reporters_tracked.clone(),
        );
        registry.register(
            "meshtune_report_ingest_seconds",
            "Time to validate and merge one report",
            m.report_ingest_seconds.clone(),
        );
        registry.register(
            "meshtune_hints_reloads",
            "Hints file reloads, by result (ok, error)",
            m.hints_reloads.clone(),
        );
        registry.register(
            "meshtune_destination_rps",
            "Requests per second over the sliding window",
            m.destination_rps.clone(),
        );
        registry.register(
            "meshtune_destination_p99_ms",
            "99th percentile latency over the sliding window, ms",
            m.destination_p99_ms.clone(),
        );
        registry.register(
            "meshtune_destination_error_5xx_rate",
            "Share of 5xx responses over the sliding window",
            m.destination_error_5xx_rate.clone(),
        );
        Self { registry, ..m }
    }

    /// Sets the per-destination gauges from a fresh view (stale destinations disappear).
    pub fn set_destinations(&self, views: &[DestinationView], reporters: usize) {
        self.destination_rps.clear();
        self.destination_p99_ms.clear();
        self.destination_error_5xx_rate.clear();
        self.destinations_tracked.set(views.len() as i64);
        self.reporters_tracked.set(reporters as i64);
        for v in views {
            let l = DestinationLabels {
                destination: v.name.clone(),
            };
            let w = &v.window;
            self.destination_rps.get_or_create(&l).set(w.rps());
            self.destination_p99_ms
                .get_or_create(&l)
                .set(w.latency.quantile_us(0.99) / 1000.0);
            let rate = if w.requests > 0 {
                w.status_5xx as f64 / w.requests as f64
            } else {
                0.0
            };
            self.destination_error_5xx_rate.get_or_create(&l).set(rate);
        }
    }

    /// Text exposition of all metrics.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
