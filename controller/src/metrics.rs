//! Prometheus metrics of the controller (prometheus-client, OpenMetrics text on `/metrics`).
//!
//! Conventions (checked by `promtool check metrics` in `controller/tests/metrics_promtool.rs`):
//! base units (seconds; knob gauges in seconds for duration knobs), latency as histograms
//! (never pre-computed quantile gauges), counters end in `_total`.
//!
//! **Per-destination series are bounded**: the traffic series (`meshtune_destination_*`) are
//! exported for at most [`MAX_METRIC_DESTINATIONS`] destinations, those with the most requests
//! (the others are counted in `meshtune_metric_destinations_omitted`); per destination that is
//! 4 status classes + 3 response flags + retries + a latency histogram of
//! [`LATENCY_BUCKETS_SECONDS`]`.len() + 3` series (20 buckets + sum + count, 31 series). The
//! knob gauges (`meshtune_knob`, 11 per destination) exist for destinations the policy decided
//! for, themselves bounded by `--max-destinations`.

use crate::aggregate::DestinationView;
use std::sync::Mutex;

use meshtune_core::knobs::{Knob, Knobs};
use meshtune_core::DestKey;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
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
    /// Reporter (client) namespace whose sidecars the knobs apply to.
    pub namespace: String,
    pub destination: String,
    pub knob: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeatureLabels {
    pub feature: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The two text formats `/metrics` serves, picked from the request's `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0 (what Prometheus asks for first).
    OpenMetrics,
    /// Prometheus text 0.0.4 (no `Accept`, `curl`, `promtool check metrics`).
    PrometheusText,
}

impl Exposition {
    /// OpenMetrics when `accept` names `application/openmetrics-text`, else Prometheus text.
    pub fn for_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Exposition::OpenMetrics,
            _ => Exposition::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Most destinations with per-destination traffic series (see the module docs).
pub const MAX_METRIC_DESTINATIONS: usize = 200;

/// Upper bounds (seconds) of `meshtune_destination_request_duration_seconds`.
pub const LATENCY_BUCKETS_SECONDS: [f64; 19] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 300.0,
];

/// One destination's lifetime totals, as exported.
#[derive(Debug, Clone, Default)]
struct DestSeries {
    /// Reporter (client) namespace: the `namespace` label.
    namespace: String,
    /// Reported cluster: the `destination` label.
    name: String,
    classes: [u64; 4],
    flags: [u64; 3],
    retries: u64,
    /// Requests estimated rather than measured (filter sampling).
    unmeasured: u64,
    /// Per-bucket (not cumulative) counts for [`LATENCY_BUCKETS_SECONDS`] then `+Inf`.
    buckets: Vec<(f64, u64)>,
    sum_s: f64,
    count: u64,
}

impl DestSeries {
    fn of(v: &DestinationView) -> Self {
        let w = &v.lifetime;
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_SECONDS
            .iter()
            .map(|b| (*b, 0))
            .chain(std::iter::once((f64::INFINITY, 0)))
            .collect();
        for (i, n) in w.latency.nonzero_buckets() {
            let (lo, _) = meshtune_core::histogram::bucket_bounds(i as usize);
            let s = lo as f64 / 1e6;
            // Bucket lower bounds never exceed the value recorded: `le` holds it when lo ≤ le.
            let at = buckets.iter().position(|(le, _)| s <= *le).unwrap_or(0);
            buckets[at].1 += n;
        }
        DestSeries {
            namespace: v.key.namespace.clone(),
            name: v.key.cluster.clone(),
            classes: [w.status_2xx, w.status_4xx, w.status_5xx, w.status_other],
            flags: [w.flag_uo, w.flag_ut, w.flag_conn_failure],
            retries: w.retries,
            unmeasured: w.unmeasured_requests,
            buckets,
            sum_s: w.latency.sum_us() as f64 / 1e6,
            count: w.latency.count(),
        }
    }
}

/// The per-destination traffic series, refreshed from the aggregator before each scrape.
#[derive(Debug, Default)]
struct DestinationCollector {
    rows: Mutex<Vec<DestSeries>>,
}

const CODE_CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "other"];
const FLAGS: [&str; 3] = ["overflow", "timeout", "connection_failure"];

impl Collector for DestinationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut e = encoder.encode_descriptor(
                "meshtune_destination_requests",
                "Requests reported by the filters per destination and status class (lifetime)",
                None,
                MetricType::Counter,
            )?;
            for r in rows.iter() {
                for (c, n) in CODE_CLASSES.iter().zip(r.classes) {
                    let l = [
                        ("namespace", r.namespace.as_str()),
                        ("destination", r.name.as_str()),
                        ("code_class", c),
                    ];
                    prometheus_client::metrics::counter::ConstCounter::new(n)
                        .encode(e.encode_family(&l)?)?;
                }
            }
        }
        {
            let mut e = encoder.encode_descriptor(
                "meshtune_destination_response_flags",
                "Requests per destination with an Envoy response flag: overflow (UO), timeout (UT), connection_failure (UF, UC, URX)",
                None,
                MetricType::Counter,
            )?;
            for r in rows.iter() {
                for (f, n) in FLAGS.iter().zip(r.flags) {
                    let l = [
                        ("namespace", r.namespace.as_str()),
                        ("destination", r.name.as_str()),
                        ("flag", f),
                    ];
                    prometheus_client::metrics::counter::ConstCounter::new(n)
                        .encode(e.encode_family(&l)?)?;
                }
            }
        }
        {
            let mut e = encoder.encode_descriptor(
                "meshtune_destination_retries",
                "Retries reported by the filters per destination",
                None,
                MetricType::Counter,
            )?;
            for r in rows.iter() {
                let l = [
                    ("namespace", r.namespace.as_str()),
                    ("destination", r.name.as_str()),
                ];
                prometheus_client::metrics::counter::ConstCounter::new(r.retries)
                    .encode(e.encode_family(&l)?)?;
            }
        }
        {
            let mut e = encoder.encode_descriptor(
                "meshtune_destination_unmeasured_requests",
                "Requests per destination whose figures are estimates scaled from the filters' samples (not measured one by one; 0 while every request is measured)",
                None,
                MetricType::Counter,
            )?;
            for r in rows.iter() {
                let l = [("destination", r.name.as_str())];
                prometheus_client::metrics::counter::ConstCounter::new(r.unmeasured)
                    .encode(e.encode_family(&l)?)?;
            }
        }
        {
            let mut e = encoder.encode_descriptor(
                "meshtune_destination_request_duration_seconds",
                "Request latency reported by the filters per destination",
                None,
                MetricType::Histogram,
            )?;
            for r in rows.iter() {
                let l = [
                    ("namespace", r.namespace.as_str()),
                    ("destination", r.name.as_str()),
                ];
                e.encode_family(&l)?
                    .encode_histogram::<NoLabelSet>(r.sum_s, r.count, &r.buckets, None)?;
            }
        }
        Ok(())
    }
}

/// All controller metrics, registered in one [`Registry`].
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub reports_accepted: Counter,
    pub reports_rejected: Family<ReasonLabels, Counter>,
    pub reports_duplicate: Counter,
    /// Reports refused for their reporter's identity (PERMISSION_DENIED or UNAUTHENTICATED),
    /// by reason (`namespace_mismatch`, `no_identity`, `bad_identity`).
    pub reports_unauthorized: Family<ReasonLabels, Counter>,
    /// Keys not decided for, by reason (`namespace_not_enabled`: the namespace gate).
    pub tuning_refused: Family<ReasonLabels, Counter>,
    pub reporter_restarts: Counter,
    pub filter_dropped_reports: Counter,
    pub destinations_dropped: Counter,
    /// Reports refused because their reporter exceeded its report rate.
    pub reports_rate_limited: Counter,
    /// Report requests ended with DEADLINE_EXCEEDED at the request timeout.
    pub reports_timed_out: Counter,
    /// Decision cycles that panicked (caught; the loop goes on).
    pub decision_cycle_panics: Counter,
    /// Destinations whose policy output had a NaN or infinite value (knobs held).
    pub nonfinite_outputs: Counter,
    /// Per-destination entries pruned after their destination expired or was evicted.
    pub destinations_pruned: Counter,
    pub destinations_tracked: Gauge,
    pub reporters_tracked: Gauge,
    pub report_ingest_seconds: Histogram,
    pub hints_reloads: Family<ReasonLabels, Counter>,
    destinations: std::sync::Arc<DestinationCollector>,
    /// Destinations without per-destination series (beyond [`MAX_METRIC_DESTINATIONS`]).
    pub metric_destinations_omitted: Gauge,
    /// Destinations decided for in the last cycle, by feature source (filter, prometheus).
    pub destinations_selected: Family<SourceLabels, Gauge>,
    /// Decisions whose policy input used a fallback for this feature (see
    /// `meshtune_core::availability`).
    pub policy_input_missing: Family<FeatureLabels, Counter>,
    /// Prometheus source fetches, by result (ok, error).
    pub prometheus_fetches: Family<ResultLabels, Counter>,
    /// Time of one Prometheus source fetch (all queries).
    pub prometheus_fetch_seconds: Histogram,
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
    /// Leader election (`meshtune_leader`, transitions).
    pub leader: crate::leader::LeaderMetrics,
    /// The namespace switch (`meshtune_enabled_namespaces`, data-plane writes).
    pub namespaces: crate::namespaces::NamespaceMetrics,
    /// The cluster's own DestinationRules/VirtualServices (knobs in force not pushed by meshtune).
    pub cluster_knobs: crate::cluster_knobs::ClusterKnobsMetrics,
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
            reports_unauthorized: Family::default(),
            tuning_refused: Family::default(),
            reporter_restarts: Counter::default(),
            filter_dropped_reports: Counter::default(),
            destinations_dropped: Counter::default(),
            reports_rate_limited: Counter::default(),
            reports_timed_out: Counter::default(),
            decision_cycle_panics: Counter::default(),
            nonfinite_outputs: Counter::default(),
            destinations_pruned: Counter::default(),
            destinations_tracked: Gauge::default(),
            reporters_tracked: Gauge::default(),
            report_ingest_seconds: Histogram::new(exponential_buckets(1e-6, 4.0, 10)),
            hints_reloads: Family::default(),
            destinations: Default::default(),
            metric_destinations_omitted: Gauge::default(),
            destinations_selected: Family::default(),
            policy_input_missing: Family::default(),
            prometheus_fetches: Family::default(),
            prometheus_fetch_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 8)),
            decision_cycles: Counter::default(),
            decisions: Family::default(),
            pushes: Family::default(),
            rollbacks: Counter::default(),
            inference_errors: Counter::default(),
            inference_seconds: Histogram::new(exponential_buckets(1e-5, 4.0, 10)),
            knob: Family::default(),
            store: meshtune_policy::store::StoreMetrics::register(&mut registry),
            leader: crate::leader::LeaderMetrics::register(&mut registry),
            namespaces: crate::namespaces::NamespaceMetrics::register(&mut registry),
            cluster_knobs: crate::cluster_knobs::ClusterKnobsMetrics::register(&mut registry),
            registry: Registry::default(),
        };
        registry.register(
            "meshtune_decision_cycles",
            "Decision cycles that ran the policy",
            m.decision_cycles.clone(),
        );
        registry.register(
            "meshtune_decisions",
            "Per-destination decisions that changed knobs, by the namespace's mode (observe, recommend, enforce)",
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
            "Knob in force per destination (base units: seconds for durations; Istio unlimited = 4294967295)",
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
            "meshtune_reports_unauthorized",
            "Reports refused for their reporter's identity (no identity, bad identity, namespace differs from the identity's), by reason",
            m.reports_unauthorized.clone(),
        );
        registry.register(
            "meshtune_tuning_refused",
            "Destinations (reporter namespace, cluster) not decided for, by reason (namespace_not_enabled)",
            m.tuning_refused.clone(),
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
            "Destinations evicted (one-time names first, then least recently reported) because max_destinations was reached",
            m.destinations_dropped.clone(),
        );
        registry.register(
            "meshtune_reports_rate_limited",
            "Reports refused with RESOURCE_EXHAUSTED because their reporter exceeded its report rate",
            m.reports_rate_limited.clone(),
        );
        registry.register(
            "meshtune_reports_timed_out",
            "Report requests ended with DEADLINE_EXCEEDED because they were not received and answered within --request-timeout-secs (a stalled or very slow client)",
            m.reports_timed_out.clone(),
        );
        registry.register(
            "meshtune_decision_cycle_panics",
            "Decision cycles that panicked (caught and logged; the loop goes on)",
            m.decision_cycle_panics.clone(),
        );
        registry.register(
            "meshtune_policy_nonfinite_outputs",
            "Destinations whose policy output held a NaN or infinite value (knobs in force held, nothing pushed)",
            m.nonfinite_outputs.clone(),
        );
        registry.register(
            "meshtune_destinations_pruned",
            "Per-destination entries (policy status, loop state, knob series) pruned after their destination expired or was evicted",
            m.destinations_pruned.clone(),
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
            "meshtune_metric_destinations_omitted",
            "Destinations without per-destination series (beyond the export bound)",
            m.metric_destinations_omitted.clone(),
        );
        registry.register(
            "meshtune_destinations_selected",
            "Destinations decided for in the last cycle, by feature source (filter, prometheus)",
            m.destinations_selected.clone(),
        );
        registry.register(
            "meshtune_policy_input_missing",
            "Decisions whose policy input used the documented fallback for a missing feature",
            m.policy_input_missing.clone(),
        );
        registry.register(
            "meshtune_prometheus_fetches",
            "Prometheus feature source fetches, by result (ok, error)",
            m.prometheus_fetches.clone(),
        );
        registry.register(
            "meshtune_prometheus_fetch_seconds",
            "Time of one Prometheus feature source fetch (all queries)",
            m.prometheus_fetch_seconds.clone(),
        );
        // A gauge of 1 labelled with the version (the `_info` convention; the OpenMetrics
        // `info` type is unknown to the Prometheus text parser and `promtool`).
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register(
            "meshtune_build_info",
            "meshtune build information (value 1, labelled with the version)",
            build,
        );
        registry.register_collector(Box::new(m.destinations.clone()));
        Self { registry, ..m }
    }

    /// Refreshes the per-destination series from a fresh view (stale destinations disappear;
    /// at most [`MAX_METRIC_DESTINATIONS`], those with the most requests).
    pub fn set_destinations(&self, views: &[DestinationView], reporters: usize) {
        self.destinations_tracked.set(views.len() as i64);
        self.reporters_tracked.set(reporters as i64);
        let mut ranked: Vec<&DestinationView> = views.iter().collect();
        if ranked.len() > MAX_METRIC_DESTINATIONS {
            ranked.sort_by_key(|v| std::cmp::Reverse(v.lifetime.requests));
        }
        let omitted = ranked.len().saturating_sub(MAX_METRIC_DESTINATIONS);
        ranked.truncate(MAX_METRIC_DESTINATIONS);
        ranked.sort_by(|a, b| a.key.cmp(&b.key));
        let rows: Vec<DestSeries> = ranked.into_iter().map(DestSeries::of).collect();
        *self
            .destinations
            .rows
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = rows;
        self.metric_destinations_omitted.set(omitted as i64);
    }

    /// Removes the knob gauges of `key`.
    pub fn remove_knobs(&self, key: &DestKey) {
        for k in Knob::ALL {
            self.knob.remove(&KnobLabels {
                namespace: key.namespace.clone(),
                destination: key.cluster.clone(),
                knob: k.name().to_string(),
            });
        }
    }

    /// Sets the knob gauges of `destination` (duration knobs in seconds).
    pub fn set_knobs(&self, key: &DestKey, knobs: &Knobs) {
        for k in Knob::ALL {
            let v = knobs.get(k);
            let v = if k.spec().unit == "ms" { v / 1000.0 } else { v };
            self.knob
                .get_or_create(&KnobLabels {
                    namespace: key.namespace.clone(),
                    destination: key.cluster.clone(),
                    knob: k.name().to_string(),
                })
                .set(v);
        }
    }

    /// Counts one decision whose input lacked `features`, and sets the per-source gauges.
    pub fn count_missing(&self, features: &[&str]) {
        for f in features {
            self.policy_input_missing
                .get_or_create(&FeatureLabels {
                    feature: f.to_string(),
                })
                .inc();
        }
    }

    /// OpenMetrics text exposition of all metrics.
    pub fn encode(&self) -> String {
        self.encode_as(Exposition::OpenMetrics)
    }

    /// Exposition of all metrics in `format`.
    pub fn encode_as(&self, format: Exposition) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = match format {
            Exposition::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
            Exposition::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
        };
        out
    }
}
