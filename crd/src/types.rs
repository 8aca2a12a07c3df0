//! The `MeshtunePolicy` custom resource (`meshtune.io/v1alpha1`, namespaced, short name `mtp`):
//! spec and status as Rust types; the CRD and its OpenAPI schema are derived from them.
//!
//! Field names are camelCase in YAML. Knob names (bounds, recommended knobs) are the knob
//! schema's names (`meshtune_core::knobs`, e.g. `tcp.maxConnections`, `timeout`); durations are
//! in milliseconds, as in the knob schema.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use meshtune_core::knobs::{Knob, Knobs, KNOB_COUNT};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Upper bound of `spec.decisionIntervalSecs` (one hour).
pub const MAX_DECISION_INTERVAL_SECS: u32 = 3600;

/// What the controller does with its decisions in a namespace.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// Decide and report only (status, Events, logs); nothing is written to the mesh.
    #[default]
    Observe,
    /// Like observe, and apply a destination's recommendation once a person approves it
    /// (`spec.approvals`).
    Recommend,
    /// Apply decisions within the guardrails without approval.
    Enforce,
}

impl Mode {
    /// The name used in YAML and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Observe => "observe",
            Mode::Recommend => "recommend",
            Mode::Enforce => "enforce",
        }
    }
}

/// How meshtune tunes the destinations called from this namespace. Every field is optional;
/// unset ones take the documented defaults.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "meshtune.io",
    version = "v1alpha1",
    kind = "MeshtunePolicy",
    plural = "meshtunepolicies",
    singular = "meshtunepolicy",
    shortname = "mtp",
    namespaced,
    status = "MeshtunePolicyStatus",
    doc = "How meshtune tunes the destinations called from this namespace (one policy per namespace, conventionally named `default`).",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshtunePolicySpec {
    /// observe (default): recommendations only; recommend: apply approved recommendations;
    /// enforce: apply decisions without approval.
    #[serde(default)]
    pub mode: Mode,
    /// Service level objective the policy is judged by (default: p99 latency 250 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
    /// Per-knob bounds, narrowing the controller's hard bounds for this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<PerKnob<Bound>>,
    /// Destination hosts (cluster/service names, e.g. `reviews.bookinfo.svc.cluster.local`)
    /// meshtune never tunes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub exclude_hosts: Vec<String>,
    /// Existing DestinationRules / VirtualServices (by name, in this namespace) meshtune may
    /// co-manage; others it did not create are left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub co_manage: Option<CoManage>,
    /// Seconds between decisions (1..=3600; default: the controller's
    /// `--decision-interval-secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_DECISION_INTERVAL_SECS), extend("format" = "int32"))]
    pub decision_interval_secs: Option<u32>,
    /// recommend mode: the recommendation a person approved, per host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["host"]))]
    pub approvals: Vec<Approval>,
}

/// The objective: a latency percentile target, or an availability target — not both.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.availability) && (has(self.latencyMs) || has(self.percentile)))",
    "message": "slo: set either latencyMs/percentile or availability, not both"
}]))]
pub struct Slo {
    /// Latency target in milliseconds at `percentile`, 1 to 600000 (default 250).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = crate::resolve::SLO_LATENCY_MS_RANGE.0, max = crate::resolve::SLO_LATENCY_MS_RANGE.1))]
    pub latency_ms: Option<f64>,
    /// Percentile of `latencyMs`, 1 to 99.999 (default 99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = crate::resolve::SLO_PERCENTILE_RANGE.0, max = crate::resolve::SLO_PERCENTILE_RANGE.1))]
    pub percentile: Option<f64>,
    /// Share of requests that must succeed, 0.5 to 0.999999 (e.g. 0.999).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = crate::resolve::SLO_AVAILABILITY_RANGE.0, max = crate::resolve::SLO_AVAILABILITY_RANGE.1))]
    pub availability: Option<f64>,
}

/// A `[min, max]` range for one knob, in the knob's unit (ms for durations).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// One optional value per knob, named as in the knob schema (`meshtune_core::knobs`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerKnob<T> {
    #[serde(
        rename = "tcp.maxConnections",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connections: Option<T>,
    #[serde(
        rename = "http.http1MaxPendingRequests",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub http1_max_pending_requests: Option<T>,
    #[serde(
        rename = "http.http2MaxRequests",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub http2_max_requests: Option<T>,
    #[serde(
        rename = "http.maxRequestsPerConnection",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_requests_per_connection: Option<T>,
    #[serde(
        rename = "http.maxRetries",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_retries: Option<T>,
    /// Route timeout, ms.
    #[serde(rename = "timeout", default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<T>,
    #[serde(
        rename = "retries.attempts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_attempts: Option<T>,
    /// Per-try timeout, ms.
    #[serde(
        rename = "retries.perTryTimeout",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<T>,
    #[serde(
        rename = "outlierDetection.consecutive5xxErrors",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<T>,
    /// Base ejection time, ms.
    #[serde(
        rename = "outlierDetection.baseEjectionTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub base_ejection_time: Option<T>,
    #[serde(
        rename = "outlierDetection.maxEjectionPercent",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ejection_percent: Option<T>,
}

impl<T> Default for PerKnob<T> {
    fn default() -> Self {
        PerKnob {
            max_connections: None,
            http1_max_pending_requests: None,
            http2_max_requests: None,
            max_requests_per_connection: None,
            max_retries: None,
            timeout: None,
            retry_attempts: None,
            per_try_timeout: None,
            consecutive_5xx_errors: None,
            base_ejection_time: None,
            max_ejection_percent: None,
        }
    }
}

impl<T> PerKnob<T> {
    /// The value of `knob`, if set.
    pub fn get(&self, knob: Knob) -> Option<&T> {
        match knob {
            Knob::MaxConnections => self.max_connections.as_ref(),
            Knob::Http1MaxPendingRequests => self.http1_max_pending_requests.as_ref(),
            Knob::Http2MaxRequests => self.http2_max_requests.as_ref(),
            Knob::MaxRequestsPerConnection => self.max_requests_per_connection.as_ref(),
            Knob::MaxRetries => self.max_retries.as_ref(),
            Knob::RouteTimeoutMs => self.timeout.as_ref(),
            Knob::RetryAttempts => self.retry_attempts.as_ref(),
            Knob::PerTryTimeoutMs => self.per_try_timeout.as_ref(),
            Knob::Consecutive5xxErrors => self.consecutive_5xx_errors.as_ref(),
            Knob::BaseEjectionTimeMs => self.base_ejection_time.as_ref(),
            Knob::MaxEjectionPercent => self.max_ejection_percent.as_ref(),
        }
    }

    /// The slot of `knob`.
    pub fn slot(&mut self, knob: Knob) -> &mut Option<T> {
        match knob {
            Knob::MaxConnections => &mut self.max_connections,
            Knob::Http1MaxPendingRequests => &mut self.http1_max_pending_requests,
            Knob::Http2MaxRequests => &mut self.http2_max_requests,
            Knob::MaxRequestsPerConnection => &mut self.max_requests_per_connection,
            Knob::MaxRetries => &mut self.max_retries,
            Knob::RouteTimeoutMs => &mut self.timeout,
            Knob::RetryAttempts => &mut self.retry_attempts,
            Knob::PerTryTimeoutMs => &mut self.per_try_timeout,
            Knob::Consecutive5xxErrors => &mut self.consecutive_5xx_errors,
            Knob::BaseEjectionTimeMs => &mut self.base_ejection_time,
            Knob::MaxEjectionPercent => &mut self.max_ejection_percent,
        }
    }

    /// The knobs that are set, in policy output order.
    pub fn iter(&self) -> impl Iterator<Item = (Knob, &T)> + '_ {
        Knob::ALL
            .into_iter()
            .filter_map(|k| self.get(k).map(|v| (k, v)))
    }
}

impl PerKnob<f64> {
    /// Every knob of `knobs`, named.
    pub fn from_knobs(knobs: &Knobs) -> Self {
        let mut out = PerKnob::default();
        for k in Knob::ALL {
            *out.slot(k) = Some(knobs.get(k));
        }
        out
    }

    /// The knobs, with Istio's default for any knob not set.
    pub fn to_knobs(&self) -> Knobs {
        let mut out = Knobs::istio_defaults();
        for (k, v) in self.iter() {
            out.set(k, *v);
        }
        out
    }
}

/// Existing Istio objects in this namespace that meshtune may co-manage (it sets only its own
/// fields in them, records what was there and restores it on undo).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CoManage {
    /// DestinationRule names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub destination_rules: Vec<String>,
    /// VirtualService names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub virtual_services: Vec<String>,
}

/// A person's approval of one recommendation (recommend mode).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Approval {
    /// Destination host, as in `status.recommendations[].host`.
    pub host: String,
    /// The approved recommendation's `id` (`status.recommendations[].id`).
    pub recommendation: String,
}

/// Condition types meshtune writes to `status.conditions`.
pub mod condition {
    /// The policy was read and resolved (`False` with reason `InvalidSpec` and the error).
    pub const VALID: &str = "Valid";
    /// The last decision or approval was applied to the mesh.
    pub const APPLIED: &str = "Applied";
    /// A decision or approval was refused (guardrails, co-manage, unknown recommendation).
    pub const REFUSED: &str = "Refused";
    /// The namespace has the label `meshtune.io/enabled=true` (`False`, reason
    /// `NamespaceNotEnabled`: nothing is recommended or tuned there, whatever the policy says).
    pub const ENABLED: &str = "Enabled";
}

/// `status` of a `MeshtunePolicy`, written by the controller (status subresource).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshtunePolicyStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Kubernetes-style conditions: `Valid`, `Applied`, `Refused`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The current recommendation per destination host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["host"]))]
    pub recommendations: Vec<Recommendation>,
    /// The recommendation last applied per destination host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["host"]))]
    pub applied: Vec<Applied>,
}

/// A Kubernetes-style condition (the fields of `metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// e.g. `Valid`, `Applied`, `Refused`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed.
    #[schemars(schema_with = "date_time")]
    pub last_transition_time: Time,
    /// The `metadata.generation` this condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A recommendation for one destination host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    /// Destination host (cluster/service name).
    pub host: String,
    /// Stable short hash of the knobs (12 hex digits); approve the recommendation with it.
    pub id: String,
    /// The recommended knobs, named as in the knob schema.
    pub knobs: PerKnob<f64>,
    /// What the policy expects from it.
    #[serde(default)]
    pub expected_effect: ExpectedEffect,
    /// The features the policy saw (feature name → value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, f64>,
    /// Version of the model that made it.
    #[serde(default)]
    pub model_version: String,
    /// When it was made.
    #[schemars(schema_with = "date_time")]
    pub created_at: Time,
}

/// The expected effect of a recommendation: text, and numbers by name (e.g. `p99Ms`,
/// `objective`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpectedEffect {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, f64>,
}

/// A recommendation that was applied to the mesh.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    pub host: String,
    /// The recommendation's `id`.
    pub id: String,
    /// When it was applied.
    #[schemars(schema_with = "date_time")]
    pub at: Time,
}

fn date_time(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "format": "date-time"})
}

/// Stable short id of a set of knobs: 12 hex digits of FNV-1a 64 over `name=value;` for each
/// knob that is set, in policy output order (values in Rust's shortest round-trip form, so the
/// same knobs give the same id on every controller and release).
pub fn recommendation_id(knobs: &PerKnob<f64>) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for (k, v) in knobs.iter() {
        // -0.0 and 0.0 are the same setting.
        let v = if *v == 0.0 { 0.0 } else { *v };
        for b in format!("{}={v};", k.name()).bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    format!("{:012x}", h >> 16)
}

const _: () = assert!(KNOB_COUNT == 11, "PerKnob names every knob");

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_core::knobs::KNOB_SPECS;

    #[test]
    fn per_knob_names_are_the_knob_schema_names() {
        let all = PerKnob::from_knobs(&Knobs::istio_defaults());
        let v = serde_json::to_value(&all).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want: Vec<&str> = KNOB_SPECS.iter().map(|s| s.name).collect();
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(all.to_knobs(), Knobs::istio_defaults());
    }

    #[test]
    fn every_slot_is_distinct() {
        let mut p = PerKnob::<f64>::default();
        for (i, k) in Knob::ALL.into_iter().enumerate() {
            *p.slot(k) = Some(i as f64);
        }
        for (i, k) in Knob::ALL.into_iter().enumerate() {
            assert_eq!(p.get(k), Some(&(i as f64)), "{}", k.name());
        }
    }

    #[test]
    fn recommendation_id_is_stable_and_depends_on_every_knob() {
        let base = PerKnob::from_knobs(&Knobs::istio_defaults());
        let id = recommendation_id(&base);
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(id, recommendation_id(&base.clone()));
        let mut seen = std::collections::BTreeSet::from([id.clone()]);
        for k in Knob::ALL {
            let mut p = base.clone();
            *p.slot(k) = Some(p.get(k).unwrap() + 1.0);
            assert!(
                seen.insert(recommendation_id(&p)),
                "{} changes the id",
                k.name()
            );
        }
        // A known value pins the algorithm: changing it breaks approvals written before.
        let one = PerKnob {
            timeout: Some(250.0),
            ..PerKnob::default()
        };
        // FNV-1a 64 of "timeout=250;" (computed independently), top 48 bits.
        assert_eq!(recommendation_id(&one), "e542c3bc0acf");
    }

    #[test]
    fn unknown_fields_are_refused_naming_them() {
        let e = serde_json::from_value::<MeshtunePolicySpec>(serde_json::json!({"mod": "enforce"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mod"), "{e}");
        let e = serde_json::from_value::<MeshtunePolicySpec>(
            serde_json::json!({"bounds": {"tcp.maxConnection": {"max": 10}}}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tcp.maxConnection"), "{e}");
    }
}
