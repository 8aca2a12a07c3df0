//! Demo and filter-overhead benchmark scenarios (driven by `cargo xtask demo|bench`).
//!
//! - [`demo`]: Envoy + meshtune filter + workload + controller under a stepped open-loop
//!   load for about a minute, printing `meshtune top` every few seconds and a summary.
//! - [`filter_overhead`]: three Envoys (no filter, no-op wasm filter, meshtune filter) in
//!   front of the same workload, measured in alternating rounds: Envoy CPU per request under
//!   the same open-loop load, and saturation throughput; reported as ratios to no filter.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::controller::{write_hints, Controller, ControllerConfig, Destinations};
use crate::envoy::{Envoy, EnvoyConfig, PluginConfig, WasmFilter, WORKLOAD_CLUSTER};
use crate::loadgen::{self, LoadConfig, Phase};
use crate::paths::Paths;
use crate::workload::{ServiceTime, WorkloadConfig, WorkloadServer};

/// Target: meshtune filter CPU per request ≤ this × no filter.
pub const TARGET_CPU_RATIO: f64 = 1.25;
/// Target: meshtune filter throughput ≥ this × no filter.
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.85;

fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Prints above the bar, or plainly when the bar is hidden (not a terminal).
fn say(pb: &ProgressBar, msg: impl AsRef<str>) {
    if pb.is_hidden() {
        println!("{}", msg.as_ref());
    } else {
        pb.println(msg);
    }
}

fn require(paths: &Paths, need_noop: bool) -> Result<()> {
    let missing = paths.missing(need_noop);
    if !missing.is_empty() {
        bail!("missing prerequisites:\n  {}", missing.join("\n  "));
    }
    Ok(())
}

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Total length (split into warm-up, peak, hinted peak, cool-down).
    pub duration: Duration,
    /// Base arrival rate (rps); the peak is 3×.
    pub base_rate: f64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(60),
            base_rate: 100.0,
        }
    }
}

fn own_table(d: &Destinations) -> String {
    let mut s = format!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8}\n",
        "DESTINATION", "RPS", "P50ms", "P99ms", "5XX%", "SHED", "REQUESTS", "HINT"
    );
    for x in &d.destinations {
        s.push_str(&format!(
            "{:<22} {:>8.1} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>9} {:>8}\n",
            x.name,
            x.window.rps,
            x.window.p50_ms,
            x.window.p99_ms,
            x.window.error_5xx_rate * 100.0,
            x.lifetime.shed,
            x.lifetime.requests,
            if x.hint.is_null() { "-" } else { "yes" }
        ));
    }
    s.push_str(&format!(
        "reports accepted {} rejected {}\n",
        d.reports_accepted, d.reports_rejected
    ));
    s
}

/// Runs the demo and prints a summary.
pub fn demo(paths: &Paths, cfg: &DemoConfig) -> Result<()> {
    require(paths, false)?;
    let dir = crate::envoy::run_dir("demo")?;
    let hints = dir.join("hints.json");
    write_hints(&hints, &json!({"hints": []}))?;
    println!("starting workload, controller and Envoy with the meshtune filter ...");
    let workload = WorkloadServer::start(WorkloadConfig {
        capacity: 6,
        service_time: ServiceTime::LogNormal {
            median: Duration::from_millis(10),
            sigma: 0.6,
        },
        fail_every_n: None,
    })?;
    let mut ccfg = ControllerConfig::new(&paths.meshtune_bin);
    ccfg.hints_file = Some(hints.clone());
    ccfg.window_secs = Some(10);
    let controller = Controller::start(ccfg)?;
    let envoy = Envoy::start(
        &paths.envoy,
        &EnvoyConfig::with_meshtune(
            workload.addr(),
            controller.grpc(),
            &paths.filter_wasm,
            &PluginConfig::default(),
        ),
    )?;
    println!(
        "workload {}  envoy listener {} admin {}  controller grpc {} admin {}",
        workload.addr(),
        envoy.listener(),
        envoy.admin(),
        controller.grpc(),
        controller.admin()
    );
    let q = cfg.duration / 4;
    let r = cfg.base_rate;
    let mut load = LoadConfig::constant(envoy.listener(), r, q);
    load.phases = vec![
        Phase {
            rate: r,
            duration: q,
        },
        Phase {
            rate: 3.0 * r,
            duration: q,
        },
        Phase {
            rate: 3.0 * r,
            duration: q,
        },
        Phase {
            rate: r,
            duration: q,
        },
    ];
    load.fail_every_n = Some(20);
    let live = Arc::new(loadgen::Live::default());
    let started = Instant::now();
    let handle = loadgen::spawn(load.clone(), Some(live.clone()));
    let total = cfg.duration.as_secs().max(1);
    let pb = bar(total, "demo");
    println!(
        "load: {r:.0} rps, then {:.0} rps, then {:.0} rps with a concurrency-limit hint (5), then {r:.0} rps; 5% injected 503s",
        3.0 * r,
        3.0 * r
    );
    let mut hinted = false;
    let mut last_table = Instant::now() - Duration::from_secs(10);
    while !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(250));
        let el = started.elapsed();
        pb.set_position(el.as_secs().min(total));
        if !hinted && el >= 2 * q {
            write_hints(
                &hints,
                &json!({"hints": [{"cluster": WORKLOAD_CLUSTER, "concurrency_limit": 5,
                                   "ttl_ms": q.as_millis() as u64}]}),
            )?;
            say(
                &pb,
                "→ hint: concurrency_limit 5 on `workload` (expires after the phase)",
            );
            hinted = true;
        }
        if last_table.elapsed() >= Duration::from_secs(5) {
            last_table = Instant::now();
            let out = std::process::Command::new(&paths.meshtune_bin)
                .args(["top", "--admin", &controller.admin_url(), "--once"])
                .output();
            let table = match out {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
                _ => controller
                    .destinations()
                    .map(|d| own_table(&d))
                    .unwrap_or_else(|e| format!("(controller: {e})\n")),
            };
            say(
                &pb,
                format!(
                    "--- t={:>3}s  sent {} 5xx {} shed {} errors {}\n{}",
                    el.as_secs(),
                    live.sent.load(Ordering::Relaxed),
                    live.status_5xx.load(Ordering::Relaxed),
                    live.shed.load(Ordering::Relaxed),
                    live.errors.load(Ordering::Relaxed),
                    table.trim_end()
                ),
            );
        }
    }
    pb.finish_and_clear();
    let report = handle
        .join()
        .map_err(|_| anyhow::anyhow!("load generator panicked"))?;
    // Let the last window reach the controller.
    std::thread::sleep(Duration::from_millis(2500));
    let d = controller.destinations()?;
    println!("\n=== demo summary ===");
    println!("load generator: {}", report.summary());
    println!(
        "error rate {:.2}% (injected {}), shed {}",
        100.0 * report.class_count(5) as f64 / report.completed.max(1) as f64,
        report.injected,
        report.shed
    );
    if let Some(w) = d.get(WORKLOAD_CLUSTER) {
        println!(
            "controller (lifetime, `{}`): requests {} 5xx {} shed {} p50 {:.2} ms p99 {:.2} ms",
            w.name,
            w.lifetime.requests,
            w.lifetime.status_5xx,
            w.lifetime.shed,
            w.lifetime.p50_ms,
            w.lifetime.p99_ms
        );
    } else {
        println!("controller has no `{WORKLOAD_CLUSTER}` destination yet");
    }
    println!(
        "reports accepted {} rejected {}",
        d.reports_accepted, d.reports_rejected
    );
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Benchmark options.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Alternating rounds (each measures every variant once).
    pub rounds: u32,
    /// Open-loop phase length per variant and round.
    pub secs: u64,
    /// Open-loop arrival rate.
    pub rate: f64,
    /// Closed-loop saturation phase length per variant and round (0 = skip).
    pub saturation_secs: u64,
    /// Closed-loop connections.
    pub saturation_concurrency: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            rounds: 3,
            secs: 6,
            rate: 800.0,
            saturation_secs: 4,
            saturation_concurrency: 32,
        }
    }
}

/// One variant's medians.
#[derive(Debug, Clone)]
pub struct VariantResult {
    pub name: &'static str,
    /// Envoy CPU ticks per 1000 requests (open loop).
    pub cpu_per_kreq: f64,
    /// Saturation throughput (rps).
    pub throughput: f64,
    /// Open-loop p99 (ms).
    pub p99_ms: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Runs the filter-overhead benchmark and prints ratios; Ok(results).
pub fn filter_overhead(paths: &Paths, cfg: &BenchConfig) -> Result<Vec<VariantResult>> {
    require(paths, true)?;
    let workload = WorkloadServer::start(WorkloadConfig {
        capacity: 4096,
        service_time: ServiceTime::Constant(Duration::ZERO),
        fail_every_n: None,
    })?;
    let controller = Controller::start(ControllerConfig::new(&paths.meshtune_bin))?;
    let mut configs = Vec::new();
    let mut base = EnvoyConfig::new(workload.addr());
    base.concurrency = 1;
    base.log_level = "warn".into();
    configs.push(("no filter", base.clone()));
    let mut noop = base.clone();
    noop.filter = Some(WasmFilter::noop(&paths.noop_wasm));
    configs.push(("no-op wasm", noop));
    let mut mt = base.clone();
    mt.controller = Some(controller.grpc());
    mt.filter = Some(WasmFilter::meshtune(
        &paths.filter_wasm,
        &PluginConfig::default(),
    ));
    configs.push(("meshtune", mt));
    let envoys: Vec<(&'static str, Envoy)> = configs
        .into_iter()
        .map(|(n, c)| {
            Envoy::start(&paths.envoy, &c)
                .map(|e| (n, e))
                .with_context(|| n)
        })
        .collect::<Result<_>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Warm-up (connections, wasm VMs).
    for (_, e) in &envoys {
        let _ = rt.block_on(loadgen::run(
            &LoadConfig::constant(e.listener(), 200.0, Duration::from_secs(1)),
            None,
        ));
    }
    let n = envoys.len();
    let per_round = (cfg.secs + cfg.saturation_secs) * n as u64;
    let pb = bar(per_round * cfg.rounds as u64, "filter-overhead");
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut thr: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut p99: Vec<Vec<f64>> = vec![Vec::new(); n];
    for round in 0..cfg.rounds as usize {
        for k in 0..n {
            let i = (k + round) % n; // rotate the order each round
            let (name, e) = &envoys[i];
            pb.set_message(format!("round {} {name}", round + 1));
            let t0 = e.cpu_ticks()?;
            let r = rt.block_on(loadgen::run(
                &LoadConfig::constant(e.listener(), cfg.rate, Duration::from_secs(cfg.secs)),
                None,
            ));
            let t1 = e.cpu_ticks()?;
            if r.failed() > 0 || r.class_count(2) != r.completed {
                say(&pb, format!("warning: {name}: {}", r.summary()));
            }
            cpu[i].push((t1 - t0) as f64 * 1000.0 / r.completed.max(1) as f64);
            p99[i].push(r.quantile_ms(0.99));
            pb.inc(cfg.secs);
            if cfg.saturation_secs > 0 {
                let s = rt.block_on(loadgen::closed_loop(
                    e.listener(),
                    "/",
                    cfg.saturation_concurrency,
                    Duration::from_secs(cfg.saturation_secs),
                ));
                thr[i].push(s.throughput());
                pb.inc(cfg.saturation_secs);
            }
        }
    }
    pb.finish_and_clear();
    let results: Vec<VariantResult> = (0..n)
        .map(|i| VariantResult {
            name: envoys[i].0,
            cpu_per_kreq: median(&mut cpu[i]),
            throughput: median(&mut thr[i]),
            p99_ms: median(&mut p99[i]),
        })
        .collect();
    let b = &results[0];
    println!(
        "filter-overhead: {} rounds, open loop {:.0} rps × {} s, saturation {} conns × {} s, Envoy --concurrency 1",
        cfg.rounds, cfg.rate, cfg.secs, cfg.saturation_concurrency, cfg.saturation_secs
    );
    println!(
        "{:<12} {:>18} {:>8} {:>16} {:>8} {:>9}",
        "variant", "CPU ticks/1k req", "ratio", "throughput rps", "ratio", "p99 ms"
    );
    for r in &results {
        println!(
            "{:<12} {:>18.2} {:>7.2}x {:>16.0} {:>7.2}x {:>9.2}",
            r.name,
            r.cpu_per_kreq,
            r.cpu_per_kreq / b.cpu_per_kreq,
            r.throughput,
            r.throughput / b.throughput,
            r.p99_ms
        );
    }
    let m = &results[n - 1];
    let cpu_ratio = m.cpu_per_kreq / b.cpu_per_kreq;
    let thr_ratio = m.throughput / b.throughput;
    println!(
        "meshtune vs no filter: CPU/request {cpu_ratio:.2}x (target ≤ {TARGET_CPU_RATIO}x: {}), throughput {thr_ratio:.2}x (target ≥ {TARGET_THROUGHPUT_RATIO}x: {})",
        if cpu_ratio <= TARGET_CPU_RATIO { "met" } else { "NOT met" },
        if thr_ratio >= TARGET_THROUGHPUT_RATIO || cfg.saturation_secs == 0 { "met" } else { "NOT met" },
    );
    let d = controller.destinations().ok();
    if let Some(d) = d {
        println!(
            "controller: reports accepted {} rejected {}",
            d.reports_accepted, d.reports_rejected
        );
    }
    Ok(results)
}

/// Whether a path looks like an existing file (for binaries' friendly errors).
pub fn exists(p: &Path) -> bool {
    p.is_file()
}
