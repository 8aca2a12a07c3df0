//! proxy-wasm glue (wasm32 only): the HTTP-filter root (one per worker VM, plus Envoy's
//! main-thread VM), its per-request contexts, and reporting from those roots alone: the worker
//! elected through the shared-data lease (or, with `report_mode: per_worker`, every worker)
//! merges windows, sends the Report and publishes the hints every worker applies.
//!
//! Every host call goes through `proxy_wasm::hostcalls` and its `Result` is handled; nothing
//! here unwraps host data, so a bad property or a failed call never traps the VM.

use crate::config::{Config, ConfigError, ReportMode, DEFAULT_NAMESPACE};
use crate::flags::le_u64;
use crate::hints::{
    acquire, decode_counter, decode_published, encode_published, release, ActiveHint, Admission,
    CasCell, HINTS_KEY, QUEUE_NAME, RETRIES_HEADER, SHED_HEADER, TIMEOUT_HEADER,
};
use crate::lease::{self, LeaseCell, LEASE_KEY};
use crate::report::{encode_worker_window, grpc_service_upstream, Aggregator, ReporterState};
use crate::sampling::{update_rates, Sampler, RATES_KEY};
use crate::window::{Protocol, RequestRecord, SlotId, Tracker};
use meshtune_proto::v1;
use meshtune_proto::{FEATURE_SERVICE, REPORT_METHOD};
use prost::Message;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// The reporter lease lasts this many flush intervals without renewal (the leader renews it
/// every tick): a worker takes over within about this long after the leader stopped.
const LEASE_FLUSH_INTERVALS: u64 = 2;
/// A worker's record on the rate board lasts this many flush intervals (it rewrites it every
/// flush while it has traffic).
const RATE_FLUSH_INTERVALS: u64 = 2;
/// Compare-and-swap attempts on the rate board per flush (then the others' rate counts as
/// unknown for this window: the worker samples on its own rate).
const RATE_CAS_ATTEMPTS: usize = 4;
/// Upper bound of queue items drained per callback.
const MAX_DRAIN: usize = 10_000;
/// Log a failed report on the first failure and then every this many.
const FAILURE_LOG_EVERY: u64 = 60;
/// Flushes in a row with nothing to do (no request finished or in flight, no hint, nothing
/// merged) after which a VM ticks only every `heartbeat_interval_ms` (quiet when idle).
const QUIET_FLUSHES_BEFORE_SLOW_TICKS: u32 = 3;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { context_id, worker: None, metrics: None })
    });
}}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn prop(path: Vec<&str>) -> Option<Vec<u8>> {
    hostcalls::get_property(path).ok().flatten()
}

fn prop_u64(path: Vec<&str>) -> Option<u64> {
    prop(path).and_then(|b| le_u64(&b))
}

fn prop_string(path: Vec<&str>) -> Option<String> {
    prop(path)
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| !s.is_empty())
}

/// The Envoy counters the filter exports (as `wasmcustom.meshtune_*` in /stats).
#[derive(Debug, Clone, Copy, Default)]
struct Metrics {
    requests_observed: Option<u32>,
    reports_sent: Option<u32>,
    reports_failed: Option<u32>,
    reports_dropped: Option<u32>,
    windows_dropped: Option<u32>,
    hints_applied: Option<u32>,
    requests_shed: Option<u32>,
    config_errors: Option<u32>,
    untracked_clusters: Option<u32>,
}

impl Metrics {
    fn define() -> Self {
        let c = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        Metrics {
            requests_observed: c("meshtune_requests_observed"),
            reports_sent: c("meshtune_reports_sent"),
            reports_failed: c("meshtune_reports_failed"),
            reports_dropped: c("meshtune_reports_dropped"),
            windows_dropped: c("meshtune_windows_dropped"),
            hints_applied: c("meshtune_hints_applied"),
            requests_shed: c("meshtune_requests_shed"),
            config_errors: c("meshtune_config_errors"),
            untracked_clusters: c("meshtune_untracked_clusters"),
        }
    }

    fn add(id: Option<u32>, n: u64) {
        if let (Some(id), true) = (id, n > 0) {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

struct Root {
    context_id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
    metrics: Option<Metrics>,
}

impl Context for Root {
    /// The plugin configuration goes away (a new one replaces it): stop ticking and hand the
    /// lease over at once, so a root context of the new configuration takes over at its next
    /// tick rather than after the lease's TTL (up to 2 heartbeat intervals when idle).
    fn on_done(&mut self) -> bool {
        if let Some(Ok(mut w)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) {
            w.retire();
        }
        true
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Some(Ok(mut w)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) {
            w.on_response(token_id, status_code, response_size);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let metrics = *self.metrics.get_or_insert_with(Metrics::define);
        let bytes = if plugin_configuration_size == 0 {
            Vec::new()
        } else {
            hostcalls::get_buffer(
                BufferType::PluginConfiguration,
                0,
                plugin_configuration_size,
            )
            .ok()
            .flatten()
            .unwrap_or_default()
        };
        let cfg = match Config::from_json(&bytes) {
            Ok(c) => c,
            Err(e) => {
                Metrics::add(metrics.config_errors, 1);
                log(LogLevel::Error, &config_error_message(&e));
                return false;
            }
        };
        // A reconfiguration keeps nothing from the old worker state.
        let now = now_ns();
        let tick_ms = (cfg.flush_interval_ms / 4).max(100);
        let worker = Worker::new(cfg, self.context_id, now, u64::from(tick_ms), metrics);
        self.worker = Some(Rc::new(RefCell::new(worker)));
        let _ = hostcalls::set_tick_period(Duration::from_millis(u64::from(tick_ms)));
        true
    }

    fn on_tick(&mut self) {
        if let Some(Ok(mut w)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) {
            w.on_tick();
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Some(Ok(mut w)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) {
            // Another worker has traffic: report at the flush interval again.
            w.wake(now_ns());
            if let Some(r) = w.reporter.as_mut() {
                r.drain(queue_id);
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            worker: self.worker.as_ref().map(Rc::clone),
            slot: None,
            weight: 0,
            unmeasured: false,
            start_ns: 0,
            started: false,
            shed: false,
            counted: false,
            request_body_bytes: 0,
            response_body_bytes: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn config_error_message(e: &ConfigError) -> String {
    format!("meshtune: invalid configuration: {e}")
}

/// Metric increments batched until the next tick (no host call per request).
#[derive(Debug, Default)]
struct Pending {
    observed: u64,
    shed: u64,
    hints_applied: u64,
}

/// The reporter identity of this Envoy (read once per VM, at configure time) and the name
/// its reports carry as `vm_id`: the configured `vm_id`, else the plugin name (Istio's
/// WasmPlugin sets no `vm_id`; the plugin name is `<namespace>.<name>`), else `meshtune`.
fn identity(cfg: &Config) -> v1::Reporter {
    let pick = |configured: &str, key: &str| -> String {
        if configured.is_empty() {
            prop_string(vec!["node", "metadata", key]).unwrap_or_default()
        } else {
            configured.to_string()
        }
    };
    let mut namespace = pick(&cfg.namespace, "NAMESPACE");
    if namespace.is_empty() {
        namespace = DEFAULT_NAMESPACE.to_string();
    }
    let vm_name = prop_string(vec!["plugin_vm_id"])
        .or_else(|| prop_string(vec!["plugin_name"]))
        .unwrap_or_else(|| "meshtune".into());
    v1::Reporter {
        namespace,
        workload: pick(&cfg.workload, "WORKLOAD_NAME"),
        pod: pick(&cfg.pod, "NAME"),
        vm_id: vm_name,
        filter_version: crate::FILTER_VERSION.to_string(),
        node_id: prop_string(vec!["node", "id"]).unwrap_or_default(),
    }
}

/// Per-worker-VM state shared by the HTTP contexts of that VM.
struct Worker {
    cfg: Config,
    tracker: Tracker,
    /// Which requests are measured (see [`crate::sampling`]).
    sampler: Sampler,
    /// Some tracked cluster has a hint: every request reads its cluster (hints apply to
    /// every request, measured or not).
    hinted: bool,
    /// Lease holder id of this VM.
    id: u64,
    /// This VM's name in queued windows (`reporter.vm_id` of a worker window).
    window_name: String,
    /// The configured `vm_id` as Envoy keys shared queues by it (may be empty).
    vm_id: String,
    identity: v1::Reporter,
    /// The windows queue as resolved by a follower.
    queue: Option<u32>,
    hints_version: Option<u32>,
    last_flush_ns: u64,
    tick_ms: u64,
    pending: Pending,
    metrics: Metrics,
    /// Some worker holds a valid lease (so queued windows have a reader).
    leader_alive: bool,
    /// Present while this worker reports: the elected leader, or every worker in
    /// `per_worker` mode.
    reporter: Option<Box<Reporter>>,
    /// Ticking every `heartbeat_interval_ms` instead of `tick_ms` (idle).
    slow: bool,
    /// Expiry (unix ms) of the lease this VM last renewed; 0 = not the holder.
    lease_until_ms: u64,
    /// Flushes in a row with nothing to do.
    quiet_flushes: u32,
}

impl Worker {
    fn new(cfg: Config, context_id: u32, now: u64, tick_ms: u64, metrics: Metrics) -> Self {
        let vm_id = prop(vec!["plugin_vm_id"])
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let id = lease::worker_id(now, context_id, &vm_id);
        let window_name = format!("{id:016x}");
        let mut identity = identity(&cfg);
        let reporter = (cfg.report_mode == ReportMode::PerWorker).then(|| {
            identity.vm_id = format!("{}/{window_name}", identity.vm_id);
            Box::new(Reporter::new(
                &cfg,
                ReporterState::new(now / 1_000_000),
                None,
                metrics,
            ))
        });
        Worker {
            tracker: Tracker::new(cfg.max_upstreams, now),
            sampler: Sampler::new(cfg.sample_above_rps, id ^ now, now),
            hinted: false,
            id,
            window_name,
            vm_id,
            identity,
            queue: None,
            hints_version: None,
            last_flush_ns: now,
            tick_ms,
            pending: Pending::default(),
            metrics,
            leader_alive: false,
            reporter,
            slow: false,
            lease_until_ms: 0,
            quiet_flushes: 0,
            cfg,
        }
    }

    fn on_tick(&mut self) {
        let now = now_ns();
        self.sampler.tick(now);
        self.refresh_hints(now);
        self.hinted = self.tracker.slots_mut().any(|s| s.hint.is_some());
        let flush_ns = u64::from(self.cfg.flush_interval_ms) * 1_000_000;
        let half_tick_ns = self.tick_ms * 500_000;
        let flush_due = now.saturating_sub(self.last_flush_ns) + half_tick_ns >= flush_ns;
        if self.cfg.report_mode == ReportMode::Elected {
            // A leader about to flush renews its lease right after the report (in `flush`);
            // while the lease it holds is valid nobody else can claim it, so the check before
            // would only repeat that renewal (one shared-data read and CAS per flush fewer).
            let renewed_by_flush = flush_due
                && self.reporter.is_some()
                && crate::idle::lease_held(now / 1_000_000, self.lease_until_ms);
            if !renewed_by_flush {
                self.elect(now / 1_000_000);
            }
        }
        if flush_due {
            self.flush(now);
        }
    }

    /// The lease outlives this many of the holder's ticks: flush intervals, or heartbeat
    /// intervals while it ticks slowly (idle), so an idle leader keeps its lease.
    fn lease_ttl_ms(&self) -> u64 {
        let period = if self.slow {
            self.slow_tick_ms()
        } else {
            u64::from(self.cfg.flush_interval_ms)
        };
        LEASE_FLUSH_INTERVALS * period
    }

    /// Tick period while idle.
    fn slow_tick_ms(&self) -> u64 {
        u64::from(
            self.cfg
                .heartbeat_interval_ms
                .max(self.cfg.flush_interval_ms),
        )
    }

    /// Back to ticking every `tick_ms` (a request arrived, or another worker queued a
    /// window). The idle window restarts now, so the next window covers only the time since.
    fn wake(&mut self, now: u64) {
        self.quiet_flushes = 0;
        if !self.slow {
            return;
        }
        self.slow = false;
        let _ = hostcalls::set_tick_period(Duration::from_millis(self.tick_ms));
        // The hints published while it ticked slowly apply from this request on, not from
        // its next tick.
        self.refresh_hints(now);
        self.hinted = self.tracker.slots_mut().any(|s| s.hint.is_some());
        if !self.tracker.window_has_requests() {
            let _ = self.tracker.take_window(now);
            self.last_flush_ns = now;
            // The sampler's rate too: else the first window after idle under-estimates it
            // by the idle time and the window after that is measured almost in full.
            self.sampler.restart(now);
        }
    }

    /// After a flush: `quiet` = nothing happened; after a few such flushes tick slowly.
    ///
    /// Every VM keeps ticking once per heartbeat, followers too: a follower that stopped
    /// ticking could not take the lease over when the leader's VM goes away (a new plugin
    /// configuration replaces every root context), and windows it queued would wait for a
    /// reader until traffic resumed (`reporting_survives_a_new_plugin_configuration`).
    fn note_quiet(&mut self, quiet: bool) {
        if !quiet {
            self.quiet_flushes = 0;
            return;
        }
        self.quiet_flushes = self.quiet_flushes.saturating_add(1);
        if !self.slow && self.quiet_flushes >= QUIET_FLUSHES_BEFORE_SLOW_TICKS {
            self.slow = true;
            let _ = hostcalls::set_tick_period(Duration::from_millis(self.slow_tick_ms()));
        }
    }

    /// One election step (see [`crate::lease`]): becomes or stays the reporter, or follows.
    fn elect(&mut self, now_ms: u64) {
        let progress = self
            .reporter
            .as_ref()
            .map(|r| (r.state.sequence(), r.state.dropped_reports));
        let ttl = self.lease_ttl_ms();
        self.lease_until_ms = 0;
        match lease::step(&mut SharedLease, self.id, now_ms, ttl, progress) {
            lease::Role::Leader { resume } => {
                self.leader_alive = true;
                self.lease_until_ms = now_ms.saturating_add(ttl);
                if self.reporter.is_none() {
                    let state =
                        ReporterState::resume(now_ms, resume.sequence, resume.dropped_reports);
                    // Registering moves the queue's delivery to this VM (queued windows stay).
                    let queue = hostcalls::register_shared_queue(QUEUE_NAME).ok();
                    log(
                        LogLevel::Info,
                        &format!(
                            "meshtune: worker {} reports for this Envoy (from sequence {})",
                            self.window_name,
                            resume.sequence + 1
                        ),
                    );
                    self.reporter = Some(Box::new(Reporter::new(
                        &self.cfg,
                        state,
                        queue,
                        self.metrics,
                    )));
                }
            }
            lease::Role::Candidate => {
                self.leader_alive = false;
                self.step_down();
                // It leads from its next renewal: tick fast for it (an idle VM would otherwise
                // take a whole heartbeat interval to start reporting the windows queued for
                // the leader that went away).
                if self.slow {
                    self.wake(now_ms.saturating_mul(1_000_000));
                }
            }
            lease::Role::Follower { leader_alive } => {
                self.leader_alive = leader_alive;
                self.step_down();
            }
        }
    }

    /// The root context is going away: no more ticks; the leader releases the lease (keeping
    /// its sequence for the successor).
    fn retire(&mut self) {
        let _ = hostcalls::set_tick_period(Duration::ZERO);
        if self.cfg.report_mode == ReportMode::Elected {
            if let Some(r) = self.reporter.as_ref() {
                let progress = Some((r.state.sequence(), r.state.dropped_reports));
                let _ = lease::release(&mut SharedLease, self.id, progress);
            }
        }
        self.lease_until_ms = 0;
        self.step_down();
    }

    /// No longer the reporter: windows merged and not yet reported are lost (counted).
    fn step_down(&mut self) {
        if let Some(r) = self.reporter.take() {
            Metrics::add(self.metrics.windows_dropped, u64::from(r.agg.windows()));
        }
    }

    fn refresh_hints(&mut self, now: u64) {
        // Expired hints are dropped so their slots can be freed when idle.
        let now_ms = now / 1_000_000;
        for s in self.tracker.slots_mut() {
            if s.hint.as_ref().is_some_and(|h| !h.is_active(now_ms)) {
                s.hint = None;
            }
        }
        let (bytes, version) = match hostcalls::get_shared_data(HINTS_KEY) {
            Ok((Some(b), v)) => (b, v),
            _ => return,
        };
        if version.is_some() && version == self.hints_version {
            return;
        }
        self.hints_version = version;
        let Some((received_ms, resp)) = decode_published(&bytes) else {
            return;
        };
        // The latest response replaces all hints; the TTL covers a silent controller.
        for s in self.tracker.slots_mut() {
            s.hint = None;
        }
        for h in &resp.hints {
            let Some(active) = ActiveHint::from_hint(h, received_ms) else {
                continue;
            };
            if let Some(id) = self.tracker.slot_for(&h.cluster, now) {
                if let Some(s) = self.tracker.slot_mut(id) {
                    s.hint = Some(active);
                }
            }
        }
    }

    fn flush(&mut self, now: u64) {
        self.last_flush_ns = now;
        // N for the next window, from the Envoy's arrival rate over this window.
        let others = self.exchange_rates(now);
        self.sampler.adapt(now, others);
        let window = self.tracker.take_window(now);
        // Nothing finished or in flight (an open request keeps its cluster in the window).
        let quiet = window.upstreams.is_empty() && !self.hinted;
        let p = std::mem::take(&mut self.pending);
        Metrics::add(self.metrics.requests_observed, p.observed);
        Metrics::add(self.metrics.requests_shed, p.shed);
        Metrics::add(self.metrics.hints_applied, p.hints_applied);
        Metrics::add(
            self.metrics.untracked_clusters,
            self.tracker.take_untracked(),
        );
        let bytes = (!window.upstreams.is_empty())
            .then(|| encode_worker_window(&self.window_name, &window));
        let now_ms = now / 1_000_000;
        if let Some(r) = self.reporter.as_mut() {
            if let Some(b) = &bytes {
                // Errors are counted inside the aggregator.
                let _ = r.agg.merge_bytes(b);
            }
            // Nothing sent when idle and the heartbeat is not due.
            let _sent = r.report(&self.identity, now_ms);
            let merged = r.merged_last > 0;
            let progress = Some((r.state.sequence(), r.state.dropped_reports));
            self.note_quiet(quiet && !merged);
            if self.cfg.report_mode == ReportMode::Elected {
                // Store the sequence just used, so a successor continues above it; the
                // lease's TTL follows the tick period (longer once idle).
                let ttl = self.lease_ttl_ms();
                if matches!(
                    lease::step(&mut SharedLease, self.id, now_ms, ttl, progress),
                    lease::Role::Leader { .. }
                ) {
                    self.lease_until_ms = now_ms.saturating_add(ttl);
                } else {
                    self.lease_until_ms = 0;
                    self.leader_alive = false;
                    self.step_down();
                }
            }
            return;
        }
        self.note_quiet(quiet);
        let Some(bytes) = bytes else {
            return;
        };
        if !self.leader_alive {
            // Nobody would drain the queue.
            Metrics::add(self.metrics.windows_dropped, 1);
            return;
        }
        if self.queue.is_none() {
            self.queue = hostcalls::resolve_shared_queue(&self.vm_id, QUEUE_NAME)
                .ok()
                .flatten();
        }
        let Some(q) = self.queue else {
            Metrics::add(self.metrics.windows_dropped, 1);
            return;
        };
        if hostcalls::enqueue_shared_queue(q, Some(&bytes)).is_err() {
            self.queue = None;
            Metrics::add(self.metrics.windows_dropped, 1);
        }
    }

    /// Writes this worker's rate over the window ending now on the rate board and returns
    /// the other workers' (requests per second; see [`crate::sampling::update_rates`]). No
    /// host call when the worker had no request (its record expires) or never samples.
    fn exchange_rates(&mut self, now: u64) -> u64 {
        let own = self.sampler.window_rate_rps(now);
        if own == 0 || self.sampler.threshold_rps() == 0 {
            return 0;
        }
        let now_ms = now / 1_000_000;
        let ttl_ms = RATE_FLUSH_INTERVALS * u64::from(self.cfg.flush_interval_ms);
        for _ in 0..RATE_CAS_ATTEMPTS {
            let (board, cas) = match hostcalls::get_shared_data(RATES_KEY) {
                Ok((b, cas)) => (b.unwrap_or_default(), cas),
                Err(_) => return 0,
            };
            let (next, others) = update_rates(&board, self.id, own, now_ms, ttl_ms);
            match hostcalls::set_shared_data(RATES_KEY, Some(&next), cas) {
                Ok(()) => return others,
                Err(proxy_wasm::types::Status::CasMismatch) => continue,
                Err(_) => return others,
            }
        }
        0
    }

    fn on_response(&mut self, token: u32, status: u32, size: usize) {
        if let Some(r) = self.reporter.as_mut() {
            r.on_response(token, status, size);
        }
    }
}

/// The reporter lease in shared data.
struct SharedLease;

impl LeaseCell for SharedLease {
    fn load(&self) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(LEASE_KEY) {
            Ok((Some(b), Some(cas))) => Some((b, cas)),
            _ => None,
        }
    }

    fn store(&mut self, bytes: &[u8], version: Option<u32>) -> bool {
        hostcalls::set_shared_data(LEASE_KEY, Some(bytes), version).is_ok()
    }
}

/// A per-Envoy in-flight counter in shared data.
struct SharedCell<'a>(&'a str);

impl CasCell for SharedCell<'_> {
    fn load(&self) -> Option<(u64, u32)> {
        match hostcalls::get_shared_data(self.0) {
            Ok((Some(b), Some(cas))) => decode_counter(&b).map(|v| (v, cas)),
            _ => None,
        }
    }

    fn store(&mut self, value: u64, version: u32) -> bool {
        hostcalls::set_shared_data(self.0, Some(&value.to_le_bytes()), Some(version)).is_ok()
    }
}

struct Http {
    worker: Option<Rc<RefCell<Worker>>>,
    slot: Option<SlotId>,
    /// Weight of a measured request (0 = not decided at request start).
    weight: u32,
    /// Not measured (sampling): `on_log` only counts it.
    unmeasured: bool,
    start_ns: u64,
    started: bool,
    shed: bool,
    /// Holds a place in the shared in-flight counter of its cluster.
    counted: bool,
    request_body_bytes: u64,
    response_body_bytes: u64,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.as_ref() else {
            return Action::Continue;
        };
        let Ok(mut w) = worker.try_borrow_mut() else {
            return Action::Continue;
        };
        if w.slow {
            w.wake(now_ns());
        }
        let weight = w.sampler.admit();
        if let Some(weight) = weight {
            self.weight = weight;
        }
        if weight.is_none() {
            self.unmeasured = true;
            if !w.hinted {
                // Not measured and no hint to apply: no host call at all.
                return Action::Continue;
            }
        }
        let Some(cluster) = prop(vec!["xds", "cluster_name"]) else {
            return Action::Continue;
        };
        let Ok(cluster) = std::str::from_utf8(&cluster) else {
            return Action::Continue;
        };
        let now = now_ns();
        let Some(id) = w.tracker.slot_for(cluster, now) else {
            return Action::Continue;
        };
        self.slot = Some(id);
        let mut shed = false;
        let mut applied = false;
        if let Some(slot) = w.tracker.slot(id) {
            if let Some(h) = slot.hint.as_ref().filter(|h| h.is_active(now / 1_000_000)) {
                if h.concurrency_limit > 0 {
                    match acquire(&mut SharedCell(&slot.limit_key), h.concurrency_limit) {
                        Admission::Shed => shed = true,
                        Admission::Admitted => self.counted = true,
                        Admission::Uncounted => {}
                    }
                }
                if !shed {
                    if let Some(v) = &h.timeout_ms {
                        let _ = hostcalls::set_map_value(
                            MapType::HttpRequestHeaders,
                            TIMEOUT_HEADER,
                            Some(v),
                        );
                        applied = true;
                    }
                    if let Some(v) = &h.max_retries {
                        let _ = hostcalls::set_map_value(
                            MapType::HttpRequestHeaders,
                            RETRIES_HEADER,
                            Some(v),
                        );
                        applied = true;
                    }
                }
            }
        }
        if shed {
            w.tracker.record_shed(id);
            w.pending.shed += 1;
            w.pending.observed += 1;
            self.shed = true;
            drop(w);
            let _ = hostcalls::send_http_response(
                503,
                vec![(SHED_HEADER, "1"), ("content-type", "text/plain")],
                Some(b"meshtune: concurrency limit reached\n"),
            );
            return Action::Pause;
        }
        if applied || self.counted {
            w.pending.hints_applied += 1;
        }
        if let Some(weight) = weight {
            w.tracker.start_weighted(id, now, weight);
            self.start_ns = now;
            self.started = true;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        // Not buffering, so Envoy passes each chunk's length.
        self.request_body_bytes += body_size as u64;
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.response_body_bytes += body_size as u64;
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.shed {
            return; // recorded when shed
        }
        let Some(worker) = self.worker.as_ref() else {
            return;
        };
        let Ok(mut w) = worker.try_borrow_mut() else {
            return;
        };
        w.pending.observed += 1;
        if self.unmeasured {
            w.tracker.unmeasured();
            if self.counted {
                self.counted = false;
                if let Some(slot) = self.slot.and_then(|id| w.tracker.slot(id)) {
                    release(&mut SharedCell(&slot.limit_key));
                }
            }
            return;
        }
        let now = now_ns();
        // Headers never reached the filter: measured, weight 1.
        let weight = self.weight.max(1);
        let id = match self.slot {
            Some(id) => id,
            None => {
                // Not routed at request start (or headers never reached the filter).
                let Some(name) = prop(vec!["xds", "cluster_name"])
                    .and_then(|n| String::from_utf8(n).ok())
                    .and_then(|n| w.tracker.slot_for(&n, now))
                else {
                    w.tracker.measured_untracked(weight);
                    return;
                };
                name
            }
        };
        let duration_us = if self.started {
            Some(now.saturating_sub(self.start_ns) / 1000)
        } else {
            prop_u64(vec!["request", "duration"]).map(|ns| ns / 1000)
        };
        let status = prop_u64(vec!["response", "code"])
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(0);
        let sampled = crate::window::samples_protocol(w.tracker.finished_in_window(id));
        let rec = RequestRecord {
            status,
            // Saves a property read on the common path; see `flags::may_carry_flags`.
            flags: if crate::flags::may_carry_flags(status) {
                prop_u64(vec!["response", "flags"]).unwrap_or(0)
            } else {
                0
            },
            attempts: prop_u64(vec!["upstream", "request_attempt_count"]).unwrap_or(0),
            // Body bytes counted in the body callbacks (free: Envoy calls them anyway) instead
            // of two `*.total_size` property reads per request.
            request_bytes: self.request_body_bytes,
            response_bytes: self.response_body_bytes,
            // Sampled (see `window::PROTOCOL_SAMPLE_EVERY`): one property read saved on 15
            // of 16 requests; the controller only uses the protocol fraction.
            protocol: sampled.then(|| {
                prop(vec!["request", "protocol"])
                    .map_or(Protocol::Other, |p| Protocol::from_bytes(&p))
            }),
            duration_us,
            // Same samples: the distinct endpoints of a window (the policy's `endpoints`).
            endpoint: if sampled {
                prop(vec!["upstream", "address"]).map(|a| crate::window::endpoint_hash(&a))
            } else {
                None
            },
        };
        if self.started {
            w.tracker.finish_weighted(id, now, &rec, weight);
        } else {
            w.tracker.record_only_weighted(id, &rec, weight);
        }
        if self.counted {
            self.counted = false;
            if let Some(slot) = w.tracker.slot(id) {
                release(&mut SharedCell(&slot.limit_key));
            }
        }
    }
}

/// The reporting side of a worker: merges windows (its own and, when elected, the queued ones
/// of the other workers), reports once per flush, publishes the hints.
struct Reporter {
    cfg: Config,
    agg: Aggregator,
    state: ReporterState,
    /// Serialized `envoy.config.core.v3.GrpcService` (envoy_grpc: cluster, authority).
    grpc_service: String,
    queue: Option<u32>,
    metrics: Metrics,
    /// Shared in-flight counters of clusters that currently have a concurrency limit.
    limit_keys: Vec<String>,
    failures: u64,
    /// When the last Report was built (unix ms; 0 = never).
    last_report_ms: u64,
    /// Windows merged for the last flush.
    merged_last: u32,
    /// The last response this reporter published carried hints.
    published_hints: bool,
}

impl Reporter {
    fn new(cfg: &Config, state: ReporterState, queue: Option<u32>, metrics: Metrics) -> Self {
        Reporter {
            agg: Aggregator::new(cfg.max_upstreams, cfg.max_queued_windows),
            state,
            grpc_service: grpc_service_upstream(&cfg.controller_cluster, &cfg.authority()),
            queue,
            metrics,
            limit_keys: Vec::new(),
            failures: 0,
            last_report_ms: 0,
            merged_last: 0,
            // A previous leader may have published hints: the first response always replaces
            // them.
            published_hints: true,
            cfg: cfg.clone(),
        }
    }

    fn drain(&mut self, queue_id: u32) {
        for _ in 0..MAX_DRAIN {
            match hostcalls::dequeue_shared_queue(queue_id) {
                Ok(Some(bytes)) => {
                    // Errors are counted inside the aggregator.
                    let _ = self.agg.merge_bytes(&bytes);
                }
                _ => break,
            }
        }
        Metrics::add(self.metrics.windows_dropped, self.agg.take_dropped());
    }

    /// Sends one Report with everything merged since the last one.
    /// Sends one Report with everything merged since the last one; returns false (and sends
    /// nothing) when nothing was merged and the heartbeat is not due (quiet when idle).
    fn report(&mut self, identity: &v1::Reporter, now_ms: u64) -> bool {
        if let Some(q) = self.queue {
            self.drain(q);
        }
        Metrics::add(self.metrics.untracked_clusters, self.agg.take_untracked());
        self.merged_last = self.agg.windows();
        if !crate::report::report_due(
            self.agg.windows(),
            self.last_report_ms,
            now_ms,
            self.cfg.heartbeat_interval_ms,
        ) {
            return false;
        }
        self.last_report_ms = now_ms;
        let report = self.state.build(identity, &mut self.agg, now_ms);
        if !self.state.may_send() {
            self.failed("previous report still outstanding", false);
            return true;
        }
        let body = report.encode_to_vec();
        match hostcalls::dispatch_grpc_call(
            &self.grpc_service,
            FEATURE_SERVICE,
            REPORT_METHOD,
            Vec::new(),
            Some(&body),
            Duration::from_millis(u64::from(self.cfg.report_timeout_ms)),
        ) {
            Ok(token) => self.state.outstanding = Some(token),
            Err(status) => {
                self.state.dispatch_failed();
                self.failed(&format!("dispatch failed: {status:?}"), true);
            }
        }
        true
    }

    fn failed(&mut self, why: &str, call_failed: bool) {
        Metrics::add(self.metrics.reports_dropped, 1);
        if call_failed {
            Metrics::add(self.metrics.reports_failed, 1);
        }
        if self.failures.is_multiple_of(FAILURE_LOG_EVERY) {
            log(
                LogLevel::Warn,
                &format!(
                    "meshtune: report to cluster `{}` dropped ({why}); {} dropped so far",
                    self.cfg.controller_cluster, self.state.dropped_reports
                ),
            );
        }
        self.failures += 1;
    }

    fn on_response(&mut self, token: u32, status: u32, size: usize) {
        if status != 0 {
            self.state.call_done(token, false);
            let msg = hostcalls::get_grpc_status()
                .ok()
                .and_then(|(_, m)| m)
                .unwrap_or_default();
            self.failed(&format!("gRPC status {status} {msg}"), true);
            return;
        }
        self.state.call_done(token, true);
        Metrics::add(self.metrics.reports_sent, 1);
        self.failures = 0;
        let body = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match v1::ReportResponse::decode(body.as_slice()) {
            Ok(resp) => self.publish(&resp),
            Err(e) => log(
                LogLevel::Warn,
                &format!("meshtune: undecodable ReportResponse ignored: {e}"),
            ),
        }
    }

    fn publish(&mut self, resp: &v1::ReportResponse) {
        if !crate::idle::must_publish(resp, self.published_hints) {
            // No hints now and none in force: nothing for the workers to re-read (a quiet
            // heartbeat costs no shared-data write and no decode in every VM).
            return;
        }
        self.published_hints = crate::idle::has_hints(resp);
        let now_ms = now_ns() / 1_000_000;
        // Counters for concurrency limits exist before workers see the limit; counters of
        // clusters that lost their limit are reset (recovers places leaked by a dead VM).
        let mut keys = Vec::new();
        for h in resp
            .hints
            .iter()
            .filter(|h| h.concurrency_limit > 0 && h.ttl_ms > 0)
        {
            let key = format!("meshtune.inflight.{}", h.cluster);
            if let Ok((None, _)) = hostcalls::get_shared_data(&key) {
                let _ = hostcalls::set_shared_data(&key, Some(&0u64.to_le_bytes()), None);
            }
            keys.push(key);
        }
        for old in self.limit_keys.iter().filter(|k| !keys.contains(k)) {
            let _ = hostcalls::set_shared_data(old, Some(&0u64.to_le_bytes()), None);
        }
        self.limit_keys = keys;
        let bytes = encode_published(now_ms, resp);
        let _ = hostcalls::set_shared_data(HINTS_KEY, Some(&bytes), None);
    }
}
