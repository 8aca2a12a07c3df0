//! The closed loop's I/O edge: every interval take the controller's snapshot, run one batched
//! inference with the model in service, apply [`crate::decision::decide`], push to the sinks
//! (enforce) or the log sink (observe), publish hints, status and metrics, and record dataset
//! rows. Also builds the sinks and the model store from the CLI's settings and serves it all.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtune_core::knobs::Knobs;
use meshtune_core::{DestKey, Features};
use meshtune_policy::guardrails::{self, Guardrails, Mode};
use meshtune_policy::source::{ModelSource, SourceError};
use meshtune_policy::{ModelStore, OnnxPolicy};
use meshtune_sinks::envoy::EnvoyCluster;
use meshtune_sinks::sink::Outcome;
use meshtune_sinks::{EnvoyDestination, EnvoyFileConfig, EnvoyFileSink, EnvoyRoute, Sink};
use tokio::net::TcpListener;

use crate::api::{LastDecisionJson, ModelJson};
pub use crate::decision::CycleSummary;
use crate::decision::{self, knobs_by_name, DestAction, DestOutcome, LoopState, Naming};
use crate::gate::{NamespaceGate, StaticGate};
use crate::hints::StaticHints;
use crate::metrics::{ModeLabels, PushLabels};
use crate::recorder::{Recorder, RecorderError};
use crate::server::{Controller, ControllerError, DestinationPolicyStatus};

/// Default time between decision cycles.
pub const DEFAULT_DECISION_INTERVAL: Duration = Duration::from_secs(5);
/// Default poll interval of the `--model` file.
pub const DEFAULT_MODEL_POLL: Duration = meshtune_policy::watch::DEFAULT_POLL_INTERVAL;

/// Settings of the decision loop.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Time between cycles.
    pub interval: Duration,
    /// Minimum requests in a destination's window before deciding for it.
    pub min_requests: u64,
    /// Latency SLO (ms) for goodput, the reward and the rollback objective.
    pub slo_ms: f64,
    /// How reported cluster names map to sink destinations.
    pub naming: Naming,
    /// TTL of the hints given to the filters (keep it above the interval).
    pub hint_ttl_ms: u32,
    /// Guardrails (mode, bounds, hysteresis, dwell, rollback).
    pub guardrails: guardrails::Config,
    /// How long after a change windows still hold traffic from before it (the sliding
    /// window's length): the rollback watch ignores them.
    pub settle: Duration,
    /// Which reporter namespaces may be tuned ([`crate::gate`]); others are dropped before
    /// inference and counted.
    pub gate: Arc<dyn NamespaceGate>,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_DECISION_INTERVAL,
            min_requests: decision::DEFAULT_MIN_REQUESTS,
            slo_ms: decision::DEFAULT_SLO_MS,
            naming: Naming::Cluster,
            hint_ttl_ms: default_hint_ttl(DEFAULT_DECISION_INTERVAL),
            guardrails: guardrails::Config::default(),
            settle: Duration::from_secs(crate::config::DEFAULT_WINDOW_SECS),
            gate: Arc::new(StaticGate::All),
        }
    }
}

/// A hint TTL that outlives three cycles (at least the default TTL).
pub fn default_hint_ttl(interval: Duration) -> u32 {
    let three = interval.as_millis().saturating_mul(3).min(u32::MAX as u128) as u32;
    three.max(meshtune_proto::DEFAULT_HINT_TTL_MS)
}

/// Errors setting up the loop (each names its input).
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("{flag}: {error}")]
    ModelSource {
        flag: &'static str,
        /// Boxed: it carries the model's error, and `LoopError` is returned on every path.
        error: Box<SourceError>,
    },
    #[error("--guardrails: {0}")]
    Guardrails(#[from] guardrails::GuardrailError),
    #[error("--sink envoy-file: {0}")]
    EnvoySink(meshtune_sinks::SinkError),
    #[error("--record: {0}")]
    Recorder(#[from] RecorderError),
    #[error("{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error("kubernetes client (for {what}): {reason}")]
    Kube { what: &'static str, reason: String },
    #[error("binding {flag} {addr}: {source}")]
    Bind {
        flag: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("writing the listening addresses: {0}")]
    Announce(std::io::Error),
    #[error(transparent)]
    Controller(#[from] ControllerError),
}

/// Which sinks receive enforce-mode decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkKind {
    /// Diff lines on stdout.
    Log,
    /// CDS (and RDS) files for a plain Envoy.
    EnvoyFile,
    /// DestinationRule / VirtualService via server-side apply.
    Istio,
}

/// Settings of the Envoy file sink.
#[derive(Debug, Clone, Default)]
pub struct EnvoyFileArgs {
    pub cds: Option<PathBuf>,
    pub rds: Option<PathBuf>,
    pub route_config: Option<String>,
    /// `NAME=HOST:PORT[,HOST:PORT...]` (NAME is the Envoy cluster name the filter reports).
    pub destinations: Vec<String>,
}

/// Parses `NAME=HOST:PORT[,HOST:PORT...]` (one or more endpoints of the cluster).
pub fn parse_envoy_destination(s: &str) -> Result<(String, Vec<String>), String> {
    let bad = || format!("`{s}`: expected NAME=HOST:PORT[,HOST:PORT...]");
    let (name, addrs) = s.split_once('=').ok_or_else(bad)?;
    let endpoints: Vec<String> = addrs.split(',').map(str::to_string).collect();
    let port_ok = |a: &str| {
        a.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
    };
    if name.is_empty() || !endpoints.iter().all(|a| port_ok(a)) {
        return Err(bad());
    }
    Ok((name.to_string(), endpoints))
}

/// The Envoy file sink's configuration from its flags. Routes (RDS) are written when an RDS
/// path is given: the first destination gets the catch-all virtual host (`*`), the others a
/// virtual host for their own name.
pub fn envoy_file_config(a: &EnvoyFileArgs) -> Result<EnvoyFileConfig, LoopError> {
    let cds = a.cds.clone().ok_or(LoopError::Flag {
        flag: "--envoy-cds",
        reason: "required with --sink envoy-file".into(),
    })?;
    if a.destinations.is_empty() {
        return Err(LoopError::Flag {
            flag: "--envoy-destination",
            reason: "at least one NAME=HOST:PORT is required with --sink envoy-file".into(),
        });
    }
    let mut dests = Vec::new();
    for (i, d) in a.destinations.iter().enumerate() {
        let (name, endpoints) = parse_envoy_destination(d).map_err(|reason| LoopError::Flag {
            flag: "--envoy-destination",
            reason,
        })?;
        dests.push(EnvoyDestination {
            destination: name.clone(),
            cluster: EnvoyCluster::new(name.clone(), endpoints),
            route: a.rds.as_ref().map(|_| EnvoyRoute {
                virtual_host: name.clone(),
                domains: if i == 0 {
                    vec!["*".into()]
                } else {
                    vec![name.clone()]
                },
                prefix: "/".into(),
            }),
        });
    }
    let mut cfg = EnvoyFileConfig::new(cds, dests);
    cfg.rds_path = a.rds.clone();
    if let Some(n) = &a.route_config {
        cfg.route_config_name = n.clone();
    }
    Ok(cfg)
}

/// Builds the sinks; the Envoy file sink writes its files (Istio defaults) at once so Envoy
/// has its clusters before the first decision.
pub async fn build_sinks(
    kinds: &[SinkKind],
    envoy: &EnvoyFileArgs,
    co_manage: Option<Arc<dyn meshtune_sinks::istio_sink::CoManageAllowlist>>,
    shadow: Option<Arc<dyn meshtune_sinks::istio_sink::ShadowCheck>>,
) -> Result<Vec<Arc<dyn Sink>>, LoopError> {
    let mut out: Vec<Arc<dyn Sink>> = Vec::new();
    for k in kinds {
        match k {
            SinkKind::Log => out.push(Arc::new(meshtune_sinks::LogSink::stdout())),
            SinkKind::EnvoyFile => {
                let sink =
                    EnvoyFileSink::new(envoy_file_config(envoy)?).map_err(LoopError::EnvoySink)?;
                sink.write_current().map_err(LoopError::EnvoySink)?;
                out.push(Arc::new(sink));
            }
            SinkKind::Istio => {
                let client = kube_client("--sink istio").await?;
                let mut sink = meshtune_sinks::IstioSink::new(
                    client,
                    meshtune_sinks::IstioSinkConfig::default(),
                );
                if let Some(allow) = &co_manage {
                    sink = sink.with_co_manage(allow.clone());
                }
                if let Some(check) = &shadow {
                    sink = sink.with_shadow_check(check.clone());
                }
                out.push(Arc::new(sink));
            }
        }
    }
    Ok(out)
}

/// A kube client from the environment (in-cluster or kubeconfig).
pub async fn kube_client(what: &'static str) -> Result<kube::Client, LoopError> {
    kube::Client::try_default()
        .await
        .map_err(|e| LoopError::Kube {
            what,
            reason: e.to_string(),
        })
}

/// The decision loop.
pub struct PolicyLoop {
    controller: Arc<Controller>,
    store: Option<Arc<ModelStore>>,
    sinks: Vec<Arc<dyn Sink>>,
    log_sink: Arc<dyn Sink>,
    state: tokio::sync::Mutex<LoopState>,
    recorder: Option<std::sync::Mutex<Recorder>>,
    hints: Arc<StaticHints>,
    config: LoopConfig,
    cycles: AtomicU64,
    /// Pushes and rollbacks of the cycle running now, between decide and settle: a panic in
    /// between reverts them like failed pushes (the sinks may not have applied them).
    pushing: std::sync::Mutex<Vec<decision::DestDecision>>,
    /// Feature sources (unset: the filters' reports only).
    sources: std::sync::OnceLock<Sources>,
    /// Leader election (unset: this replica always leads).
    leadership: std::sync::OnceLock<crate::leader::Leadership>,
    /// Recovery and removal of meshtune's Istio objects (set with the Istio sink).
    lifecycle: std::sync::OnceLock<crate::lifecycle::Lifecycle>,
    /// Per-namespace policies (`MeshtunePolicy` watch; unset: `--mode` everywhere).
    policies: std::sync::OnceLock<Arc<crate::policies::PolicyStore>>,
    /// The cluster's own DestinationRules/VirtualServices (unset: nothing pushed = Istio's
    /// defaults).
    cluster_knobs: std::sync::OnceLock<Arc<crate::cluster_knobs::ClusterKnobs>>,
    /// Policy status and Events (set with the policy watch).
    status_writer: std::sync::OnceLock<Arc<crate::review::StatusWriter>>,
    /// Recommendations, applies and refusals per namespace (what the status says).
    reviews: tokio::sync::Mutex<crate::review::Reviews>,
    /// When each namespace was last decided for (per-namespace decision interval).
    last_decided: std::sync::Mutex<foldhash::HashMap<String, Instant>>,
    /// Keys with `meshtune_knob` series (every key decided: its knobs in force), so pruning
    /// removes the series of keys the loop state never held (observe mode, Istio's defaults).
    knob_series: std::sync::Mutex<foldhash::HashSet<DestKey>>,
    /// Why a push was refused or failed, per key, for the cycle running now.
    push_errors: std::sync::Mutex<foldhash::HashMap<DestKey, String>>,
}

/// The decision loop's feature sources (`--source`).
#[derive(Debug, Clone)]
pub struct Sources {
    /// Use the filters' reports (they win where both report).
    pub filter: bool,
    /// Read windows from Prometheus, of this length.
    pub prometheus: Option<(crate::prometheus::PromSource, u64)>,
}

impl std::fmt::Debug for PolicyLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyLoop")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Observe => "observe",
        Mode::Enforce => "enforce",
    }
}

impl PolicyLoop {
    /// A loop over `controller`. `model` is the first model (`None`: no decisions, logged);
    /// its store reports into the controller's metrics. When the controller has no hints file
    /// the loop's hints become its hint source.
    pub fn new(
        controller: Arc<Controller>,
        model: Option<OnnxPolicy>,
        sinks: Vec<Arc<dyn Sink>>,
        log_sink: Arc<dyn Sink>,
        recorder: Option<Recorder>,
        config: LoopConfig,
    ) -> Arc<Self> {
        let store = model.map(|m| {
            Arc::new(ModelStore::with_metrics(
                m,
                controller.metrics().store.clone(),
            ))
        });
        if store.is_none() {
            tracing::warn!(
                "no policy model: models/default.onnx was not embedded at build time and no \
                 --model/--model-configmap was given; the controller runs without deciding"
            );
        }
        let hints = Arc::new(StaticHints::default());
        if controller.file_hints().is_none() {
            controller.set_hint_source(hints.clone());
        }
        let hysteresis = config.guardrails.hysteresis;
        let me = Arc::new(Self {
            state: tokio::sync::Mutex::new(
                LoopState::new(Guardrails::new(config.guardrails.clone()))
                    .with_settle(config.settle),
            ),
            controller,
            store,
            sinks,
            log_sink,
            recorder: recorder.map(std::sync::Mutex::new),
            hints,
            config,
            cycles: AtomicU64::new(0),
            pushing: std::sync::Mutex::new(Vec::new()),
            sources: std::sync::OnceLock::new(),
            leadership: std::sync::OnceLock::new(),
            lifecycle: std::sync::OnceLock::new(),
            policies: std::sync::OnceLock::new(),
            cluster_knobs: std::sync::OnceLock::new(),
            status_writer: std::sync::OnceLock::new(),
            reviews: tokio::sync::Mutex::new(crate::review::Reviews::new(hysteresis)),
            last_decided: Default::default(),
            knob_series: Default::default(),
            push_errors: Default::default(),
        });
        me.publish_model();
        me
    }

    /// Sets the feature sources (once, before the loop runs; later calls are ignored).
    pub fn set_sources(&self, sources: Sources) {
        let _ = self.sources.set(sources);
    }

    /// Sets the leader election (once, before the loop runs): the loop decides and writes only
    /// while this replica leads.
    pub fn set_leadership(&self, l: crate::leader::Leadership) {
        let _ = self.leadership.set(l);
    }

    /// Sets the Kubernetes lifecycle (once, before the loop runs): on becoming leader the loop
    /// recovers the knobs in force from meshtune's objects (enforce) or removes them (observe).
    pub fn set_lifecycle(&self, l: crate::lifecycle::Lifecycle) {
        let _ = self.lifecycle.set(l);
    }

    /// Sets the per-namespace policies (once, before the loop runs): each namespace's mode,
    /// SLO, bounds, exclusions, co-manage list, interval and approvals come from its
    /// `MeshtunePolicy`; `--mode` becomes the mode of namespaces without one. The guardrails
    /// then run in enforce mode and the namespace's mode turns pushes into recommendations.
    pub fn set_policies(
        &self,
        store: Arc<crate::policies::PolicyStore>,
        writer: Option<Arc<crate::review::StatusWriter>>,
    ) {
        if self.policies.set(store).is_ok() {
            if let Some(w) = writer {
                let _ = self.status_writer.set(w);
            }
            if let Ok(mut state) = self.state.try_lock() {
                *state = self.fresh_state();
            }
        }
    }

    /// Sets the cluster's own Istio objects (once, before the loop runs): for destinations
    /// meshtune has not pushed to, the knobs in force are what they set
    /// ([`crate::cluster_knobs`]), and the loop waits for their first list.
    pub fn set_cluster_knobs(&self, store: Arc<crate::cluster_knobs::ClusterKnobs>) {
        let _ = self.cluster_knobs.set(store);
    }

    /// A decision state with nothing in force: the guardrails in the configured mode, or in
    /// enforce mode when per-namespace policies decide the mode.
    fn fresh_state(&self) -> LoopState {
        let mut g = self.config.guardrails.clone();
        if self.policies.get().is_some() {
            g.mode = Mode::Enforce;
        }
        LoopState::new(Guardrails::new(g)).with_settle(self.config.settle)
    }

    /// The recommendations, applies and refusals recorded so far.
    pub async fn reviews(&self) -> crate::review::Reviews {
        self.reviews.lock().await.clone()
    }

    /// Whether this replica leads (always, without an election).
    pub fn is_leader(&self) -> bool {
        self.leadership
            .get()
            .is_none_or(crate::leader::Leadership::is_leader)
    }

    /// Runs when this replica starts leading, before its first cycle. The decision state
    /// starts afresh (whatever it knew as a follower or an earlier leader may be stale); with
    /// the Kubernetes lifecycle set, enforce mode then puts the knobs recovered from meshtune's
    /// objects in force (so no default push happens and hints come from them), with the time
    /// they were applied as each destination's last push (so the guardrails' dwell holds
    /// across the restart; an unknown time counts as now, [`decision::recovered_last_push`]),
    /// and observe mode
    /// removes what meshtune wrote. Returns the number of destinations recovered or objects
    /// undone. On a Kubernetes error (logged) [`Self::run`] decides nothing and calls this
    /// again every interval until it succeeds: deciding without the knobs in force would push
    /// from Istio's defaults.
    pub async fn on_leading(&self) -> Result<usize, meshtune_sinks::istio_undo::UndoError> {
        let mut state = self.state.lock().await;
        *state = self.fresh_state();
        let Some(lc) = self.lifecycle.get() else {
            return Ok(0);
        };
        // With per-namespace policies, observe namespaces are cleaned up by the cycle
        // (`observe_cleanup`) once the policies are known.
        if state.mode() == Mode::Observe && self.policies.get().is_none() {
            return match lc.remove_all(false).await {
                Ok(done) => {
                    let metrics = &self.controller.metrics().leader;
                    for r in &done {
                        tracing::info!(object = %r, "observe mode: undoing what meshtune wrote");
                        let labels = crate::leader::UndoLabels {
                            action: match r.action {
                                meshtune_sinks::istio_undo::UndoAction::Delete => "delete",
                                meshtune_sinks::istio_undo::UndoAction::Restore => "restore",
                            }
                            .into(),
                            result: if r.error().is_some() { "failed" } else { "ok" }.into(),
                        };
                        metrics.undone.get_or_create(&labels).inc();
                    }
                    Ok(done.len())
                }
                Err(e) => {
                    tracing::error!(error = %e, "observe mode: removing meshtune's objects failed; retrying next interval");
                    Err(e)
                }
            };
        }
        match lc.recover().await {
            Ok(recovered) => {
                let (now, now_wall) = (Instant::now(), std::time::SystemTime::now());
                for r in &recovered {
                    // Objects live in the reporters' namespace (client-side, exportTo "."):
                    // the object's namespace and destination are the decision key.
                    let key = DestKey::new(r.namespace.as_str(), r.destination.as_str());
                    self.controller.metrics().set_knobs(&key, &r.knobs);
                    // The dwell continues from the last push recorded on the objects.
                    if let Some(at) = decision::recovered_last_push(&r.applied_at, now_wall, now) {
                        state.guardrails.record_recovered(&key.to_string(), at);
                        state.changed_at.insert(key.clone(), at);
                    }
                    state.in_force.insert(key, r.knobs);
                    if matches!(r.applied_at, meshtune_sinks::istio_undo::AppliedAt::At(_)) {
                        tracing::info!(destination = %r.destination, namespace = %r.namespace,
                            objects = ?r.objects, applied_at = %r.applied_at,
                            "recovered the knobs in force");
                    } else {
                        tracing::warn!(destination = %r.destination, namespace = %r.namespace,
                            objects = ?r.objects, problem = %r.applied_at,
                            "recovered the knobs in force, but not when they were applied: \
                             counting this recovery as the last push (the dwell starts now)");
                    }
                }
                self.controller
                    .metrics()
                    .leader
                    .recovered
                    .set(recovered.len() as i64);
                Ok(recovered.len())
            }
            Err(e) => {
                tracing::error!(error = %e, "recovering the knobs in force failed; no decisions until it succeeds (retried every interval)");
                Err(e)
            }
        }
    }

    /// The select stage: the filters' snapshot and/or Prometheus windows, merged
    /// ([`decision::select_sources`]). A Prometheus error is logged and counted; the cycle
    /// goes on with the filter's windows.
    /// The filters' windows alone, saying why when none qualifies (e.g. a window too short for
    /// the report interval).
    fn select_filter(&self, naming: Naming, min: u64) -> Vec<decision::Selected> {
        let snapshot = self.controller.snapshot();
        let reported = snapshot.len();
        let busiest = snapshot.iter().map(|c| c.stats.requests).max().unwrap_or(0);
        let selected = decision::select(snapshot, naming, min);
        if selected.is_empty() && reported > 0 {
            tracing::info!(
                reported,
                busiest_window_requests = busiest,
                min_requests = min,
                "no destination has --min-requests requests in its window (or none maps to a \
                 destination): nothing to decide this cycle"
            );
        }
        selected
    }

    /// The select stage followed by the namespace gate: keys whose reporter namespace the gate
    /// refuses are dropped (counted, logged at debug).
    async fn select(&self) -> Vec<decision::Selected> {
        let mut selected = self.select_sources().await;
        let before = selected.len();
        selected.retain(|s| {
            let ok = self.config.gate.allows(&s.key.namespace);
            if !ok {
                tracing::debug!(key = %s.key, "namespace not enabled for tuning (--tune-namespaces): not decided");
            }
            ok
        });
        let refused = (before - selected.len()) as u64;
        if refused > 0 {
            self.controller
                .metrics()
                .tuning_refused
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: "namespace_not_enabled".into(),
                })
                .inc_by(refused);
        }
        selected
    }

    async fn select_sources(&self) -> Vec<decision::Selected> {
        let (naming, min) = (self.config.naming, self.config.min_requests);
        let Some(sources) = self.sources.get() else {
            return self.select_filter(naming, min);
        };
        let filter = if sources.filter {
            self.controller.snapshot()
        } else {
            Vec::new()
        };
        let mut prom = Vec::new();
        if let Some((p, window_secs)) = &sources.prometheus {
            let metrics = self.controller.metrics();
            let started = Instant::now();
            let got = p
                .windows_at(crate::prometheus::now_unix_secs(), *window_secs)
                .await;
            metrics
                .prometheus_fetch_seconds
                .observe(started.elapsed().as_secs_f64());
            let result = match got {
                Ok(w) => {
                    prom = w;
                    "ok"
                }
                Err(e) => {
                    tracing::warn!(error = %e, "prometheus source failed; this cycle uses the filter's windows only");
                    "error"
                }
            };
            metrics
                .prometheus_fetches
                .get_or_create(&crate::metrics::ResultLabels {
                    result: result.into(),
                })
                .inc();
        }
        decision::select_sources(filter, prom, naming, min)
    }

    /// The model store (`None` when running without a model).
    pub fn store(&self) -> Option<&Arc<ModelStore>> {
        self.store.as_ref()
    }

    /// The controller the loop decides for.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// The hints the loop serves.
    pub fn hints(&self) -> &Arc<StaticHints> {
        &self.hints
    }

    /// Knobs in force for `key`, if pushed.
    pub async fn knobs_in_force(&self, key: &DestKey) -> Option<Knobs> {
        self.state.lock().await.in_force.get(key).copied()
    }

    fn publish_model(&self) {
        let m = self.store.as_ref().map(|s| s.current());
        self.controller.set_model_status(ModelJson {
            version: m.as_ref().map(|m| m.model_version().to_string()),
            source: m.as_ref().map(|m| m.origin().to_string()),
            digest: m.as_ref().map(|m| format!("{:016x}", m.digest())),
            mode: Some(mode_name(self.config.guardrails.mode).to_string()),
            cycles: self.cycles.load(Ordering::Relaxed),
        });
    }

    /// Runs one decision cycle now, stage by stage: select, infer, guard (the pure
    /// [`decide`]), push, revert failed pushes ([`decision::settle`]), publish status and
    /// hints, record. `None` when there is no model.
    pub async fn cycle(&self) -> Option<CycleSummary> {
        let store = self.store.as_ref()?;
        if self.policies.get().is_some_and(|p| !p.synced()) {
            tracing::info!(
                "waiting for the first list of MeshtunePolicy objects: nothing decided yet"
            );
            return Some(CycleSummary::default());
        }
        if self.cluster_knobs.get().is_some_and(|c| !c.synced()) {
            tracing::info!(
                "waiting for the first list of DestinationRules and VirtualServices (the knobs in \
                 force of destinations meshtune has not pushed to): nothing decided yet"
            );
            return Some(CycleSummary::default());
        }
        let selected = self.select().await;
        self.count_sources(&selected);
        if self.controller.take_removed_destinations() > 0 {
            self.prune(&selected).await;
        }
        let now = Instant::now();
        let (selected, skipped) = self.apply_policies(selected, now).await;
        let policy = store.current();
        let mut state = self.state.lock().await;
        self.sync_namespaces(&mut state).await;
        self.refresh_baselines(&mut state, &selected);
        let params = self.ns_params(&selected).await;
        // Index by key once: a search per destination would make the cycle quadratic.
        let index: foldhash::HashMap<&DestKey, usize> = selected
            .iter()
            .enumerate()
            .map(|(i, s)| (&s.key, i))
            .collect();
        let param_of = |s: &decision::Selected| {
            index
                .get(&s.key)
                .map(|&i| params[i].clone())
                .unwrap_or_else(|| self.default_params())
        };
        let features = decision::features_with(&selected, &state, now, &|s| param_of(s).slo_ms);
        let Some(proposed) = self.infer(&policy, &features) else {
            return Some(CycleSummary {
                destinations: selected.len(),
                model_version: policy.model_version().to_string(),
                ..CycleSummary::default()
            });
        };
        self.controller.metrics().decision_cycles.inc();
        self.cycles.fetch_add(1, Ordering::Relaxed);
        let now_ms = crate::server::Clock::now_unix_ms(&crate::server::SystemClock);
        let cycle = decision::decide_with(&selected, &proposed, &mut state, now, &param_of);
        *self.pushing.lock().unwrap_or_else(|e| e.into_inner()) = cycle
            .items
            .iter()
            .filter(|i| matches!(i.action, DestAction::Push | DestAction::Rollback { .. }))
            .cloned()
            .collect();
        let failed = self.push(&cycle).await;
        let outcomes = decision::settle(&mut state, &cycle.items, &failed);
        self.pushing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.publish(&state, &cycle, &outcomes, &params, now_ms);
        // Hints last: once a filter sees them, status and metrics already match. Destinations
        // of namespaces waiting for their own decision interval keep theirs.
        let mut hints = cycle.hints(&state, self.config.hint_ttl_ms);
        if state.mode() == Mode::Enforce {
            for s in &skipped {
                if let Some(k) = state.pushed(&s.key) {
                    hints.extend(s.clusters.iter().map(|c| {
                        (
                            s.key.with_cluster(c.as_str()),
                            meshtune_sinks::hint::hint(c, k, self.config.hint_ttl_ms),
                        )
                    }));
                }
            }
        }
        self.hints.replace(hints);
        drop(state);
        self.review(
            &cycle,
            &outcomes,
            &features,
            &params,
            policy.model_version(),
            now_ms,
        )
        .await;
        self.record(&features, &cycle, now_ms);
        self.publish_model();
        Some(CycleSummary::of(
            &cycle.items,
            &outcomes,
            policy.model_version(),
        ))
    }

    /// Each selected key's baseline from the cluster's own objects (with the watch set): what
    /// is in force where meshtune has pushed nothing. A change is logged.
    fn refresh_baselines(&self, state: &mut LoopState, selected: &[decision::Selected]) {
        let Some(store) = self.cluster_knobs.get() else {
            return;
        };
        let index = store.index();
        for s in selected {
            let c = index.resolve(&s.namespace, &s.destination);
            let old = state.baseline.get(&s.key);
            // (A key no object configures has no baseline entry: nothing to log.)
            if old != Some(&c) && (old.is_some() || c.from_objects()) {
                tracing::info!(key = %s.key, objects = ?c.objects(),
                    changed = ?old.map(|o| changed_knob_names(&o.knobs, &c.knobs)),
                    "knobs in force from the cluster's own Istio objects");
            }
            state.set_baseline(&s.key, c);
        }
    }

    /// The parameters of a namespace without a policy (`--slo-ms`, `--mode`).
    fn default_params(&self) -> decision::NsParams {
        decision::NsParams {
            slo_ms: self.config.slo_ms,
            judge: decision::SloJudge::default(),
            mode: match self.config.guardrails.mode {
                Mode::Observe => decision::NsMode::Observe,
                Mode::Enforce => decision::NsMode::Enforce,
            },
            approved: None,
        }
    }

    /// Each selected destination's namespace parameters: mode and SLO from its policy, and in
    /// recommend mode the approved recommendation to apply ([`crate::review::Reviews::approval`];
    /// a stale approval is refused there).
    async fn ns_params(&self, selected: &[decision::Selected]) -> Vec<decision::NsParams> {
        let Some(policies) = self.policies.get() else {
            return selected.iter().map(|_| self.default_params()).collect();
        };
        let now_ms = crate::server::Clock::now_unix_ms(&crate::server::SystemClock);
        let mut reviews = self.reviews.lock().await;
        selected
            .iter()
            .map(|s| {
                let p = policies.effective(&s.namespace);
                let mode = crate::policies::ns_mode(p.mode);
                let approved = if mode == decision::NsMode::Recommend {
                    match reviews.approval(&s.namespace, &s.destination, p.approved(&s.destination), now_ms) {
                        crate::review::Approval::Apply { id, knobs } => {
                            tracing::info!(key = %s.key, id, "applying the approved recommendation");
                            Some(knobs)
                        }
                        crate::review::Approval::Stale { approved, current } => {
                            tracing::warn!(key = %s.key, approved, ?current, "stale approval refused");
                            None
                        }
                        crate::review::Approval::None => None,
                    }
                } else {
                    None
                };
                decision::NsParams {
                    slo_ms: crate::policies::slo_ms(&p.slo, self.config.slo_ms),
                    judge: crate::policies::slo_judge(&p.slo),
                    mode,
                    approved,
                }
            })
            .collect()
    }

    /// Per-namespace policy on the selection: excluded hosts are dropped (counted as
    /// `meshtune_tuning_refused_total{reason="excluded_host"}`), and destinations of a
    /// namespace whose decision interval has not elapsed wait (returned second, to keep their
    /// hints).
    async fn apply_policies(
        &self,
        selected: Vec<decision::Selected>,
        now: Instant,
    ) -> (Vec<decision::Selected>, Vec<decision::Selected>) {
        let Some(policies) = self.policies.get() else {
            return (selected, Vec::new());
        };
        let mut last = self.last_decided.lock().unwrap_or_else(|e| e.into_inner());
        let mut due: foldhash::HashMap<String, bool> = Default::default();
        let (mut keep, mut wait) = (Vec::new(), Vec::new());
        let mut excluded = 0u64;
        for s in selected {
            let p = policies.effective(&s.namespace);
            if p.excludes(&s.destination) {
                excluded += 1;
                continue;
            }
            let is_due = *due.entry(s.namespace.clone()).or_insert_with(|| {
                let interval = p.decision_interval.unwrap_or(self.config.interval);
                // Within half a loop interval counts as due (the loop ticks at its interval).
                last.get(&s.namespace).is_none_or(|t| {
                    now.saturating_duration_since(*t) + self.config.interval / 2 >= interval
                })
            });
            if is_due {
                keep.push(s);
            } else {
                wait.push(s);
            }
        }
        for (ns, d) in due {
            if d {
                last.insert(ns, now);
            }
        }
        if excluded > 0 {
            self.controller
                .metrics()
                .tuning_refused
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: "excluded_host".into(),
                })
                .inc_by(excluded);
        }
        (keep, wait)
    }

    /// Brings the decision state in line with the namespaces: keys of namespaces the gate no
    /// longer allows are forgotten (the namespace switch removed their objects); with
    /// policies, each namespace's bounds (its policy's intersected with the guardrails file's)
    /// are set, and namespaces now in observe mode that still have knobs in force get what
    /// meshtune wrote there removed (leader only), then forgotten.
    async fn sync_namespaces(&self, state: &mut LoopState) {
        let gate = &self.config.gate;
        let gone: Vec<DestKey> = state
            .in_force
            .keys()
            .filter(|k| !gate.allows(&k.namespace))
            .cloned()
            .collect();
        for k in &gone {
            forget_key(state, k);
        }
        let Some(policies) = self.policies.get() else {
            return;
        };
        let mut bounds = self.config.guardrails.namespaces.clone();
        for (ns, p) in policies.all() {
            if p.effective.bounds.is_empty() {
                continue;
            }
            let (b, conflicts) =
                crate::policies::intersect_bounds(bounds.get(&ns), &p.effective.bounds);
            if !conflicts.is_empty() {
                tracing::warn!(namespace = %ns, knobs = ?conflicts.iter().map(|k| k.name()).collect::<Vec<_>>(),
                    "policy bounds do not overlap the guardrails file's: the file's bounds apply to these knobs");
            }
            bounds.insert(ns, b);
        }
        state.guardrails.config_mut().namespaces = bounds;
        let observed: std::collections::BTreeSet<String> = state
            .in_force
            .keys()
            .map(|k| k.namespace.clone())
            .filter(|ns| policies.effective(ns).mode == meshtune_crd::Mode::Observe)
            .collect();
        if observed.is_empty() || !self.is_leader() {
            return;
        }
        for ns in observed {
            if let Some(lc) = self.lifecycle.get() {
                match lc.remove_namespace(&ns, false).await {
                    Ok(done) => {
                        for r in &done {
                            tracing::info!(object = %r, namespace = %ns, "namespace observed: undoing what meshtune wrote");
                        }
                    }
                    Err(e) => {
                        tracing::error!(namespace = %ns, error = %e, "namespace observed: removing meshtune's objects failed; retried next cycle");
                        continue;
                    }
                }
            }
            let keys: Vec<DestKey> = state
                .in_force
                .keys()
                .filter(|k| k.namespace == ns)
                .cloned()
                .collect();
            for k in &keys {
                forget_key(state, k);
                self.controller.metrics().remove_knobs(k);
            }
        }
    }

    /// The review stage (with policies): recommendations, applies and refusals into
    /// [`crate::review::Reviews`], then, while leading, each policy's status and Events.
    async fn review(
        &self,
        cycle: &decision::Cycle,
        outcomes: &[DestOutcome],
        features: &[Features],
        params: &[decision::NsParams],
        model_version: &str,
        now_ms: u64,
    ) {
        let Some(policies) = self.policies.get() else {
            return;
        };
        let errors =
            std::mem::take(&mut *self.push_errors.lock().unwrap_or_else(|e| e.into_inner()));
        let mut reviews = self.reviews.lock().await;
        for (i, (item, outcome)) in cycle.items.iter().zip(outcomes).enumerate() {
            let (ns, host) = (item.namespace.as_str(), item.destination.as_str());
            let p = params
                .get(i)
                .cloned()
                .unwrap_or_else(|| self.default_params());
            match outcome {
                DestOutcome::Recommended => {
                    let rec = crate::review::Rec {
                        id: String::new(),
                        knobs: item.knobs,
                        created_ms: now_ms,
                        features: features
                            .get(i)
                            .map(crate::review::features_by_name)
                            .unwrap_or_default(),
                        expected: crate::review::expected_effect(
                            &item.before,
                            &item.knobs,
                            &item.outcomes,
                            p.slo_ms,
                        ),
                        model_version: model_version.to_string(),
                    };
                    let (id, new) = reviews.recommend(ns, host, rec);
                    if new {
                        tracing::info!(key = %item.key, id, "new recommendation");
                    }
                }
                DestOutcome::Pushed | DestOutcome::RolledBack => {
                    reviews.applied(
                        ns,
                        host,
                        &item.knobs,
                        p.mode == decision::NsMode::Recommend && p.approved.is_some(),
                        now_ms,
                    );
                }
                DestOutcome::PushFailed => {
                    let why = errors
                        .get(&item.key)
                        .cloned()
                        .unwrap_or_else(|| "a sink did not apply it".into());
                    reviews.refused(ns, host, &why, now_ms);
                }
                _ => {}
            }
        }
        let Some(writer) = self.status_writer.get() else {
            return;
        };
        if !self.is_leader() {
            return;
        }
        let statuses: Vec<_> = policies
            .all()
            .into_iter()
            .map(|(ns, p)| {
                let status = reviews.status(&ns, &p, self.config.gate.allows(&ns));
                let events = reviews.take_events(&ns);
                (ns, p, status, events)
            })
            .collect();
        drop(reviews);
        let now = Instant::now();
        for (ns, p, status, events) in statuses {
            writer.flush(&ns, &p, &status, events, now).await;
        }
    }

    /// Pruning after destinations left the controller's table (expired or evicted): forgets
    /// the loop state (knobs in force, change times, guardrail phases), the knob series and
    /// the policy status of every destination that no tracked cluster maps to and that this
    /// cycle did not select (a Prometheus-fed destination stays while it is selected).
    pub async fn prune(&self, selected: &[decision::Selected]) {
        let clusters: foldhash::HashSet<DestKey> =
            self.controller.destination_names().into_iter().collect();
        let pruned_status = self.controller.prune_policy_status(&clusters);
        let mut live: foldhash::HashSet<DestKey> = clusters
            .iter()
            .filter_map(|k| {
                self.config
                    .naming
                    .destination(&k.cluster)
                    .map(|(d, _)| k.with_cluster(d))
            })
            .collect();
        live.extend(selected.iter().map(|s| s.key.clone()));
        let gone = self.state.lock().await.prune(&live);
        // Recommendations too (observe and recommend modes put nothing in force).
        self.reviews
            .lock()
            .await
            .retain_hosts(|ns, host| live.contains(&DestKey::new(ns, host)));
        let metrics = self.controller.metrics();
        let mut series = self.knob_series.lock().unwrap_or_else(|e| e.into_inner());
        for d in gone
            .iter()
            .chain(series.iter().filter(|k| !live.contains(*k)))
        {
            metrics.remove_knobs(d);
        }
        series.retain(|k| live.contains(k));
        drop(series);
        metrics
            .destinations_pruned
            .inc_by((gone.len() + pruned_status) as u64);
        if !gone.is_empty() || pruned_status > 0 {
            tracing::info!(
                destinations = gone.len(),
                clusters = pruned_status,
                "pruned the state of destinations no longer tracked"
            );
        }
    }

    /// Per-source gauges and the missing-feature counters of this cycle's selection.
    fn count_sources(&self, selected: &[decision::Selected]) {
        let metrics = self.controller.metrics();
        for src in [
            decision::FeatureSource::Filter,
            decision::FeatureSource::Prometheus,
        ] {
            let n = selected.iter().filter(|s| s.source == src).count();
            metrics
                .destinations_selected
                .get_or_create(&crate::metrics::SourceLabels {
                    source: src.name().into(),
                })
                .set(n as i64);
        }
        for s in selected {
            if !s.availability.is_complete() {
                let missing = s.availability.missing_features();
                tracing::debug!(destination = %s.destination, source = s.source.name(), ?missing, "policy input uses fallbacks for missing features");
                metrics.count_missing(&missing);
            }
        }
    }

    /// Infer stage: one batched inference for all selected destinations, denormalised.
    /// `None` (logged, counted) when the model fails: no decisions this cycle.
    fn infer(&self, policy: &OnnxPolicy, features: &[Features]) -> Option<Vec<Knobs>> {
        if features.is_empty() {
            return Some(Vec::new());
        }
        let metrics = self.controller.metrics();
        let batch: Vec<_> = features.iter().map(Features::normalised).collect();
        let started = Instant::now();
        let out = policy.infer(&batch);
        metrics
            .inference_seconds
            .observe(started.elapsed().as_secs_f64());
        match out {
            // A NaN or infinite output holds that destination's knobs (the guardrails see a
            // non-finite proposal and hold); counted, never turned into a mid-range knob.
            Ok(rows) => Some(
                rows.iter()
                    .map(|r| {
                        if r.iter().all(|v| v.is_finite()) {
                            Knobs::from_normalised(r)
                        } else {
                            metrics.nonfinite_outputs.inc();
                            tracing::warn!(output = ?r, "policy output is not finite: knobs in force held");
                            Knobs([f64::NAN; meshtune_core::knobs::KNOB_COUNT])
                        }
                    })
                    .collect(),
            ),
            Err(e) => {
                metrics.inference_errors.inc();
                tracing::error!(error = %e, "policy inference failed; no decisions this cycle");
                None
            }
        }
    }

    /// Push stage: enforce-mode pushes to every configured sink, recommendations to the log
    /// sink. Returns the keys that some sink did not apply.
    async fn push(&self, cycle: &decision::Cycle) -> foldhash::HashSet<DestKey> {
        let metrics = self.controller.metrics();
        // A set: with many pushes failing at once, a Vec lookup per item would be quadratic.
        let mut failed = foldhash::HashSet::default();
        if !cycle.pushes.is_empty() && !self.is_leader() {
            // The lease was lost during the cycle: another replica writes now.
            tracing::warn!(
                pushes = cycle.pushes.len(),
                "not the leader any more: nothing written"
            );
            failed.extend(
                cycle
                    .pushes
                    .iter()
                    .map(|d| DestKey::new(d.namespace.as_str(), d.destination.as_str())),
            );
            return failed;
        }
        if !cycle.pushes.is_empty() {
            for sink in &self.sinks {
                let label = |result: &str| PushLabels {
                    sink: sink.name().to_string(),
                    result: result.to_string(),
                };
                match sink.apply(&cycle.pushes).await {
                    Ok(report) => {
                        for item in &report.items {
                            let (result, why) = match &item.outcome {
                                Outcome::Applied { .. } | Outcome::Logged { .. } => ("ok", None),
                                Outcome::Refused { reason } => ("refused", Some(reason)),
                                Outcome::Failed { error } => ("failed", Some(error)),
                            };
                            if let Some(why) = why {
                                tracing::warn!(sink = sink.name(), destination = %item.destination, reason = %why, "push {result}");
                                let key = DestKey::new(
                                    item.namespace.as_str(),
                                    item.destination.as_str(),
                                );
                                self.push_errors
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .insert(key.clone(), format!("{}: {why}", sink.name()));
                                failed.insert(key);
                            }
                            metrics.pushes.get_or_create(&label(result)).inc();
                        }
                    }
                    Err(e) => {
                        tracing::error!(sink = sink.name(), error = %e, "sink failed; nothing applied");
                        metrics
                            .pushes
                            .get_or_create(&label("error"))
                            .inc_by(cycle.pushes.len() as u64);
                        failed.extend(
                            cycle.pushes.iter().map(|d| {
                                DestKey::new(d.namespace.as_str(), d.destination.as_str())
                            }),
                        );
                    }
                }
            }
        }
        if !cycle.recommendations.is_empty() {
            if let Err(e) = self.log_sink.apply(&cycle.recommendations).await {
                tracing::warn!(error = %e, "log sink failed");
            }
        }
        failed
    }

    /// Publish stage: decision and rollback metrics, knob gauges, per-cluster status and a log
    /// line per destination whose outcome is not `no_change`.
    fn publish(
        &self,
        state: &LoopState,
        cycle: &decision::Cycle,
        outcomes: &[DestOutcome],
        params: &[decision::NsParams],
        now_ms: u64,
    ) {
        let metrics = self.controller.metrics();
        let global_mode = mode_name(state.mode());
        let mut sources: std::collections::BTreeMap<&str, i64> = [
            decision::KnobsSource::Pushed,
            decision::KnobsSource::Cluster,
            decision::KnobsSource::IstioDefaults,
        ]
        .map(|s| (s.label(), 0))
        .into();
        for (i, (item, outcome)) in cycle.items.iter().zip(outcomes).enumerate() {
            // Items follow the selection, as `params` does: the namespace's own mode.
            let mode = params.get(i).map_or(global_mode, |p| p.mode.name());
            if let DestAction::Rollback {
                baseline,
                objective,
            } = item.action
            {
                metrics.rollbacks.inc();
                tracing::warn!(key = %item.key, baseline, objective, "objective worsened after a push: rolled back");
            }
            if item.action.is_decision() {
                metrics
                    .decisions
                    .get_or_create(&ModeLabels {
                        mode: mode.to_string(),
                    })
                    .inc();
            }
            let in_force = state.knobs_in_force(&item.key);
            metrics.set_knobs(&item.key, &in_force);
            self.knob_series
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(item.key.clone());
            let source = state.knobs_source(&item.key);
            *sources.entry(source.label()).or_default() += 1;
            let status = DestinationPolicyStatus {
                knobs: Some(knobs_by_name(&in_force)),
                knobs_source: Some(source.label().to_string()),
                knobs_objects: match source {
                    decision::KnobsSource::Cluster => state
                        .baseline
                        .get(&item.key)
                        .map(|b| b.objects())
                        .unwrap_or_default(),
                    _ => Vec::new(),
                },
                last_decision: Some(LastDecisionJson {
                    unix_ms: now_ms,
                    mode: mode.to_string(),
                    changed: item.changed.iter().map(|k| k.name().to_string()).collect(),
                    outcome: outcome.label().to_string(),
                }),
            };
            for c in &item.clusters {
                self.controller
                    .set_policy_status(&item.key.with_cluster(c.as_str()), status.clone());
            }
            if *outcome != DestOutcome::NoChange {
                tracing::info!(key = %item.key, outcome = outcome.label(), changed = item.changed.len(), mode,
                    urgent = item.urgent, p99_ms = item.outcomes.p99_ms, error_rate = item.outcomes.error_rate,
                    shed_rate = item.outcomes.shed_rate, "decision");
            }
        }
        for (source, n) in sources {
            metrics
                .cluster_knobs
                .knobs_source
                .get_or_create(&crate::metrics::SourceLabels {
                    source: source.into(),
                })
                .set(n);
        }
    }

    /// Record stage: appends the cycle's dataset rows to the `--record` CSV, if any.
    fn record(&self, features: &[Features], cycle: &decision::Cycle, now_ms: u64) {
        let Some(rec) = &self.recorder else { return };
        let rows = decision::dataset_rows(features, &cycle.items, now_ms / 1000);
        let mut rec = rec.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = rec.append(&rows) {
            tracing::error!(error = %e, "recording failed");
        }
    }

    /// One cycle under supervision: a panic is caught, logged and counted
    /// (`meshtune_decision_cycle_panics_total`) and the loop goes on; a completed cycle tells
    /// `/readyz` the loop is alive.
    pub async fn supervised_cycle(&self) -> Option<CycleSummary> {
        use futures::FutureExt;
        match std::panic::AssertUnwindSafe(self.cycle())
            .catch_unwind()
            .await
        {
            Ok(s) => {
                self.controller.loop_cycled();
                s
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                self.controller.metrics().decision_cycle_panics.inc();
                let pushing =
                    std::mem::take(&mut *self.pushing.lock().unwrap_or_else(|e| e.into_inner()));
                let mut state = self.state.lock().await;
                for item in &pushing {
                    decision::revert_push(&mut state, item);
                }
                tracing::error!(panic = %what, reverted = pushing.len(), "decision cycle panicked (its pushes count as failed); the loop goes on");
                None
            }
        }
    }

    /// Runs cycles every interval until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        if self.store.is_none() {
            shutdown.await;
            return;
        }
        self.controller
            .watch_loop(self.config.interval.max(Duration::from_millis(10)));
        let mut leadership = self.leadership.get().cloned();
        loop {
            if let Some(l) = &mut leadership {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = l.until_leader() => {}
                }
            }
            // Leading from now: the loop is alive even before its first cycle.
            self.controller.loop_cycled();
            let mut started = self.on_leading().await.is_ok();
            let mut tick =
                tokio::time::interval(self.config.interval.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            tracing::info!(interval = ?self.config.interval, mode = mode_name(self.config.guardrails.mode), sinks = ?self.sinks.iter().map(|s| s.name()).collect::<Vec<_>>(), "decision loop running");
            loop {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tick.tick() => {}
                }
                if !self.is_leader() {
                    // A follower decides nothing and serves no hints.
                    self.hints.replace(Vec::new());
                    tracing::info!("stopped leading: the decision loop waits");
                    break;
                }
                if !started {
                    started = self.on_leading().await.is_ok();
                    if !started {
                        // Retrying recovery is progress, not a stall (/readyz stays up).
                        self.controller.loop_cycled();
                        continue;
                    }
                }
                // A cycle stuck in a sink must not hold up shutdown.
                tokio::select! {
                    _ = &mut shutdown => return,
                    s = self.supervised_cycle() => {
                        if let Some(s) = s {
                            tracing::debug!(?s, "decision cycle");
                        }
                    }
                }
            }
        }
    }
}

/// The names of the knobs that differ between `a` and `b`.
fn changed_knob_names(a: &Knobs, b: &Knobs) -> Vec<&'static str> {
    meshtune_core::knobs::Knob::ALL
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.name())
        .collect()
}

/// Forgets one key's decision state (knobs in force, change time, guardrail phase).
fn forget_key(state: &mut LoopState, k: &DestKey) {
    state.in_force.remove(k);
    state.changed_at.remove(k);
    state.guardrails.forget(&k.to_string());
}

/// Parses `--model-configmap NAMESPACE/NAME`.
pub fn parse_configmap(s: &str) -> Result<(String, String), String> {
    meshtune_policy::source::parse_namespaced(s)
        .ok_or_else(|| format!("`{s}`: expected NAMESPACE/NAME"))
}

/// Serves the controller with the decision loop and model watchers until `shutdown`.
pub async fn serve_closed_loop(
    controller: Arc<Controller>,
    policy: Arc<PolicyLoop>,
    sources: Vec<ModelSource>,
    kube: Option<kube::Client>,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = move || {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };
    let mut tasks = Vec::new();
    if let Some(store) = policy.store().cloned() {
        tasks.push(tokio::spawn(meshtune_policy::source::watch_sources(
            store,
            sources,
            kube,
            None,
            stop(),
        )));
    }
    tasks.push(tokio::spawn(policy.clone().run(stop())));
    let tx = Arc::new(tx);
    let tx2 = tx.clone();
    let served = controller.serve(grpc, admin, async move {
        shutdown.await;
        let _ = tx2.send(true);
    });
    let r = served.await;
    let _ = tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Selected;
    use crate::Config;
    use meshtune_core::features::FEATURE_COUNT;
    use meshtune_core::knobs::{Knob, KNOB_COUNT};
    use meshtune_core::WindowStats;
    use meshtune_policy::guardrails::Mode;
    use meshtune_policy::onnx::{export_mlp, Activation, MlpLayer, ModelMeta};
    use meshtune_sinks::sink::{ApplyFuture, ApplyReport, ItemReport};
    use meshtune_sinks::Decision;

    #[test]
    fn envoy_destination_takes_one_or_more_endpoints() {
        assert_eq!(
            parse_envoy_destination("w=127.0.0.1:80").unwrap(),
            ("w".to_string(), vec!["127.0.0.1:80".to_string()])
        );
        assert_eq!(
            parse_envoy_destination("w=127.0.0.1:80,127.0.0.1:81")
                .unwrap()
                .1,
            vec!["127.0.0.1:80", "127.0.0.1:81"]
        );
        for bad in [
            "w",
            "=127.0.0.1:80",
            "w=127.0.0.1:80,",
            "w=127.0.0.1:x",
            "w=:80",
        ] {
            let e = parse_envoy_destination(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    /// A model whose normalised output is `u` for every input.
    fn const_model(u: f32) -> OnnxPolicy {
        let bytes = export_mlp(
            &[MlpLayer {
                in_dim: FEATURE_COUNT,
                out_dim: KNOB_COUNT,
                weight: vec![0.0; FEATURE_COUNT * KNOB_COUNT],
                bias: vec![u; KNOB_COUNT],
                activation: Activation::Identity,
            }],
            &ModelMeta {
                model_version: "const".into(),
                provenance: "policy_loop test".into(),
            },
        )
        .unwrap();
        OnnxPolicy::from_bytes(&bytes, "test").unwrap()
    }

    /// A sink that refuses the destinations named in `refuse`, or fails as a whole.
    struct FakeSink {
        refuse: Vec<&'static str>,
        fail_whole: bool,
    }

    impl Sink for FakeSink {
        fn name(&self) -> &'static str {
            "fake"
        }

        fn apply<'a>(&'a self, decisions: &'a [Decision]) -> ApplyFuture<'a> {
            Box::pin(async move {
                if self.fail_whole {
                    return Err(meshtune_sinks::SinkError::Serialize {
                        what: "everything".into(),
                        message: "test".into(),
                    });
                }
                let items = decisions
                    .iter()
                    .map(|d| ItemReport {
                        destination: d.destination.clone(),
                        namespace: d.namespace.clone(),
                        outcome: if self.refuse.contains(&d.destination.as_str()) {
                            Outcome::Refused {
                                reason: "not managed".into(),
                            }
                        } else {
                            Outcome::Applied { objects: vec![] }
                        },
                    })
                    .collect();
                Ok(ApplyReport { items })
            })
        }
    }

    fn policy_loop(sinks: Vec<Arc<dyn Sink>>, recorder: Option<Recorder>) -> Arc<PolicyLoop> {
        let controller = Arc::new(Controller::new(Config::default()).unwrap());
        let config = LoopConfig {
            guardrails: guardrails::Config {
                mode: Mode::Enforce,
                max_step_factor: 1e9,
                max_linear_step: 1.0,
                ..guardrails::Config::default()
            },
            ..LoopConfig::default()
        };
        PolicyLoop::new(
            controller,
            Some(const_model(0.5)),
            sinks,
            Arc::new(meshtune_sinks::LogSink::new(Box::new(std::io::sink()))),
            recorder,
            config,
        )
    }

    fn selected(names: &[&str]) -> Vec<Selected> {
        let mut w = WindowStats {
            duration_s: 1.0,
            requests: 100,
            status_2xx: 100,
            ..WindowStats::default()
        };
        w.latency.record_n(5_000, 100);
        decision::select(
            names.iter().map(|n| (n.to_string(), w.clone())),
            Naming::Cluster,
            1,
        )
    }

    fn features_of(sel: &[decision::Selected]) -> Vec<meshtune_core::Features> {
        let state = LoopState::new(Guardrails::new(guardrails::Config::default()));
        decision::features(sel, &state, Instant::now(), 250.0)
    }

    fn cycle_for(l: &PolicyLoop, names: &[&str]) -> decision::Cycle {
        let sel = selected(names);
        let policy = l.store().unwrap().current();
        let proposed = l
            .infer(&policy, &features_of(&sel))
            .expect("the model runs");
        let mut state = LoopState::new(Guardrails::new(l.config.guardrails.clone()));
        decision::decide(&sel, &proposed, &mut state, Instant::now(), 250.0)
    }

    #[test]
    fn infer_denormalises_one_row_per_destination() {
        let l = policy_loop(Vec::new(), None);
        let sel = selected(&["a", "b"]);
        let policy = l.store().unwrap().current();
        let knobs = l.infer(&policy, &features_of(&sel)).unwrap();
        assert_eq!(knobs.len(), 2);
        let expected = Knobs::from_normalised(&[0.5; KNOB_COUNT]);
        assert_eq!(knobs[0], expected);
        assert_eq!(
            knobs[1].get(Knob::Http2MaxRequests),
            expected.get(Knob::Http2MaxRequests)
        );
        assert!(l.infer(&policy, &[]).unwrap().is_empty());
    }

    #[tokio::test]
    async fn push_returns_the_destinations_a_sink_refused_or_could_not_take() {
        let refusing: Arc<dyn Sink> = Arc::new(FakeSink {
            refuse: vec!["b"],
            fail_whole: false,
        });
        let l = policy_loop(vec![refusing], None);
        let c = cycle_for(&l, &["a", "b"]);
        assert_eq!(c.pushes.len(), 2);
        let failed = l.push(&c).await;
        assert_eq!(failed.len(), 1);
        assert!(failed.contains(&DestKey::new("", "b")));

        let broken: Arc<dyn Sink> = Arc::new(FakeSink {
            refuse: vec![],
            fail_whole: true,
        });
        let l = policy_loop(vec![broken], None);
        let failed = l.push(&c).await;
        assert_eq!(failed.len(), 2, "a sink error fails every push: {failed:?}");
        let text = l.controller.metrics_text();
        assert!(
            text.contains(r#"sink="fake",result="error""#),
            "push metrics count the error: {text}"
        );
    }

    #[test]
    fn record_appends_one_row_per_destination() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.csv");
        let l = policy_loop(Vec::new(), Some(Recorder::open(&path).unwrap()));
        let sel = selected(&["a", "b"]);
        let c = cycle_for(&l, &["a", "b"]);
        l.record(&features_of(&sel), &c, 7_000);
        let text = std::fs::read_to_string(&path).unwrap();
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(rows[0].starts_with("live,,a,7,"), "{}", rows[0]);
        assert!(rows[1].starts_with("live,,b,7,"), "{}", rows[1]);
    }

    #[tokio::test]
    async fn observed_destinations_show_their_knobs_in_force_until_evicted() {
        use meshtune_test_support::reports::{report, upstream};
        let controller = Arc::new(
            Controller::new(Config {
                max_destinations: 2,
                ..Config::default()
            })
            .unwrap(),
        );
        let l = PolicyLoop::new(
            controller.clone(),
            Some(const_model(0.5)),
            Vec::new(),
            Arc::new(meshtune_sinks::LogSink::new(Box::new(std::io::sink()))),
            None,
            LoopConfig {
                min_requests: 1,
                ..LoopConfig::default()
            },
        );
        controller
            .handle_report(&report("p", 1, vec![upstream("a", 100, 0, 5_000)]))
            .unwrap();
        let s = l.cycle().await.unwrap();
        assert_eq!((s.pushed, s.recommended), (0, 1), "{s:?}");
        // Nothing pushed: Istio's defaults are in force, in the gauges and the status.
        let gauge = r#"meshtune_knob{namespace="default",destination="a",knob="timeout"} 0"#;
        assert!(controller.metrics_text().contains(gauge));
        let status = controller.policy_status(&DestKey::new("", "a")).unwrap();
        assert_eq!(status.knobs_source.as_deref(), Some("istio_defaults"));
        assert!(controller
            .metrics_text()
            .contains(r#"meshtune_destinations_knobs_source{source="istio_defaults"} 1"#));
        controller
            .handle_report(&report(
                "q",
                1,
                vec![upstream("x", 1, 0, 5_000), upstream("y", 1, 0, 5_000)],
            ))
            .unwrap();
        l.cycle().await.unwrap();
        let text = controller.metrics_text();
        assert!(
            !text.contains(r#"destination="a""#),
            "the series of a key never pushed is pruned too: {text}"
        );
    }

    #[tokio::test]
    async fn evicted_destinations_are_pruned_from_status_state_and_metrics() {
        use meshtune_test_support::reports::{report, upstream};
        let controller = Arc::new(
            Controller::new(Config {
                max_destinations: 2,
                ..Config::default()
            })
            .unwrap(),
        );
        let l = PolicyLoop::new(
            controller.clone(),
            Some(const_model(0.5)),
            Vec::new(),
            Arc::new(meshtune_sinks::LogSink::new(Box::new(std::io::sink()))),
            None,
            LoopConfig {
                min_requests: 1,
                guardrails: guardrails::Config {
                    mode: Mode::Enforce,
                    ..guardrails::Config::default()
                },
                ..LoopConfig::default()
            },
        );
        controller
            .handle_report(&report("p", 1, vec![upstream("a", 100, 0, 5_000)]))
            .unwrap();
        let s = l.cycle().await.unwrap();
        assert_eq!(s.pushed, 1, "{s:?}");
        assert!(l.knobs_in_force(&DestKey::new("", "a")).await.is_some());
        assert!(controller.policy_status(&DestKey::new("", "a")).is_some());
        assert!(controller
            .metrics_text()
            .contains(r#"meshtune_knob{namespace="default",destination="a""#));
        // Two new names from another reporter evict "a" (reported once: probationary).
        controller
            .handle_report(&report(
                "q",
                1,
                vec![upstream("x", 1, 0, 5_000), upstream("y", 1, 0, 5_000)],
            ))
            .unwrap();
        assert!(controller
            .destination_names()
            .iter()
            .all(|n| n.cluster != "a"));
        l.cycle().await.unwrap();
        assert!(l.knobs_in_force(&DestKey::new("", "a")).await.is_none());
        assert!(controller.policy_status(&DestKey::new("", "a")).is_none());
        let text = controller.metrics_text();
        assert!(!text.contains(r#"destination="a""#), "{text}");
        assert!(
            text.contains("meshtune_destinations_pruned_total 2"),
            "loop state and status of a: {text}"
        );
    }
}
