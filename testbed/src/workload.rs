//! A finite-capacity HTTP upstream ("workload"): at most `capacity` requests are served at
//! once, the rest queue (like a thread pool in front of a real service); each request holds
//! its slot for a sampled service time. Errors are injected exactly so tests know the count:
//!
//! - `GET /fail` (or any request with header `x-fail: 1`) → 503 after the service time;
//! - `fail_every_n = N` → every N-th request served on `/` is a 503 (deterministic);
//! - `GET /slow?ms=300` → sleeps `ms` (no capacity slot) then 200;
//! - `GET /counters` → JSON [`Counters`] (not counted as traffic).

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
}

impl ServiceTime {
    /// Draws one service time.
    pub fn sample(&self) -> Duration {
        let mut rng = rand::rng();
        match *self {
            ServiceTime::Constant(d) => d,
            ServiceTime::Exponential { mean } => {
                let m = mean.as_secs_f64();
                if m <= 0.0 {
                    return Duration::ZERO;
                }
                let e = Exp::new(1.0 / m).expect("positive rate");
                Duration::from_secs_f64(e.sample(&mut rng).min(60.0))
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
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
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
    let fail = fail
        || s.cfg.fail_every_n.is_some_and(|n| {
            n > 0 && (s.shared.nth.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(n)
        });
    {
        let _permit = s.slots.acquire().await.expect("semaphore never closed");
        let t = s.cfg.service_time.sample();
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

async fn fail(State(s): State<AppState>) -> impl IntoResponse {
    serve_one(&s, true).await
}

async fn normal(State(s): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let fail = headers.get("x-fail").is_some_and(|v| v.as_bytes() == b"1");
    serve_one(&s, fail).await
}

/// A running workload server on its own runtime thread; stops on drop.
pub struct WorkloadServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
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
        let state = AppState {
            slots: Arc::new(Semaphore::new(cfg.capacity.max(1))),
            cfg: Arc::new(cfg),
            shared: shared.clone(),
        };
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
                let shutdown = async move {
                    let _ = rx.await;
                };
                if let Err(e) = serve(listener, state, shutdown).await {
                    tracing::error!("workload server: {e}");
                }
            });
            rt.shutdown_timeout(Duration::from_millis(200));
        });
        Ok(Self {
            addr: local,
            shared,
            stop: Some(tx),
            thread: Some(thread),
        })
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

async fn serve(
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
    let state = AppState {
        slots: Arc::new(Semaphore::new(cfg.capacity.max(1))),
        cfg: Arc::new(cfg),
        shared: Arc::new(Shared::default()),
    };
    serve(listener, state, shutdown).await
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
