//! A finite-capacity HTTP upstream ("workload"): at most `capacity` requests are served at
//! once, the rest queue (like a thread pool in front of a real service); each request holds
//! its slot for a sampled service time. Errors are injected exactly so tests know the count:
//!
//! - `GET /fail` (or any request with header `x-fail: 1`) → 503 after the service time;
//! - `fail_every_n = N` → every N-th request served on `/` is a 503 (deterministic);
//! - `GET /slow?ms=300` → sleeps `ms` (no capacity slot) then 200;
//! - `GET /counters` → JSON [`Counters`] (not counted as traffic).
//!
//! [`Behaviour`] adds what a simulator scenario's host does (see `meshtune-sim`): a base 503
//! probability and timed faults (slower service, more errors, or the host down: connections
//! refused), measured from the server's epoch ([`WorkloadServer::reset_epoch`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use rand_distr::{Distribution, Exp, LogNormal};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// Default number of requests served concurrently.
pub const DEFAULT_CAPACITY: usize = 64;

/// Errors starting the workload server.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("workload: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("workload: cannot start runtime: {0}")]
    Runtime(std::io::Error),
    #[error("workload: invalid service time: {0}")]
    ServiceTime(String),
}

/// Service-time distribution of one request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ServiceTime {
    /// Always this long.
    Constant(Duration),
    /// Exponential with this mean.
    Exponential { mean: Duration },
    /// Log-normal with this median and shape sigma (of the underlying normal).
    LogNormal { median: Duration, sigma: f64 },
    /// Two exponentials: `slow_fraction` of requests have mean `slow`, the rest mean `fast`.
    Bimodal {
        fast: Duration,
        slow: Duration,
        slow_fraction: f64,
    },
}

impl ServiceTime {
    /// Draws one service time.
    pub fn sample(&self) -> Duration {
        let mut rng = rand::rng();
        match *self {
            ServiceTime::Constant(d) => d,
            ServiceTime::Exponential { mean } => exponential(&mut rng, mean),
            ServiceTime::Bimodal {
                fast,
                slow,
                slow_fraction,
            } => {
                let slow_one = rand::Rng::random_bool(&mut rng, slow_fraction.clamp(0.0, 1.0));
                exponential(&mut rng, if slow_one { slow } else { fast })
            }
            ServiceTime::LogNormal { median, sigma } => {
                let mu = median.as_secs_f64().max(1e-9).ln();
                let ln = LogNormal::new(mu, sigma.max(0.0)).expect("finite sigma");
                Duration::from_secs_f64(ln.sample(&mut rng).min(60.0))
            }
        }
    }

    /// Parses `const:5ms`, `exp:5ms`, `lognormal:5ms:0.5` (units ms/us/s).
    pub fn parse(s: &str) -> Result<Self, WorkloadError> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || WorkloadError::ServiceTime(s.to_string());
        let dur = |p: &str| parse_duration(p).ok_or_else(bad);
        match parts.as_slice() {
            ["const", d] => Ok(ServiceTime::Constant(dur(d)?)),
            ["exp", d] => Ok(ServiceTime::Exponential { mean: dur(d)? }),
            ["lognormal", d, sigma] => Ok(ServiceTime::LogNormal {
                median: dur(d)?,
                sigma: sigma.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }
}

fn exponential(rng: &mut impl rand::Rng, mean: Duration) -> Duration {
    let m = mean.as_secs_f64();
    if m <= 0.0 {
        return Duration::ZERO;
    }
    let e = Exp::new(1.0 / m).expect("positive rate");
    Duration::from_secs_f64(e.sample(rng).min(60.0))
}

/// Parses `250ms`, `10us`, `2s`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let v: f64 = num.parse().ok()?;
    (v >= 0.0 && v.is_finite()).then(|| Duration::from_secs_f64(v * mul))
}

/// Workload server configuration.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Requests served concurrently; the rest wait in a FIFO queue.
    pub capacity: usize,
    /// Service time of `/` and `/fail`.
    pub service_time: ServiceTime,
    /// Every N-th request on `/` gets a 503 (None = never).
    pub fail_every_n: Option<u64>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            service_time: ServiceTime::Constant(Duration::from_millis(1)),
            fail_every_n: None,
        }
    }
}

/// One timed fault of a host, from `from` until `until` (None: to the end), measured from the
/// server's epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    pub from: Duration,
    pub until: Option<Duration>,
    pub kind: FaultKind,
}

/// What goes wrong during a [`Fault`] (the simulator's `hosts.failures` kinds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    /// Service times multiplied by `factor`.
    Slow { factor: f64 },
    /// 503 with probability `rate` (replaces the base error rate).
    Errors { rate: f64 },
    /// Connections refused: the listener is closed and open connections are reset.
    Down,
}

/// A host's behaviour beyond its capacity and service time: a base 503 probability and timed
/// faults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Behaviour {
    /// Probability that a response on `/` is a 503 (after its service time).
    pub error_rate: f64,
    pub faults: Vec<Fault>,
    /// Serve a request to the end even when its client went away (a reset while queued or in
    /// service), as a server that does not notice resets; false: the request is dropped with
    /// its connection.
    pub finish_abandoned: bool,
}

impl Behaviour {
    fn active(&self, at: Duration) -> impl Iterator<Item = FaultKind> + '_ {
        self.faults
            .iter()
            .filter(move |f| at >= f.from && f.until.is_none_or(|u| at < u))
            .map(|f| f.kind)
    }

    /// Service-time multiplier at `at` (product of the active slow faults).
    pub fn service_factor(&self, at: Duration) -> f64 {
        self.active(at)
            .map(|k| match k {
                FaultKind::Slow { factor } => factor,
                _ => 1.0,
            })
            .product()
    }

    /// 503 probability at `at` (an active error fault replaces the base rate).
    pub fn error_rate_at(&self, at: Duration) -> f64 {
        self.active(at)
            .filter_map(|k| match k {
                FaultKind::Errors { rate } => Some(rate),
                _ => None,
            })
            .last()
            .unwrap_or(self.error_rate)
    }

    /// Whether the host is down at `at`.
    pub fn down_at(&self, at: Duration) -> bool {
        self.active(at).any(|k| k == FaultKind::Down)
    }

    fn has_down(&self) -> bool {
        self.faults.iter().any(|f| f.kind == FaultKind::Down)
    }
}

/// The instant faults are measured from (shared by the server and its gate).
#[derive(Debug, Clone)]
struct Epoch(Arc<std::sync::Mutex<std::time::Instant>>);

impl Epoch {
    fn now() -> Self {
        Self(Arc::new(std::sync::Mutex::new(std::time::Instant::now())))
    }
    fn elapsed(&self) -> Duration {
        self.0.lock().map(|t| t.elapsed()).unwrap_or_default()
    }
    fn reset(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = std::time::Instant::now();
        }
    }
}

/// What the server has seen (served by `GET /counters`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Requests received (all traffic paths).
    pub requests: u64,
    /// Responses with status 2xx.
    pub ok: u64,
    /// Injected 503s.
    pub injected_503: u64,
    /// `/slow` requests.
    pub slow: u64,
    /// Largest number of requests in the server at once (queued + served).
    pub inflight_max: u64,
}

#[derive(Default)]
struct Shared {
    requests: AtomicU64,
    ok: AtomicU64,
    injected: AtomicU64,
    slow: AtomicU64,
    inflight: AtomicU64,
    inflight_max: AtomicU64,
    nth: AtomicU64,
}

impl Shared {
    fn snapshot(&self) -> Counters {
        Counters {
            requests: self.requests.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            injected_503: self.injected.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
            inflight_max: self.inflight_max.load(Ordering::Relaxed),
        }
    }
}

struct Inflight<'a>(&'a Shared);
impl<'a> Inflight<'a> {
    fn enter(s: &'a Shared) -> Self {
        s.requests.fetch_add(1, Ordering::Relaxed);
        let now = s.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        s.inflight_max.fetch_max(now, Ordering::Relaxed);
        Inflight(s)
    }
}
impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct AppState {
    cfg: Arc<WorkloadConfig>,
    behaviour: Arc<Behaviour>,
    epoch: Epoch,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
}

impl AppState {
    fn new(cfg: WorkloadConfig, behaviour: Behaviour, epoch: Epoch, shared: Arc<Shared>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(cfg.capacity.max(1))),
            cfg: Arc::new(cfg),
            behaviour: Arc::new(behaviour),
            epoch,
            shared,
        }
    }
}

/// Builds the router (exposed for in-process use).
fn router(state: AppState) -> Router {
    Router::new()
        .route("/counters", get(counters))
        .route("/slow", get(slow))
        .route("/fail", get(fail))
        .fallback(normal)
        .with_state(state)
}

async fn counters(State(s): State<AppState>) -> Json<Counters> {
    Json(s.shared.snapshot())
}

#[derive(Deserialize)]
struct SlowQuery {
    ms: Option<u64>,
}

async fn slow(State(s): State<AppState>, Query(q): Query<SlowQuery>) -> impl IntoResponse {
    let _g = Inflight::enter(&s.shared);
    s.shared.slow.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(q.ms.unwrap_or(300))).await;
    s.shared.ok.fetch_add(1, Ordering::Relaxed);
    (StatusCode::OK, "slow\n")
}

async fn serve_one(s: &AppState, fail: bool) -> (StatusCode, &'static str) {
    let _g = Inflight::enter(&s.shared);
    let at = s.epoch.elapsed();
    let fail =
        fail || s.cfg.fail_every_n.is_some_and(|n| {
            n > 0 && (s.shared.nth.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(n)
        }) || {
            let p = s.behaviour.error_rate_at(at);
            p > 0.0 && rand::Rng::random_bool(&mut rand::rng(), p.min(1.0))
        };
    {
        let _permit = s.slots.acquire().await.expect("semaphore never closed");
        let t = s
            .cfg
            .service_time
            .sample()
            .mul_f64(s.behaviour.service_factor(at).max(0.0));
        if !t.is_zero() {
            tokio::time::sleep(t).await;
        }
    }
    if fail {
        s.shared.injected.fetch_add(1, Ordering::Relaxed);
        (StatusCode::SERVICE_UNAVAILABLE, "injected failure\n")
    } else {
        s.shared.ok.fetch_add(1, Ordering::Relaxed);
        (StatusCode::OK, "ok\n")
    }
}

/// Serves one request, detached from the connection when abandoned requests are finished.
async fn serve(s: AppState, fail: bool) -> (StatusCode, &'static str) {
    if !s.behaviour.finish_abandoned {
        return serve_one(&s, fail).await;
    }
    tokio::spawn(async move { serve_one(&s, fail).await })
        .await
        .unwrap_or((StatusCode::INTERNAL_SERVER_ERROR, "serving task failed\n"))
}

async fn fail(State(s): State<AppState>) -> impl IntoResponse {
    serve(s, true).await
}

async fn normal(State(s): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let fail = headers.get("x-fail").is_some_and(|v| v.as_bytes() == b"1");
    serve(s, fail).await
}

/// A running workload server on its own runtime thread; stops on drop.
pub struct WorkloadServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    epoch: Epoch,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WorkloadServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl WorkloadServer {
    /// Binds 127.0.0.1:0 and serves on a dedicated runtime thread.
    pub fn start(cfg: WorkloadConfig) -> Result<Self, WorkloadError> {
        Self::start_with(cfg, Behaviour::default())
    }

    /// [`WorkloadServer::start`] with a [`Behaviour`]; faults are timed from now (see
    /// [`WorkloadServer::reset_epoch`]). With a down fault the address is a gate in front of
    /// the server that closes its listener and resets connections while the host is down.
    pub fn start_with(cfg: WorkloadConfig, behaviour: Behaviour) -> Result<Self, WorkloadError> {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("valid addr");
        let std_listener = std::net::TcpListener::bind(addr)
            .map_err(|source| WorkloadError::Bind { addr, source })?;
        std_listener
            .set_nonblocking(true)
            .map_err(|source| WorkloadError::Bind { addr, source })?;
        let local = std_listener
            .local_addr()
            .map_err(|source| WorkloadError::Bind { addr, source })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("workload")
            .build()
            .map_err(WorkloadError::Runtime)?;
        let shared = Arc::new(Shared::default());
        let epoch = Epoch::now();
        // A down fault needs a listener that can close: the server listens on its own port
        // and the gate owns the public one.
        let gate = if behaviour.has_down() {
            let a: SocketAddr = "127.0.0.1:0".parse().expect("valid addr");
            let g = std::net::TcpListener::bind(a)
                .and_then(|l| l.set_nonblocking(true).map(|_| l))
                .map_err(|source| WorkloadError::Bind { addr: a, source })?;
            Some((g, behaviour.clone()))
        } else {
            None
        };
        let public = match &gate {
            Some((g, _)) => g
                .local_addr()
                .map_err(|source| WorkloadError::Bind { addr, source })?,
            None => local,
        };
        let state = AppState::new(cfg, behaviour, epoch.clone(), shared.clone());
        let server_epoch = epoch.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("workload listener: {e}");
                        return;
                    }
                };
                let (stop_gate, gate_stopped) = tokio::sync::watch::channel(false);
                if let Some((g, b)) = gate {
                    tokio::spawn(run_gate(g, local, b, epoch, gate_stopped));
                }
                let shutdown = async move {
                    let _ = rx.await;
                    let _ = stop_gate.send(true);
                };
                if let Err(e) = serve_on(listener, state, shutdown).await {
                    tracing::error!("workload server: {e}");
                }
            });
            rt.shutdown_timeout(Duration::from_millis(200));
        });
        Ok(Self {
            addr: public,
            shared,
            epoch: server_epoch,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Restarts the fault clock (faults are timed from the last reset, or from the start).
    pub fn reset_epoch(&self) {
        self.epoch.reset();
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Current counters.
    pub fn counters(&self) -> Counters {
        self.shared.snapshot()
    }
}

impl Drop for WorkloadServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the workload on `listener` until `shutdown` resolves (for binaries).
pub async fn run(
    listener: tokio::net::TcpListener,
    cfg: WorkloadConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AppState::new(
        cfg,
        Behaviour::default(),
        Epoch::now(),
        Arc::new(Shared::default()),
    );
    serve_on(listener, state, shutdown).await
}

/// How often the gate checks whether the host went down or came back.
const GATE_TICK: Duration = Duration::from_millis(5);

/// The public side of a host with down faults: while up, accepts and forwards each connection
/// to the server at `inner`; while down, closes its listener (connections refused) and resets
/// the connections it forwards; rebinds the same port when the host comes back.
async fn run_gate(
    listener: std::net::TcpListener,
    inner: SocketAddr,
    behaviour: Behaviour,
    epoch: Epoch,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(public) = listener.local_addr() else {
        return;
    };
    let mut listener = tokio::net::TcpListener::from_std(listener).ok();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let down = behaviour.down_at(epoch.elapsed());
        if down && listener.is_some() {
            listener = None;
            conns.abort_all();
        } else if !down && listener.is_none() {
            // SO_REUSEADDR (set by tokio on Unix) lets the port be bound again at once.
            listener = tokio::net::TcpListener::bind(public).await.ok();
        }
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(GATE_TICK) => {}
            Ok((mut down_stream, _)) = async {
                match &listener {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            } => {
                conns.spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(inner).await {
                        let _ = up.set_nodelay(true);
                        let _ = down_stream.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut down_stream, &mut up).await;
                    }
                });
            }
        }
        while conns.try_join_next().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_service_times() {
        assert_eq!(
            ServiceTime::parse("const:5ms").unwrap(),
            ServiceTime::Constant(Duration::from_millis(5))
        );
        assert_eq!(
            ServiceTime::parse("exp:2s").unwrap(),
            ServiceTime::Exponential {
                mean: Duration::from_secs(2)
            }
        );
        assert!(matches!(
            ServiceTime::parse("lognormal:10ms:0.5").unwrap(),
            ServiceTime::LogNormal { sigma, .. } if sigma == 0.5
        ));
        let err = ServiceTime::parse("weird:1").unwrap_err().to_string();
        assert!(err.contains("weird:1"), "{err}");
        assert!(ServiceTime::parse("const:abc").is_err());
    }

    #[test]
    fn lognormal_median_is_close() {
        let st = ServiceTime::LogNormal {
            median: Duration::from_millis(10),
            sigma: 0.5,
        };
        let mut v: Vec<f64> = (0..4001).map(|_| st.sample().as_secs_f64()).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = v[2000];
        assert!((0.009..0.011).contains(&med), "median {med}");
    }

    #[test]
    fn exponential_mean_is_close() {
        let st = ServiceTime::Exponential {
            mean: Duration::from_millis(4),
        };
        let mean: f64 = (0..20000).map(|_| st.sample().as_secs_f64()).sum::<f64>() / 20000.0;
        assert!((0.0037..0.0043).contains(&mean), "mean {mean}");
    }

    fn fault(from_ms: u64, until_ms: Option<u64>, kind: FaultKind) -> Fault {
        Fault {
            from: Duration::from_millis(from_ms),
            until: until_ms.map(Duration::from_millis),
            kind,
        }
    }

    #[test]
    fn behaviour_applies_faults_only_while_active() {
        let b = Behaviour {
            error_rate: 0.01,
            faults: vec![
                fault(1000, Some(2000), FaultKind::Errors { rate: 0.8 }),
                fault(1500, None, FaultKind::Slow { factor: 4.0 }),
                fault(3000, Some(4000), FaultKind::Down),
            ],
            finish_abandoned: false,
        };
        let at = Duration::from_millis;
        assert_eq!(b.error_rate_at(at(999)), 0.01);
        assert_eq!(b.error_rate_at(at(1000)), 0.8);
        assert_eq!(b.error_rate_at(at(2000)), 0.01, "until is exclusive");
        assert_eq!(b.service_factor(at(1499)), 1.0);
        assert_eq!(b.service_factor(at(60_000)), 4.0, "no end: to the end");
        assert!(!b.down_at(at(2999)) && b.down_at(at(3000)) && !b.down_at(at(4000)));
    }

    #[test]
    fn bimodal_mixes_two_means() {
        let st = ServiceTime::Bimodal {
            fast: Duration::from_millis(1),
            slow: Duration::from_millis(100),
            slow_fraction: 0.1,
        };
        let n = 20_000;
        let mean: f64 = (0..n).map(|_| st.sample().as_secs_f64()).sum::<f64>() / n as f64;
        // 0.9 x 1 ms + 0.1 x 100 ms = 10.9 ms.
        assert!((0.0095..0.0123).contains(&mean), "mean {mean}");
    }

    #[test]
    fn error_rate_and_slow_fault_reach_the_responses() {
        let srv = WorkloadServer::start_with(
            WorkloadConfig {
                capacity: 64,
                service_time: ServiceTime::Constant(Duration::from_millis(2)),
                fail_every_n: None,
            },
            Behaviour {
                error_rate: 0.5,
                faults: vec![fault(0, None, FaultKind::Slow { factor: 25.0 })],
                finish_abandoned: true,
            },
        )
        .unwrap();
        let t0 = std::time::Instant::now();
        let codes: Vec<u16> = (0..40)
            .map(|_| crate::http::get(srv.addr(), "/", &[]).unwrap().status)
            .collect();
        let errors = codes.iter().filter(|c| **c == 503).count();
        assert!((8..=32).contains(&errors), "{errors} of 40 at p = 0.5");
        assert_eq!(srv.counters().injected_503, errors as u64);
        // 40 sequential requests of 2 ms x 25.
        assert!(
            t0.elapsed() >= Duration::from_millis(40 * 50),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn a_down_host_refuses_connections_then_comes_back_on_the_same_port() {
        let srv = WorkloadServer::start_with(
            WorkloadConfig::default(),
            Behaviour {
                faults: vec![fault(300, Some(900), FaultKind::Down)],
                ..Behaviour::default()
            },
        )
        .unwrap();
        let a = srv.addr();
        assert_eq!(crate::http::get(a, "/", &[]).unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(450));
        let e = std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200));
        assert!(e.is_err(), "connected while down");
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(crate::http::get(a, "/", &[]).unwrap().status, 200);
        // The clock restarts: down again 300 ms after the reset.
        srv.reset_epoch();
        std::thread::sleep(Duration::from_millis(400));
        assert!(std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err());
    }

    #[test]
    fn serves_injects_and_queues() {
        let srv = WorkloadServer::start(WorkloadConfig {
            capacity: 1,
            service_time: ServiceTime::Constant(Duration::from_millis(50)),
            fail_every_n: Some(3),
        })
        .unwrap();
        let a = srv.addr();
        let codes: Vec<u16> = (0..6)
            .map(|_| crate::http::get(a, "/", &[]).unwrap().status)
            .collect();
        assert_eq!(codes, vec![200, 200, 503, 200, 200, 503]);
        assert_eq!(crate::http::get(a, "/fail", &[]).unwrap().status, 503);
        assert_eq!(
            crate::http::get(a, "/", &[("x-fail", "1")]).unwrap().status,
            503
        );
        // Capacity 1: two concurrent requests take ~2 service times.
        let t0 = std::time::Instant::now();
        let h: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(move || crate::http::get(a, "/", &[]).unwrap().status))
            .collect();
        for j in h {
            j.join().unwrap();
        }
        assert!(
            t0.elapsed() >= Duration::from_millis(95),
            "{:?}",
            t0.elapsed()
        );
        let c: Counters =
            serde_json::from_slice(&crate::http::get(a, "/counters", &[]).unwrap().body).unwrap();
        assert_eq!(c.requests, 10);
        assert_eq!(c.injected_503, 4);
        assert_eq!(c, srv.counters());
    }
}
