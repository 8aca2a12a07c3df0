//! The pure per-cycle decision step: snapshot → destinations with enough traffic → (policy
//! outputs) → guardrails (per-destination state, observe/enforce, rollback) → sink decisions,
//! hints and window outcomes. No I/O: [`crate::policy_loop`] does inference, sinks and recording.

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};
use std::time::Instant;

use meshtune_core::availability::Availability;
use meshtune_core::knobs::{Knob, Knobs, KNOB_COUNT};
use meshtune_core::outcomes::{Objective, Outcomes, SloGood};
use meshtune_core::{Context, DestKey, Features, WindowStats};

use crate::aggregate::ClusterWindow;
use meshtune_policy::guardrails::{Action, Guardrails, HoldReason, Mode, Situation, Verdict};

/// Default minimum requests in a destination's window before the policy decides for it.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;
/// Default latency SLO (ms) for the goodput outcome and the objective.
pub use meshtune_core::outcomes::DEFAULT_SLO_MS;
/// Namespace used when a destination name carries none (plain Envoy cluster names).
pub use meshtune_core::DEFAULT_NAMESPACE;

/// How Envoy cluster names (as reported) map to sink destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Naming {
    /// The cluster name is the destination (plain Envoy, the Envoy file sink).
    #[default]
    Cluster,
    /// Istio outbound cluster names map to their host (`outbound|80||a.ns.svc.cluster.local`
    /// → `a.ns.svc.cluster.local`, namespace `ns`); other clusters are ignored.
    IstioHost,
}

impl Naming {
    /// `(destination, namespace)` of a reported cluster, `None` if it is not managed.
    pub fn destination(self, cluster: &str) -> Option<(String, String)> {
        match self {
            Naming::Cluster => {
                (!cluster.is_empty()).then(|| (cluster.to_string(), DEFAULT_NAMESPACE.to_string()))
            }
            Naming::IstioHost => meshtune_sinks::host_from_cluster_name(cluster).map(|h| {
                let ns = h
                    .split('.')
                    .nth(1)
                    .filter(|s| !s.is_empty())
                    .unwrap_or(DEFAULT_NAMESPACE);
                (h.to_string(), ns.to_string())
            }),
        }
    }
}

/// One destination the policy decides for this cycle: one [`DestKey`] (reporter namespace,
/// destination).
#[derive(Debug, Clone)]
pub struct Selected {
    /// (reporter namespace, destination): the key of the loop state, the guardrails and hints.
    pub key: DestKey,
    /// The destination (Istio host, or the plain Envoy cluster name); `key.cluster`.
    pub destination: String,
    /// The reporters' namespace (`key.namespace`): the namespace the Istio sink writes the
    /// client-side objects to.
    pub namespace: String,
    /// Reported clusters that map to it (each gets the hint).
    pub clusters: Vec<String>,
    /// Their windows merged (concurrent reporters).
    pub stats: WindowStats,
    /// Reporting client proxies (the most of any of its clusters).
    pub clients: u32,
    /// Offered load (rps) of its last seconds, summed over its clusters
    /// ([`ClusterWindow::recent_rps`]; `None` when any is unknown, or from Prometheus).
    pub recent_rps: Option<f64>,
    /// Fields the source measured (complete for the filter; see
    /// `meshtune_core::availability` for the Prometheus source's gaps and their fallbacks).
    pub availability: Availability,
    /// Where the window came from.
    pub source: FeatureSource,
}

/// Which feature source a destination's window came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeatureSource {
    /// The filters' reports (gRPC).
    #[default]
    Filter,
    /// Prometheus (Istio standard metrics, Envoy cluster statistics).
    Prometheus,
}

impl FeatureSource {
    pub fn name(self) -> &'static str {
        match self {
            FeatureSource::Filter => "filter",
            FeatureSource::Prometheus => "prometheus",
        }
    }
}

impl Selected {
    /// The policy input's raw features: the window with the documented fallbacks for missing
    /// fields (`meshtune_core::availability::policy_stats`) and the destination's state.
    pub fn policy_features(&self, context: &Context) -> meshtune_core::Features {
        meshtune_core::availability::policy_stats(&self.stats, self.availability).features(context)
    }
}

/// Groups the snapshot by (reporter namespace, destination) and keeps those with at least
/// `min_requests` measured requests (a sampled window counts its samples, not its scaled
/// estimate; see `WindowStats::measured_requests`),
/// in the order their first cluster appears in the snapshot (which is sorted, so the order is
/// deterministic). Takes the snapshot by value: each window moves into its destination (the
/// common case of one cluster per destination copies nothing).
pub fn select(
    snapshot: impl IntoIterator<Item = impl Into<ClusterWindow>>,
    naming: Naming,
    min_requests: u64,
) -> Vec<Selected> {
    let snapshot = snapshot.into_iter();
    let n = snapshot.size_hint().0;
    let mut groups: Vec<Selected> = Vec::with_capacity(n);
    let mut index: HashMap<DestKey, usize> = HashMap::with_capacity(n);
    for entry in snapshot {
        let ClusterWindow {
            key: DestKey { namespace, cluster },
            stats,
            clients,
            recent_rps,
        } = entry.into();
        let Some((destination, _)) = naming.destination(&cluster) else {
            continue;
        };
        match index.entry(DestKey {
            namespace,
            cluster: destination,
        }) {
            Entry::Occupied(e) => {
                let s = &mut groups[*e.get()];
                s.clusters.push(cluster);
                s.stats.merge_concurrent(&stats);
                s.clients = s.clients.max(clients);
                s.recent_rps = s.recent_rps.zip(recent_rps).map(|(a, b)| a + b);
            }
            Entry::Vacant(e) => {
                let key = e.key().clone();
                e.insert(groups.len());
                groups.push(Selected {
                    destination: key.cluster.clone(),
                    namespace: key.namespace.clone(),
                    key,
                    clusters: vec![cluster],
                    stats,
                    clients,
                    recent_rps,
                    availability: Availability::COMPLETE,
                    source: FeatureSource::Filter,
                });
            }
        }
    }
    groups.retain(|s| s.stats.measured_requests() >= min_requests.max(1));
    groups
}

/// Filter windows and Prometheus windows together: every destination the filters report
/// (with at least one request) keeps its filter window, whatever Prometheus says about it
/// (matched by destination, and for Istio names by host); Prometheus adds the destinations
/// the filters do not report, if their window is decidable
/// ([`Availability::decidable`]). Then the `min_requests` rule applies to all. Prometheus
/// windows merge all clients of a destination, so their key's namespace is the destination's
/// own (the operator's Prometheus is trusted; no reporter can choose it).
pub fn select_sources(
    filter: impl IntoIterator<Item = impl Into<ClusterWindow>>,
    prometheus: Vec<crate::prometheus::SourcedWindow>,
    naming: Naming,
    min_requests: u64,
) -> Vec<Selected> {
    let mut groups = select(filter, naming, 1);
    let hosts: foldhash::HashSet<String> = groups
        .iter()
        .flat_map(|g| g.clusters.iter())
        .filter_map(|c| meshtune_sinks::host_from_cluster_name(c).map(str::to_string))
        .collect();
    let mut index: HashMap<String, usize> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.destination.clone(), i))
        .collect();
    // A destination any namespace's filters report keeps the filter windows only.
    let filter_count = groups.len();
    for w in prometheus {
        if !w.availability.decidable() {
            continue;
        }
        let Some((destination, namespace)) = naming.destination(&w.cluster) else {
            continue;
        };
        let host = meshtune_sinks::host_from_cluster_name(&w.cluster);
        if host.is_some_and(|h| hosts.contains(h)) {
            continue;
        }
        match index.get(&destination) {
            Some(&i) if i < filter_count => continue,
            Some(&i) => {
                let g = &mut groups[i];
                g.clusters.push(w.cluster);
                g.stats.merge_concurrent(&w.stats);
                g.availability = g.availability.merge(w.availability);
            }
            None => {
                index.insert(destination.clone(), groups.len());
                groups.push(Selected {
                    key: DestKey::new(namespace.as_str(), destination.as_str()),
                    destination,
                    namespace,
                    clusters: vec![w.cluster],
                    stats: w.stats,
                    // Prometheus does not say how many client proxies it aggregates.
                    clients: 1,
                    recent_rps: None,
                    availability: w.availability,
                    source: FeatureSource::Prometheus,
                });
            }
        }
    }
    groups.retain(|s| s.stats.measured_requests() >= min_requests.max(1));
    groups
}

/// Outcomes of a live window with latency SLO `slo_ms`: completions are the offered load and
/// the SLO share comes from the window's histogram; the reward is the default objective
/// without churn (one definition: `meshtune_core::outcomes`).
pub fn outcomes(w: &WindowStats, slo_ms: f64) -> Outcomes {
    Outcomes::of_window(
        w,
        w.requests,
        SloGood::FromHistogram { slo_ms },
        &Objective::default(),
        0.0,
    )
}

/// What a destination's SLO judges (its namespace's `MeshtunePolicy` `spec.slo`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SloJudge {
    /// The `quantile` (0..1; 0.99 = p99, the default) of the window's latency at most the
    /// latency target, and at most [`meshtune_policy::guardrails::URGENT_ERROR_RATE`] errors
    /// other than sheds.
    Latency { quantile: f64 },
    /// At least `min_success` (0..1) of the window's requests answered without an error other
    /// than a shed. Shedding is not a miss: under overload it is the controller's answer, and
    /// judging it a miss would make the guardrails brake harder still. Latency is not judged.
    Availability { min_success: f64 },
}

impl Default for SloJudge {
    fn default() -> Self {
        SloJudge::Latency { quantile: 0.99 }
    }
}

/// Whether a window misses its destination's SLO (`judge`, latency target `slo_ms`), so a
/// change is urgent ([`meshtune_policy::guardrails::misses_slo`] on the judged latency).
pub fn misses_slo_judged(o: &Outcomes, w: &WindowStats, slo_ms: f64, judge: SloJudge) -> bool {
    match judge {
        SloJudge::Latency { quantile } => {
            let latency_ms = if (quantile - 0.99).abs() < 1e-12 {
                o.p99_ms
            } else {
                w.latency.quantile_us(quantile) / 1000.0
            };
            meshtune_policy::guardrails::misses_slo(
                o.offered_rps,
                latency_ms,
                o.error_rate,
                o.shed_rate,
                slo_ms,
            )
        }
        SloJudge::Availability { min_success } => {
            o.offered_rps > 0.0 && o.error_rate - o.shed_rate > 1.0 - min_success
        }
    }
}

/// The guardrails' objective (a cost; lower is better): `1 - reward`.
pub fn cost(o: &Outcomes) -> f64 {
    1.0 - o.reward
}

/// Where a key's knobs in force come from ([`LoopState::knobs_source`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnobsSource {
    /// meshtune pushed them.
    Pushed,
    /// The cluster's own DestinationRule/VirtualService ([`LoopState::baseline`]).
    Cluster,
    /// Nothing configures the destination: Istio's defaults.
    IstioDefaults,
}

impl KnobsSource {
    /// Label for the API (`knobs_source`) and metrics.
    pub fn label(self) -> &'static str {
        match self {
            KnobsSource::Pushed => "pushed",
            KnobsSource::Cluster => "cluster",
            KnobsSource::IstioDefaults => "istio_defaults",
        }
    }
}

/// Decision state kept across cycles: guardrails and the knobs in force per destination.
#[derive(Debug, Clone)]
pub struct LoopState {
    pub guardrails: Guardrails,
    /// Knobs meshtune pushed per key; absent = nothing pushed (the [`Self::baseline`] is in
    /// force). Istio's defaults here mean meshtune removed what it wrote (a push of the
    /// defaults is a removal, `meshtune_sinks::Decision::is_removal`): the baseline is in force
    /// again.
    pub in_force: HashMap<DestKey, Knobs>,
    /// What the cluster's own (not meshtune's) DestinationRules/VirtualServices put in force
    /// per key, for keys some object configures (refreshed every cycle for the keys decided,
    /// from `crate::cluster_knobs`); absent = Istio's defaults.
    pub baseline: HashMap<DestKey, meshtune_sinks::istio_foreign::ClusterInForce>,
    /// When each key's knobs last changed (push or rollback applied).
    pub changed_at: HashMap<DestKey, Instant>,
    /// For this long after a change a window still holds traffic from before it: the rollback
    /// watch skips such windows (it would blame the push for what it has not yet acted on).
    pub settle: std::time::Duration,
}

impl LoopState {
    pub fn new(guardrails: Guardrails) -> Self {
        Self {
            guardrails,
            in_force: HashMap::default(),
            baseline: HashMap::default(),
            changed_at: HashMap::default(),
            settle: std::time::Duration::ZERO,
        }
    }

    /// Sets the settle time (the sliding window's length).
    pub fn with_settle(mut self, settle: std::time::Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Forgets every destination `live` does not hold (knobs in force, change times,
    /// guardrail phases); returns the destinations forgotten.
    pub fn prune(&mut self, live: &foldhash::HashSet<DestKey>) -> Vec<DestKey> {
        let gone: Vec<DestKey> = self
            .in_force
            .keys()
            .chain(self.changed_at.keys())
            .filter(|d| !live.contains(*d))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        self.in_force.retain(|d, _| live.contains(d));
        self.baseline.retain(|d, _| live.contains(d));
        self.changed_at.retain(|d, _| live.contains(d));
        let live_guard: foldhash::HashSet<String> = live.iter().map(DestKey::to_string).collect();
        self.guardrails.retain(|d| live_guard.contains(d));
        gone
    }

    /// Whether `key` changed less than `settle` ago.
    pub fn settling(&self, key: &DestKey, now: Instant) -> bool {
        self.changed_at
            .get(key)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.settle)
    }

    pub fn mode(&self) -> Mode {
        self.guardrails.config().mode
    }

    /// Knobs in force for `key`: what meshtune pushed, else (nothing pushed, or its objects
    /// removed) the [`Self::baseline`], else Istio's defaults.
    pub fn knobs_in_force(&self, key: &DestKey) -> Knobs {
        self.pushed(key)
            .copied()
            .unwrap_or_else(|| self.baseline_knobs(key))
    }

    /// The knobs meshtune pushed for `key` and has not removed since (hints are served from
    /// these only: after a removal the cluster's own settings apply, and a hint would override
    /// them).
    pub fn pushed(&self, key: &DestKey) -> Option<&Knobs> {
        self.in_force
            .get(key)
            .filter(|k| **k != Knobs::istio_defaults())
    }

    /// Where [`Self::knobs_in_force`] comes from.
    pub fn knobs_source(&self, key: &DestKey) -> KnobsSource {
        if self.pushed(key).is_some() {
            KnobsSource::Pushed
        } else if self.baseline.contains_key(key) {
            KnobsSource::Cluster
        } else {
            KnobsSource::IstioDefaults
        }
    }

    /// What is in force for `key` without meshtune's objects: the cluster's own objects'
    /// knobs, or Istio's defaults.
    pub fn baseline_knobs(&self, key: &DestKey) -> Knobs {
        self.baseline
            .get(key)
            .map(|b| b.knobs)
            .unwrap_or_else(Knobs::istio_defaults)
    }

    /// Sets `key`'s baseline from what the cluster's objects put in force (`c`; nothing
    /// configures the key when it read no object).
    pub fn set_baseline(
        &mut self,
        key: &DestKey,
        c: meshtune_sinks::istio_foreign::ClusterInForce,
    ) {
        if c.from_objects() {
            self.baseline.insert(key.clone(), c);
        } else {
            self.baseline.remove(key);
        }
    }
}

/// The last push of a destination recovered after a restart, as an `Instant` of this process
/// (`now` is the recovery, `now_wall` the same moment on the wall clock): the time its objects
/// record. An unknown time (annotation missing or garbled) counts as the recovery itself, so
/// the dwell starts now; a recorded time in the future (clock skew) also counts as now; a time
/// further back than the monotonic clock can express is `None` (long ago: no dwell).
pub fn recovered_last_push(
    applied_at: &meshtune_sinks::istio_undo::AppliedAt,
    now_wall: std::time::SystemTime,
    now: Instant,
) -> Option<Instant> {
    match applied_at {
        meshtune_sinks::istio_undo::AppliedAt::At(t) => {
            now.checked_sub(now_wall.duration_since(*t).unwrap_or_default())
        }
        _ => Some(now),
    }
}

/// The policy's input for each selected destination: its window and its state (knobs in force,
/// reporting clients, time since the knobs last changed, the SLO target).
pub fn features(
    selected: &[Selected],
    state: &LoopState,
    now: Instant,
    slo_ms: f64,
) -> Vec<Features> {
    features_with(selected, state, now, &|_| slo_ms)
}

/// [`features`] with each destination's SLO target from `slo_ms` (its namespace's policy).
pub fn features_with(
    selected: &[Selected],
    state: &LoopState,
    now: Instant,
    slo_ms: &dyn Fn(&Selected) -> f64,
) -> Vec<Features> {
    selected
        .iter()
        .map(|s| {
            let context = Context {
                knobs: state.knobs_in_force(&s.key),
                clients: s.clients,
                secs_since_change: state
                    .changed_at
                    .get(&s.key)
                    .map(|t| now.saturating_duration_since(*t).as_secs_f64()),
                slo_target_ms: slo_ms(s),
            };
            s.policy_features(&context)
        })
        .collect()
}

/// How a destination's namespace wants it decided (its `MeshtunePolicy`, or the defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct NsParams {
    /// Latency SLO (ms): the features' target, the outcomes and (with a latency judge) the
    /// urgency.
    pub slo_ms: f64,
    /// What the SLO judges: which latency percentile, or availability.
    pub judge: SloJudge,
    /// observe / recommend / enforce.
    pub mode: NsMode,
    /// recommend mode: knobs a person approved (the current recommendation's); they are
    /// guarded and pushed like an enforce-mode proposal.
    pub approved: Option<Knobs>,
}

/// What a namespace does with decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NsMode {
    /// Recommendations only; no rollback watch (nothing is pushed).
    #[default]
    Observe,
    /// Recommendations; an approved one is pushed (and watched for rollback).
    Recommend,
    /// Pushes within the guardrails.
    Enforce,
}

impl NsMode {
    pub fn name(self) -> &'static str {
        match self {
            NsMode::Observe => "observe",
            NsMode::Recommend => "recommend",
            NsMode::Enforce => "enforce",
        }
    }
}

/// What happened to one destination this cycle.
#[derive(Debug, Clone, PartialEq)]
pub enum DestAction {
    /// New knobs pushed to the sinks.
    Push,
    /// Observe mode: a recommendation for the log sink only.
    Recommend,
    /// Nothing changed (no change, dwell, watching a previous push).
    Hold(HoldReason),
    /// The last push made the objective worse: the previous knobs are pushed back.
    Rollback { baseline: f64, objective: f64 },
}

impl DestAction {
    /// The outcome when every sink applied the push (see [`settle`] for failed pushes).
    pub fn outcome(&self) -> DestOutcome {
        match self {
            DestAction::Push => DestOutcome::Pushed,
            DestAction::Recommend => DestOutcome::Recommended,
            DestAction::Hold(HoldReason::NoChange) => DestOutcome::NoChange,
            DestAction::Hold(HoldReason::Dwell { .. }) => DestOutcome::HoldDwell,
            DestAction::Hold(HoldReason::Watching) => DestOutcome::HoldWatching,
            DestAction::Hold(HoldReason::InvalidOutput) => DestOutcome::HoldInvalidOutput,
            DestAction::Rollback { .. } => DestOutcome::RolledBack,
        }
    }

    /// Whether this action changes (or, observing, would change) the mesh: counted as a
    /// decision in the metrics.
    pub fn is_decision(&self) -> bool {
        matches!(
            self,
            DestAction::Push | DestAction::Recommend | DestAction::Rollback { .. }
        )
    }
}

/// How one destination's cycle ended, after the sinks answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestOutcome {
    /// New knobs applied by every sink.
    Pushed,
    /// Observe mode: recommended (log sink only).
    Recommended,
    /// The policy's knobs equal those in force (within hysteresis).
    NoChange,
    /// A change held back by the minimum dwell time.
    HoldDwell,
    /// A change held back while the last push is being watched for regressions.
    HoldWatching,
    /// The policy's output was NaN or infinite: the knobs in force are held.
    HoldInvalidOutput,
    /// The last push made the objective worse: the previous knobs were pushed back.
    RolledBack,
    /// A push or rollback some sink did not apply: reverted, the previous knobs stay.
    PushFailed,
}

impl DestOutcome {
    /// Label for the API (`last_decision.outcome`), logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            DestOutcome::Pushed => "pushed",
            DestOutcome::Recommended => "recommended",
            DestOutcome::NoChange => "no_change",
            DestOutcome::HoldDwell => "hold_dwell",
            DestOutcome::HoldWatching => "hold_watching",
            DestOutcome::HoldInvalidOutput => "hold_invalid_output",
            DestOutcome::RolledBack => "rolled_back",
            DestOutcome::PushFailed => "push_failed",
        }
    }
}

/// One destination's decision in a cycle.
#[derive(Debug, Clone)]
pub struct DestDecision {
    /// (reporter namespace, destination).
    pub key: DestKey,
    pub destination: String,
    /// The reporters' namespace (written to by the Istio sink).
    pub namespace: String,
    pub clusters: Vec<String>,
    /// Knobs in force when the window was measured (recorded with its outcomes).
    pub before: Knobs,
    /// Knobs after guardrails (pushed, recommended, or held = `before`).
    pub knobs: Knobs,
    pub changed: Vec<Knob>,
    pub action: DestAction,
    /// The guardrails judged the window urgent (SLO missed or retries amplifying): the short
    /// dwell applied.
    pub urgent: bool,
    pub outcomes: Outcomes,
    /// When the knobs last changed before this cycle (restored if the push is reverted).
    pub changed_before: Option<Instant>,
}

/// Result of [`decide`].
#[derive(Debug, Clone, Default)]
pub struct Cycle {
    pub items: Vec<DestDecision>,
    /// Decisions for the configured sinks (enforce mode: pushes and rollbacks).
    pub pushes: Vec<meshtune_sinks::Decision>,
    /// Decisions for the log sink only (observe mode recommendations).
    pub recommendations: Vec<meshtune_sinks::Decision>,
}

impl Cycle {
    /// Hints for the filters: for every selected (reporter namespace, cluster) whose key has
    /// knobs meshtune pushed ([`LoopState::pushed`]; enforce mode only; observe mode changes
    /// nothing in the mesh). Served only to reporters of that namespace.
    pub fn hints(
        &self,
        state: &LoopState,
        ttl_ms: u32,
    ) -> Vec<(DestKey, meshtune_proto::v1::Hint)> {
        if state.mode() != Mode::Enforce {
            return Vec::new();
        }
        self.items
            .iter()
            .filter_map(|d| state.pushed(&d.key).map(|k| (d, k)))
            .flat_map(|(d, k)| {
                d.clusters.iter().map(move |c| {
                    (
                        d.key.with_cluster(c.as_str()),
                        meshtune_sinks::hint::hint(c, k, ttl_ms),
                    )
                })
            })
            .collect()
    }
}

/// The pure decision step. `proposed[i]` is the policy's (denormalised) output for
/// `selected[i]`. Updates `state` (guardrail phases, knobs in force) as if every push succeeds;
/// the caller reverts with [`revert_push`] when a sink fails.
pub fn decide(
    selected: &[Selected],
    proposed: &[Knobs],
    state: &mut LoopState,
    now: Instant,
    slo_ms: f64,
) -> Cycle {
    // The guardrails' mode decides (observe: recommend only).
    let mode = match state.mode() {
        Mode::Observe => NsMode::Observe,
        Mode::Enforce => NsMode::Enforce,
    };
    decide_with(selected, proposed, state, now, &|_| NsParams {
        slo_ms,
        judge: SloJudge::default(),
        mode,
        approved: None,
    })
}

/// [`decide`] with each destination's namespace parameters (`params`): its SLO and mode. A
/// push decided for an observe or recommend namespace becomes a recommendation, unless in
/// recommend mode the approved knobs are what is proposed; observe namespaces are not watched
/// for rollback (nothing was pushed there).
pub fn decide_with(
    selected: &[Selected],
    proposed: &[Knobs],
    state: &mut LoopState,
    now: Instant,
    params: &dyn Fn(&Selected) -> NsParams,
) -> Cycle {
    let mut cycle = Cycle {
        items: Vec::with_capacity(selected.len()),
        ..Cycle::default()
    };
    // Grow the per-destination maps once (a cold start adds every destination).
    let missing = selected.len().saturating_sub(state.in_force.len());
    state.guardrails.reserve(missing);
    state.in_force.reserve(missing);
    for (sel, prop) in selected.iter().zip(proposed) {
        let NsParams {
            slo_ms,
            judge,
            mode,
            approved,
        } = params(sel);
        let outcomes = outcomes(&sel.stats, slo_ms);
        let objective = cost(&outcomes);
        let before = state.knobs_in_force(&sel.key);
        // The guardrails key their per-destination state by `namespace/destination`.
        let guard_key = sel.key.to_string();
        let dest = guard_key.as_str();
        let mut item = DestDecision {
            key: sel.key.clone(),
            destination: sel.destination.clone(),
            namespace: sel.namespace.clone(),
            clusters: sel.clusters.clone(),
            before,
            knobs: before,
            changed: Vec::new(),
            action: DestAction::Hold(HoldReason::NoChange),
            urgent: false,
            outcomes,
            changed_before: state.changed_at.get(&sel.key).copied(),
        };
        // Windows still mixing traffic from before the last change are not evidence about it.
        let verdict = if state.settling(&sel.key, now) || mode == NsMode::Observe {
            Verdict::Idle
        } else {
            state.guardrails.observe_at_loads(
                dest,
                objective,
                &[outcomes.offered_rps, sel.recent_rps.unwrap_or(f64::NAN)],
            )
        };
        if let Verdict::Rollback {
            restore,
            baseline,
            objective,
        } = verdict
        {
            // The target passes through the bounds too (it may predate them, or come from
            // recovered objects).
            let restore = state
                .guardrails
                .config()
                .bound_target(&sel.namespace, &restore);
            item.changed = changed(&before, &restore);
            item.knobs = restore;
            item.action = DestAction::Rollback {
                baseline,
                objective,
            };
            // Back to what the cluster's own objects set: remove meshtune's objects (a push of
            // Istio's defaults) rather than copy the values into objects of meshtune's.
            let pushed = if restore == state.baseline_knobs(&sel.key) {
                Knobs::istio_defaults()
            } else {
                restore
            };
            cycle.pushes.push(meshtune_sinks::Decision {
                destination: sel.destination.clone(),
                namespace: sel.namespace.clone(),
                knobs: pushed,
                previous: Some(before),
            });
            state.guardrails.record_rollback(dest, now, restore);
            state.in_force.insert(sel.key.clone(), pushed);
            state.changed_at.insert(sel.key.clone(), now);
            cycle.items.push(item);
            continue;
        }
        // Retries never amplify: at the attempt failure rate this window shows, the proposal
        // keeps upstream attempts within MAX_RETRY_AMPLIFICATION per request.
        let approving = mode == NsMode::Recommend && approved.is_some();
        let mut prop = approved.unwrap_or(*prop);
        let failure_rate = sel.stats.attempt_failure_rate(&before);
        prop.cap_retries_for_failures(failure_rate);
        // Retries in force that amplify make the change urgent too (BookInfo's failing
        // ratings kept Istio's ×1.56 for a whole run behind the 30 s dwell).
        let situation = Situation::of_window(
            misses_slo_judged(&outcomes, &sel.stats, slo_ms, judge),
            outcomes.shed_rate,
            sel.stats.inflight_max as f64,
            sel.clients,
            sel.stats.endpoints,
        )
        .or_amplifying(&before, failure_rate);
        item.urgent = situation.urgent;
        let d = state
            .guardrails
            .decide_with(dest, &sel.namespace, now, &prop, &before, situation);
        item.changed = d.changed;
        // Built only for a push or recommendation (most destinations hold in steady state).
        let sink_decision = || meshtune_sinks::Decision {
            destination: sel.destination.clone(),
            namespace: sel.namespace.clone(),
            knobs: d.knobs,
            previous: Some(before),
        };
        let action = match d.action {
            Action::Push
                if mode == NsMode::Observe || (mode == NsMode::Recommend && !approving) =>
            {
                Action::Recommend
            }
            a => a,
        };
        match action {
            Action::Push => {
                item.knobs = d.knobs;
                item.action = DestAction::Push;
                cycle.pushes.push(sink_decision());
                state.guardrails.record_push_at_load(
                    dest,
                    now,
                    before,
                    objective,
                    outcomes.offered_rps,
                );
                state.in_force.insert(sel.key.clone(), d.knobs);
                state.changed_at.insert(sel.key.clone(), now);
            }
            Action::Recommend => {
                item.knobs = d.knobs;
                item.action = DestAction::Recommend;
                cycle.recommendations.push(sink_decision());
            }
            Action::Hold(reason) => {
                item.action = DestAction::Hold(reason);
                if !matches!(reason, HoldReason::NoChange) {
                    item.changed.clear();
                }
            }
        }
        cycle.items.push(item);
    }
    cycle
}

/// Undoes a push a sink did not apply: the previous knobs are in force again and the
/// destination's guardrail state is forgotten (no watching of a push that did not happen).
pub fn revert_push(state: &mut LoopState, item: &DestDecision) {
    // (A rollback to the baseline put Istio's defaults in `in_force`: a removal.)
    if state.in_force.get(&item.key) == Some(&item.knobs)
        || state.knobs_in_force(&item.key) == item.knobs
    {
        // Before the push nothing of meshtune's was in force (the baseline was).
        if item.before == Knobs::istio_defaults() || item.before == state.baseline_knobs(&item.key)
        {
            state.in_force.remove(&item.key);
        } else {
            state.in_force.insert(item.key.clone(), item.before);
        }
        state.guardrails.forget(&item.key.to_string());
        match item.changed_before {
            Some(t) => state.changed_at.insert(item.key.clone(), t),
            None => state.changed_at.remove(&item.key),
        };
    }
}

/// The "revert failed pushes" stage: every push or rollback that a sink did not apply
/// (`failed` names its key) is reverted in `state`; returns each item's outcome, in
/// order.
pub fn settle(
    state: &mut LoopState,
    items: &[DestDecision],
    failed: &foldhash::HashSet<DestKey>,
) -> Vec<DestOutcome> {
    items
        .iter()
        .map(|item| match item.action {
            DestAction::Push | DestAction::Rollback { .. } if failed.contains(&item.key) => {
                revert_push(state, item);
                DestOutcome::PushFailed
            }
            ref a => a.outcome(),
        })
        .collect()
}

/// Counts of one cycle (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CycleSummary {
    /// Destinations decided for.
    pub destinations: usize,
    /// Pushes decided (including those a sink then failed: see `push_failures`).
    pub pushed: usize,
    pub recommended: usize,
    /// Rollbacks decided.
    pub rolled_back: usize,
    /// Pushes and rollbacks some sink did not apply (reverted).
    pub push_failures: usize,
    /// Version of the model that decided.
    pub model_version: String,
}

impl CycleSummary {
    /// Counts the decided actions of `items` and their settled `outcomes` for a cycle decided
    /// by `model_version`.
    pub fn of(items: &[DestDecision], outcomes: &[DestOutcome], model_version: &str) -> Self {
        let actions = |f: fn(&DestAction) -> bool| items.iter().filter(|i| f(&i.action)).count();
        CycleSummary {
            destinations: items.len(),
            pushed: actions(|a| matches!(a, DestAction::Push)),
            recommended: actions(|a| matches!(a, DestAction::Recommend)),
            rolled_back: actions(|a| matches!(a, DestAction::Rollback { .. })),
            push_failures: outcomes
                .iter()
                .filter(|o| **o == DestOutcome::PushFailed)
                .count(),
            model_version: model_version.to_string(),
        }
    }
}

/// The "record" stage's rows: per destination, the window's features, the knobs in force
/// while it was measured and its outcomes (the dataset the trainer learns from).
pub fn dataset_rows(
    features: &[Features],
    items: &[DestDecision],
    unix_secs: u64,
) -> Vec<meshtune_core::dataset::DatasetRow> {
    features
        .iter()
        .zip(items)
        .map(|(f, item)| meshtune_core::dataset::DatasetRow {
            source: crate::recorder::LIVE_SOURCE.into(),
            scenario: String::new(),
            destination: item.destination.clone(),
            window: unix_secs,
            features: *f,
            knobs: item.before,
            outcomes: item.outcomes,
        })
        .collect()
}

fn changed(a: &Knobs, b: &Knobs) -> Vec<Knob> {
    Knob::ALL
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .collect()
}

/// Knobs by name (for JSON).
pub fn knobs_by_name(k: &Knobs) -> BTreeMap<String, f64> {
    (0..KNOB_COUNT)
        .map(|i| (Knob::ALL[i].name().to_string(), k.0[i]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dk(destination: &str) -> DestKey {
        DestKey::new("", destination)
    }
    use meshtune_policy::guardrails::Config;
    use std::time::Duration;

    #[test]
    fn recovered_push_times_map_to_this_process_clock() {
        use meshtune_sinks::istio_undo::AppliedAt;
        let (now, wall) = (Instant::now(), std::time::SystemTime::now());
        let secs = Duration::from_secs;
        assert_eq!(
            recovered_last_push(&AppliedAt::At(wall - secs(5)), wall, now),
            Some(now - secs(5))
        );
        assert_eq!(
            recovered_last_push(&AppliedAt::At(wall + secs(60)), wall, now),
            Some(now),
            "a time in the future counts as now"
        );
        for unknown in [
            AppliedAt::Missing { object: "x".into() },
            AppliedAt::Garbled {
                object: "x".into(),
                error: "e".into(),
            },
        ] {
            assert_eq!(recovered_last_push(&unknown, wall, now), Some(now));
        }
        // Long ago (before this machine booted): that long ago, or not representable (`None`);
        // either way no dwell holds.
        let epoch = recovered_last_push(&AppliedAt::At(std::time::UNIX_EPOCH), wall, now);
        assert!(
            epoch.is_none_or(|t| now.duration_since(t) > secs(50 * 365 * 86_400)),
            "{epoch:?}"
        );
    }

    fn window(requests: u64, ok: u64, latency_ms: u64) -> WindowStats {
        let mut w = WindowStats {
            duration_s: 10.0,
            requests,
            status_2xx: ok,
            status_5xx: requests - ok,
            ..WindowStats::default()
        };
        w.latency.record_n(latency_ms * 1000, requests);
        w
    }

    /// Enforce mode without step limits (the policy's values are reachable in one push).
    fn enforce(min_dwell: Duration) -> Config {
        Config {
            mode: Mode::Enforce,
            min_dwell,
            max_step_factor: 1e9,
            max_linear_step: 1.0,
            ..Config::default()
        }
    }

    fn sel(dest: &str, w: WindowStats) -> Vec<Selected> {
        select([(dest.to_string(), w)], Naming::Cluster, 1)
    }

    /// Defaults with the pending queue and max requests moved (within one step).
    fn proposal() -> Knobs {
        let mut k = Knobs::istio_defaults();
        k.set(Knob::Http1MaxPendingRequests, 64.0);
        k.set(Knob::RouteTimeoutMs, 900.0);
        k
    }

    #[test]
    fn select_groups_istio_clusters_by_host_and_drops_quiet_ones() {
        let snap = vec![
            (
                "outbound|80|v1|a.ns1.svc.cluster.local".to_string(),
                window(15, 15, 5),
            ),
            (
                "outbound|80|v2|a.ns1.svc.cluster.local".to_string(),
                window(10, 10, 5),
            ),
            ("BlackHoleCluster".to_string(), window(100, 100, 5)),
            (
                "outbound|80||b.ns2.svc.cluster.local".to_string(),
                window(5, 5, 5),
            ),
        ];
        let s = select(snap.clone(), Naming::IstioHost, 20);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].destination, "a.ns1.svc.cluster.local");
        // The key's namespace is the reporters' (here the default), not the host's.
        assert_eq!(s[0].namespace, "default");
        assert_eq!(s[0].key, dk("a.ns1.svc.cluster.local"));
        assert_eq!(s[0].clusters.len(), 2);
        assert_eq!(s[0].stats.requests, 25);
        // The same clusters reported from another namespace are another key: never merged.
        let mut two: Vec<ClusterWindow> = snap.iter().cloned().map(Into::into).collect();
        two.push(ClusterWindow::from((
            DestKey::new("other", "outbound|80|v1|a.ns1.svc.cluster.local"),
            window(30, 30, 5),
        )));
        let s2 = select(two, Naming::IstioHost, 20);
        assert_eq!(s2.len(), 2);
        assert_eq!(s2[0].stats.requests, 25);
        assert_eq!(s2[1].key, DestKey::new("other", "a.ns1.svc.cluster.local"));
        assert_eq!(
            (s2[1].namespace.as_str(), s2[1].stats.requests),
            ("other", 30)
        );
        // By cluster name each cluster stands alone: only the busy one qualifies.
        let c = select(snap, Naming::Cluster, 20);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].destination, "BlackHoleCluster");
    }

    #[test]
    fn min_requests_counts_measured_requests_not_estimates() {
        // 1,000 requests estimated from 15 samples: below a minimum of 20 measured requests.
        let mut sampled = window(1000, 1000, 5);
        sampled.unmeasured_requests = 985;
        assert!(sampled.is_estimated());
        assert_eq!(sampled.measured_requests(), 15);
        assert!(select([("a".to_string(), sampled.clone())], Naming::Cluster, 20).is_empty());
        // Two reporters' samples add up to qualify; the policy then sees the estimates.
        let mut other = sampled.clone();
        other.unmeasured_requests = 990;
        let s = select(
            [("a".to_string(), sampled), ("a".to_string(), other)],
            Naming::Cluster,
            25,
        );
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].stats.requests, s[0].stats.measured_requests()),
            (2000, 25)
        );
    }

    #[test]
    fn filter_wins_where_both_report_and_prometheus_fills_the_rest() {
        use crate::prometheus::SourcedWindow;
        use meshtune_core::availability::Field;
        let prom = |cluster: &str, n: u64, a: Availability| SourcedWindow {
            cluster: cluster.to_string(),
            stats: window(n, n, 5),
            availability: a,
        };
        let lacking = Availability::COMPLETE.without(Field::Inflight);
        let filter = vec![(
            "outbound|9080||a.ns.svc.cluster.local".to_string(),
            window(30, 30, 5),
        )];
        let s = select_sources(
            filter.clone(),
            vec![
                // Same host as the filter's cluster (other port form): the filter wins.
                prom("outbound|||a.ns.svc.cluster.local", 1000, lacking),
                prom("outbound|||b.ns.svc.cluster.local", 500, lacking),
                // No latency: not decidable, skipped.
                prom(
                    "outbound|||c.ns.svc.cluster.local",
                    500,
                    lacking.without(Field::Latency),
                ),
                // Too quiet.
                prom("outbound|||d.ns.svc.cluster.local", 3, lacking),
            ],
            Naming::IstioHost,
            20,
        );
        let names: Vec<_> = s
            .iter()
            .map(|x| (x.destination.as_str(), x.source))
            .collect();
        assert_eq!(
            names,
            vec![
                ("a.ns.svc.cluster.local", FeatureSource::Filter),
                ("b.ns.svc.cluster.local", FeatureSource::Prometheus)
            ]
        );
        assert_eq!(s[0].stats.requests, 30);
        assert!(s[0].availability.is_complete());
        assert_eq!(s[1].availability, lacking);
        assert_eq!(s[1].namespace, "ns");
        // The policy input of a Prometheus window uses the fallback, not a zero.
        let f = s[1].policy_features(&Context::initial(250.0));
        assert!(f.get("inflight_avg").unwrap() > 0.0);
        assert_eq!(s[1].stats.inflight_avg, 0.0);
        // Prometheus alone: every decidable destination.
        let only = select_sources(
            Vec::<ClusterWindow>::new(),
            vec![prom("outbound|||a.ns.svc.cluster.local", 1000, lacking)],
            Naming::IstioHost,
            20,
        );
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].source, FeatureSource::Prometheus);
    }

    #[test]
    fn slow_windows_cost_more_than_fast_ones() {
        let fast = outcomes(&window(100, 90, 5), 100.0);
        let slow = outcomes(&window(100, 90, 500), 100.0);
        assert!((fast.slo_goodput_rps - 9.0).abs() < 1e-9);
        assert_eq!(slow.slo_goodput_rps, 0.0);
        assert!(cost(&slow) > cost(&fast));
    }

    #[test]
    fn retries_are_capped_when_attempts_would_amplify() {
        let mut st = LoopState::new(Guardrails::new(enforce(Duration::ZERO)));
        // Istio defaults in force (2 retries); 56 % more attempts than requests: each attempt
        // fails with p = 0.4, so any retry would add more than 20 %.
        let mut w = window(1000, 940, 5);
        w.retries = 560;
        let mut p = proposal();
        p.set(Knob::RetryAttempts, 3.0);
        let c = decide(&sel("a", w.clone()), &[p], &mut st, Instant::now(), 250.0);
        assert_eq!(c.pushes.len(), 1);
        assert_eq!(c.pushes[0].knobs.get(Knob::RetryAttempts), 0.0);
        // A healthy window keeps the proposal's retries.
        let mut st = LoopState::new(Guardrails::new(enforce(Duration::ZERO)));
        let c = decide(
            &sel("a", window(1000, 1000, 5)),
            &[p],
            &mut st,
            Instant::now(),
            250.0,
        );
        assert_eq!(c.pushes[0].knobs.get(Knob::RetryAttempts), 3.0);
        assert!((w.attempt_failure_rate(&Knobs::istio_defaults()) - 0.4).abs() < 1e-6);
    }

    #[test]
    fn amplifying_retries_in_force_are_capped_without_waiting_out_the_dwell() {
        // A push 15 s ago: the 30 s dwell holds, the 10 s urgent dwell has passed.
        let t0 = Instant::now();
        let mut st = LoopState::new(Guardrails::new(Config {
            min_dwell: Duration::from_secs(30),
            ..enforce(Duration::from_secs(30))
        }));
        let mut p = proposal();
        p.set(Knob::RetryAttempts, 2.0);
        let c = decide(&sel("a", window(1000, 1000, 5)), &[p], &mut st, t0, 250.0);
        assert_eq!(c.pushes.len(), 1);
        let later = t0 + Duration::from_secs(15);
        // Healthy and the same proposal: nothing to do (and the dwell would hold anyway).
        let c = decide(
            &sel("a", window(1000, 1000, 5)),
            &[p],
            &mut st,
            later,
            250.0,
        );
        assert!(c.pushes.is_empty());
        // Half the attempts now fail and the 2 retries in force make ×1.56 attempts (under
        // 10 % of requests fail: the SLO alone would not be urgent): the cap goes out now.
        let mut w = window(1000, 950, 5);
        w.retries = 560;
        let c = decide(&sel("a", w), &[p], &mut st, later, 250.0);
        assert_eq!(c.pushes.len(), 1, "{:?}", c.items[0].action);
        assert_eq!(c.pushes[0].knobs.get(Knob::RetryAttempts), 0.0);
    }

    #[test]
    fn a_healthy_destination_keeps_a_limit_above_its_demand() {
        // 80 in flight at peak (one client), SLO met, nothing shed: a proposed limit of 20
        // would shed most of it, so the push carries 2 × 80.
        let mut w = window(1000, 1000, 5);
        w.inflight_max = 80;
        let mut p = proposal();
        p.set(Knob::Http2MaxRequests, 20.0);
        let mut st = LoopState::new(Guardrails::new(enforce(Duration::ZERO)));
        let c = decide(&sel("a", w.clone()), &[p], &mut st, Instant::now(), 250.0);
        assert_eq!(c.pushes[0].knobs.get(Knob::Http2MaxRequests), 160.0);
        // Missing the SLO (p99 over 250 ms) the brake is free.
        let mut slow = window(1000, 1000, 400);
        slow.inflight_max = 80;
        let mut st = LoopState::new(Guardrails::new(enforce(Duration::ZERO)));
        let c = decide(&sel("a", slow), &[p], &mut st, Instant::now(), 250.0);
        assert_eq!(c.pushes[0].knobs.get(Knob::Http2MaxRequests), 20.0);
    }

    #[test]
    fn outlier_detection_keeps_the_reach_to_eject_one_of_the_endpoints_seen() {
        let t0 = Instant::now();
        let mut st = LoopState::new(Guardrails::new(enforce(Duration::ZERO)));
        let mut p = proposal();
        p.set(Knob::MaxEjectionPercent, 40.0);
        let mut w = window(1000, 1000, 5);
        w.endpoints = 3;
        let c = decide(&sel("a", w), &[p], &mut st, t0, 250.0);
        assert_eq!(c.pushes[0].knobs.get(Knob::MaxEjectionPercent), 40.0);
        assert!(!c.items[0].urgent);
        // Missing the SLO, the model asks for 10 %, which ejects none of 3 hosts: the push
        // carries 34 % (100 × 1/3 ≤ 34), the least that still ejects one.
        p.set(Knob::MaxEjectionPercent, 10.0);
        let mut slow = window(1000, 1000, 400);
        slow.endpoints = 3;
        let c = decide(&sel("a", slow.clone()), &[p], &mut st, t0, 250.0);
        assert!(c.items[0].urgent);
        assert_eq!(c.pushes[0].knobs.get(Knob::MaxEjectionPercent), 34.0);
        // With one endpoint seen there is nothing to keep: the proposal stands.
        slow.endpoints = 1;
        p.set(Knob::MaxEjectionPercent, 20.0);
        let c = decide(&sel("a", slow), &[p], &mut st, t0, 250.0);
        assert_eq!(c.pushes[0].knobs.get(Knob::MaxEjectionPercent), 20.0);
    }

    #[test]
    fn enforce_pushes_and_knobs_beyond_bounds_are_clamped() {
        let cfg = Config::from_toml_str(
            "mode = \"enforce\"\n[namespaces.default]\n\"http.http1MaxPendingRequests\" = { max = 32 }\n",
            "t.toml",
        )
        .unwrap();
        let cfg = Config {
            max_step_factor: 1e9,
            ..cfg
        };
        let mut st = LoopState::new(Guardrails::new(cfg));
        let mut p = proposal();
        p.set(Knob::MaxConnections, 1e12);
        let now = Instant::now();
        let c = decide(&sel("a", window(100, 100, 5)), &[p], &mut st, now, 250.0);
        assert_eq!(c.items[0].action, DestAction::Push);
        assert_eq!(c.pushes.len(), 1);
        let k = c.pushes[0].knobs;
        assert_eq!(
            k.get(Knob::Http1MaxPendingRequests),
            32.0,
            "namespace bound"
        );
        assert!(k.get(Knob::MaxConnections) <= Knob::MaxConnections.spec().max);
        assert_eq!(c.pushes[0].previous, Some(Knobs::istio_defaults()));
        assert_eq!(st.knobs_in_force(&dk("a")), k);
        let hints = c.hints(&st, 5000);
        assert_eq!(hints.len(), 1);
        assert_eq!(hints[0].1.cluster, "a");
        assert_eq!(hints[0].1.timeout_ms, 900);
    }

    #[test]
    fn default_step_limit_moves_at_most_a_factor_per_push() {
        let cfg = Config {
            mode: Mode::Enforce,
            ..Config::default()
        };
        let mut st = LoopState::new(Guardrails::new(cfg));
        let now = Instant::now();
        let c = decide(
            &sel("a", window(100, 100, 5)),
            &[proposal()],
            &mut st,
            now,
            250.0,
        );
        // From Istio's "unlimited" there is no finite base: the first push sets the proposal.
        assert_eq!(c.pushes[0].knobs.get(Knob::Http1MaxPendingRequests), 64.0);
        // From a value in force, at most ÷2 per push (after the dwell).
        let mut p = proposal();
        p.set(Knob::Http1MaxPendingRequests, 4.0);
        let later = now + meshtune_policy::guardrails::DEFAULT_MIN_DWELL * 10;
        st.guardrails.forget("default/a");
        let c = decide(&sel("a", window(100, 100, 5)), &[p], &mut st, later, 250.0);
        assert_eq!(c.items[0].action, DestAction::Push, "{:?}", c.items[0]);
        assert_eq!(c.pushes[0].knobs.get(Knob::Http1MaxPendingRequests), 32.0);
        assert_eq!(
            st.changed_at.get(&dk("a")),
            Some(&later),
            "the change time is kept"
        );
    }

    #[test]
    fn missing_the_slo_is_urgent() {
        // The default judge: p99 against the latency target, or > 10 % errors not shed.
        let misses = |w: &WindowStats, slo_ms: f64| {
            misses_slo_judged(&outcomes(w, 250.0), w, slo_ms, SloJudge::default())
        };
        assert!(!misses(&window(100, 100, 5), 250.0));
        let failing = window(100, 50, 5);
        assert!(misses(&failing, 250.0), "{failing:?}");
        let slow = window(100, 100, 400);
        assert!(misses(&slow, 250.0), "{slow:?}");
        assert!(!misses(&slow, 500.0), "within a looser SLO");
        let mut shedding = window(100, 50, 5);
        shedding.flag_uo = 50;
        assert!(
            !misses(&shedding, 250.0),
            "shedding the excess, serving the rest in time: {shedding:?}"
        );
    }

    #[test]
    fn the_policy_slo_chooses_the_percentile_or_availability_judged() {
        // 85 requests at 20 ms, 15 at 400 ms: p50 and p80 fast, p90 and p99 slow.
        let mut w = window(85, 85, 20);
        w.requests = 100;
        w.status_2xx = 100;
        w.latency.record_n(400_000, 15);
        let o = outcomes(&w, 250.0);
        let judged = |judge| misses_slo_judged(&o, &w, 250.0, judge);
        assert!(judged(SloJudge::default()), "p99 400 ms > 250 ms");
        assert!(judged(SloJudge::Latency { quantile: 0.9 }));
        assert!(!judged(SloJudge::Latency { quantile: 0.8 }), "p80 is 20 ms");
        assert!(
            !judged(SloJudge::Availability { min_success: 0.99 }),
            "slow but every request succeeded"
        );
        // 3 % errors: misses 99 % availability, meets 95 %, and is below the latency
        // judge's error threshold.
        let mut failing = window(100, 97, 5);
        failing.flag_uo = 0;
        let f = outcomes(&failing, 250.0);
        assert!(misses_slo_judged(
            &f,
            &failing,
            250.0,
            SloJudge::Availability { min_success: 0.99 }
        ));
        assert!(!misses_slo_judged(
            &f,
            &failing,
            250.0,
            SloJudge::Availability { min_success: 0.95 }
        ));
        assert!(!misses_slo_judged(&f, &failing, 250.0, SloJudge::default()));
        // Sheds are not availability misses (the controller's answer to overload).
        let mut shedding = window(100, 50, 5);
        shedding.flag_uo = 50;
        let sh = outcomes(&shedding, 250.0);
        assert!(!misses_slo_judged(
            &sh,
            &shedding,
            250.0,
            SloJudge::Availability { min_success: 0.999 }
        ));
    }

    #[test]
    fn features_carry_the_destination_state() {
        let mut st = LoopState::new(Guardrails::new(enforce(Duration::from_secs(60))));
        let t0 = Instant::now();
        let mut selected = sel("a", window(100, 100, 5));
        selected[0].clients = 3;
        let f = features(&selected, &st, t0, 250.0);
        assert_eq!(f[0].get("clients"), Some(3.0));
        assert_eq!(f[0].get("slo_target_ms"), Some(250.0));
        assert_eq!(
            f[0].get("secs_since_change"),
            Some(meshtune_core::features::MAX_SECS_SINCE_CHANGE),
            "never changed"
        );
        assert_eq!(
            f[0].get("knob.http.http2MaxRequests"),
            Some(1.0),
            "unlimited"
        );
        let c = decide(&selected, &[proposal()], &mut st, t0, 250.0);
        assert_eq!(c.items[0].action, DestAction::Push);
        let f = features(&selected, &st, t0 + Duration::from_secs(7), 250.0);
        assert_eq!(f[0].get("secs_since_change"), Some(7.0));
        let pending = f[0].get("knob.http.http1MaxPendingRequests").unwrap();
        assert!(pending < 1.0 && pending > 0.0, "{pending}");
    }

    #[test]
    fn observe_mode_pushes_nothing_and_gives_no_hints() {
        let mut st = LoopState::new(Guardrails::new(Config::default()));
        let c = decide(
            &sel("a", window(100, 100, 5)),
            &[proposal()],
            &mut st,
            Instant::now(),
            250.0,
        );
        assert!(c.pushes.is_empty());
        assert_eq!(c.recommendations.len(), 1);
        assert_eq!(c.items[0].action, DestAction::Recommend);
        assert!(!c.items[0].changed.is_empty());
        assert!(st.in_force.is_empty());
        assert!(c.hints(&st, 5000).is_empty());
    }

    #[test]
    fn dwell_and_hysteresis_hold_further_pushes() {
        let cfg = Config {
            rollback_windows: 0,
            ..enforce(Duration::from_secs(60))
        };
        let mut st = LoopState::new(Guardrails::new(cfg));
        let t0 = Instant::now();
        let w = || sel("a", window(100, 100, 5));
        let c = decide(&w(), &[proposal()], &mut st, t0, 250.0);
        assert_eq!(c.pushes.len(), 1);
        // A different proposal 10 s later: dwell holds it.
        let mut p2 = proposal();
        p2.set(Knob::Http1MaxPendingRequests, 128.0);
        let c = decide(&w(), &[p2], &mut st, t0 + Duration::from_secs(10), 250.0);
        assert!(c.pushes.is_empty());
        assert!(matches!(
            c.items[0].action,
            DestAction::Hold(HoldReason::Dwell { .. })
        ));
        // After the dwell it is pushed.
        let c = decide(&w(), &[p2], &mut st, t0 + Duration::from_secs(61), 250.0);
        assert_eq!(c.pushes.len(), 1);
        // A change below the hysteresis (1 %) is no change.
        let mut p3 = p2;
        p3.set(Knob::RouteTimeoutMs, 905.0);
        let c = decide(&w(), &[p3], &mut st, t0 + Duration::from_secs(200), 250.0);
        assert!(c.pushes.is_empty());
        assert_eq!(c.items[0].action, DestAction::Hold(HoldReason::NoChange));
        assert_eq!(st.knobs_in_force(&dk("a")).get(Knob::RouteTimeoutMs), 900.0);
    }

    /// Enforcing, no dwell, a push watched for 5 windows, rolled back after 2 bad ones.
    fn watching_state() -> LoopState {
        LoopState::new(Guardrails::new(Config {
            rollback_consecutive: 2,
            rollback_windows: 5,
            ..enforce(Duration::ZERO)
        }))
    }

    #[test]
    fn regression_after_a_push_rolls_back_to_the_previous_knobs() {
        let mut st = watching_state();
        let t0 = Instant::now();
        let good = || sel("a", window(100, 100, 5));
        let bad = || sel("a", window(100, 40, 500));
        let c = decide(&good(), &[proposal()], &mut st, t0, 250.0);
        assert_eq!(c.pushes.len(), 1);
        let pushed = c.pushes[0].knobs;
        // One bad window: still watching, nothing pushed.
        let c = decide(&bad(), &[proposal()], &mut st, t0, 250.0);
        assert!(c.pushes.is_empty(), "{:?}", c.items[0].action);
        // Second bad window: rollback pushes the defaults back.
        let c = decide(&bad(), &[proposal()], &mut st, t0, 250.0);
        assert!(matches!(c.items[0].action, DestAction::Rollback { .. }));
        assert_eq!(c.pushes.len(), 1);
        assert_eq!(c.pushes[0].knobs, Knobs::istio_defaults());
        assert!(
            c.pushes[0].is_removal(),
            "back to before the first push: no object, not default-valued objects"
        );
        assert_eq!(c.pushes[0].previous, Some(pushed));
        assert_eq!(st.knobs_in_force(&dk("a")), Knobs::istio_defaults());
    }

    #[test]
    fn a_load_step_in_the_last_seconds_ends_the_watch_instead_of_rolling_back() {
        let t0 = Instant::now();
        let step = |st: &mut LoopState, w: WindowStats, recent: Option<f64>| {
            let mut s = sel("a", w);
            s[0].recent_rps = recent;
            decide(&s, &[proposal()], st, t0, 250.0)
        };
        // The window's mean moved by 12 % only, its last seconds by 2.5× and the step's
        // queueing spoils the objective.
        let stepped = || window(112, 60, 500);
        for (recent_before, recent_after, rolls_back) in
            [(Some(100.0), Some(250.0), false), (None, None, true)]
        {
            let mut st = watching_state();
            // 100 rps steady (1 s windows in these tests), pushed.
            let c = step(&mut st, window(100, 100, 5), recent_before);
            assert_eq!(c.pushes.len(), 1);
            let c = step(&mut st, stepped(), recent_after);
            assert!(c.pushes.is_empty(), "{:?}", c.items[0].action);
            // With the last seconds' load the load did it: the watch ends, no rollback.
            // Without it the mean alone cannot tell and the same windows roll back.
            let c = step(&mut st, stepped(), recent_after);
            assert_eq!(
                matches!(c.items[0].action, DestAction::Rollback { .. }),
                rolls_back,
                "{:?}",
                c.items[0].action
            );
        }
    }

    /// What a hand-written DestinationRule/VirtualService put in force.
    fn hand_tuned() -> meshtune_sinks::istio_foreign::ClusterInForce {
        let mut knobs = Knobs::istio_defaults();
        knobs.set(Knob::Http2MaxRequests, 50.0);
        knobs.set(Knob::Consecutive5xxErrors, 3.0);
        knobs.set(Knob::RouteTimeoutMs, 3_000.0);
        meshtune_sinks::istio_foreign::ClusterInForce {
            knobs,
            destination_rule: Some("DestinationRule ns/a".into()),
            virtual_service: None,
        }
    }

    #[test]
    fn the_cluster_objects_are_in_force_until_meshtune_pushes() {
        // Observe mode: features and the recommendation's before come from the object.
        let mut st = LoopState::new(Guardrails::new(Config {
            mode: Mode::Observe,
            ..enforce(Duration::ZERO)
        }));
        st.set_baseline(&dk("a"), hand_tuned());
        assert_eq!(st.knobs_source(&dk("a")), KnobsSource::Cluster);
        assert_eq!(st.knobs_source(&dk("b")), KnobsSource::IstioDefaults);
        let s = sel("a", window(100, 100, 5));
        let f = features(&s, &st, Instant::now(), 250.0);
        let norm = hand_tuned().knobs.normalised();
        for k in [Knob::Http2MaxRequests, Knob::RouteTimeoutMs] {
            let got = f[0].get(&format!("knob.{}", k.name())).unwrap();
            assert!((got - norm[k as usize] as f64).abs() < 1e-6, "{k:?}: {got}");
            assert!(got < 1.0, "{k:?}: not Istio's unlimited/none");
        }
        let c = decide(&s, &[proposal()], &mut st, Instant::now(), 250.0);
        assert_eq!(c.items[0].before, hand_tuned().knobs);
        assert_eq!(c.recommendations[0].previous, Some(hand_tuned().knobs));
        assert!(st.in_force.is_empty(), "observe pushes nothing");
        // Nothing configures the host any more: Istio's defaults.
        st.set_baseline(
            &dk("a"),
            meshtune_sinks::istio_foreign::ClusterInForce::defaults(),
        );
        assert_eq!(st.knobs_in_force(&dk("a")), Knobs::istio_defaults());
        assert_eq!(st.knobs_source(&dk("a")), KnobsSource::IstioDefaults);
        // A push wins over the object; a removal (Istio's defaults pushed) gives it back.
        st.set_baseline(&dk("a"), hand_tuned());
        st.in_force.insert(dk("a"), proposal());
        assert_eq!(st.knobs_in_force(&dk("a")), proposal());
        assert_eq!(st.knobs_source(&dk("a")), KnobsSource::Pushed);
        st.in_force.insert(dk("a"), Knobs::istio_defaults());
        assert_eq!(st.knobs_in_force(&dk("a")), hand_tuned().knobs);
        assert_eq!(st.pushed(&dk("a")), None, "no hints after a removal");
    }

    #[test]
    fn step_limits_start_from_the_hand_tuned_value() {
        // A ×2 step: from the object's 50, not from Istio's "unlimited" (no limit at all).
        let mut st = LoopState::new(Guardrails::new(Config {
            max_step_factor: 2.0,
            ..enforce(Duration::ZERO)
        }));
        st.set_baseline(&dk("a"), hand_tuned());
        let mut wants = hand_tuned().knobs;
        wants.set(Knob::Http2MaxRequests, 5.0);
        let c = decide(
            &sel("a", window(100, 100, 5)),
            &[wants],
            &mut st,
            Instant::now(),
            250.0,
        );
        assert!(matches!(c.items[0].action, DestAction::Push), "{c:?}");
        assert_eq!(c.pushes[0].knobs.get(Knob::Http2MaxRequests), 25.0);
        let mut fresh = LoopState::new(Guardrails::new(Config {
            max_step_factor: 2.0,
            ..enforce(Duration::ZERO)
        }));
        let c = decide(
            &sel("a", window(100, 100, 5)),
            &[wants],
            &mut fresh,
            Instant::now(),
            250.0,
        );
        assert_eq!(
            c.pushes[0].knobs.get(Knob::Http2MaxRequests),
            5.0,
            "from Istio's unlimited no step limit applies"
        );
    }

    #[test]
    fn rolling_back_to_the_cluster_objects_removes_meshtunes_and_a_failed_push_reverts_to_them() {
        let mut st = watching_state();
        st.set_baseline(&dk("a"), hand_tuned());
        let t0 = Instant::now();
        let c = decide(
            &sel("a", window(100, 100, 5)),
            &[proposal()],
            &mut st,
            t0,
            250.0,
        );
        assert_eq!(c.pushes.len(), 1);
        assert_eq!(c.pushes[0].previous, Some(hand_tuned().knobs));
        let bad = || sel("a", window(100, 40, 500));
        decide(&bad(), &[proposal()], &mut st, t0, 250.0);
        let c = decide(&bad(), &[proposal()], &mut st, t0, 250.0);
        assert!(matches!(c.items[0].action, DestAction::Rollback { .. }));
        assert_eq!(c.items[0].knobs, hand_tuned().knobs);
        assert!(
            c.pushes[0].is_removal(),
            "back to the cluster's own objects: meshtune removes its own, copies nothing"
        );
        assert_eq!(st.knobs_in_force(&dk("a")), hand_tuned().knobs);
        assert!(c.hints(&st, 1_000).is_empty());
        // The removal fails: meshtune's push stays in force.
        let failed: foldhash::HashSet<DestKey> = [dk("a")].into_iter().collect();
        settle(&mut st, &c.items, &failed);
        assert_eq!(st.knobs_in_force(&dk("a")), c.items[0].before);

        // A first push that fails: the object's knobs are in force again, nothing of
        // meshtune's is recorded as pushed.
        let mut st = LoopState::new(Guardrails::new(enforce(Duration::ZERO)));
        st.set_baseline(&dk("a"), hand_tuned());
        let c = decide(
            &sel("a", window(100, 100, 5)),
            &[proposal()],
            &mut st,
            t0,
            250.0,
        );
        assert_eq!(c.pushes.len(), 1);
        settle(&mut st, &c.items, &failed);
        assert!(st.in_force.is_empty());
        assert_eq!(st.knobs_in_force(&dk("a")), hand_tuned().knobs);
    }

    #[test]
    fn rollback_targets_pass_through_the_hard_bounds() {
        let mut st = watching_state();
        // Knobs in force from before the bounds (e.g. recovered from an object someone
        // edited): ejecting every host.
        let mut old = Knobs::istio_defaults();
        old.set(Knob::MaxEjectionPercent, 100.0);
        old.set(Knob::Consecutive5xxErrors, 1.0);
        st.in_force.insert(dk("a"), old);
        let t0 = Instant::now();
        let c = decide(
            &sel("a", window(100, 100, 5)),
            &[proposal()],
            &mut st,
            t0,
            250.0,
        );
        assert_eq!(c.pushes.len(), 1);
        assert!(c.pushes[0].knobs.get(Knob::MaxEjectionPercent) <= 50.0);
        let bad = || sel("a", window(100, 40, 500));
        decide(&bad(), &[proposal()], &mut st, t0, 250.0);
        let c = decide(&bad(), &[proposal()], &mut st, t0, 250.0);
        assert!(matches!(c.items[0].action, DestAction::Rollback { .. }));
        let restored = c.pushes[0].knobs;
        assert_eq!(
            restored.get(Knob::MaxEjectionPercent),
            50.0,
            "not back to 100 %"
        );
        assert_eq!(restored.get(Knob::Consecutive5xxErrors), 3.0);
        assert_eq!(st.knobs_in_force(&dk("a")), restored);
    }

    #[test]
    fn prune_forgets_destinations_no_longer_tracked() {
        let mut st = LoopState::new(Guardrails::new(enforce(Duration::ZERO)));
        let t0 = Instant::now();
        for d in ["a", "b"] {
            decide(
                &sel(d, window(100, 100, 5)),
                &[proposal()],
                &mut st,
                t0,
                250.0,
            );
        }
        assert_eq!((st.in_force.len(), st.guardrails.len()), (2, 2));
        let live: foldhash::HashSet<DestKey> = [dk("b")].into_iter().collect();
        assert_eq!(st.prune(&live), vec![dk("a")]);
        assert!(st.in_force.contains_key(&dk("b")) && !st.in_force.contains_key(&dk("a")));
        assert!(!st.changed_at.contains_key(&dk("a")));
        assert_eq!(st.guardrails.len(), 1);
        assert_eq!(
            st.guardrails.phase(&dk("a").to_string()),
            meshtune_policy::guardrails::Phase::Idle
        );
    }

    #[test]
    fn windows_from_before_a_push_do_not_roll_it_back() {
        let cfg = Config {
            rollback_consecutive: 2,
            rollback_windows: 5,
            ..enforce(Duration::from_secs(3600))
        };
        let mut st = LoopState::new(Guardrails::new(cfg)).with_settle(Duration::from_secs(10));
        let t0 = Instant::now();
        let bad = || sel("a", window(100, 40, 500));
        decide(
            &sel("a", window(100, 100, 5)),
            &[proposal()],
            &mut st,
            t0,
            250.0,
        );
        for s in 1..10 {
            let c = decide(
                &bad(),
                &[proposal()],
                &mut st,
                t0 + Duration::from_secs(s),
                250.0,
            );
            assert!(c.pushes.is_empty(), "t+{s}s: {:?}", c.items[0].action);
        }
        let late = t0 + Duration::from_secs(10);
        decide(&bad(), &[proposal()], &mut st, late, 250.0);
        let c = decide(&bad(), &[proposal()], &mut st, late, 250.0);
        assert!(
            matches!(c.items[0].action, DestAction::Rollback { .. }),
            "settled windows count: {:?}",
            c.items[0].action
        );
    }

    #[test]
    fn settle_reverts_failed_pushes_only_and_summary_counts_outcomes() {
        let mut st = LoopState::new(Guardrails::new(enforce(Duration::ZERO)));
        let mut selected = sel("a", window(100, 100, 5));
        selected.extend(sel("b", window(100, 100, 5)));
        let c = decide(
            &selected,
            &[proposal(), proposal()],
            &mut st,
            Instant::now(),
            250.0,
        );
        assert_eq!(c.pushes.len(), 2);
        let failed: foldhash::HashSet<DestKey> = [dk("b")].into_iter().collect();
        let outcomes = settle(&mut st, &c.items, &failed);
        assert_eq!(outcomes, vec![DestOutcome::Pushed, DestOutcome::PushFailed]);
        assert_eq!(st.knobs_in_force(&dk("a")), c.items[0].knobs);
        assert!(!st.in_force.contains_key(&dk("b")), "failed push reverted");
        let summary = CycleSummary::of(&c.items, &outcomes, "v7");
        assert_eq!(
            summary,
            CycleSummary {
                destinations: 2,
                pushed: 2,
                push_failures: 1,
                model_version: "v7".into(),
                ..CycleSummary::default()
            }
        );
        assert_eq!(DestOutcome::PushFailed.label(), "push_failed");
        let features = features(
            &selected,
            &LoopState::new(Guardrails::new(enforce(Duration::from_secs(60)))),
            Instant::now(),
            250.0,
        );
        let rows = dataset_rows(&features, &c.items, 1234);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].destination, "b");
        assert_eq!(rows[1].window, 1234);
        assert_eq!(
            rows[1].knobs,
            Knobs::istio_defaults(),
            "knobs while measured"
        );
        assert_eq!(rows[0].features, features[0]);
    }

    #[test]
    fn failed_push_is_reverted() {
        let mut st = LoopState::new(Guardrails::new(enforce(Duration::from_secs(60))));
        let c = decide(
            &sel("a", window(100, 100, 5)),
            &[proposal()],
            &mut st,
            Instant::now(),
            250.0,
        );
        revert_push(&mut st, &c.items[0]);
        assert!(st.in_force.is_empty());
        // Not held by dwell: the push is tried again next cycle.
        let c = decide(
            &sel("a", window(100, 100, 5)),
            &[proposal()],
            &mut st,
            Instant::now(),
            250.0,
        );
        assert_eq!(c.pushes.len(), 1);
    }
}
