//! The running controller: shared state ([`Controller`]) and [`Controller::serve`], which runs
//! the gRPC ingest and admin HTTP servers on given listeners until a shutdown future fires.

use crate::aggregate::{Aggregator, IngestOutcome};
use crate::api::{
    DestinationJson, DestinationsResponse, IdentityJson, LastDecisionJson, ModelJson,
};
use crate::config::Config;
use crate::hints::{FileHints, HintSource, HintsError, NoHints, Reload};
use crate::identity::{identify, AuthMode, IdentityError, SpiffeId, XFCC_HEADER};
use crate::metrics::{Metrics, ReasonLabels};
use crate::validate::{validate, Limits as ValidationLimits};
use meshtune_core::key::reporter_namespace;
use meshtune_core::DestKey;
use meshtune_proto::v1::{ReportRequest, ReportResponse};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Most distinct reporter identities listed in `/api/destinations` (`identities`).
pub const MAX_IDENTITIES: usize = 10_000;

/// How long servers get to finish after shutdown fires before they are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Errors running the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Hints(#[from] HintsError),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("admin server: {0}")]
    Admin(std::io::Error),
    #[error("gRPC TLS: {0}")]
    Tls(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// Source of the current time (tests substitute their own).
pub trait Clock: Send + Sync {
    fn now_unix_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Why a report was refused: the gRPC status to return.
pub type ReportResult = Result<ReportResponse, tonic::Status>;

/// Shared controller state: aggregates, hint source, metrics.
pub struct Controller {
    config: Config,
    validation: ValidationLimits,
    aggregator: Mutex<Aggregator>,
    hints: RwLock<Arc<dyn HintSource>>,
    file_hints: Option<Arc<FileHints>>,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    ready: AtomicBool,
    accepted: AtomicU64,
    rejected: AtomicU64,
    duplicate: AtomicU64,
    policy_status: RwLock<BTreeMap<DestKey, DestinationPolicyStatus>>,
    /// Authenticated reporter identities seen (at most [`MAX_IDENTITIES`]).
    identities: Mutex<BTreeMap<String, IdentityJson>>,
    model_status: RwLock<ModelJson>,
    /// Leader election, if any: a follower is not Ready (see [`crate::leader`]).
    leadership: std::sync::OnceLock<crate::leader::Leadership>,
    rate: Mutex<crate::ingest::RateLimiter>,
    /// When the decision loop last completed a cycle (`None`: no loop runs, or none yet).
    loop_health: RwLock<Option<LoopHealth>>,
}

/// What `/readyz` knows about the decision loop.
#[derive(Debug, Clone, Copy)]
struct LoopHealth {
    interval: Duration,
    started: Instant,
    last_cycle: Option<Instant>,
}

/// `/readyz` fails when the decision loop's last completed cycle (or its start, before the
/// first) is older than this many decision intervals.
pub const STALE_LOOP_INTERVALS: u32 = 3;

/// What the decision loop publishes per reported cluster for `/api/destinations`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DestinationPolicyStatus {
    /// Knobs in force by name (`None` before the first decision).
    pub knobs: Option<BTreeMap<String, f64>>,
    /// Where they come from (`pushed`, `cluster`, `istio_defaults`).
    pub knobs_source: Option<String>,
    /// The cluster's objects they were read from (source `cluster`).
    pub knobs_objects: Vec<String>,
    pub last_decision: Option<LastDecisionJson>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Builds the state; opens the hints file if configured (an invalid existing file is an
    /// error, a missing one gives no hints until it appears).
    pub fn new(config: Config) -> Result<Self, ControllerError> {
        if config.auth == AuthMode::ClientCert && config.tls.is_none() {
            return Err(ControllerError::Tls(
                "client-certificate authentication needs the TLS files (--tls-cert, --tls-key, --client-ca)".into(),
            ));
        }
        let file_hints = match &config.hints_file {
            Some(p) => Some(Arc::new(FileHints::open(p)?)),
            None => None,
        };
        let hints: Arc<dyn HintSource> = match &file_hints {
            Some(f) => f.clone(),
            None => Arc::new(NoHints),
        };
        Ok(Self {
            validation: config.validation_limits(),
            aggregator: Mutex::new(Aggregator::new(config.aggregate_limits())),
            hints: RwLock::new(hints),
            file_hints,
            metrics: Metrics::new(),
            clock: Arc::new(SystemClock),
            ready: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            duplicate: AtomicU64::new(0),
            policy_status: RwLock::new(BTreeMap::new()),
            identities: Mutex::new(BTreeMap::new()),
            model_status: RwLock::new(ModelJson::default()),
            leadership: std::sync::OnceLock::new(),
            rate: Mutex::new(crate::ingest::RateLimiter::new(
                config.reports_per_sec,
                config.report_burst,
                config.max_reporters,
            )),
            loop_health: RwLock::new(None),
            config,
        })
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Replaces the hint source (the policy loop installs itself here).
    pub fn set_hint_source(&self, source: Arc<dyn HintSource>) {
        *self.hints.write().unwrap_or_else(|e| e.into_inner()) = source;
    }

    /// The hint source in force.
    pub fn hint_source(&self) -> Arc<dyn HintSource> {
        self.hints.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The hints file source, if one is configured.
    pub fn file_hints(&self) -> Option<&Arc<FileHints>> {
        self.file_hints.as_ref()
    }

    /// Publishes the decision loop's view of one (reporter namespace, reported cluster).
    pub fn set_policy_status(&self, key: &DestKey, status: DestinationPolicyStatus) {
        self.policy_status
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), status);
    }

    /// The decision loop's view of one (reporter namespace, reported cluster).
    pub fn policy_status(&self, key: &DestKey) -> Option<DestinationPolicyStatus> {
        self.policy_status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Publishes the model in service (`/api/model`).
    pub fn set_model_status(&self, m: ModelJson) {
        *self.model_status.write().unwrap_or_else(|e| e.into_inner()) = m;
    }

    /// `/api/model`.
    pub fn model_json(&self) -> ModelJson {
        self.model_status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serving, the leader when there is an election (followers are not Ready, so the report
    /// Service sends reports to the leader alone), and the decision loop (if one runs)
    /// completed a cycle within [`STALE_LOOP_INTERVALS`] intervals.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self
                .leadership
                .get()
                .is_none_or(crate::leader::Leadership::is_leader)
            && self.loop_stalled().is_none()
    }

    /// Sets the leader election `/readyz` follows (once; later calls are ignored).
    pub fn set_leadership(&self, l: crate::leader::Leadership) {
        let _ = self.leadership.set(l);
    }

    /// The leader election, if set.
    pub fn leadership(&self) -> Option<crate::leader::Leadership> {
        self.leadership.get().cloned()
    }

    /// The decision loop announces itself: from now on `/readyz` watches its cycles.
    pub fn watch_loop(&self, interval: Duration) {
        *self.loop_health.write().unwrap_or_else(|e| e.into_inner()) = Some(LoopHealth {
            interval,
            started: Instant::now(),
            last_cycle: None,
        });
    }

    /// The decision loop completed a cycle now.
    pub fn loop_cycled(&self) {
        if let Some(h) = self
            .loop_health
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            h.last_cycle = Some(Instant::now());
        }
    }

    /// How long ago the loop last completed a cycle, when that is more than
    /// [`STALE_LOOP_INTERVALS`] intervals (`None`: healthy, or no loop).
    pub fn loop_stalled(&self) -> Option<Duration> {
        let h = (*self.loop_health.read().unwrap_or_else(|e| e.into_inner()))?;
        let age = h.last_cycle.unwrap_or(h.started).elapsed();
        (age > h.interval * STALE_LOOP_INTERVALS).then_some(age)
    }

    /// Destinations expired or evicted from the aggregates since the last call.
    pub fn take_removed_destinations(&self) -> u64 {
        self.aggregator().take_removed()
    }

    /// Names of every tracked destination (reported cluster), no particular order.
    pub fn destination_names(&self) -> Vec<DestKey> {
        self.aggregator().destination_names()
    }

    /// Forgets the policy status of clusters no longer tracked (`live`: those still tracked).
    pub fn prune_policy_status(&self, live: &foldhash::HashSet<DestKey>) -> usize {
        let mut m = self
            .policy_status
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let before = m.len();
        m.retain(|k, _| live.contains(k));
        before - m.len()
    }

    fn aggregator(&self) -> std::sync::MutexGuard<'_, Aggregator> {
        self.aggregator.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sliding window and reporter count of every destination now (the policy's input),
    /// sorted by name.
    pub fn snapshot(&self) -> Vec<crate::aggregate::ClusterWindow> {
        let now = self.clock.now_unix_ms();
        self.aggregator().snapshot(now)
    }

    /// Handles one report as the configured mode sees a call without certificate or header:
    /// in [`AuthMode::None`] the report is trusted as claimed; otherwise it is refused
    /// (UNAUTHENTICATED). See [`Controller::handle_report_as`].
    pub fn handle_report(&self, req: &ReportRequest) -> ReportResult {
        self.handle_report_as(req, identify(self.config.auth, None, None))
    }

    /// Handles one report from a caller with `identity` ([`crate::identity::identify`]):
    /// without a usable identity when one is required → UNAUTHENTICATED; a claimed
    /// `reporter.namespace` (empty = the default namespace) other than the identity's →
    /// PERMISSION_DENIED; both counted in `meshtune_reports_unauthorized_total` and changing
    /// nothing. Then validate, de-duplicate, merge, answer with the hints of the reporter's
    /// namespace. A rejected report gets INVALID_ARGUMENT naming the field and changes nothing.
    pub fn handle_report_as(
        &self,
        req: &ReportRequest,
        identity: Result<Option<SpiffeId>, IdentityError>,
    ) -> ReportResult {
        let started = Instant::now();
        let refuse = |reason: &str| {
            self.metrics
                .reports_unauthorized
                .get_or_create(&ReasonLabels {
                    reason: reason.to_string(),
                })
                .inc();
        };
        match identity {
            Err(e) => {
                refuse(e.reason());
                tracing::debug!(error = %e, "report refused: no usable identity");
                return Err(tonic::Status::unauthenticated(e.to_string()));
            }
            Ok(Some(id)) => {
                let claimed = req.reporter.as_ref().map_or("", |r| r.namespace.as_str());
                if reporter_namespace(claimed) != id.namespace {
                    refuse("namespace_mismatch");
                    tracing::warn!(identity = %id, claimed, "report refused: reporter.namespace differs from the caller's identity");
                    return Err(tonic::Status::permission_denied(format!(
                        "reporter.namespace {claimed:?} differs from the namespace of the caller's identity {id}"
                    )));
                }
                self.record_identity(&id);
            }
            Ok(None) => {}
        }
        let valid = match validate(req, &self.validation) {
            Ok(v) => v,
            Err(e) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .reports_rejected
                    .get_or_create(&ReasonLabels {
                        reason: e.reason.as_str().to_string(),
                    })
                    .inc();
                tracing::debug!(error = %e, "report rejected");
                return Err(tonic::Status::invalid_argument(e.to_string()));
            }
        };
        let now = self.clock.now_unix_ms();
        let allowed = self
            .rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(&valid.reporter, now);
        if !allowed {
            self.metrics.reports_rate_limited.inc();
            tracing::debug!(reporter = ?valid.reporter, "report over the reporter's rate: refused");
            return Err(tonic::Status::resource_exhausted(format!(
                "reporter sends more than {} reports/s (burst {}): report refused",
                self.config.reports_per_sec, self.config.report_burst
            )));
        }
        let outcome = self.aggregator().ingest(&valid, now);
        match &outcome {
            IngestOutcome::Accepted {
                restarted,
                dropped_reports_delta,
                destinations_dropped,
                ..
            } => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                self.metrics.reports_accepted.inc();
                if *restarted {
                    self.metrics.reporter_restarts.inc();
                    tracing::info!(reporter = ?valid.reporter, "reporter restarted");
                }
                self.metrics
                    .filter_dropped_reports
                    .inc_by(*dropped_reports_delta);
                if *destinations_dropped > 0 {
                    self.metrics
                        .destinations_dropped
                        .inc_by(*destinations_dropped);
                    tracing::debug!(
                        evicted = destinations_dropped,
                        max = self.config.max_destinations,
                        "destination limit reached: least recently reported evicted"
                    );
                }
            }
            IngestOutcome::Duplicate { .. } => {
                self.duplicate.fetch_add(1, Ordering::Relaxed);
                self.metrics.reports_duplicate.inc();
            }
        }
        let clusters: Vec<String> = valid.upstreams.iter().map(|(n, _)| n.clone()).collect();
        let hints = self
            .hint_source()
            .hints_for(&valid.reporter.namespace, &clusters);
        self.metrics
            .report_ingest_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(ReportResponse {
            hints,
            accepted_sequence: outcome.accepted_sequence(),
        })
    }

    fn record_identity(&self, id: &SpiffeId) {
        let now = self.clock.now_unix_ms();
        let mut ids = self.identities.lock().unwrap_or_else(|e| e.into_inner());
        let key = id.to_string();
        if let Some(e) = ids.get_mut(&key) {
            e.reports += 1;
            e.last_unix_ms = now;
        } else if ids.len() < MAX_IDENTITIES {
            ids.insert(
                key.clone(),
                IdentityJson {
                    spiffe_id: key,
                    reports: 1,
                    last_unix_ms: now,
                },
            );
        }
    }

    /// Authenticated reporter identities seen, sorted.
    pub fn identities(&self) -> Vec<IdentityJson> {
        self.identities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The admin view (`/api/destinations`); also refreshes the per-destination gauges.
    pub fn destinations_json(&self) -> DestinationsResponse {
        let now = self.clock.now_unix_ms();
        let (views, reporters) = {
            let a = self.aggregator();
            (a.destinations(now), a.reporter_count())
        };
        self.metrics.set_destinations(&views, reporters);
        self.destinations_response(&views, reporters)
    }

    /// `/api/destinations?name=CLUSTER&namespace=NS`: the same answer with at most that one
    /// destination, computed without touching the others.
    pub fn destination_json(&self, key: &DestKey) -> DestinationsResponse {
        let now = self.clock.now_unix_ms();
        let (view, reporters) = {
            let a = self.aggregator();
            (a.destination(key, now), a.reporter_count())
        };
        self.destinations_response(view.as_slice(), reporters)
    }

    /// The `/api/destinations` answer for `views` (hints and policy status joined in).
    fn destinations_response(
        &self,
        views: &[crate::aggregate::DestinationView],
        reporters: usize,
    ) -> DestinationsResponse {
        let hints = self.hint_source();
        let destinations = views
            .iter()
            .map(|v| {
                let hint = hints
                    .hints_for(&v.key.namespace, std::slice::from_ref(&v.key.cluster))
                    .pop();
                let mut d = DestinationJson::new(v, hint);
                if let Some(s) = self.policy_status(&v.key) {
                    d.knobs = s.knobs;
                    d.knobs_source = s.knobs_source;
                    d.knobs_objects = s.knobs_objects;
                    d.last_decision = s.last_decision;
                }
                d
            })
            .collect();
        DestinationsResponse {
            window_secs: self.config.window_secs.max(1),
            reports_accepted: self.accepted.load(Ordering::Relaxed),
            reports_rejected: self.rejected.load(Ordering::Relaxed),
            reports_duplicate: self.duplicate.load(Ordering::Relaxed),
            reporters: reporters as u64,
            auth: self.config.auth.name().to_string(),
            identities: self.identities(),
            destinations,
        }
    }

    /// Metrics text (`/metrics`, OpenMetrics), with per-destination series refreshed.
    pub fn metrics_text(&self) -> String {
        self.metrics_text_as(crate::metrics::Exposition::OpenMetrics)
    }

    /// Metrics in `format`, with per-destination series refreshed.
    pub fn metrics_text_as(&self, format: crate::metrics::Exposition) -> String {
        let now = self.clock.now_unix_ms();
        let (views, reporters) = {
            let a = self.aggregator();
            (a.destinations(now), a.reporter_count())
        };
        self.metrics.set_destinations(&views, reporters);
        self.metrics.encode_as(format)
    }

    /// Checks the hints file once; logs the outcome.
    pub fn poll_hints_file(&self) {
        let Some(f) = &self.file_hints else { return };
        let label = |r: &str| ReasonLabels {
            reason: r.to_string(),
        };
        match f.reload_if_changed() {
            Ok(Reload::Loaded(n)) => {
                self.metrics.hints_reloads.get_or_create(&label("ok")).inc();
                tracing::info!(path = %f.path().display(), hints = n, "hints file loaded");
            }
            Ok(Reload::Unchanged | Reload::Missing) => {}
            Err(e) => {
                self.metrics
                    .hints_reloads
                    .get_or_create(&label("error"))
                    .inc();
                tracing::error!(error = %e, "hints file not loaded; previous hints kept");
            }
        }
    }

    /// Runs the gRPC server on `grpc` and the admin server on `admin` until `shutdown`
    /// completes, then stops both (waiting at most [`SHUTDOWN_GRACE`]).
    pub async fn serve(
        self: Arc<Self>,
        grpc: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ControllerError> {
        let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(grpc = %addr(&grpc), admin = %addr(&admin), "controller starting");
        let (tx, rx) = watch::channel(false);
        let stop = move |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        if self.file_hints.is_some() {
            let me = self.clone();
            let mut rx = rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(me.config.hints_poll);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => me.poll_hints_file(),
                        _ = rx.wait_for(|v| *v) => break,
                    }
                }
            });
        }

        let svc = crate::ingest::ReportServer::new(
            self.clone(),
            self.validation.clone(),
            self.config.max_concurrent_reports,
        )
        .with_request_timeout(
            self.config.request_timeout,
            self.metrics.reports_timed_out.clone(),
        );
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.config.tls {
            use tonic::transport::{Certificate, Identity, ServerTlsConfig};
            builder = builder
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(Identity::from_pem(&tls.cert, &tls.key))
                        .client_ca_root(Certificate::from_pem(&tls.client_ca)),
                )
                .map_err(|e| ControllerError::Tls(e.to_string()))?;
        }
        let grpc_server = builder
            .max_concurrent_streams(self.config.max_streams_per_connection)
            .concurrency_limit_per_connection(self.config.max_streams_per_connection as usize)
            // The request timeout is the Report service's own (DEADLINE_EXCEEDED, counted).
            // Small flow-control windows: a stream waiting for a report permit holds at most
            // this much of its body in the connection's buffers.
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(1024 * 1024)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                stop(rx.clone()),
            );
        let admin_server = axum::serve(admin, crate::admin::router(self.clone()))
            .with_graceful_shutdown(stop(rx.clone()));
        self.ready.store(true, Ordering::Relaxed);
        tracing::info!("controller serving");

        let both = async {
            tokio::try_join!(
                async { grpc_server.await.map_err(ControllerError::Grpc) },
                async { admin_server.await.map_err(ControllerError::Admin) },
            )
            .map(|_| ())
        };
        let grace = async {
            stop(rx.clone()).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            tracing::warn!("shutdown grace period over; dropping open connections");
        };
        let result = tokio::select! {
            r = both => r,
            _ = grace => Ok(()),
        };
        self.ready.store(false, Ordering::Relaxed);
        tracing::info!("controller stopped");
        result
    }
}

#[tonic::async_trait]
impl meshtune_proto::v1::feature_service_server::FeatureService for Controller {
    async fn report(
        &self,
        request: tonic::Request<ReportRequest>,
    ) -> Result<tonic::Response<ReportResponse>, tonic::Status> {
        let identity = match self.config.auth {
            AuthMode::None => Ok(None),
            mode => {
                let certs = request.peer_certs();
                let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
                let xfcc = request
                    .metadata()
                    .get(XFCC_HEADER)
                    .map(|v| v.to_str().unwrap_or(""));
                identify(mode, leaf, xfcc)
            }
        };
        self.handle_report_as(request.get_ref(), identity)
            .map(tonic::Response::new)
    }
}

/// Runs a controller built from `config` on the given listeners until `shutdown` completes.
pub async fn serve(
    config: Config,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    Arc::new(Controller::new(config)?)
        .serve(grpc, admin, shutdown)
        .await
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C; the binary's shutdown future.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hints::{Hint, StaticHints};
    use meshtune_proto::v1::{Reporter, UpstreamWindow};
    use std::sync::atomic::AtomicU64;

    struct FakeClock(AtomicU64);

    impl Clock for FakeClock {
        fn now_unix_ms(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn report(seq: u64, cluster: &str, n: u64) -> ReportRequest {
        ReportRequest {
            reporter: Some(Reporter {
                pod: "p".into(),
                ..Default::default()
            }),
            sequence: seq,
            window_length_ms: 1000,
            upstreams: vec![UpstreamWindow {
                cluster: cluster.into(),
                requests: n,
                status_2xx: n,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn controller() -> (Controller, Arc<FakeClock>) {
        let clock = Arc::new(FakeClock(AtomicU64::new(1_700_000_000_000)));
        let c = Controller::new(Config::default())
            .unwrap()
            .with_clock(clock.clone());
        (c, clock)
    }

    #[test]
    fn rejected_reports_leave_aggregates_untouched() {
        let (c, _) = controller();
        let mut bad = report(1, "c", 5);
        bad.upstreams[0].status_5xx = 1;
        let e = c.handle_report(&bad).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("upstreams[0].status_*"),
            "{}",
            e.message()
        );
        let mut bad = report(1, "c", 5);
        bad.window_length_ms = 0;
        assert!(c.handle_report(&bad).is_err());
        let j = c.destinations_json();
        assert_eq!((j.reports_accepted, j.reports_rejected), (0, 2));
        assert!(j.destinations.is_empty());
        assert!(c.snapshot().is_empty());
        // The bad reports did not consume the sequence: the same sequence is accepted now.
        assert_eq!(
            c.handle_report(&report(1, "c", 5))
                .unwrap()
                .accepted_sequence,
            1
        );
        assert_eq!(c.snapshot()[0].stats.requests, 5);
    }

    #[test]
    fn snapshot_slides_with_the_clock_and_hint_source_is_replaceable() {
        let (c, clock) = controller();
        c.handle_report(&report(1, "c", 10)).unwrap();
        assert_eq!(c.snapshot()[0].stats.requests, 10);
        clock.0.fetch_add(60_000, Ordering::Relaxed);
        assert_eq!(c.snapshot()[0].stats.requests, 0);
        assert_eq!(c.destinations_json().destinations[0].lifetime.requests, 10);

        assert!(c
            .handle_report(&report(2, "c", 1))
            .unwrap()
            .hints
            .is_empty());
        c.set_hint_source(Arc::new(StaticHints::new(vec![(
            DestKey::new("", "c"),
            Hint {
                cluster: "c".into(),
                timeout_ms: 40,
                max_retries: None,
                concurrency_limit: 0,
                ttl_ms: 1000,
            },
        )])));
        let resp = c.handle_report(&report(3, "c", 1)).unwrap();
        assert_eq!(resp.hints.len(), 1);
        assert_eq!(resp.hints[0].timeout_ms, 40);
        assert_eq!(
            c.destinations_json().destinations[0]
                .hint
                .as_ref()
                .map(|h| h.timeout_ms),
            Some(40)
        );
    }
}
