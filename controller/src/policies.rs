//! Per-namespace policy: the controller watches `MeshtunePolicy` objects (kube-runtime
//! watcher) and keeps, per namespace, the [`EffectivePolicy`] the decision loop acts on —
//! mode (observe / recommend / enforce), SLO target, knob bounds (intersected with the
//! guardrails' bounds), excluded hosts, the co-manage allowlist for the Istio sink, the
//! decision interval and the approvals.
//!
//! A namespace without a policy gets [`PolicyStore::default_policy`]: the crate's documented
//! defaults ([`meshtune_crd::resolve`]: observe, p99 ≤ 250 ms, no bounds) with the mode of
//! `--mode` (default observe) — `--mode` is the mode of namespaces without a policy. A policy
//! whose spec does not resolve counts as observe (nothing is written for that namespace) and
//! its status says why. With several policies in one namespace the one named `default` wins,
//! otherwise the first by name; the others are ignored (logged).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;
use kube::ResourceExt;
use meshtune_core::knobs::{Knob, KNOB_COUNT};
use meshtune_crd::resolve::DEFAULT_POLICY_NAME;
use meshtune_crd::{resolve, EffectivePolicy, MeshtunePolicy, Mode, PolicyError, SloTarget};
use meshtune_policy::guardrails::Bound;

use crate::decision::NsMode;

/// Kubernetes access of this module (`crate::rbac`): MeshtunePolicies listed and watched.
pub const KUBE_ACCESS: &[crate::rbac::Access] =
    &[("meshtune.io", "meshtunepolicies", &["list", "watch"])];

/// The policy of one namespace as read.
#[derive(Debug, Clone, PartialEq)]
pub struct NsPolicy {
    /// `metadata.name` of the `MeshtunePolicy`.
    pub name: String,
    pub uid: Option<String>,
    /// `metadata.generation` (status `observedGeneration`).
    pub generation: Option<i64>,
    /// The resolved spec (defaults when it does not resolve).
    pub effective: EffectivePolicy,
    /// Why the spec does not resolve.
    pub error: Option<PolicyError>,
    /// Other policies in the namespace, ignored.
    pub ignored: Vec<String>,
}

impl NsPolicy {
    /// Resolves one object.
    pub fn of(p: &MeshtunePolicy) -> Self {
        let (effective, error) = match resolve(&p.spec) {
            Ok(e) => (e, None),
            Err(e) => (
                EffectivePolicy {
                    mode: Mode::Observe,
                    ..EffectivePolicy::default()
                },
                Some(e),
            ),
        };
        NsPolicy {
            name: p.name_any(),
            uid: p.metadata.uid.clone(),
            generation: p.metadata.generation,
            effective,
            error,
            ignored: Vec::new(),
        }
    }
}

/// Maps the crate's mode to the decision step's.
pub fn ns_mode(m: Mode) -> NsMode {
    match m {
        Mode::Observe => NsMode::Observe,
        Mode::Recommend => NsMode::Recommend,
        Mode::Enforce => NsMode::Enforce,
    }
}

/// The latency target (ms) the features and guardrails use: `latencyMs` of a latency SLO;
/// an availability SLO keeps `default_ms` (the loop's `--slo-ms`) for latency.
pub fn slo_ms(slo: &SloTarget, default_ms: f64) -> f64 {
    match slo {
        SloTarget::Latency { ms, .. } => *ms,
        SloTarget::Availability(_) => default_ms,
    }
}

/// What the policy's SLO judges: its latency percentile (`percentile: 90` → the p90 latency
/// against `latencyMs`), or its availability. Pure.
pub fn slo_judge(slo: &SloTarget) -> crate::decision::SloJudge {
    match slo {
        SloTarget::Latency { percentile, .. } => crate::decision::SloJudge::Latency {
            quantile: percentile / 100.0,
        },
        SloTarget::Availability(a) => crate::decision::SloJudge::Availability { min_success: *a },
    }
}

/// A namespace's bounds: the guardrails file's bounds of the namespace (`file`, if any)
/// intersected with the policy's. A knob whose intersection is empty keeps the file's bound
/// (the operator's wins) and is reported in the second value. Pure.
pub fn intersect_bounds(
    file: Option<&[Bound; KNOB_COUNT]>,
    policy: &BTreeMap<Knob, meshtune_crd::Bound>,
) -> ([Bound; KNOB_COUNT], Vec<Knob>) {
    let mut out = file.copied().unwrap_or([Bound::default(); KNOB_COUNT]);
    let mut conflicts = Vec::new();
    for (k, b) in policy {
        let cur = out[*k as usize];
        let max_of = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        let min_of = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        let next = Bound {
            min: max_of(cur.min, b.min),
            max: min_of(cur.max, b.max),
        };
        match (next.min, next.max) {
            (Some(lo), Some(hi)) if lo > hi => conflicts.push(*k),
            _ => out[*k as usize] = next,
        }
    }
    (out, conflicts)
}

/// Picks the governing policy of a namespace among `all` (non-empty): `default`, else the
/// first by name. Pure.
pub fn governing(all: &BTreeMap<String, MeshtunePolicy>) -> Option<NsPolicy> {
    let chosen = all
        .get(DEFAULT_POLICY_NAME)
        .or_else(|| all.values().next())?;
    let mut p = NsPolicy::of(chosen);
    p.ignored = all.keys().filter(|n| **n != p.name).cloned().collect();
    Some(p)
}

/// The policies of every namespace, kept current by [`PolicyStore::run`].
#[derive(Debug)]
pub struct PolicyStore {
    /// namespace → name → object.
    objects: RwLock<BTreeMap<String, BTreeMap<String, MeshtunePolicy>>>,
    /// namespace → governing policy.
    governing: RwLock<BTreeMap<String, NsPolicy>>,
    default_mode: Mode,
    synced: std::sync::atomic::AtomicBool,
    listing: std::sync::Mutex<Option<Vec<MeshtunePolicy>>>,
}

impl PolicyStore {
    /// A store whose namespaces without a policy use `default_mode` (`--mode`).
    pub fn new(default_mode: Mode) -> Self {
        Self {
            objects: Default::default(),
            governing: Default::default(),
            default_mode,
            synced: Default::default(),
            listing: Default::default(),
        }
    }

    /// Whether the first list completed (until then the loop decides nothing: it would act
    /// on default modes).
    pub fn synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The policy of a namespace without one.
    pub fn default_policy(&self) -> EffectivePolicy {
        EffectivePolicy {
            mode: self.default_mode,
            ..EffectivePolicy::default()
        }
    }

    /// The governing policy of `namespace`, if it has one.
    pub fn policy(&self, namespace: &str) -> Option<NsPolicy> {
        self.governing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(namespace)
            .cloned()
    }

    /// The effective policy of `namespace` (its policy's, or the defaults).
    pub fn effective(&self, namespace: &str) -> EffectivePolicy {
        self.policy(namespace)
            .map(|p| p.effective)
            .unwrap_or_else(|| self.default_policy())
    }

    /// Every namespace with a policy and its governing policy.
    pub fn all(&self) -> BTreeMap<String, NsPolicy> {
        self.governing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn recompute(&self, namespaces: impl IntoIterator<Item = String>) {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        let mut gov = self.governing.write().unwrap_or_else(|e| e.into_inner());
        for ns in namespaces {
            match objects.get(&ns).and_then(governing) {
                Some(p) => {
                    if gov.get(&ns) != Some(&p) {
                        tracing::info!(namespace = %ns, policy = %p.name, mode = p.effective.mode.as_str(),
                            error = ?p.error.as_ref().map(ToString::to_string), ignored = ?p.ignored, "namespace policy");
                    }
                    gov.insert(ns, p);
                }
                None => {
                    if gov.remove(&ns).is_some() {
                        tracing::info!(namespace = %ns, "namespace policy removed: defaults apply");
                    }
                }
            }
        }
    }

    /// Applies one watch event.
    pub fn handle(&self, event: watcher::Event<MeshtunePolicy>) {
        match event {
            watcher::Event::Init => {
                *self.listing.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
            }
            watcher::Event::InitApply(p) => {
                if let Some(l) = self
                    .listing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_mut()
                {
                    l.push(p);
                }
            }
            watcher::Event::InitDone => {
                let listed = self
                    .listing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .unwrap_or_default();
                let mut all: BTreeMap<String, BTreeMap<String, MeshtunePolicy>> = BTreeMap::new();
                for p in listed {
                    all.entry(p.namespace().unwrap_or_default())
                        .or_default()
                        .insert(p.name_any(), p);
                }
                let touched: BTreeSet<String> = {
                    let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
                    let t = objects.keys().chain(all.keys()).cloned().collect();
                    *objects = all;
                    t
                };
                self.recompute(touched);
                self.synced
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            watcher::Event::Apply(p) => {
                let ns = p.namespace().unwrap_or_default();
                self.objects
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(ns.clone())
                    .or_default()
                    .insert(p.name_any(), p);
                self.recompute([ns]);
            }
            watcher::Event::Delete(p) => {
                let ns = p.namespace().unwrap_or_default();
                {
                    let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
                    if let Some(m) = objects.get_mut(&ns) {
                        m.remove(&p.name_any());
                        if m.is_empty() {
                            objects.remove(&ns);
                        }
                    }
                }
                self.recompute([ns]);
            }
        }
    }

    /// Watches `MeshtunePolicy` objects in every namespace until `shutdown`. Watch errors
    /// (e.g. the CRD not installed: every namespace keeps the defaults) are logged and retried
    /// with kube-runtime's default backoff.
    pub async fn run(
        self: std::sync::Arc<Self>,
        client: kube::Client,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        use kube::runtime::WatchStreamExt;
        let api: Api<MeshtunePolicy> = Api::all(client);
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        tokio::pin!(stream);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => self.handle(ev),
                    Some(Err(e)) => tracing::warn!(error = %e, "MeshtunePolicy watch failed (is the CRD installed?); retrying"),
                    None => return,
                },
            }
        }
    }
}

impl meshtune_sinks::istio_sink::CoManageAllowlist for PolicyStore {
    fn allows(&self, namespace: &str, kind: &str, name: &str) -> bool {
        let Some(p) = self.policy(namespace) else {
            return false;
        };
        match kind {
            "DestinationRule" => p.effective.co_manage_destination_rules.contains(name),
            "VirtualService" => p.effective.co_manage_virtual_services.contains(name),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_sinks::istio_sink::CoManageAllowlist;

    fn policy(ns: &str, name: &str, spec: serde_json::Value) -> MeshtunePolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "meshtune.io/v1alpha1", "kind": "MeshtunePolicy",
            "metadata": {"name": name, "namespace": ns, "generation": 3},
            "spec": spec}))
        .unwrap()
    }

    #[test]
    fn effective_mode_per_namespace_with_defaults_and_invalid_specs() {
        let s = PolicyStore::new(Mode::Observe);
        s.handle(watcher::Event::Init);
        s.handle(watcher::Event::InitApply(policy(
            "shop",
            "default",
            serde_json::json!({"mode": "enforce", "slo": {"latencyMs": 100},
                "coManage": {"destinationRules": ["reviews"]}}),
        )));
        s.handle(watcher::Event::InitApply(policy(
            "shop",
            "other",
            serde_json::json!({"mode": "observe"}),
        )));
        assert!(!s.synced());
        s.handle(watcher::Event::InitDone);
        assert!(s.synced());
        assert_eq!(s.effective("shop").mode, Mode::Enforce);
        assert_eq!(s.policy("shop").unwrap().ignored, vec!["other".to_string()]);
        assert_eq!(slo_ms(&s.effective("shop").slo, 250.0), 100.0);
        assert_eq!(
            slo_judge(&s.effective("shop").slo),
            crate::decision::SloJudge::Latency { quantile: 0.99 }
        );
        assert_eq!(
            slo_judge(&SloTarget::Latency {
                ms: 100.0,
                percentile: 90.0
            }),
            crate::decision::SloJudge::Latency { quantile: 0.9 }
        );
        assert_eq!(
            slo_judge(&SloTarget::Availability(0.999)),
            crate::decision::SloJudge::Availability { min_success: 0.999 }
        );
        assert_eq!(s.effective("elsewhere").mode, Mode::Observe);
        assert!(s.allows("shop", "DestinationRule", "reviews"));
        assert!(!s.allows("shop", "VirtualService", "reviews"));
        assert!(!s.allows("elsewhere", "DestinationRule", "reviews"));

        s.handle(watcher::Event::Apply(policy(
            "pay",
            "p",
            serde_json::json!({"mode": "recommend", "slo": {"latencyMs": 0.5}}),
        )));
        let pay = s.policy("pay").unwrap();
        assert_eq!(pay.effective.mode, Mode::Observe, "invalid spec: observe");
        assert!(pay
            .error
            .unwrap()
            .to_string()
            .contains("spec.slo.latencyMs"));

        s.handle(watcher::Event::Delete(policy(
            "shop",
            "default",
            serde_json::json!({}),
        )));
        assert_eq!(s.effective("shop").mode, Mode::Observe, "falls to `other`");
        s.handle(watcher::Event::Delete(policy(
            "shop",
            "other",
            serde_json::json!({}),
        )));
        assert!(s.policy("shop").is_none());
        let enforcing = PolicyStore::new(Mode::Enforce);
        assert_eq!(
            enforcing.effective("any").mode,
            Mode::Enforce,
            "--mode is the default"
        );
    }

    #[test]
    fn bounds_intersect_and_conflicts_keep_the_file() {
        let mut file = [Bound::default(); KNOB_COUNT];
        file[Knob::MaxConnections as usize] = Bound {
            min: Some(10.0),
            max: Some(1000.0),
        };
        file[Knob::RouteTimeoutMs as usize] = Bound {
            min: Some(500.0),
            max: None,
        };
        let policy = BTreeMap::from([
            (
                Knob::MaxConnections,
                meshtune_crd::Bound {
                    min: Some(1.0),
                    max: Some(200.0),
                },
            ),
            (
                Knob::RouteTimeoutMs,
                meshtune_crd::Bound {
                    min: None,
                    max: Some(300.0),
                },
            ),
        ]);
        let (b, conflicts) = intersect_bounds(Some(&file), &policy);
        assert_eq!(
            b[Knob::MaxConnections as usize],
            Bound {
                min: Some(10.0),
                max: Some(200.0)
            }
        );
        assert_eq!(
            b[Knob::RouteTimeoutMs as usize],
            file[Knob::RouteTimeoutMs as usize]
        );
        assert_eq!(conflicts, vec![Knob::RouteTimeoutMs]);
        let (b, c) = intersect_bounds(None, &policy);
        assert_eq!(b[Knob::RouteTimeoutMs as usize].max, Some(300.0));
        assert!(c.is_empty());
    }
}
