//! Which [`WindowStats`] fields a feature source could measure, and the documented fallback
//! the policy input uses for those it could not.
//!
//! The filter measures every field. Other sources cannot: Istio's standard Prometheus metrics
//! carry no in-flight gauge, no retry count and no HTTP version (Envoy cluster statistics give
//! some of these when they are scraped). Such a window travels with an [`Availability`] mask
//! naming its missing fields; it is defined over `WindowStats` fields, not feature indices, so
//! it does not change when the feature vector does.
//!
//! The policy input of a window is `policy_stats(stats, availability).features()`:
//! [`policy_stats`] fills each missing field with its [`Field::fallback`], never a silent zero:
//!
//! | missing field | fallback in the policy input |
//! | --- | --- |
//! | `Inflight` | Little's law: `inflight_avg = rps × mean latency (s)`, `inflight_max = ⌈rps × p99 latency (s)⌉` (at least `⌈inflight_avg⌉`) |
//! | `Retries` | none counted (retry rate 0) |
//! | `Protocol` | all HTTP/1.x (HTTP/2 fraction 0) |
//! | `FlagUo`, `FlagUt`, `FlagConnFailure` | none counted (rate 0) |
//! | `Shed`, `Bytes` | 0 (not policy features; shedding is the filter's own) |
//! | `Requests`, `StatusClasses`, `Latency` | none: the window is not [`Availability::decidable`] and the controller does not decide for it |
//!
//! [`Availability::missing_features`] names the features a missing field feeds (the
//! controller counts them in `meshtune_policy_input_missing_total{feature}`).

use crate::features::FEATURE_NAMES;
use crate::window::WindowStats;

/// A group of [`WindowStats`] fields that a source measures (or not) together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `requests`, `duration_s`.
    Requests,
    /// `status_2xx`, `status_4xx`, `status_5xx`, `status_other`.
    StatusClasses,
    /// `flag_uo` (circuit-breaker overflow).
    FlagUo,
    /// `flag_ut` (upstream timeout).
    FlagUt,
    /// `flag_conn_failure` (UF + UC + URX).
    FlagConnFailure,
    /// `retries`.
    Retries,
    /// `shed` (requests the filter shed locally).
    Shed,
    /// `inflight_avg`, `inflight_max`.
    Inflight,
    /// `request_bytes`, `response_bytes`.
    Bytes,
    /// `http2_requests`.
    Protocol,
    /// `latency` (the histogram).
    Latency,
}

/// Every field, in declaration order.
pub const FIELDS: [Field; 11] = [
    Field::Requests,
    Field::StatusClasses,
    Field::FlagUo,
    Field::FlagUt,
    Field::FlagConnFailure,
    Field::Retries,
    Field::Shed,
    Field::Inflight,
    Field::Bytes,
    Field::Protocol,
    Field::Latency,
];

impl Field {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// Name used in logs, metrics and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Field::Requests => "requests",
            Field::StatusClasses => "status_classes",
            Field::FlagUo => "flag_uo",
            Field::FlagUt => "flag_ut",
            Field::FlagConnFailure => "flag_conn_failure",
            Field::Retries => "retries",
            Field::Shed => "shed",
            Field::Inflight => "inflight",
            Field::Bytes => "bytes",
            Field::Protocol => "protocol",
            Field::Latency => "latency",
        }
    }

    /// The fallback the policy input uses when this field is missing (`None`: no fallback,
    /// the window is not decidable).
    pub fn fallback(self) -> Option<&'static str> {
        match self {
            Field::Requests | Field::StatusClasses | Field::Latency => None,
            Field::Inflight => Some("little's law from rps and latency"),
            Field::Retries | Field::FlagUo | Field::FlagUt | Field::FlagConnFailure => {
                Some("none counted")
            }
            Field::Protocol => Some("all HTTP/1.x"),
            Field::Shed | Field::Bytes => Some("zero (not a policy feature)"),
        }
    }
}

/// The fields each window feature is computed from, by feature name. Every window feature
/// name in [`FEATURE_NAMES`] must appear (a test checks it): a new feature states what it
/// needs. The state features (contract 2) come from the controller, not a source's window.
pub const FEATURE_FIELDS: &[(&str, &[Field])] = &[
    ("rps", &[Field::Requests]),
    ("latency_p50_ms", &[Field::Latency]),
    ("latency_p90_ms", &[Field::Latency]),
    ("latency_p99_ms", &[Field::Latency]),
    ("latency_mean_ms", &[Field::Latency]),
    ("error_5xx_rate", &[Field::Requests, Field::StatusClasses]),
    ("error_4xx_rate", &[Field::Requests, Field::StatusClasses]),
    ("overflow_rate", &[Field::Requests, Field::FlagUo]),
    ("timeout_rate", &[Field::Requests, Field::FlagUt]),
    (
        "connection_failure_rate",
        &[Field::Requests, Field::FlagConnFailure],
    ),
    ("retry_rate", &[Field::Requests, Field::Retries]),
    ("inflight_avg", &[Field::Inflight]),
    ("inflight_max", &[Field::Inflight]),
    ("http2_fraction", &[Field::Requests, Field::Protocol]),
];

/// Which fields of a window were measured. `Default` is complete (everything measured, as the
/// filter reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Availability {
    missing: u16,
}

impl Availability {
    /// Everything measured.
    pub const COMPLETE: Availability = Availability { missing: 0 };

    /// Marks `field` missing.
    pub fn without(mut self, field: Field) -> Self {
        self.missing |= field.bit();
        self
    }

    /// Marks `field` measured.
    pub fn with(mut self, field: Field) -> Self {
        self.missing &= !field.bit();
        self
    }

    pub fn is_missing(self, field: Field) -> bool {
        self.missing & field.bit() != 0
    }

    pub fn is_complete(self) -> bool {
        self.missing == 0
    }

    /// Missing fields, in [`FIELDS`] order.
    pub fn missing_fields(self) -> Vec<Field> {
        FIELDS
            .iter()
            .copied()
            .filter(|f| self.is_missing(*f))
            .collect()
    }

    /// Whether the policy may decide from such a window: request counts, status classes and
    /// latency have no fallback.
    pub fn decidable(self) -> bool {
        self.missing_fields().iter().all(|f| f.fallback().is_some())
    }

    /// Features computed (partly) from a missing field, in feature order.
    pub fn missing_features(self) -> Vec<&'static str> {
        FEATURE_NAMES
            .iter()
            .copied()
            .filter(|name| {
                fields_of(name)
                    .iter()
                    .any(|fields| fields.iter().any(|f| self.is_missing(*f)))
            })
            .collect()
    }

    /// Two windows summed into one (`WindowStats::merge_concurrent`): a field missing in
    /// either is missing (or only partly counted) in the sum.
    pub fn merge(self, o: Availability) -> Availability {
        Availability {
            missing: self.missing | o.missing,
        }
    }
}

fn fields_of(feature: &str) -> Option<&'static [Field]> {
    FEATURE_FIELDS
        .iter()
        .find(|(n, _)| *n == feature)
        .map(|(_, f)| *f)
}

/// The window the policy sees: `stats` with each missing field replaced by its documented
/// fallback (see the module docs). A complete window is returned unchanged.
pub fn policy_stats(stats: &WindowStats, a: Availability) -> WindowStats {
    let mut w = stats.clone();
    if a.is_complete() {
        return w;
    }
    if a.is_missing(Field::Inflight) {
        let rps = w.rps();
        let mean_s = w.latency.mean_us() / 1e6;
        let p99_s = w.latency.quantile_us(0.99) / 1e6;
        let avg = rps * mean_s;
        w.inflight_avg = if avg.is_finite() { avg } else { 0.0 };
        let peak = (rps * p99_s).max(w.inflight_avg).ceil();
        w.inflight_max = if peak.is_finite() { peak as u64 } else { 0 };
    }
    if a.is_missing(Field::Retries) {
        w.retries = 0;
    }
    if a.is_missing(Field::Protocol) {
        w.http2_requests = 0;
    }
    if a.is_missing(Field::FlagUo) {
        w.flag_uo = 0;
    }
    if a.is_missing(Field::FlagUt) {
        w.flag_ut = 0;
    }
    if a.is_missing(Field::FlagConnFailure) {
        w.flag_conn_failure = 0;
    }
    if a.is_missing(Field::Shed) {
        w.shed = 0;
    }
    if a.is_missing(Field::Bytes) {
        w.request_bytes = 0;
        w.response_bytes = 0;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_feature_states_its_fields() {
        // The window features; the state features (knobs in force, clients, endpoints, time
        // since the last change, SLO) come from the controller's loop state, not a source's
        // window (`endpoints` is 0, "not reported", where a source cannot count them).
        for name in &FEATURE_NAMES[..crate::features::WINDOW_FEATURE_COUNT] {
            assert!(
                fields_of(name).is_some_and(|f| !f.is_empty()),
                "feature {name} has no entry in FEATURE_FIELDS"
            );
        }
        for (name, _) in FEATURE_FIELDS {
            assert!(FEATURE_NAMES.contains(name), "{name} is not a feature");
        }
    }

    #[test]
    fn mask_names_missing_fields_and_features() {
        let a = Availability::COMPLETE
            .without(Field::Inflight)
            .without(Field::Retries);
        assert!(!a.is_complete());
        assert!(a.decidable());
        assert_eq!(a.missing_fields(), vec![Field::Retries, Field::Inflight]);
        assert_eq!(
            a.missing_features(),
            vec!["retry_rate", "inflight_avg", "inflight_max"]
        );
        assert!(!a.without(Field::Latency).decidable());
        assert!(a.with(Field::Inflight).with(Field::Retries).is_complete());
        let b = Availability::COMPLETE.without(Field::Retries);
        assert_eq!(b.merge(a), a);
        assert_eq!(b.merge(Availability::COMPLETE), b);
        assert!(Availability::default().missing_features().is_empty());
    }

    #[test]
    fn inflight_falls_back_to_littles_law() {
        let mut w = WindowStats {
            duration_s: 10.0,
            requests: 1000,
            status_2xx: 1000,
            retries: 7,
            inflight_avg: 99.0,
            inflight_max: 99,
            ..Default::default()
        };
        // 100 rps at 50 ms: 5 in flight on average.
        (0..1000).for_each(|_| w.latency.record(50_000));
        let a = Availability::COMPLETE
            .without(Field::Inflight)
            .without(Field::Retries);
        let p = policy_stats(&w, a);
        let tol = 5.0 * crate::histogram::RELATIVE_ERROR + 1e-3;
        assert!((p.inflight_avg - 5.0).abs() <= tol, "{}", p.inflight_avg);
        assert!(
            p.inflight_max >= 5 && p.inflight_max <= 6,
            "{}",
            p.inflight_max
        );
        assert_eq!(p.retries, 0);
        assert_eq!(p.requests, 1000);
        // Complete windows pass through untouched.
        assert_eq!(policy_stats(&w, Availability::COMPLETE), w);
        let f = p.features(&crate::features::Context::initial(250.0));
        assert_eq!(f.get("retry_rate"), Some(0.0));
        assert!((f.get("inflight_avg").unwrap() - 5.0).abs() <= tol);
    }
}
