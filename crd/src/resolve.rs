//! Pure resolution of a `MeshtunePolicy` spec into the [`EffectivePolicy`] the controller acts
//! on: documented defaults filled in, every field validated, errors naming the field.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meshtune_core::knobs::Knob;

use crate::types::{Bound, MeshtunePolicySpec, Mode, Slo, MAX_DECISION_INTERVAL_SECS};

/// Mode of a namespace without a policy, or a policy without `spec.mode`.
pub const DEFAULT_MODE: Mode = Mode::Observe;
/// Latency target (ms) when `spec.slo` is absent or gives no `latencyMs`.
pub const DEFAULT_SLO_LATENCY_MS: f64 = 250.0;
/// Percentile of the latency target when `spec.slo.percentile` is absent.
pub const DEFAULT_SLO_PERCENTILE: f64 = 99.0;
/// Accepted `spec.slo.latencyMs`: 1 ms to 10 minutes.
pub const SLO_LATENCY_MS_RANGE: (f64, f64) = (1.0, 600_000.0);
/// Accepted `spec.slo.percentile`.
pub const SLO_PERCENTILE_RANGE: (f64, f64) = (1.0, 99.999);
/// Accepted `spec.slo.availability`.
pub const SLO_AVAILABILITY_RANGE: (f64, f64) = (0.5, 0.999999);
/// Conventional name of a namespace's policy (`meshtune status` reads it first).
pub const DEFAULT_POLICY_NAME: &str = "default";

/// The objective of a namespace, resolved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SloTarget {
    /// `percentile` of request latency at most `ms`.
    Latency { ms: f64, percentile: f64 },
    /// At least this share of requests succeed.
    Availability(f64),
}

impl Default for SloTarget {
    fn default() -> Self {
        SloTarget::Latency {
            ms: DEFAULT_SLO_LATENCY_MS,
            percentile: DEFAULT_SLO_PERCENTILE,
        }
    }
}

impl std::fmt::Display for SloTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SloTarget::Latency { ms, percentile } => write!(f, "p{percentile} latency <= {ms} ms"),
            SloTarget::Availability(a) => write!(f, "availability >= {a}"),
        }
    }
}

/// A namespace's policy with every default filled in.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct EffectivePolicy {
    pub mode: Mode,
    pub slo: SloTarget,
    /// Namespace bounds per knob (only knobs with a bound; within the knob schema's range).
    pub bounds: BTreeMap<Knob, Bound>,
    /// Destination hosts never tuned.
    pub exclude_hosts: BTreeSet<String>,
    /// DestinationRule names meshtune may co-manage.
    pub co_manage_destination_rules: BTreeSet<String>,
    /// VirtualService names meshtune may co-manage.
    pub co_manage_virtual_services: BTreeSet<String>,
    /// `None`: the controller's `--decision-interval-secs`.
    pub decision_interval: Option<Duration>,
    /// Approved recommendation id per host.
    pub approvals: BTreeMap<String, String>,
}

impl EffectivePolicy {
    /// Whether `host` is excluded from tuning.
    pub fn excludes(&self, host: &str) -> bool {
        self.exclude_hosts.contains(host)
    }

    /// The approved recommendation id for `host`, if any.
    pub fn approved(&self, host: &str) -> Option<&str> {
        self.approvals.get(host).map(String::as_str)
    }
}

/// A spec that cannot be used; each variant names the field (`spec.…`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("{field}: set either latencyMs/percentile or availability, not both")]
    SloConflict { field: String },
    #[error("{field}: {value} is outside [{min}, {max}]")]
    OutOfRange {
        field: String,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("{field}: min {min} > max {max}")]
    InvertedBound { field: String, min: f64, max: f64 },
    #[error("{field}: must not be empty")]
    Empty { field: String },
    #[error("{field}: host {host:?} is approved twice")]
    DuplicateApproval { field: String, host: String },
    #[error("{field}: {value:?} is not a recommendation id (12 hex digits, from status.recommendations[].id)")]
    BadRecommendationId { field: String, value: String },
}

impl PolicyError {
    /// The offending field, e.g. `spec.bounds.timeout.min`.
    pub fn field(&self) -> &str {
        match self {
            PolicyError::SloConflict { field }
            | PolicyError::OutOfRange { field, .. }
            | PolicyError::InvertedBound { field, .. }
            | PolicyError::Empty { field }
            | PolicyError::DuplicateApproval { field, .. }
            | PolicyError::BadRecommendationId { field, .. } => field,
        }
    }
}

fn in_range(field: String, value: f64, (min, max): (f64, f64)) -> Result<f64, PolicyError> {
    if value.is_finite() && value >= min && value <= max {
        Ok(value)
    } else {
        Err(PolicyError::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

fn resolve_slo(slo: Option<&Slo>) -> Result<SloTarget, PolicyError> {
    let Some(slo) = slo else {
        return Ok(SloTarget::default());
    };
    match (
        slo.availability,
        slo.latency_ms.is_some() || slo.percentile.is_some(),
    ) {
        (Some(_), true) => Err(PolicyError::SloConflict {
            field: "spec.slo".into(),
        }),
        (Some(a), false) => Ok(SloTarget::Availability(in_range(
            "spec.slo.availability".into(),
            a,
            SLO_AVAILABILITY_RANGE,
        )?)),
        (None, _) => Ok(SloTarget::Latency {
            ms: in_range(
                "spec.slo.latencyMs".into(),
                slo.latency_ms.unwrap_or(DEFAULT_SLO_LATENCY_MS),
                SLO_LATENCY_MS_RANGE,
            )?,
            percentile: in_range(
                "spec.slo.percentile".into(),
                slo.percentile.unwrap_or(DEFAULT_SLO_PERCENTILE),
                SLO_PERCENTILE_RANGE,
            )?,
        }),
    }
}

fn names(field: &str, list: &[String]) -> Result<BTreeSet<String>, PolicyError> {
    list.iter()
        .enumerate()
        .map(|(i, n)| {
            let n = n.trim();
            if n.is_empty() {
                Err(PolicyError::Empty {
                    field: format!("{field}[{i}]"),
                })
            } else {
                Ok(n.to_string())
            }
        })
        .collect()
}

fn is_recommendation_id(s: &str) -> bool {
    s.len() == 12
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Resolves `spec` (defaults filled in, validated). A namespace without a policy uses
/// `resolve(&MeshtunePolicySpec::default())`, i.e. [`EffectivePolicy::default`].
pub fn resolve(spec: &MeshtunePolicySpec) -> Result<EffectivePolicy, PolicyError> {
    let slo = resolve_slo(spec.slo.as_ref())?;

    let mut bounds = BTreeMap::new();
    if let Some(b) = &spec.bounds {
        for (knob, bound) in b.iter() {
            let s = knob.spec();
            let field = format!("spec.bounds.{}", s.name);
            for (which, v) in [("min", bound.min), ("max", bound.max)] {
                if let Some(v) = v {
                    in_range(format!("{field}.{which}"), v, (s.min, s.max))?;
                }
            }
            if let (Some(min), Some(max)) = (bound.min, bound.max) {
                if min > max {
                    return Err(PolicyError::InvertedBound { field, min, max });
                }
            }
            if bound.min.is_some() || bound.max.is_some() {
                bounds.insert(knob, *bound);
            }
        }
    }

    let decision_interval = match spec.decision_interval_secs {
        None => None,
        Some(s) if (1..=MAX_DECISION_INTERVAL_SECS).contains(&s) => {
            Some(Duration::from_secs(u64::from(s)))
        }
        Some(s) => {
            return Err(PolicyError::OutOfRange {
                field: "spec.decisionIntervalSecs".into(),
                value: f64::from(s),
                min: 1.0,
                max: f64::from(MAX_DECISION_INTERVAL_SECS),
            })
        }
    };

    let co = spec.co_manage.clone().unwrap_or_default();
    let mut approvals = BTreeMap::new();
    for (i, a) in spec.approvals.iter().enumerate() {
        let host = a.host.trim();
        if host.is_empty() {
            return Err(PolicyError::Empty {
                field: format!("spec.approvals[{i}].host"),
            });
        }
        let id = a.recommendation.trim();
        if !is_recommendation_id(id) {
            return Err(PolicyError::BadRecommendationId {
                field: format!("spec.approvals[{i}].recommendation"),
                value: a.recommendation.clone(),
            });
        }
        if approvals.insert(host.to_string(), id.to_string()).is_some() {
            return Err(PolicyError::DuplicateApproval {
                field: format!("spec.approvals[{i}]"),
                host: host.to_string(),
            });
        }
    }

    Ok(EffectivePolicy {
        mode: spec.mode,
        slo,
        bounds,
        exclude_hosts: names("spec.excludeHosts", &spec.exclude_hosts)?,
        co_manage_destination_rules: names(
            "spec.coManage.destinationRules",
            &co.destination_rules,
        )?,
        co_manage_virtual_services: names("spec.coManage.virtualServices", &co.virtual_services)?,
        decision_interval,
        approvals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{recommendation_id, Approval, CoManage, PerKnob};
    use meshtune_core::knobs::Knobs;

    fn spec(v: serde_json::Value) -> MeshtunePolicySpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn empty_spec_gets_the_documented_defaults() {
        let p = resolve(&MeshtunePolicySpec::default()).unwrap();
        assert_eq!(p, EffectivePolicy::default());
        assert_eq!(p.mode, Mode::Observe);
        assert_eq!(p.mode, DEFAULT_MODE);
        assert_eq!(
            p.slo,
            SloTarget::Latency {
                ms: 250.0,
                percentile: 99.0
            }
        );
        assert!(p.bounds.is_empty() && p.exclude_hosts.is_empty() && p.approvals.is_empty());
        assert_eq!(p.decision_interval, None);
        // `{}` in YAML is the same.
        assert_eq!(resolve(&spec(serde_json::json!({}))).unwrap(), p);
    }

    #[test]
    fn partial_latency_slo_fills_the_other_default() {
        let p = resolve(&spec(serde_json::json!({"slo": {"latencyMs": 120}}))).unwrap();
        assert_eq!(
            p.slo,
            SloTarget::Latency {
                ms: 120.0,
                percentile: 99.0
            }
        );
        let p = resolve(&spec(serde_json::json!({"slo": {"percentile": 95}}))).unwrap();
        assert_eq!(
            p.slo,
            SloTarget::Latency {
                ms: 250.0,
                percentile: 95.0
            }
        );
        let p = resolve(&spec(serde_json::json!({"slo": {"availability": 0.999}}))).unwrap();
        assert_eq!(p.slo, SloTarget::Availability(0.999));
    }

    #[test]
    fn both_slo_kinds_are_refused() {
        let e = resolve(&spec(
            serde_json::json!({"slo": {"availability": 0.99, "latencyMs": 100}}),
        ))
        .unwrap_err();
        assert_eq!(e.field(), "spec.slo");
        let e = resolve(&spec(
            serde_json::json!({"slo": {"availability": 0.99, "percentile": 90}}),
        ))
        .unwrap_err();
        assert!(matches!(e, PolicyError::SloConflict { .. }), "{e}");
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        for (v, field) in [
            (
                serde_json::json!({"slo": {"availability": 1.0}}),
                "spec.slo.availability",
            ),
            (
                serde_json::json!({"slo": {"percentile": 100}}),
                "spec.slo.percentile",
            ),
            (
                serde_json::json!({"slo": {"latencyMs": 0}}),
                "spec.slo.latencyMs",
            ),
            (
                serde_json::json!({"decisionIntervalSecs": 0}),
                "spec.decisionIntervalSecs",
            ),
            (
                serde_json::json!({"decisionIntervalSecs": 3601}),
                "spec.decisionIntervalSecs",
            ),
            (
                serde_json::json!({"bounds": {"timeout": {"max": 600000}}}),
                "spec.bounds.timeout.max",
            ),
            (
                serde_json::json!({"bounds": {"outlierDetection.maxEjectionPercent": {"min": -1}}}),
                "spec.bounds.outlierDetection.maxEjectionPercent.min",
            ),
        ] {
            let e = resolve(&spec(v.clone())).unwrap_err();
            assert_eq!(e.field(), field, "{v}: {e}");
            assert!(e.to_string().starts_with(field), "{e}");
        }
        let s = MeshtunePolicySpec {
            slo: Some(Slo {
                latency_ms: Some(f64::NAN),
                ..Slo::default()
            }),
            ..MeshtunePolicySpec::default()
        };
        assert_eq!(resolve(&s).unwrap_err().field(), "spec.slo.latencyMs");
    }

    #[test]
    fn bounds_resolve_per_knob_and_inverted_ones_are_refused() {
        let p = resolve(&spec(serde_json::json!({"bounds": {
            "tcp.maxConnections": {"min": 10, "max": 2000},
            "timeout": {"min": 200},
            "retries.attempts": {}
        }})))
        .unwrap();
        assert_eq!(p.bounds.len(), 2);
        assert_eq!(
            p.bounds[&Knob::MaxConnections],
            Bound {
                min: Some(10.0),
                max: Some(2000.0)
            }
        );
        assert_eq!(p.bounds[&Knob::RouteTimeoutMs].max, None);
        let e = resolve(&spec(
            serde_json::json!({"bounds": {"timeout": {"min": 300, "max": 200}}}),
        ))
        .unwrap_err();
        assert_eq!(
            e,
            PolicyError::InvertedBound {
                field: "spec.bounds.timeout".into(),
                min: 300.0,
                max: 200.0
            }
        );
    }

    #[test]
    fn hosts_co_manage_and_approvals() {
        let id = recommendation_id(&PerKnob::from_knobs(&Knobs::istio_defaults()));
        let s = MeshtunePolicySpec {
            mode: Mode::Recommend,
            exclude_hosts: vec!["ratings.bookinfo.svc.cluster.local".into()],
            co_manage: Some(CoManage {
                destination_rules: vec!["reviews".into()],
                virtual_services: vec!["reviews".into(), "details".into()],
            }),
            approvals: vec![Approval {
                host: "reviews.bookinfo.svc.cluster.local".into(),
                recommendation: id.clone(),
            }],
            decision_interval_secs: Some(30),
            ..MeshtunePolicySpec::default()
        };
        let p = resolve(&s).unwrap();
        assert_eq!(p.mode, Mode::Recommend);
        assert!(p.excludes("ratings.bookinfo.svc.cluster.local"));
        assert!(!p.excludes("reviews.bookinfo.svc.cluster.local"));
        assert_eq!(p.co_manage_virtual_services.len(), 2);
        assert!(p.co_manage_destination_rules.contains("reviews"));
        assert_eq!(
            p.approved("reviews.bookinfo.svc.cluster.local"),
            Some(id.as_str())
        );
        assert_eq!(p.decision_interval, Some(Duration::from_secs(30)));

        let mut dup = s.clone();
        dup.approvals.push(dup.approvals[0].clone());
        let e = resolve(&dup).unwrap_err();
        assert_eq!(e.field(), "spec.approvals[1]");

        let mut bad = s.clone();
        bad.approvals[0].recommendation = "latest".into();
        let e = resolve(&bad).unwrap_err();
        assert_eq!(e.field(), "spec.approvals[0].recommendation");
        assert!(e.to_string().contains("\"latest\""), "{e}");

        let mut empty = s;
        empty.exclude_hosts.push("  ".into());
        assert_eq!(resolve(&empty).unwrap_err().field(), "spec.excludeHosts[1]");
    }
}
