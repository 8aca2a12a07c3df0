//! Recommendations a person can review: per namespace with a `MeshtunePolicy`, the current
//! recommendation per destination host (knobs, expected effect, the features the policy saw,
//! model version, stable id), what was applied, and conditions saying what was applied or
//! refused and why — written to the policy's `status` and as Kubernetes Events.
//!
//! [`Reviews`] is pure (no I/O, clock passed in): the decision loop feeds it each cycle's
//! recommendations, pushes and refusals, asks it which approved recommendation to apply
//! ([`Reviews::approval`]) and builds each policy's status from it ([`Reviews::status`]).
//! A recommendation is sticky: a new proposal within the guardrails' hysteresis of the current
//! one keeps the current one (and its id), so an approval is not made stale by noise.
//! [`StatusWriter`] does the I/O: server-side apply of the status subresource (field manager
//! `meshtune`) only when the status changed and at most once per
//! [`DEFAULT_STATUS_MIN_INTERVAL`] per policy, and `events.k8s.io/v1` Events (kube-runtime's
//! recorder) regarding the policy.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use meshtune_core::knobs::{Knob, Knobs, KNOB_COUNT};
use meshtune_core::outcomes::Outcomes;
use meshtune_core::Features;
use meshtune_crd::types::condition;
use meshtune_crd::{
    recommendation_id, Applied, Condition, ExpectedEffect, MeshtunePolicy, MeshtunePolicyStatus,
    PerKnob, Recommendation,
};
use serde_json::Value;

use crate::policies::NsPolicy;

/// Default shortest time between two status writes of one policy.
/// Kubernetes access of this module (`crate::rbac`): the policy's status server-side applied;
/// Events created, and patched when kube-runtime's recorder folds a repeat into a series.
pub const KUBE_ACCESS: &[crate::rbac::Access] = &[
    ("meshtune.io", "meshtunepolicies/status", &["patch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];

pub const DEFAULT_STATUS_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Condition reason of a stale approval.
pub const REASON_STALE_APPROVAL: &str = "StaleApproval";
/// Event reason of a new recommendation.
pub const REASON_RECOMMENDED: &str = "Recommended";
/// Event and condition reason of an applied recommendation or push.
pub const REASON_APPLIED: &str = "Applied";
/// Event and condition reason of a push the mesh refused (or failed).
pub const REASON_PUSH_REFUSED: &str = "PushRefused";

/// Knobs as the mesh gets them: every value rounded to a whole unit (counts, ms, percent), so
/// the id names what is applied.
pub fn rounded(k: &Knobs) -> Knobs {
    let mut out = *k;
    for v in out.0.iter_mut() {
        *v = v.round();
    }
    out
}

/// The stable id of `knobs` (rounded): [`meshtune_crd::recommendation_id`].
pub fn id_of(knobs: &Knobs) -> String {
    recommendation_id(&PerKnob::from_knobs(&rounded(knobs)))
}

/// The current recommendation of one host.
#[derive(Debug, Clone, PartialEq)]
pub struct Rec {
    pub id: String,
    pub knobs: Knobs,
    pub created_ms: u64,
    pub features: BTreeMap<String, f64>,
    pub expected: ExpectedEffect,
    pub model_version: String,
}

/// An Event to emit regarding a namespace's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    pub warning: bool,
    pub reason: String,
    pub action: String,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Cond {
    status: bool,
    reason: String,
    message: String,
    since_ms: u64,
}

#[derive(Debug, Clone, Default)]
struct NsReview {
    recs: BTreeMap<String, Rec>,
    applied: BTreeMap<String, (String, u64)>,
    conditions: BTreeMap<&'static str, Cond>,
    events: Vec<PendingEvent>,
    /// Stale approvals already reported (host → id), so each is reported once.
    stale_reported: BTreeMap<String, String>,
}

impl NsReview {
    fn set(
        &mut self,
        kind: &'static str,
        status: bool,
        reason: &str,
        message: String,
        now_ms: u64,
    ) {
        let since_ms = match self.conditions.get(kind) {
            Some(c) if c.status == status => c.since_ms,
            _ => now_ms,
        };
        self.conditions.insert(
            kind,
            Cond {
                status,
                reason: reason.into(),
                message,
                since_ms,
            },
        );
    }
}

/// What an approval of `host` means this cycle.
#[derive(Debug, Clone, PartialEq)]
pub enum Approval {
    /// No approval, or it names what is already applied: nothing to apply.
    None,
    /// The current recommendation is approved and not yet applied: apply these knobs.
    Apply { id: String, knobs: Knobs },
    /// The approval names an id that is neither current nor applied: refused.
    Stale {
        approved: String,
        current: Option<String>,
    },
}

/// Expected effect of a recommendation: the knobs that change and the window that motivated
/// it (the policy has no forward model; these are the facts it decided on).
pub fn expected_effect(before: &Knobs, after: &Knobs, o: &Outcomes, slo_ms: f64) -> ExpectedEffect {
    let changed: Vec<String> = Knob::ALL
        .into_iter()
        .filter(|k| before.get(*k).round() != after.get(*k).round())
        .map(|k| {
            format!(
                "{} {} -> {}",
                k.name(),
                before.get(k).round(),
                after.get(k).round()
            )
        })
        .collect();
    let verdict = if o.p99_ms > slo_ms {
        "misses its SLO"
    } else {
        "meets its SLO"
    };
    ExpectedEffect {
        summary: format!(
            "{}; the window it was decided on {verdict} (p99 {:.0} ms vs {slo_ms:.0} ms, {:.1}% errors, {:.1}% shed)",
            if changed.is_empty() {
                "no change".to_string()
            } else {
                changed.join(", ")
            },
            o.p99_ms,
            o.error_rate * 100.0,
            o.shed_rate * 100.0
        ),
        values: BTreeMap::from([
            ("p99Ms".to_string(), finite(o.p99_ms)),
            ("sloMs".to_string(), slo_ms),
            ("errorRate".to_string(), finite(o.error_rate)),
            ("shedRate".to_string(), finite(o.shed_rate)),
            ("sloGoodputRps".to_string(), finite(o.slo_goodput_rps)),
            ("objectiveCost".to_string(), finite(1.0 - o.reward)),
            ("knobsChanged".to_string(), changed.len() as f64),
        ]),
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// The features by name (non-finite values left out).
pub fn features_by_name(f: &Features) -> BTreeMap<String, f64> {
    meshtune_core::features::FEATURE_NAMES
        .iter()
        .zip(f.0.iter())
        .filter(|(_, v)| v.is_finite())
        .map(|(n, v)| (n.to_string(), *v))
        .collect()
}

/// Recommendations, applies and refusals per namespace. Pure.
#[derive(Debug, Clone)]
pub struct Reviews {
    by_ns: BTreeMap<String, NsReview>,
    hysteresis: [f64; KNOB_COUNT],
}

impl Reviews {
    /// `hysteresis`: the guardrails' per-knob relative change below which a proposal keeps
    /// the current recommendation.
    pub fn new(hysteresis: [f64; KNOB_COUNT]) -> Self {
        Self {
            by_ns: BTreeMap::new(),
            hysteresis,
        }
    }

    fn ns(&mut self, ns: &str) -> &mut NsReview {
        self.by_ns.entry(ns.to_string()).or_default()
    }

    /// The current recommendation of `host` in `ns`.
    pub fn current(&self, ns: &str, host: &str) -> Option<&Rec> {
        self.by_ns.get(ns).and_then(|r| r.recs.get(host))
    }

    /// The id last applied to `host` in `ns`.
    pub fn applied_id(&self, ns: &str, host: &str) -> Option<&str> {
        self.by_ns
            .get(ns)
            .and_then(|r| r.applied.get(host))
            .map(|(id, _)| id.as_str())
    }

    /// Records a recommendation (knobs after the guardrails). Keeps the current one when every
    /// knob is within the hysteresis of it; otherwise it replaces it and an Event is queued.
    /// Returns the current id and whether it is new.
    pub fn recommend(&mut self, ns: &str, host: &str, rec: Rec) -> (String, bool) {
        let hysteresis = self.hysteresis;
        let r = self.ns(ns);
        let knobs = rounded(&rec.knobs);
        if let Some(cur) = r.recs.get(host) {
            let close = Knob::ALL.into_iter().all(|k| {
                let spec = k.spec();
                let (a, b) = (cur.knobs.get(k), knobs.get(k));
                a == b
                    || meshtune_policy::guardrails::relative_change(spec, a, b)
                        <= hysteresis[k as usize]
            });
            if close {
                return (cur.id.clone(), false);
            }
        }
        let id = id_of(&knobs);
        r.events.push(PendingEvent {
            warning: false,
            reason: REASON_RECOMMENDED.into(),
            action: "Recommend".into(),
            note: format!("{host}: recommendation {id}: {}", rec.expected.summary),
        });
        r.recs.insert(
            host.to_string(),
            Rec {
                id: id.clone(),
                knobs,
                ..rec
            },
        );
        (id, true)
    }

    /// What `approved` (the policy's approval for `host`, if any) means now. A stale approval
    /// sets the `Refused` condition and queues a Warning Event (once per approved id).
    pub fn approval(
        &mut self,
        ns: &str,
        host: &str,
        approved: Option<&str>,
        now_ms: u64,
    ) -> Approval {
        let Some(approved) = approved else {
            return Approval::None;
        };
        let r = self.ns(ns);
        if r.applied.get(host).is_some_and(|(id, _)| id == approved) {
            return Approval::None;
        }
        let current = r.recs.get(host).map(|c| (c.id.clone(), c.knobs));
        match current {
            Some((id, knobs)) if id == approved => Approval::Apply { id, knobs },
            cur => {
                let current = cur.map(|c| c.0);
                let message = format!(
                    "approval of {approved} for {host} refused: it is not the current recommendation ({})",
                    current.as_deref().map_or("none".to_string(), |c| format!("current: {c}"))
                );
                r.set(
                    condition::REFUSED,
                    true,
                    REASON_STALE_APPROVAL,
                    message.clone(),
                    now_ms,
                );
                if r.stale_reported.get(host).map(String::as_str) != Some(approved) {
                    r.stale_reported
                        .insert(host.to_string(), approved.to_string());
                    r.events.push(PendingEvent {
                        warning: true,
                        reason: REASON_STALE_APPROVAL.into(),
                        action: "Approve".into(),
                        note: message,
                    });
                }
                Approval::Stale {
                    approved: approved.to_string(),
                    current,
                }
            }
        }
    }

    /// Records that `knobs` were applied to `host` (an approved recommendation or an
    /// enforce-mode push): `status.applied`, the `Applied` condition and an Event.
    pub fn applied(
        &mut self,
        ns: &str,
        host: &str,
        knobs: &Knobs,
        approved: bool,
        now_ms: u64,
    ) -> String {
        let id = id_of(knobs);
        let r = self.ns(ns);
        r.applied.insert(host.to_string(), (id.clone(), now_ms));
        let what = if approved {
            "approved recommendation"
        } else {
            "decision"
        };
        let message = format!("{what} {id} applied to {host}");
        r.set(
            condition::APPLIED,
            true,
            REASON_APPLIED,
            message.clone(),
            now_ms,
        );
        if r.conditions
            .get(condition::REFUSED)
            .is_some_and(|c| c.status)
        {
            r.set(condition::REFUSED, false, "None", String::new(), now_ms);
        }
        r.events.push(PendingEvent {
            warning: false,
            reason: REASON_APPLIED.into(),
            action: "Apply".into(),
            note: message,
        });
        id
    }

    /// Records that applying to `host` was refused or failed (`reason`: why).
    pub fn refused(&mut self, ns: &str, host: &str, why: &str, now_ms: u64) {
        let r = self.ns(ns);
        let message = format!("applying to {host} refused: {why}");
        r.set(
            condition::REFUSED,
            true,
            REASON_PUSH_REFUSED,
            message.clone(),
            now_ms,
        );
        r.events.push(PendingEvent {
            warning: true,
            reason: REASON_PUSH_REFUSED.into(),
            action: "Apply".into(),
            note: message,
        });
    }

    /// Takes the Events queued for `ns`.
    pub fn take_events(&mut self, ns: &str) -> Vec<PendingEvent> {
        self.by_ns
            .get_mut(ns)
            .map(|r| std::mem::take(&mut r.events))
            .unwrap_or_default()
    }

    /// Forgets `ns` (its policy was deleted or the namespace opted out).
    pub fn forget(&mut self, ns: &str) {
        self.by_ns.remove(ns);
    }

    /// Keeps only the hosts `keep(ns, host)` accepts (destinations that left the controller's
    /// table leave the status: their recommendation and applied entry). Returns how many
    /// hosts were forgotten.
    pub fn retain_hosts(&mut self, keep: impl Fn(&str, &str) -> bool) -> usize {
        let mut forgotten = 0;
        for (ns, r) in &mut self.by_ns {
            let gone: Vec<String> = r
                .recs
                .keys()
                .chain(r.applied.keys())
                .filter(|h| !keep(ns, h))
                .cloned()
                .collect();
            for h in gone {
                let had = r.recs.remove(&h).is_some() | r.applied.remove(&h).is_some();
                r.stale_reported.remove(&h);
                forgotten += usize::from(had);
            }
        }
        forgotten
    }

    /// The status of `policy` (governing `ns`): `observedGeneration`, conditions (`Valid`,
    /// `Applied`, `Refused`), recommendations and applied entries sorted by host. Pure:
    /// the same inputs give the same status (times come from the records).
    pub fn status(&self, ns: &str, policy: &NsPolicy, enabled: bool) -> MeshtunePolicyStatus {
        let empty = NsReview::default();
        let r = self.by_ns.get(ns).unwrap_or(&empty);
        let time =
            |ms: u64| Time(Timestamp::from_millisecond(ms as i64).unwrap_or(Timestamp::UNIX_EPOCH));
        let gen = policy.generation;
        let mut conditions = Vec::new();
        let (valid, reason, message) = match &policy.error {
            None if policy.ignored.is_empty() => (true, "Resolved", String::new()),
            None => (
                true,
                "Resolved",
                format!(
                    "other policies in this namespace are ignored: {}",
                    policy.ignored.join(", ")
                ),
            ),
            Some(e) => (
                false,
                "InvalidSpec",
                format!("{e}; the namespace is observed only"),
            ),
        };
        conditions.push(Condition {
            type_: condition::VALID.into(),
            status: if valid { "True" } else { "False" }.into(),
            reason: reason.into(),
            message,
            // Valid follows the spec: its transition is the generation's, not a clock's.
            last_transition_time: time(0),
            observed_generation: gen,
        });
        conditions.push(Condition {
            type_: condition::ENABLED.into(),
            status: if enabled { "True" } else { "False" }.into(),
            reason: if enabled {
                "LabelPresent"
            } else {
                "NamespaceNotEnabled"
            }
            .into(),
            message: if enabled {
                String::new()
            } else {
                format!(
                    "namespace {ns} lacks the label {}=true: nothing is recommended or tuned here",
                    crate::namespaces::ENABLED_LABEL
                )
            },
            // Like Valid: no clock, so an unchanged status is not rewritten.
            last_transition_time: time(0),
            observed_generation: gen,
        });
        for kind in [condition::APPLIED, condition::REFUSED] {
            let c = r.conditions.get(kind);
            conditions.push(Condition {
                type_: kind.into(),
                status: if c.is_some_and(|c| c.status) {
                    "True"
                } else {
                    "False"
                }
                .into(),
                reason: c.map_or("None", |c| c.reason.as_str()).into(),
                message: c.map(|c| c.message.clone()).unwrap_or_default(),
                last_transition_time: time(c.map_or(0, |c| c.since_ms)),
                observed_generation: gen,
            });
        }
        MeshtunePolicyStatus {
            observed_generation: gen,
            conditions,
            recommendations: r
                .recs
                .iter()
                .map(|(host, rec)| Recommendation {
                    host: host.clone(),
                    id: rec.id.clone(),
                    knobs: PerKnob::from_knobs(&rec.knobs),
                    expected_effect: rec.expected.clone(),
                    features: rec.features.clone(),
                    model_version: rec.model_version.clone(),
                    created_at: time(rec.created_ms),
                })
                .collect(),
            applied: r
                .applied
                .iter()
                .map(|(host, (id, at))| Applied {
                    host: host.clone(),
                    id: id.clone(),
                    at: time(*at),
                })
                .collect(),
        }
    }
}

/// The server-side-apply body of a policy's status.
pub fn status_patch(ns: &str, name: &str, status: &MeshtunePolicyStatus) -> Value {
    serde_json::json!({
        "apiVersion": "meshtune.io/v1alpha1",
        "kind": "MeshtunePolicy",
        "metadata": {"name": name, "namespace": ns},
        "status": status,
    })
}

/// Writes policy status and Events (the leader only: the decision loop calls it while
/// leading).
pub struct StatusWriter {
    client: kube::Client,
    field_manager: String,
    min_interval: Duration,
    recorder: Recorder,
    /// (namespace, name) → last status written and when.
    last: tokio::sync::Mutex<BTreeMap<(String, String), (Value, Instant)>>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("field_manager", &self.field_manager)
            .field("min_interval", &self.min_interval)
            .finish_non_exhaustive()
    }
}

impl StatusWriter {
    /// `instance`: this replica (pod name) as the Events' reporting instance.
    pub fn new(
        client: kube::Client,
        field_manager: &str,
        min_interval: Duration,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "meshtune".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            field_manager: field_manager.into(),
            min_interval,
            last: Default::default(),
        }
    }

    /// Emits `events` regarding `policy` in `ns`, then applies `status` when it differs from
    /// the last one written and the last write is at least the minimum interval ago (a change
    /// held back is written by a later call). Errors are logged; the next call retries.
    /// Returns whether the status was written.
    pub async fn flush(
        &self,
        ns: &str,
        policy: &NsPolicy,
        status: &MeshtunePolicyStatus,
        events: Vec<PendingEvent>,
        now: Instant,
    ) -> bool {
        let reference = ObjectReference {
            api_version: Some("meshtune.io/v1alpha1".into()),
            kind: Some("MeshtunePolicy".into()),
            name: Some(policy.name.clone()),
            namespace: Some(ns.to_string()),
            uid: policy.uid.clone(),
            ..ObjectReference::default()
        };
        for e in events {
            let ev = Event {
                type_: if e.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: e.reason,
                note: Some(e.note.chars().take(1000).collect()),
                action: e.action,
                secondary: None,
            };
            if let Err(err) = self.recorder.publish(&ev, &reference).await {
                tracing::warn!(namespace = ns, error = %err, "emitting an Event failed");
            }
        }
        let body = status_patch(ns, &policy.name, status);
        let key = (ns.to_string(), policy.name.clone());
        let mut last = self.last.lock().await;
        if let Some((v, at)) = last.get(&key) {
            if *v == body || now.saturating_duration_since(*at) < self.min_interval {
                return false;
            }
        }
        // Untyped: the answer is not decoded as a MeshtunePolicy, so a spec this controller
        // cannot read does not make a successful write look failed.
        let ar = kube::api::ApiResource::erase::<MeshtunePolicy>(&());
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar);
        let params = PatchParams::apply(&self.field_manager).force();
        match api
            .patch_status(&policy.name, &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => {
                last.insert(key, (body, now));
                true
            }
            Err(e) => {
                tracing::warn!(namespace = ns, policy = %policy.name, error = %e, "writing the policy status failed; retried next cycle");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_crd::EffectivePolicy;

    fn rec(k: f64) -> Rec {
        let mut knobs = Knobs::istio_defaults();
        knobs.set(Knob::MaxConnections, k);
        Rec {
            id: String::new(),
            knobs,
            created_ms: 1_000,
            features: BTreeMap::new(),
            expected: ExpectedEffect::default(),
            model_version: "m1".into(),
        }
    }

    fn policy() -> NsPolicy {
        NsPolicy {
            name: "default".into(),
            uid: None,
            generation: Some(2),
            effective: EffectivePolicy::default(),
            error: None,
            ignored: vec![],
        }
    }

    #[test]
    fn recommendations_are_sticky_within_hysteresis() {
        let mut r = Reviews::new([0.05; KNOB_COUNT]);
        let (a, new) = r.recommend("ns", "h", rec(100.0));
        assert!(new);
        let (b, new) = r.recommend("ns", "h", rec(103.0));
        assert!(!new);
        assert_eq!(a, b, "3 % is noise");
        let (c, new) = r.recommend("ns", "h", rec(200.0));
        assert!(new);
        assert_ne!(a, c);
        assert_eq!(r.take_events("ns").len(), 2);
        assert_eq!(c, id_of(&rec(200.0).knobs));
    }

    #[test]
    fn approvals_apply_the_current_id_and_refuse_stale_ones() {
        let mut r = Reviews::new([0.05; KNOB_COUNT]);
        let (id, _) = r.recommend("ns", "h", rec(100.0));
        assert_eq!(r.approval("ns", "h", None, 5), Approval::None);
        match r.approval("ns", "h", Some(&id), 5) {
            Approval::Apply { id: got, knobs } => {
                assert_eq!(got, id);
                assert_eq!(knobs.get(Knob::MaxConnections), 100.0);
            }
            other => panic!("{other:?}"),
        }
        let stale = r.approval("ns", "h", Some("0123456789ab"), 6);
        assert_eq!(
            stale,
            Approval::Stale {
                approved: "0123456789ab".into(),
                current: Some(id.clone())
            }
        );
        r.approval("ns", "h", Some("0123456789ab"), 7);
        let events = r.take_events("ns");
        assert_eq!(
            events
                .iter()
                .filter(|e| e.reason == REASON_STALE_APPROVAL)
                .count(),
            1,
            "once"
        );
        let st = r.status("ns", &policy(), true);
        let refused = st
            .conditions
            .iter()
            .find(|c| c.type_ == condition::REFUSED)
            .unwrap();
        assert_eq!(refused.status, "True");
        assert_eq!(refused.reason, REASON_STALE_APPROVAL);
        assert!(refused.message.contains(&id), "{}", refused.message);

        let applied = r.applied("ns", "h", &rec(100.0).knobs, true, 9);
        assert_eq!(applied, id);
        assert_eq!(
            r.approval("ns", "h", Some(&id), 10),
            Approval::None,
            "already applied"
        );
        let st = r.status("ns", &policy(), true);
        assert_eq!(st.applied.len(), 1);
        assert_eq!(st.applied[0].id, id);
        let c = |t: &str| {
            st.conditions
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .status
                .clone()
        };
        assert_eq!(c(condition::APPLIED), "True");
        assert_eq!(c(condition::REFUSED), "False");
        assert_eq!(st.observed_generation, Some(2));
        assert_eq!(st.recommendations[0].model_version, "m1");
        assert_eq!(r.status("ns", &policy(), true), st, "deterministic");
    }

    #[test]
    fn status_says_when_the_namespace_is_not_enabled_and_drops_departed_hosts() {
        let mut r = Reviews::new([0.05; KNOB_COUNT]);
        r.recommend("ns", "stays", rec(100.0));
        r.recommend("ns", "leaves", rec(200.0));
        r.applied("ns", "leaves", &rec(200.0).knobs, true, 9);
        let enabled = |st: &MeshtunePolicyStatus| {
            st.conditions
                .iter()
                .find(|c| c.type_ == condition::ENABLED)
                .unwrap()
                .clone()
        };
        let on = enabled(&r.status("ns", &policy(), true));
        assert_eq!(
            (on.status.as_str(), on.reason.as_str()),
            ("True", "LabelPresent")
        );
        let off = enabled(&r.status("ns", &policy(), false));
        assert_eq!(off.status, "False");
        assert_eq!(off.reason, "NamespaceNotEnabled");
        assert!(
            off.message.contains("meshtune.io/enabled=true"),
            "{}",
            off.message
        );

        assert_eq!(r.retain_hosts(|_, h| h != "leaves"), 1);
        let st = r.status("ns", &policy(), true);
        let hosts: Vec<&str> = st.recommendations.iter().map(|x| x.host.as_str()).collect();
        assert_eq!(hosts, ["stays"]);
        assert!(st.applied.is_empty());
        assert_eq!(r.retain_hosts(|_, _| true), 0);
    }
}
