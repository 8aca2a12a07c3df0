//! A mesh, not one hop: Istio's BookInfo call graph on real processes. `productpage` calls
//! `details` and `reviews`; `reviews` calls `ratings` only for requests that want ratings
//! (`?ratings=1`). Each calling service sends through its own Envoy sidecar with the meshtune
//! filter (outbound clusters `details`, `reviews`, `ratings`, routed by `Host`, read from the
//! CDS/RDS files the controller writes), all reporting to one controller that tunes every
//! destination at once. A service holds one of its `capacity` slots while it works and while it
//! waits for the services it calls (thread-per-request), so slowness propagates upstream.
//!
//! [`run`] drives half the load without ratings and half with, turns `ratings` slow or failing
//! part-way, and reports SLO goodput per request kind and upstream attempts per request per hop,
//! for Istio defaults (controller observing) and for meshtune (controller enforcing).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::controller::{Controller, ControllerConfig};
use crate::demo::{file_xds_bootstrap, slice, Slice, ROUTE_CONFIG};
use crate::envoy::{EnvoyConfig, EnvoyProcess, PluginConfig};
use crate::loadgen::{self, Arrivals, LoadConfig, LoadReport};
use crate::paths::Paths;
use crate::workload::{Behaviour, Fault, FaultKind, ServiceTime};

/// Namespace the sidecars report.
pub const NAMESPACE: &str = "bookinfo";
/// The destinations (Envoy cluster names, also the `Host` the callers send).
pub const DESTINATIONS: [&str; 3] = ["details", "reviews", "ratings"];
/// How long a service waits for a service it calls before giving up (its own client timeout;
/// the sidecar's route timeout, when set, is shorter).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Which downstream call a service makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// On every request.
    Always(&'static str),
    /// Only when the request wants ratings.
    IfRatings(&'static str),
}

/// One service of the graph.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: &'static str,
    /// Requests served at once.
    pub capacity: usize,
    /// Its own work per request.
    pub service_time: ServiceTime,
    pub behaviour: Behaviour,
    /// In order, each after the previous one answered.
    pub calls: Vec<Call>,
}

/// What a service reports after a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    pub requests: u64,
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    requests: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

struct App {
    svc: Service,
    slots: Semaphore,
    /// Faults are timed from here (reset when the load starts).
    started: std::sync::Mutex<Instant>,
    /// The caller's sidecar (outbound listener), set once it runs.
    sidecar: OnceLock<SocketAddr>,
    client: HttpClient,
    counters: Counters,
}

#[derive(Deserialize)]
struct Params {
    ratings: Option<u8>,
}

async fn call(app: &App, host: &str, ratings: bool) -> bool {
    let Some(sidecar) = app.sidecar.get() else {
        return false;
    };
    let uri = format!("http://{sidecar}/?ratings={}", u8::from(ratings));
    let Ok(req) = hyper::Request::get(uri)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
    else {
        return false;
    };
    let fut = async {
        let resp = app.client.request(req).await.ok()?;
        let ok = resp.status().is_success();
        resp.into_body().collect().await.ok()?;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(CALL_TIMEOUT, fut).await,
        Ok(Some(true))
    )
}

async fn handle(
    State(app): State<Arc<App>>,
    Query(p): Query<Params>,
) -> (StatusCode, &'static str) {
    use std::sync::atomic::Ordering::Relaxed;
    app.counters.requests.fetch_add(1, Relaxed);
    let ratings = p.ratings.unwrap_or(1) != 0;
    let at = app.started.lock().map(|t| t.elapsed()).unwrap_or_default();
    let Ok(_slot) = app.slots.acquire().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "closed\n");
    };
    let work = app
        .svc
        .service_time
        .sample()
        .mul_f64(app.svc.behaviour.service_factor(at).max(0.0));
    tokio::time::sleep(work).await;
    let p_err = app.svc.behaviour.error_rate_at(at);
    let mut ok = !(p_err > 0.0 && rand::Rng::random_bool(&mut rand::rng(), p_err.min(1.0)));
    for c in &app.svc.calls {
        if !ok {
            break;
        }
        ok = match *c {
            Call::Always(h) => call(&app, h, ratings).await,
            Call::IfRatings(h) if ratings => call(&app, h, ratings).await,
            Call::IfRatings(_) => true,
        };
    }
    if ok {
        (StatusCode::OK, "ok\n")
    } else {
        app.counters.errors.fetch_add(1, Relaxed);
        (StatusCode::SERVICE_UNAVAILABLE, "failed\n")
    }
}

/// A running service on its own runtime thread; stops on drop.
pub struct ServiceServer {
    addr: SocketAddr,
    app: Arc<App>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServiceServer {
    /// Binds 127.0.0.1:0 and serves `svc`; faults are timed from now.
    pub fn start(svc: Service) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let app = Arc::new(App {
            slots: Semaphore::new(svc.capacity.max(1)),
            svc,
            started: std::sync::Mutex::new(Instant::now()),
            sidecar: OnceLock::new(),
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1024)
                .build(connector),
            counters: Counters::default(),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("bookinfo")
            .build()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let state = app.clone();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let router = Router::new().fallback(get(handle)).with_state(state);
                let _ = axum::serve(l, router)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await;
            });
            rt.shutdown_timeout(Duration::from_millis(200));
        });
        Ok(Self {
            addr,
            app,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends this service's downstream calls through `sidecar` from now on.
    pub fn set_sidecar(&self, sidecar: SocketAddr) {
        let _ = self.app.sidecar.set(sidecar);
    }

    /// Restarts the fault clock.
    pub fn reset_epoch(&self) {
        if let Ok(mut t) = self.app.started.lock() {
            *t = Instant::now();
        }
    }

    pub fn counters(&self) -> ServiceCounters {
        use std::sync::atomic::Ordering::Relaxed;
        ServiceCounters {
            requests: self.app.counters.requests.load(Relaxed),
            errors: self.app.counters.errors.load(Relaxed),
        }
    }
}

impl Drop for ServiceServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What goes wrong with `ratings`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RatingsFault {
    /// Service time × `factor`.
    Slow(f64),
    /// 503 with this probability.
    Failing(f64),
}

/// Options of a BookInfo run.
#[derive(Debug, Clone)]
pub struct BookinfoConfig {
    /// Offered rate at productpage (half without ratings, half with).
    pub rate: f64,
    /// Length of the run.
    pub secs: u64,
    /// When `ratings` turns bad.
    pub fault_at: Duration,
    pub fault: RatingsFault,
    pub slo_ms: u64,
    /// Controller enforcing (meshtune) or observing (the files stay at Istio defaults).
    pub enforce: bool,
    pub seed: u64,
    /// Model the controller serves (default: the embedded default model).
    pub model: Option<std::path::PathBuf>,
    /// Faults `compare` runs (default: ratings slow, then failing).
    pub faults: Vec<RatingsFault>,
}

impl Default for BookinfoConfig {
    fn default() -> Self {
        Self {
            rate: 120.0,
            secs: 40,
            fault_at: Duration::from_secs(10),
            fault: RatingsFault::Slow(20.0),
            slo_ms: 500,
            enforce: true,
            seed: 11,
            model: None,
            faults: vec![RatingsFault::Slow(20.0), RatingsFault::Failing(0.5)],
        }
    }
}

/// The services: BookInfo's graph with small capacities (so ~200 rps saturates ratings when
/// it is 10× slower).
pub fn services(cfg: &BookinfoConfig) -> Vec<Service> {
    let ms = Duration::from_millis;
    let ratings_fault = Fault {
        from: cfg.fault_at,
        until: None,
        kind: match cfg.fault {
            RatingsFault::Slow(f) => FaultKind::Slow { factor: f },
            RatingsFault::Failing(p) => FaultKind::Errors { rate: p },
        },
    };
    vec![
        Service {
            name: "productpage",
            capacity: 64,
            service_time: ServiceTime::Exponential { mean: ms(2) },
            behaviour: Behaviour::default(),
            calls: vec![Call::Always("details"), Call::Always("reviews")],
        },
        Service {
            name: "details",
            capacity: 8,
            service_time: ServiceTime::Exponential { mean: ms(5) },
            behaviour: Behaviour::default(),
            calls: vec![],
        },
        Service {
            name: "reviews",
            capacity: 32,
            service_time: ServiceTime::Exponential { mean: ms(5) },
            behaviour: Behaviour::default(),
            calls: vec![Call::IfRatings("ratings")],
        },
        Service {
            name: "ratings",
            capacity: 4,
            service_time: ServiceTime::Exponential { mean: ms(5) },
            behaviour: Behaviour {
                faults: vec![ratings_fault],
                ..Behaviour::default()
            },
            calls: vec![],
        },
    ]
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct BookinfoResult {
    /// Requests without ratings, before and after the fault.
    pub lite_before: Slice,
    pub lite_after: Slice,
    /// Requests with ratings, before and after the fault.
    pub full_before: Slice,
    pub full_after: Slice,
    /// Upstream attempts per request at each hop (`details`, `reviews`, `ratings`).
    pub attempts: Vec<(String, f64)>,
    /// Controller pushes (all destinations).
    pub pushes: usize,
    /// Destinations the controller had reports for at the end.
    pub destinations: Vec<String>,
    /// `meshtune top --once` at the end (knobs in force per destination).
    pub top: String,
}

/// Attempts per request of `cluster` from an Envoy's stats (1 when nothing went up).
fn hop_attempts(e: &EnvoyProcess, cluster: &str) -> f64 {
    let st = e.stats().unwrap_or_default();
    let g = |k: &str| {
        st.get(&format!("cluster.{cluster}.{k}"))
            .copied()
            .unwrap_or(0)
    };
    crate::envoy::attempts_per_request(g("upstream_rq_total"), g("upstream_rq_retry"))
        .unwrap_or(1.0)
}

/// Runs BookInfo once.
pub fn run(paths: &Paths, cfg: &BookinfoConfig) -> Result<BookinfoResult> {
    let missing = paths.missing(false);
    if !missing.is_empty() {
        bail!("missing prerequisites:\n  {}", missing.join("\n  "));
    }
    let dir = meshtune_test_support::process::run_dir("bookinfo")?;
    let mut servers: Vec<ServiceServer> = Vec::new();
    for s in services(cfg) {
        servers.push(ServiceServer::start(s)?);
    }
    let addr = |name: &str| {
        servers
            .iter()
            .find(|s| s.app.svc.name == name)
            .map(|s| s.addr())
            .expect("service exists")
    };
    let cds = dir.join("cds.json");
    let rds = dir.join("rds.json");
    let mut args: Vec<String> = vec![
        "--mode".into(),
        if cfg.enforce { "enforce" } else { "observe" }.into(),
        "--sink".into(),
        "envoy-file".into(),
        "--envoy-cds".into(),
        cds.to_string_lossy().into_owned(),
        "--envoy-rds".into(),
        rds.to_string_lossy().into_owned(),
        "--envoy-route-config".into(),
        ROUTE_CONFIG.into(),
        "--decision-interval-secs".into(),
        "1".into(),
        "--min-requests".into(),
        "10".into(),
        "--slo-ms".into(),
        cfg.slo_ms.to_string(),
    ];
    if let Some(m) = &cfg.model {
        args.push("--model".into());
        args.push(m.to_string_lossy().into_owned());
    }
    for d in DESTINATIONS {
        args.push("--envoy-destination".into());
        args.push(format!("{d}={}", addr(d)));
    }
    let mut ccfg = ControllerConfig::new(&paths.meshtune_bin);
    ccfg.extra_args = args;
    let controller = Controller::start(ccfg)?;
    if !cds.is_file() || !rds.is_file() {
        bail!(
            "controller did not write {} / {}; log:\n{}",
            cds.display(),
            rds.display(),
            controller.log()
        );
    }
    // Sidecars of the services that call others.
    let mut sidecars = Vec::new();
    for s in servers.iter().filter(|s| !s.app.svc.calls.is_empty()) {
        let plugin = PluginConfig {
            flush_interval_ms: 1000,
            namespace: NAMESPACE.into(),
            workload: s.app.svc.name.into(),
            pod: format!("{}-0", s.app.svc.name),
            ..PluginConfig::default()
        };
        let mut m =
            EnvoyConfig::with_meshtune(s.addr(), controller.grpc(), &paths.filter_wasm, &plugin);
        m.log_level = "warn".into();
        let e = EnvoyProcess::start(
            &m.launch(&paths.envoy),
            &file_xds_bootstrap(&m, &cds, &rds, ROUTE_CONFIG),
        )?;
        s.set_sidecar(e.listener());
        sidecars.push((s.app.svc.name, e));
    }
    // Faults are timed from the start of the load.
    for s in &servers {
        s.reset_epoch();
    }
    let t0 = Instant::now();
    let t0_unix = crate::realrun::unix_ms();
    let pp = addr("productpage");
    let half = cfg.rate / 2.0;
    let before = cfg.fault_at;
    let after = Duration::from_secs(cfg.secs).saturating_sub(cfg.fault_at);
    let mk = |path: &str, seed: u64, d: Duration| {
        let mut l = LoadConfig::constant(pp, half, d);
        l.path = path.into();
        l.arrivals = Arrivals::Poisson { seed };
        l
    };
    let mut pushes = std::collections::BTreeSet::new();
    let wait_until = |until: Duration, pushes: &mut std::collections::BTreeSet<u64>| {
        while t0.elapsed() < until {
            pushes.extend(crate::realrun::push_times(&controller));
            std::thread::sleep(Duration::from_millis(500).min(until.saturating_sub(t0.elapsed())));
        }
    };
    let lite_b = loadgen::spawn(mk("/?ratings=0", cfg.seed, before), None);
    let full_b = loadgen::spawn(mk("/?ratings=1", cfg.seed + 1, before), None);
    wait_until(before, &mut pushes);
    let lite_a = loadgen::spawn(mk("/?ratings=0", cfg.seed + 2, after), None);
    let full_a = loadgen::spawn(mk("/?ratings=1", cfg.seed + 3, after), None);
    wait_until(before + after, &mut pushes);
    let join = |h: std::thread::JoinHandle<LoadReport>| {
        h.join()
            .map_err(|_| anyhow::anyhow!("load generator panicked"))
    };
    let (lb, fb, la, fa) = (join(lite_b)?, join(full_b)?, join(lite_a)?, join(full_a)?);
    std::thread::sleep(Duration::from_millis(1500));
    pushes.extend(crate::realrun::push_times(&controller));
    let pushes = pushes.iter().filter(|p| **p >= t0_unix).count();
    let top = std::process::Command::new(&paths.meshtune_bin)
        .args(["top", "--admin", &controller.admin_url(), "--once"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_string())
        .unwrap_or_default();
    let destinations = controller
        .destinations()
        .map(|d| d.destinations.into_iter().map(|x| x.name).collect())
        .unwrap_or_default();
    let mut attempts = Vec::new();
    for (svc, e) in &sidecars {
        for d in DESTINATIONS {
            let calls = match *svc {
                "productpage" => d != "ratings",
                "reviews" => d == "ratings",
                _ => false,
            };
            if calls {
                attempts.push((d.to_string(), hop_attempts(e, d)));
            }
        }
    }
    let slo = cfg.slo_ms;
    let out = BookinfoResult {
        lite_before: slice(std::slice::from_ref(&lb), before.as_secs_f64(), slo),
        lite_after: slice(std::slice::from_ref(&la), after.as_secs_f64(), slo),
        full_before: slice(std::slice::from_ref(&fb), before.as_secs_f64(), slo),
        full_after: slice(std::slice::from_ref(&fa), after.as_secs_f64(), slo),
        attempts,
        pushes,
        destinations,
        top,
    };
    drop(sidecars);
    drop(controller);
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

/// One printed row.
pub fn row(label: &str, s: &Slice) -> String {
    format!(
        "{label:<44} {:>9.1} {:>12.1} {:>8.2}% {:>7}",
        s.p99_ms,
        s.goodput(),
        100.0 * s.error_rate(),
        s.sent
    )
}

/// Runs Istio defaults and meshtune with ratings slow, then failing, and prints the table.
pub fn compare(paths: &Paths, base: &BookinfoConfig) -> Result<Vec<(String, BookinfoResult)>> {
    let mut out = Vec::new();
    for &fault in &base.faults {
        for enforce in [false, true] {
            let cfg = BookinfoConfig {
                fault,
                enforce,
                ..base.clone()
            };
            let name = format!(
                "{} / ratings {}",
                if enforce {
                    "meshtune"
                } else {
                    "Istio defaults"
                },
                match fault {
                    RatingsFault::Slow(f) => format!("{f}x slower"),
                    RatingsFault::Failing(p) => format!("{:.0}% 503", 100.0 * p),
                }
            );
            println!("running {name} ...");
            let r = run(paths, &cfg)?;
            println!(
                "{:<44} {:>9} {:>12} {:>9} {:>7}",
                name, "p99 ms", "goodput/s", "errors", "sent"
            );
            println!("{}", row("  without ratings, before", &r.lite_before));
            println!("{}", row("  without ratings, after", &r.lite_after));
            println!("{}", row("  with ratings, before", &r.full_before));
            println!("{}", row("  with ratings, after", &r.full_after));
            println!(
                "  attempts per request: {}  pushes {}",
                r.attempts
                    .iter()
                    .map(|(d, a)| format!("{d} {a:.3}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.pushes
            );
            if enforce {
                println!("{}", r.top);
            }
            out.push((name, r));
        }
    }
    Ok(out)
}
