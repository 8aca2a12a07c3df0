//! The closed-loop demo (`cargo xtask demo`): the same step load is run twice against a
//! small workload, once behind an Envoy with Istio defaults (no circuit-breaker limits, no
//! route timeout, no controller) and once behind an Envoy with the meshtune filter whose
//! clusters and routes come from CDS/RDS files written by `meshtune controller --mode enforce
//! --sink envoy-file` (embedded default model). It prints a live table with the knobs in
//! force, Envoy's circuit-breaker thresholds, and p99 / SLO goodput / error rate before and
//! after the controller acted, next to the same time slices of the Istio-defaults run.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::controller::{Controller, ControllerConfig};
use crate::envoy::{render_bootstrap, EnvoyConfig, EnvoyProcess, PluginConfig, WORKLOAD_CLUSTER};
use crate::loadgen::{self, LoadConfig, LoadReport};
use crate::paths::Paths;
use crate::workload::{ServiceTime, WorkloadConfig, WorkloadServer};

/// Default base (pre-step) arrival rate, rps (well under the workload's capacity).
pub const DEFAULT_BASE_RATE: f64 = 150.0;
/// Default step arrival rate, rps (well over the workload's capacity of ~350 rps).
pub const DEFAULT_STEP_RATE: f64 = 600.0;
/// Default warm-up length at the base rate.
pub const DEFAULT_WARM: Duration = Duration::from_secs(6);
/// Default step length.
pub const DEFAULT_STEP: Duration = Duration::from_secs(34);
/// Default latency SLO for goodput.
pub const DEFAULT_SLO_MS: u64 = meshtune_core::outcomes::DEFAULT_SLO_MS as u64;
/// Length of one measured load segment.
pub const SEGMENT: Duration = Duration::from_secs(2);
/// Time after the controller's push before the AFTER slice starts (queues drain).
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(4);
/// Name of the RDS route configuration.
pub const ROUTE_CONFIG: &str = "meshtune_routes";
/// Workload capacity (requests served at once; the rest queue).
pub const WORKLOAD_CAPACITY: usize = 8;
/// Workload median service time.
pub const WORKLOAD_SERVICE_MS: u64 = 20;

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Base rate before the step (rps).
    pub base_rate: f64,
    /// Rate during the step (rps).
    pub step_rate: f64,
    /// Warm-up at the base rate.
    pub warm: Duration,
    /// Step length.
    pub step: Duration,
    /// Latency SLO (ms) for goodput; also passed to the controller.
    pub slo_ms: u64,
    /// Settle time after the controller's push before the AFTER slice.
    pub settle: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            base_rate: DEFAULT_BASE_RATE,
            step_rate: DEFAULT_STEP_RATE,
            warm: DEFAULT_WARM,
            step: DEFAULT_STEP,
            slo_ms: DEFAULT_SLO_MS,
            settle: DEFAULT_SETTLE,
        }
    }
}

impl DemoConfig {
    /// Segment rates: the warm-up then the step, one entry per [`SEGMENT`].
    pub fn segment_rates(&self) -> Vec<f64> {
        let n = |d: Duration| (d.as_secs_f64() / SEGMENT.as_secs_f64()).ceil().max(1.0) as usize;
        let mut v = vec![self.base_rate; n(self.warm)];
        v.extend(std::iter::repeat_n(self.step_rate, n(self.step)));
        v
    }
    /// Index of the first step segment.
    pub fn step_index(&self) -> usize {
        (self.warm.as_secs_f64() / SEGMENT.as_secs_f64())
            .ceil()
            .max(1.0) as usize
    }
}

/// One measured segment's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slice {
    pub secs: f64,
    pub sent: u64,
    pub ok: u64,
    /// 2xx within the SLO.
    pub good: u64,
    /// 5xx, transport errors, timeouts, skipped sends.
    pub errors: u64,
    /// Locally shed by the filter (x-meshtune-shed).
    pub shed: u64,
    pub p99_ms: f64,
}

impl Slice {
    /// Goodput: 2xx within the SLO per second.
    pub fn goodput(&self) -> f64 {
        self.good as f64 / self.secs.max(1e-9)
    }
    /// Errors / sent.
    pub fn error_rate(&self) -> f64 {
        self.errors as f64 / self.sent.max(1) as f64
    }
}

/// Merges segment reports into one slice (p99 over all responses of the segments).
pub fn slice(reports: &[LoadReport], secs: f64, slo_ms: u64) -> Slice {
    let mut hist =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut s = Slice {
        secs,
        ..Slice::default()
    };
    for r in reports {
        let _ = hist.add(&r.latency);
        s.sent += r.sent + r.skipped;
        s.ok += r.class_count(2);
        s.good += r
            .latency_by_status
            .iter()
            .filter(|(c, _)| **c / 100 == 2)
            .map(|(_, h)| h.count_between(0, slo_ms * 1000))
            .sum::<u64>();
        s.errors += r.class_count(5) + r.failed() + r.skipped;
        s.shed += r.shed;
    }
    s.p99_ms = if hist.is_empty() {
        0.0
    } else {
        hist.value_at_quantile(0.99) as f64 / 1000.0
    };
    s
}

/// Segment index ranges (BEFORE, AFTER) of the step given the offset of the controller's
/// first push during the step (None: it never pushed; then BEFORE is the first step
/// segment and AFTER the second half of the step).
pub fn split(
    step_index: usize,
    segments: usize,
    first_push: Option<Duration>,
    settle: Duration,
) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let seg = SEGMENT.as_secs_f64();
    let last = segments.max(step_index + 1);
    match first_push {
        Some(p) => {
            let p = p.as_secs_f64();
            // Segments that ended before the push (at least one).
            let before_end = ((p / seg).floor() as usize).clamp(step_index + 1, last);
            let after_start = (((p + settle.as_secs_f64()) / seg).ceil() as usize)
                .clamp(before_end, last.saturating_sub(1).max(before_end));
            (step_index..before_end, after_start..last)
        }
        None => {
            let mid = step_index + (last - step_index) / 2;
            (step_index..step_index + 1, mid.max(step_index + 1)..last)
        }
    }
}

/// The meshtune Envoy's bootstrap: the testbed bootstrap with the meshtune filter and the
/// controller cluster, but clusters from the CDS file `cds` and the listener's routes
/// from route config `route_config` in the RDS file `rds` (what `meshtune controller --sink
/// envoy-file` writes).
pub fn file_xds_bootstrap(base: &EnvoyConfig, cds: &Path, rds: &Path, route_config: &str) -> Value {
    let mut b = render_bootstrap(base);
    b["dynamic_resources"] = json!({"cds_config": {
        "resource_api_version": "V3",
        "path_config_source": {"path": cds.to_string_lossy()},
    }});
    let hcm = &mut b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    if let Some(o) = hcm.as_object_mut() {
        o.remove("route_config");
    }
    hcm["rds"] = json!({
        "route_config_name": route_config,
        "config_source": {
            "resource_api_version": "V3",
            "path_config_source": {"path": rds.to_string_lossy()},
        },
    });
    if let Some(cs) = b["static_resources"]["clusters"].as_array_mut() {
        cs.retain(|c| c["name"] != WORKLOAD_CLUSTER);
    }
    b
}

/// `upstream_rq_total` (attempts, retries included) over the requests that went upstream
/// (attempts minus `upstream_rq_retry`), from Envoy's cluster statistics of the workload.
pub fn attempts_line(stats: &std::collections::HashMap<String, u64>) -> String {
    let g = |k: &str| {
        stats
            .get(&format!("cluster.{WORKLOAD_CLUSTER}.{k}"))
            .copied()
            .unwrap_or(0)
    };
    let (attempts, retries) = (g("upstream_rq_total"), g("upstream_rq_retry"));
    match crate::envoy::attempts_per_request(attempts, retries) {
        Some(r) => format!("{r:.3} ({attempts} attempts, {retries} retries)"),
        None => "no upstream requests".into(),
    }
}

/// Circuit-breaker lines of the workload cluster from `/clusters` text.
pub fn breaker_lines(clusters: &str) -> Vec<String> {
    let p = format!("{WORKLOAD_CLUSTER}::default_priority::");
    clusters
        .lines()
        .filter(|l| l.starts_with(&p))
        .map(str::to_string)
        .collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The knobs in force and the last decision of `name` from `/api/destinations`.
fn knobs_line(d: &Value, name: &str) -> Option<(String, Value)> {
    let x = d["destinations"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == name)?;
    let k = &x["knobs"];
    let f = |n: &str| {
        k[n].as_f64()
            .map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| "-".into())
    };
    let line = format!(
        "knobs in force: maxConnections {} http1MaxPendingRequests {} http2MaxRequests {} timeout_ms {} retries {}  last: {}",
        f("tcp.maxConnections"),
        f("http.http1MaxPendingRequests"),
        f("http.http2MaxRequests"),
        f("timeout"),
        f("retries.attempts"),
        x["last_decision"]["outcome"].as_str().unwrap_or("-"),
    );
    Some((line, x["last_decision"].clone()))
}

/// One variant's run: segments (reports) and push offsets.
struct Run {
    reports: Vec<LoadReport>,
    pushes: Vec<Duration>,
}

/// Runs the segment schedule against `target`; `poll` is called about once a second with the
/// elapsed time and returns push times (unix ms) it saw.
fn run_load(
    cfg: &DemoConfig,
    target: SocketAddr,
    mut poll: impl FnMut(Duration) -> Vec<u64>,
) -> Result<Run> {
    let rates = cfg.segment_rates();
    let t0 = Instant::now();
    let t0_unix = unix_ms();
    let mut handles = Vec::new();
    let mut pushes: Vec<u64> = Vec::new();
    let mut next_poll = Duration::ZERO;
    for (i, rate) in rates.iter().enumerate() {
        let start = SEGMENT * i as u32;
        while t0.elapsed() < start {
            if t0.elapsed() >= next_poll {
                next_poll += Duration::from_secs(1);
                for p in poll(t0.elapsed()) {
                    if !pushes.contains(&p) {
                        pushes.push(p);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        handles.push(loadgen::spawn(
            LoadConfig::constant(target, *rate, SEGMENT),
            None,
        ));
    }
    let end = SEGMENT * rates.len() as u32;
    while t0.elapsed() < end || handles.iter().any(|h| !h.is_finished()) {
        if t0.elapsed() >= next_poll {
            next_poll += Duration::from_secs(1);
            for p in poll(t0.elapsed()) {
                if !pushes.contains(&p) {
                    pushes.push(p);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let reports = handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("load generator panicked"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut pushes: Vec<Duration> = pushes
        .into_iter()
        .filter(|p| *p >= t0_unix)
        .map(|p| Duration::from_millis(p - t0_unix))
        .collect();
    pushes.sort();
    Ok(Run { reports, pushes })
}

fn row(label: &str, s: &Slice) -> String {
    format!(
        "{label:<34} {:>9.1} {:>12.1} {:>8.2}% {:>7} {:>7}",
        s.p99_ms,
        s.goodput(),
        100.0 * s.error_rate(),
        s.sent,
        s.shed
    )
}

/// Runs the demo and prints the summary.
pub fn run(paths: &Paths, cfg: &DemoConfig) -> Result<()> {
    let missing = paths.missing(false);
    if !missing.is_empty() {
        bail!("missing prerequisites:\n  {}", missing.join("\n  "));
    }
    let dir = meshtune_test_support::process::run_dir("demo")?;
    let workload_cfg = WorkloadConfig {
        capacity: WORKLOAD_CAPACITY,
        service_time: ServiceTime::LogNormal {
            median: Duration::from_millis(WORKLOAD_SERVICE_MS),
            sigma: 0.4,
        },
        fail_every_n: None,
    };
    println!(
        "workload: capacity {WORKLOAD_CAPACITY} at once, ~{WORKLOAD_SERVICE_MS} ms each (≈{:.0} rps); load {:.0} rps for {:?}, then a step to {:.0} rps for {:?}; SLO {} ms",
        WORKLOAD_CAPACITY as f64 * 1000.0 / (WORKLOAD_SERVICE_MS as f64 * 1.08),
        cfg.base_rate,
        cfg.warm,
        cfg.step_rate,
        cfg.step,
        cfg.slo_ms
    );

    // 1. Istio defaults: no limits, no timeout, no controller.
    println!("\n=== run 1/2: Envoy with Istio defaults (no circuit-breaker limits, no timeout, no controller) ===");
    let base_workload = WorkloadServer::start(workload_cfg.clone())?;
    let mut ecfg = EnvoyConfig::new(base_workload.addr());
    ecfg.max_requests = u32::MAX;
    ecfg.route_timeout = Duration::ZERO;
    ecfg.log_level = "warn".into();
    let base_envoy = ecfg.start(&paths.envoy)?;
    let step_at = cfg.step_index();
    let base_run = run_load(cfg, base_envoy.listener(), |el| {
        let s = el.as_secs();
        if s % 5 == 0 && s > 0 {
            let st = base_envoy.stats().unwrap_or_default();
            let g = |k: &str| st.get(&format!("cluster.{WORKLOAD_CLUSTER}.{k}")).copied();
            println!(
                "t={s:>3}s  upstream rq active {} done {} 2xx {} 5xx {} pending overflow {}",
                g("upstream_rq_active").unwrap_or(0),
                g("upstream_rq_completed").unwrap_or(0),
                g("upstream_rq_2xx").unwrap_or(0),
                g("upstream_rq_5xx").unwrap_or(0),
                g("upstream_rq_pending_overflow").unwrap_or(0)
            );
        }
        Vec::new()
    })?;
    let base_breakers = breaker_lines(&base_envoy.clusters().unwrap_or_default());
    let base_attempts = attempts_line(&base_envoy.stats().unwrap_or_default());
    drop(base_envoy);
    drop(base_workload);

    // 2. meshtune: filter → controller → CDS/RDS files → Envoy.
    println!("\n=== run 2/2: Envoy with the meshtune filter, controller enforcing through CDS/RDS files ===");
    let workload = WorkloadServer::start(workload_cfg)?;
    let cds = dir.join("cds.json");
    let rds = dir.join("rds.json");
    let mut ccfg = ControllerConfig::new(&paths.meshtune_bin);
    ccfg.extra_args = [
        "--mode",
        "enforce",
        "--sink",
        "envoy-file",
        "--sink",
        "log",
        "--envoy-cds",
        &cds.to_string_lossy(),
        "--envoy-rds",
        &rds.to_string_lossy(),
        "--envoy-route-config",
        ROUTE_CONFIG,
        "--envoy-destination",
        &format!("{WORKLOAD_CLUSTER}={}", workload.addr()),
        "--decision-interval-secs",
        "1",
        "--min-requests",
        "10",
        "--slo-ms",
        &cfg.slo_ms.to_string(),
        "--record",
        &dir.join("live.csv").to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let controller = Controller::start(ccfg)?;
    if !cds.is_file() || !rds.is_file() {
        bail!(
            "controller did not write {} / {}; log:\n{}",
            cds.display(),
            rds.display(),
            controller.log()
        );
    }
    let plugin = PluginConfig {
        flush_interval_ms: 1000,
        ..PluginConfig::default()
    };
    let mut mcfg = EnvoyConfig::with_meshtune(
        workload.addr(),
        controller.grpc(),
        &paths.filter_wasm,
        &plugin,
    );
    mcfg.log_level = "warn".into();
    let envoy = EnvoyProcess::start(
        &mcfg.launch(&paths.envoy),
        &file_xds_bootstrap(&mcfg, &cds, &rds, ROUTE_CONFIG),
    )?;
    println!(
        "workload {}  envoy listener {} admin {}  controller grpc {} admin {}",
        workload.addr(),
        envoy.listener(),
        envoy.admin(),
        controller.grpc(),
        controller.admin()
    );
    let mut last_line = String::new();
    let mt_run = run_load(cfg, envoy.listener(), |el| {
        let mut pushes = Vec::new();
        let Ok(text) = controller.admin_get("/api/destinations") else {
            return pushes;
        };
        let Ok(d) = serde_json::from_str::<Value>(&text) else {
            return pushes;
        };
        if let Some((line, last)) = knobs_line(&d, WORKLOAD_CLUSTER) {
            if last["outcome"] == "pushed" {
                if let Some(ms) = last["unix_ms"].as_u64() {
                    pushes.push(ms);
                }
            }
            let s = el.as_secs();
            if line != last_line || s % 5 == 0 {
                if s % 5 == 0 {
                    let top = Command::new(&paths.meshtune_bin)
                        .args(["top", "--admin", &controller.admin_url(), "--once"])
                        .output()
                        .ok()
                        .filter(|o| o.status.success())
                        .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_string())
                        .unwrap_or_default();
                    println!("--- t={s:>3}s\n{top}");
                }
                if line != last_line {
                    println!("t={s:>3}s  {line}");
                    last_line = line;
                }
            }
        }
        pushes
    })?;
    // Let the last window reach the controller.
    std::thread::sleep(Duration::from_millis(1500));
    let mt_breakers = breaker_lines(&envoy.clusters().unwrap_or_default());
    let mt_attempts = attempts_line(&envoy.stats().unwrap_or_default());
    if let Ok(text) = controller.admin_get("/api/destinations") {
        if let Ok(d) = serde_json::from_str::<Value>(&text) {
            if let Some((line, _)) = knobs_line(&d, WORKLOAD_CLUSTER) {
                println!("final {line}");
            }
        }
    }

    // Summary.
    let step_start = SEGMENT * step_at as u32;
    let first_push = mt_run.pushes.iter().copied().find(|p| *p >= step_start);
    let n = mt_run.reports.len().min(base_run.reports.len());
    let (before, after) = split(step_at, n, first_push, cfg.settle);
    let secs = |r: &std::ops::Range<usize>| r.len() as f64 * SEGMENT.as_secs_f64();
    let sl =
        |run: &Run, r: &std::ops::Range<usize>| slice(&run.reports[r.clone()], secs(r), cfg.slo_ms);
    let t = |r: &std::ops::Range<usize>| {
        format!(
            "t={}..{}s",
            r.start as u64 * SEGMENT.as_secs(),
            r.end as u64 * SEGMENT.as_secs()
        )
    };
    println!(
        "\n=== demo summary (step to {:.0} rps at t={}s; SLO {} ms) ===",
        cfg.step_rate,
        step_start.as_secs(),
        cfg.slo_ms
    );
    println!(
        "controller pushes at t = {}",
        if mt_run.pushes.is_empty() {
            "(none)".to_string()
        } else {
            mt_run
                .pushes
                .iter()
                .map(|p| format!("{:.1}s", p.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    match first_push {
        Some(p) => println!(
            "controller reacted to the step at t={:.1}s; BEFORE = {}, AFTER = {} (push + {}s settle)",
            p.as_secs_f64(),
            t(&before),
            t(&after),
            cfg.settle.as_secs()
        ),
        None => println!(
            "controller did NOT push during the step; BEFORE = {}, AFTER = {}",
            t(&before),
            t(&after)
        ),
    }
    println!(
        "{:<34} {:>9} {:>12} {:>9} {:>7} {:>7}",
        "", "p99 ms", "goodput/s", "errors", "sent", "shed"
    );
    println!(
        "{}",
        row(
            &format!("Istio defaults  BEFORE {}", t(&before)),
            &sl(&base_run, &before)
        )
    );
    println!(
        "{}",
        row(
            &format!("Istio defaults  AFTER  {}", t(&after)),
            &sl(&base_run, &after)
        )
    );
    println!(
        "{}",
        row(
            &format!("meshtune        BEFORE {}", t(&before)),
            &sl(&mt_run, &before)
        )
    );
    println!(
        "{}",
        row(
            &format!("meshtune        AFTER  {}", t(&after)),
            &sl(&mt_run, &after)
        )
    );
    println!("\nEnvoy /clusters circuit breakers of `{WORKLOAD_CLUSTER}`:");
    println!("  Istio defaults: {}", base_breakers.join("  "));
    println!("  meshtune:       {}", mt_breakers.join("  "));
    println!("Upstream attempts per request sent upstream (retries amplify the load when > 1):");
    println!("  Istio defaults: {base_attempts}");
    println!("  meshtune:       {mt_attempts}");
    drop(envoy);
    drop(controller);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_warm_up_then_step() {
        let c = DemoConfig {
            warm: Duration::from_secs(6),
            step: Duration::from_secs(10),
            ..DemoConfig::default()
        };
        let r = c.segment_rates();
        assert_eq!(r.len(), 8);
        assert_eq!(c.step_index(), 3);
        assert_eq!(r[2], c.base_rate);
        assert_eq!(r[3], c.step_rate);
    }

    #[test]
    fn split_puts_push_between_before_and_after() {
        // Step at segment 3 (t=6 s), push at t=9.5 s, settle 4 s → after from t=14 s.
        let (b, a) = split(3, 20, Some(Duration::from_millis(9500)), DEFAULT_SETTLE);
        assert_eq!(b, 3..4);
        assert_eq!(a, 7..20);
        // No push: first step segment vs second half.
        let (b, a) = split(3, 21, None, DEFAULT_SETTLE);
        assert_eq!(b, 3..4);
        assert_eq!(a, 12..21);
    }

    #[test]
    fn bootstrap_takes_clusters_and_routes_from_files() {
        let base = EnvoyConfig::with_meshtune(
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:9090".parse().unwrap(),
            Path::new("/x/f.wasm"),
            &PluginConfig::default(),
        );
        let b = file_xds_bootstrap(
            &base,
            Path::new("/d/cds.json"),
            Path::new("/d/rds.json"),
            "r",
        );
        assert_eq!(
            b["dynamic_resources"]["cds_config"]["path_config_source"]["path"],
            "/d/cds.json"
        );
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert!(hcm.get("route_config").is_none());
        assert_eq!(hcm["rds"]["route_config_name"], "r");
        assert_eq!(hcm["http_filters"][0]["name"], "envoy.filters.http.wasm");
        let names: Vec<&str> = b["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, vec!["meshtune_controller"]);
        assert!(
            b.get("bootstrap_extensions").is_none(),
            "the filter reports by itself"
        );
    }

    #[test]
    fn slice_counts_goodput_within_slo() {
        let hist = || hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut r = LoadReport {
            sent: 0,
            completed: 0,
            transport_errors: 0,
            timeouts: 0,
            skipped: 0,
            injected: 0,
            shed: 0,
            status: Default::default(),
            latency: hist(),
            latency_by_status: Default::default(),
            elapsed: Duration::ZERO,
            max_send_lag: Duration::ZERO,
            error_samples: Vec::new(),
        };
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        h.record(100_000).unwrap(); // 100 ms
        h.record(400_000).unwrap(); // 400 ms
        r.latency.add(&h).unwrap();
        r.latency_by_status.insert(200, h);
        r.status.insert(200, 2);
        r.status.insert(503, 1);
        r.sent = 3;
        r.completed = 3;
        let s = slice(&[r], 2.0, 250);
        assert_eq!(s.good, 1);
        assert_eq!(s.ok, 2);
        assert_eq!(s.errors, 1);
        assert!((s.goodput() - 0.5).abs() < 1e-9);
        assert!((s.error_rate() - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn attempts_line_divides_attempts_by_first_attempts() {
        let mut st = std::collections::HashMap::new();
        assert_eq!(attempts_line(&st), "no upstream requests");
        st.insert(format!("cluster.{WORKLOAD_CLUSTER}.upstream_rq_total"), 110);
        st.insert(format!("cluster.{WORKLOAD_CLUSTER}.upstream_rq_retry"), 10);
        assert_eq!(attempts_line(&st), "1.100 (110 attempts, 10 retries)");
    }

    #[test]
    fn breaker_lines_pick_the_workload_cluster() {
        let t = "workload::default_priority::max_requests::8\nworkload::127.0.0.1:1::cx_active::1\nother::default_priority::max_requests::1\n";
        assert_eq!(
            breaker_lines(t),
            vec!["workload::default_priority::max_requests::8"]
        );
    }
}
