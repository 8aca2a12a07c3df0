//! Open-loop load generator: requests are sent on a fixed schedule (constant rate per phase)
//! whatever the responses do, and each latency is measured from the request's *intended* send
//! time, so a stalled server shows up as latency instead of silently lowering the send rate
//! (no coordinated omission). Latencies go into an HdrHistogram (1 µs – 60 s, 3 significant
//! digits, i.e. ≤ 0.1 % error); statuses, `x-meshtune-shed` responses, transport errors and
//! timeouts are counted. Bounded by total duration and an optional request count.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

/// Default per-request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on outstanding requests; beyond it sends are counted as `skipped`.
pub const DEFAULT_MAX_OUTSTANDING: usize = 20_000;
/// Header the meshtune filter sets on locally shed responses.
pub const SHED_HEADER: &str = "x-meshtune-shed";

/// When requests are sent within a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arrivals {
    /// Evenly spaced (default).
    #[default]
    Uniform,
    /// A Poisson process (exponential gaps) from this seed, as the simulator's default.
    Poisson { seed: u64 },
}

/// One constant-rate phase of a load profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    /// Requests per second.
    pub rate: f64,
    pub duration: Duration,
}

/// Load generator configuration.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where to send (Envoy's listener or the workload directly).
    pub target: SocketAddr,
    /// Path of normal requests, e.g. `/` or `/slow?ms=300`.
    pub path: String,
    /// Rate profile, run in order.
    pub phases: Vec<Phase>,
    /// Stop after this many requests (None = run all phases).
    pub max_requests: Option<u64>,
    /// Every N-th request (1-based) goes to `/fail` instead (exact error injection).
    pub fail_every_n: Option<u64>,
    pub request_timeout: Duration,
    pub max_outstanding: usize,
    pub arrivals: Arrivals,
}

impl LoadConfig {
    /// `rate` rps to `target` for `duration`.
    pub fn constant(target: SocketAddr, rate: f64, duration: Duration) -> Self {
        Self {
            target,
            path: "/".into(),
            phases: vec![Phase { rate, duration }],
            max_requests: None,
            fail_every_n: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_outstanding: DEFAULT_MAX_OUTSTANDING,
            arrivals: Arrivals::Uniform,
        }
    }

    /// Exactly `n` requests at `rate` rps.
    pub fn count(target: SocketAddr, rate: f64, n: u64) -> Self {
        let secs = n as f64 / rate;
        let mut c = Self::constant(target, rate, Duration::from_secs_f64(secs + 1.0));
        c.max_requests = Some(n);
        c
    }

    /// Number of requests the schedule will send.
    pub fn planned(&self) -> u64 {
        let all: u64 = self
            .phases
            .iter()
            .map(|p| (p.rate * p.duration.as_secs_f64()).round() as u64)
            .sum();
        self.max_requests.map_or(all, |m| m.min(all))
    }
}

/// Live counters for progress display.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub status_5xx: AtomicU64,
    pub shed: AtomicU64,
}

/// Result of a run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub sent: u64,
    /// Requests that got an HTTP response.
    pub completed: u64,
    /// Connection errors / resets (no HTTP response).
    pub transport_errors: u64,
    /// Requests without a response within `request_timeout`.
    pub timeouts: u64,
    /// Sends skipped because `max_outstanding` requests were pending.
    pub skipped: u64,
    /// Requests sent to `/fail`.
    pub injected: u64,
    /// Responses carrying `x-meshtune-shed`.
    pub shed: u64,
    pub status: BTreeMap<u16, u64>,
    /// Latency (µs from intended send time) of every response.
    pub latency: Histogram<u64>,
    /// Latency per status code.
    pub latency_by_status: BTreeMap<u16, Histogram<u64>>,
    pub elapsed: Duration,
    /// Largest delay between an intended and an actual send.
    pub max_send_lag: Duration,
    /// First few transport error messages.
    pub error_samples: Vec<String>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

impl LoadReport {
    fn new() -> Self {
        Self {
            sent: 0,
            completed: 0,
            transport_errors: 0,
            timeouts: 0,
            skipped: 0,
            injected: 0,
            shed: 0,
            status: BTreeMap::new(),
            latency: new_hist(),
            latency_by_status: BTreeMap::new(),
            elapsed: Duration::ZERO,
            max_send_lag: Duration::ZERO,
            error_samples: Vec::new(),
        }
    }

    /// Responses with this status.
    pub fn status_count(&self, code: u16) -> u64 {
        self.status.get(&code).copied().unwrap_or(0)
    }

    /// Responses in a status class (2 → 2xx).
    pub fn class_count(&self, class: u16) -> u64 {
        self.status
            .iter()
            .filter(|(c, _)| **c / 100 == class)
            .map(|(_, n)| n)
            .sum()
    }

    /// Latency quantile in milliseconds over all responses.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// Completed responses per second of run time.
    pub fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Requests that got no HTTP response.
    pub fn failed(&self) -> u64 {
        self.transport_errors + self.timeouts
    }

    /// One-line summary.
    pub fn summary(&self) -> String {
        format!(
            "sent {} completed {} 2xx {} 4xx {} 5xx {} shed {} errors {} timeouts {} skipped {} p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({:.0} rps)",
            self.sent,
            self.completed,
            self.class_count(2),
            self.class_count(4),
            self.class_count(5),
            self.shed,
            self.transport_errors,
            self.timeouts,
            self.skipped,
            self.quantile_ms(0.5),
            self.quantile_ms(0.99),
            self.latency.max() as f64 / 1000.0,
            self.throughput()
        )
    }
}

enum Outcome {
    Response { status: u16, shed: bool },
    Error(String),
    Timeout,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

async fn one(client: HttpClient, uri: hyper::Uri, timeout: Duration) -> Outcome {
    let req = match hyper::Request::get(uri).body(Empty::<Bytes>::new()) {
        Ok(r) => r,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let fut = async {
        let resp = client.request(req).await.map_err(|e| {
            use std::error::Error;
            let mut msg = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        })?;
        let status = resp.status().as_u16();
        let shed = resp.headers().contains_key(SHED_HEADER);
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok::<_, String>(Outcome::Response { status, shed })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome::Error(e),
        Err(_) => Outcome::Timeout,
    }
}

/// Send offsets of `rate` rps evenly spaced over `duration`.
fn uniform_offsets(rate: f64, duration: Duration) -> Vec<Duration> {
    let n = (rate * duration.as_secs_f64()).round() as u64;
    let interval = 1.0 / rate.max(1e-9);
    (0..n)
        .map(|k| Duration::from_secs_f64(interval * k as f64))
        .collect()
}

/// Send offsets of a Poisson process of `rate` rps within `duration`.
fn poisson_offsets(rng: &mut impl rand::Rng, rate: f64, duration: Duration) -> Vec<Duration> {
    let mut out = Vec::new();
    if rate <= 0.0 || !rate.is_finite() {
        return out;
    }
    let exp = rand_distr::Exp::new(rate).expect("positive rate");
    let end = duration.as_secs_f64();
    let mut t = rand_distr::Distribution::sample(&exp, rng);
    while t < end {
        out.push(Duration::from_secs_f64(t));
        t += rand_distr::Distribution::sample(&exp, rng);
    }
    out
}

/// Runs the load profile on the current tokio runtime.
pub async fn run(cfg: &LoadConfig, live: Option<Arc<Live>>) -> LoadReport {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let report = Arc::new(Mutex::new(LoadReport::new()));
    let outstanding = Arc::new(AtomicU64::new(0));
    let live = live.unwrap_or_default();
    let base = format!("http://{}", cfg.target);
    let normal: hyper::Uri = format!("{base}{}", cfg.path)
        .parse()
        .expect("valid request uri");
    let failing: hyper::Uri = format!("{base}/fail").parse().expect("valid uri");
    let start = Instant::now();
    let mut phase_start = start;
    let mut i: u64 = 0;
    let mut max_lag = Duration::ZERO;
    let mut skipped = 0u64;
    let mut injected = 0u64;
    let mut set = tokio::task::JoinSet::new();
    let mut rng = match cfg.arrivals {
        Arrivals::Poisson { seed } => Some(
            <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed),
        ),
        Arrivals::Uniform => None,
    };
    'phases: for phase in &cfg.phases {
        let offsets = match rng.as_mut() {
            Some(r) => poisson_offsets(r, phase.rate, phase.duration),
            None => uniform_offsets(phase.rate, phase.duration),
        };
        for offset in offsets {
            if cfg.max_requests.is_some_and(|m| i >= m) {
                break 'phases;
            }
            let intended = phase_start + offset;
            tokio::time::sleep_until(intended).await;
            max_lag = max_lag.max(Instant::now().saturating_duration_since(intended));
            i += 1;
            while set.try_join_next().is_some() {}
            if outstanding.load(Ordering::Relaxed) as usize >= cfg.max_outstanding {
                skipped += 1;
                continue;
            }
            let fail = cfg
                .fail_every_n
                .is_some_and(|n| n > 0 && i.is_multiple_of(n));
            if fail {
                injected += 1;
            }
            let uri = if fail {
                failing.clone()
            } else {
                normal.clone()
            };
            let (client, report, outstanding, live) = (
                client.clone(),
                report.clone(),
                outstanding.clone(),
                live.clone(),
            );
            let timeout = cfg.request_timeout;
            outstanding.fetch_add(1, Ordering::Relaxed);
            live.sent.fetch_add(1, Ordering::Relaxed);
            set.spawn(async move {
                let outcome = one(client, uri, timeout).await;
                let lat_us = intended.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                outstanding.fetch_sub(1, Ordering::Relaxed);
                let mut r = report.lock().expect("report lock");
                match outcome {
                    Outcome::Response { status, shed } => {
                        r.completed += 1;
                        live.completed.fetch_add(1, Ordering::Relaxed);
                        *r.status.entry(status).or_default() += 1;
                        if shed {
                            r.shed += 1;
                            live.shed.fetch_add(1, Ordering::Relaxed);
                        }
                        if status >= 500 {
                            live.status_5xx.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = r.latency.record(lat_us);
                        let _ = r
                            .latency_by_status
                            .entry(status)
                            .or_insert_with(new_hist)
                            .record(lat_us);
                    }
                    Outcome::Error(e) => {
                        r.transport_errors += 1;
                        live.errors.fetch_add(1, Ordering::Relaxed);
                        if r.error_samples.len() < 5 {
                            r.error_samples.push(e);
                        }
                    }
                    Outcome::Timeout => {
                        r.timeouts += 1;
                        live.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        phase_start += phase.duration;
    }
    while set.join_next().await.is_some() {}
    let mut r = report.lock().expect("report lock").clone();
    r.sent = i - skipped;
    r.skipped = skipped;
    r.injected = injected;
    r.elapsed = start.elapsed();
    r.max_send_lag = max_lag;
    r
}

/// Result of a closed-loop saturation run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClosedLoopReport {
    pub completed: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl ClosedLoopReport {
    /// Completed requests per second.
    pub fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Closed-loop saturation: `concurrency` workers each send the next request as soon as the
/// previous one finished, for `duration` (measures maximum throughput, not latency).
pub async fn closed_loop(
    target: SocketAddr,
    path: &str,
    concurrency: usize,
    duration: Duration,
) -> ClosedLoopReport {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build(connector);
    let uri: hyper::Uri = format!("http://{target}{path}").parse().expect("valid uri");
    let start = Instant::now();
    let end = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, uri) = (client.clone(), uri.clone());
        set.spawn(async move {
            let (mut ok, mut err) = (0u64, 0u64);
            while Instant::now() < end {
                match one(client.clone(), uri.clone(), DEFAULT_REQUEST_TIMEOUT).await {
                    Outcome::Response { .. } => ok += 1,
                    _ => err += 1,
                }
            }
            (ok, err)
        });
    }
    let (mut completed, mut errors) = (0, 0);
    while let Some(r) = set.join_next().await {
        if let Ok((o, e)) = r {
            completed += o;
            errors += e;
        }
    }
    ClosedLoopReport {
        completed,
        errors,
        elapsed: start.elapsed(),
    }
}

/// Runs the load profile on a fresh 2-thread runtime (for synchronous callers).
pub fn run_blocking(cfg: &LoadConfig, live: Option<Arc<Live>>) -> LoadReport {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("loadgen")
        .build()
        .expect("tokio runtime");
    rt.block_on(run(cfg, live))
}

/// Runs the load on a background thread; join the handle for the report.
pub fn spawn(cfg: LoadConfig, live: Option<Arc<Live>>) -> std::thread::JoinHandle<LoadReport> {
    std::thread::spawn(move || run_blocking(&cfg, live))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{ServiceTime, WorkloadConfig, WorkloadServer};

    #[test]
    fn poisson_offsets_have_the_rate_and_are_seeded() {
        use rand::SeedableRng;
        let gen = |seed| {
            poisson_offsets(
                &mut rand::rngs::StdRng::seed_from_u64(seed),
                500.0,
                Duration::from_secs(20),
            )
        };
        let a = gen(7);
        assert_eq!(a, gen(7));
        assert_ne!(a, gen(8));
        // 10,000 expected; Poisson sd 100.
        assert!((9_600..10_400).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert!(a.last().unwrap() < &Duration::from_secs(20));
        // Exponential gaps: about 37 % exceed the mean gap (evenly spaced: none or all).
        let over = a
            .windows(2)
            .filter(|w| w[1] - w[0] > Duration::from_millis(2))
            .count() as f64
            / a.len() as f64;
        assert!((0.33..0.41).contains(&over), "{over}");
        assert_eq!(
            uniform_offsets(500.0, Duration::from_secs(20)).len(),
            10_000
        );
    }

    #[test]
    fn planned_counts() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            LoadConfig::constant(a, 100.0, Duration::from_secs(2)).planned(),
            200
        );
        assert_eq!(LoadConfig::count(a, 100.0, 37).planned(), 37);
    }

    #[test]
    fn exact_injection_and_counts() {
        let srv = WorkloadServer::start(WorkloadConfig {
            capacity: 16,
            service_time: ServiceTime::Constant(Duration::from_millis(2)),
            fail_every_n: None,
        })
        .unwrap();
        let mut cfg = LoadConfig::count(srv.addr(), 200.0, 200);
        cfg.fail_every_n = Some(10);
        let r = run_blocking(&cfg, None);
        assert_eq!(r.sent, 200, "{}", r.summary());
        assert_eq!(r.completed, 200, "{}", r.summary());
        assert_eq!(r.injected, 20);
        assert_eq!(r.status_count(503), 20);
        assert_eq!(r.status_count(200), 180);
        assert_eq!(srv.counters().injected_503, 20);
        assert_eq!(srv.counters().requests, 200);
        assert!(r.quantile_ms(0.5) >= 2.0, "{}", r.summary());
    }

    #[test]
    fn open_loop_counts_queueing_as_latency() {
        // Capacity 1 and 20 ms service at 100 rps: the server can do 50 rps, so a closed-loop
        // client would slow down; the open-loop one keeps sending and sees growing latency.
        let srv = WorkloadServer::start(WorkloadConfig {
            capacity: 1,
            service_time: ServiceTime::Constant(Duration::from_millis(20)),
            fail_every_n: None,
        })
        .unwrap();
        let cfg = LoadConfig::count(srv.addr(), 100.0, 40);
        let t0 = std::time::Instant::now();
        let r = run_blocking(&cfg, None);
        assert_eq!(r.completed, 40, "{}", r.summary());
        // Sending took ~0.4 s; serving needs ~0.8 s: the last request waited ~0.4 s.
        assert!(t0.elapsed() >= Duration::from_millis(750));
        assert!(r.quantile_ms(1.0) >= 300.0, "{}", r.summary());
        assert!(r.max_send_lag < Duration::from_millis(200));
    }
}
