//! The filter-overhead benchmark (driven by `cargo xtask bench filter-overhead`; the demo is
//! [`crate::demo`]).
//!
//! [`filter_overhead`]: Envoys with no filter, the no-op wasm filter and the meshtune filter in
//! front of the same workload, in two configurations side by side — the plain testbed
//! bootstrap (`--concurrency 1`) and the Istio-shaped sidecar of
//! [`meshtune_test_support::istio`] (filters inserted as `manifests/base/wasmplugin.yaml` makes
//! istiod do, 2 workers) — measured in alternating rounds: Envoy CPU per request under the
//! same open-loop load, saturation throughput with Envoy pinned to its own CPU, and Envoy CPU
//! per second while idle; reported as ratios to no filter and to the no-op filter of the same
//! configuration.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::controller::{Controller, ControllerConfig};
use crate::envoy::{EnvoyConfig, EnvoyProcess, PluginConfig, WasmFilter};
use crate::loadgen::{self, LoadConfig};
use crate::paths::Paths;
use crate::procstat;
use crate::progress::{bar, say};
use crate::workload::{ServiceTime, WorkloadConfig, WorkloadServer};

/// Target (issue 12): meshtune CPU per request at the open-loop rate ≤ this × the no-op
/// wasm filter of the same configuration.
pub const TARGET_CPU_RATIO_NOOP: f64 = 1.10;
/// Target (issue 12): meshtune saturation requests per Envoy core ≥ this × the no-op wasm
/// filter of the same configuration.
pub const TARGET_PER_CORE_RATIO_NOOP: f64 = 0.95;
/// Target (issue 12): idle Envoy CPU per second with meshtune ≤ this × the no-op filter.
pub const TARGET_IDLE_RATIO_NOOP: f64 = 1.10;
/// Prefix of the Istio-shaped variants' names.
pub const ISTIO_PREFIX: &str = "istio ";
/// Default worker threads of the Istio-shaped variants.
pub const DEFAULT_ISTIO_CONCURRENCY: u32 = 2;
/// Default idle phase per round (all Envoys idle at once), seconds.
pub const DEFAULT_IDLE_SECS: u64 = 10;
/// Closed loop run (unmeasured) before each saturation phase: one flush interval and a bit,
/// so the meshtune filter's sampling interval follows the saturation rate.
const SATURATION_LEAD_IN: Duration = Duration::from_millis(1500);
/// Wait after the last traffic before the idle phase (filters go quiet after one flush).
const IDLE_SETTLE: Duration = Duration::from_secs(6);

fn require(paths: &Paths, need_noop: bool) -> Result<()> {
    let missing = paths.missing(need_noop);
    if !missing.is_empty() {
        bail!("missing prerequisites:\n  {}", missing.join("\n  "));
    }
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
    /// Pin Envoy to one CPU and this process (load generator, workload, controller) to the
    /// others, so the saturation phase measures Envoy's capacity on one core.
    pub pin: bool,
    /// A second meshtune filter build measured as a fourth variant (`meshtune B`), for A/B
    /// comparisons of filter changes; the target verdict stays on `meshtune`.
    pub compare_wasm: Option<std::path::PathBuf>,
    /// Probe variants: the no-op filter configured to make these host calls per request
    /// (e.g. `status`, `cluster,status`; see `testbed/noop-filter`), to price them.
    pub probes: Vec<String>,
    /// Also run the Istio-shaped configuration (no filter, no-op, meshtune) with this many
    /// workers; 0 = plain configuration only.
    pub istio_concurrency: u32,
    /// Idle phase per round (Envoy CPU per second with no traffic); 0 = skip.
    pub idle_secs: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            rounds: 3,
            secs: 6,
            rate: 800.0,
            saturation_secs: 4,
            saturation_concurrency: 32,
            pin: true,
            compare_wasm: None,
            probes: Vec::new(),
            istio_concurrency: DEFAULT_ISTIO_CONCURRENCY,
            idle_secs: DEFAULT_IDLE_SECS,
        }
    }
}

/// One variant's medians over the rounds.
#[derive(Debug, Clone)]
pub struct VariantResult {
    pub name: String,
    /// Envoy CPU µs per request (open loop).
    pub cpu_us_per_req: f64,
    /// 2xx responses per second during the open-loop phase (the offered rate when the
    /// variant keeps up with it).
    pub open_loop_rps: f64,
    /// Saturation throughput (rps).
    pub throughput: f64,
    /// Envoy CPU use during saturation, in cores (1.0 = one core busy).
    pub saturation_cores: f64,
    /// Envoy threads runnable but waiting for a CPU during saturation, in cores (time taken
    /// by other processes on Envoy's CPU; 0 when unknown).
    pub saturation_wait: f64,
    /// Saturation requests per Envoy CPU-second (capacity of one dedicated core).
    pub per_core: f64,
    /// Open-loop p99 (ms).
    pub p99_ms: f64,
    /// Per-round ratios to the no-filter variant of the same round: (CPU, throughput).
    pub round_ratios: Vec<(f64, f64)>,
    /// Per-round ratio of `per_core` to no filter.
    pub round_per_core_ratios: Vec<f64>,
    /// Envoy CPU while idle, ms per second (NaN when not measured).
    pub idle_ms_per_s: f64,
    /// Per-round ratio of the idle CPU to no filter.
    pub round_idle_ratios: Vec<f64>,
    /// Index (in the results) of the no-filter variant of the same configuration.
    pub base: usize,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

fn spread(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    })
}

/// Where Envoy and the driver run.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Envoy on `envoy`, this process (and its children but Envoy) on `driver`.
    Pinned { envoy: String, driver: String },
    /// Everything shares all CPUs (why).
    Unpinned(String),
}

/// Chooses CPUs: Envoy gets the first allowed CPU, the driver the rest (needs ≥ 2).
pub fn plan_placement(allowed: Option<&[u32]>, taskset: bool) -> Placement {
    if !taskset {
        return Placement::Unpinned("taskset (util-linux) not found".into());
    }
    match allowed {
        None => Placement::Unpinned("allowed CPUs unknown".into()),
        Some([]) | Some([_]) => Placement::Unpinned("fewer than 2 CPUs allowed".into()),
        Some([first, rest @ ..]) => Placement::Pinned {
            envoy: first.to_string(),
            driver: rest
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(","),
        },
    }
}

/// Runs the filter-overhead benchmark and prints ratios; Ok(results).
///
/// Method: three Envoys (`--concurrency 1`; no filter, no-op wasm filter, meshtune filter)
/// run side by side in front of one zero-latency workload server and are measured in
/// alternating rounds (order rotated each round).
/// - CPU per request: the same open-loop load (fixed arrival rate, so every variant serves the
///   same requests) is sent to each Envoy; Envoy's CPU time over the phase (ns, summed over its
///   threads from schedstat) divided by completed requests.
/// - Throughput: a closed-loop phase (`saturation_concurrency` connections, each sending the
///   next request when the previous one completed). Envoy is pinned to one CPU and the load
///   generator, workload and controller to the others, so Envoy's core is the bottleneck;
///   Envoy's CPU use during the phase is printed to show it (≈ 1 core = saturated).
pub fn filter_overhead(paths: &Paths, cfg: &BenchConfig) -> Result<Vec<VariantResult>> {
    require(paths, true)?;
    let me = std::process::id();
    let placement = if cfg.pin {
        match plan_placement(
            procstat::allowed_cpus().as_deref(),
            procstat::taskset_available(),
        ) {
            Placement::Pinned { envoy, driver } => match procstat::pin(me, &driver) {
                Ok(()) => Placement::Pinned { envoy, driver },
                Err(e) => Placement::Unpinned(format!("pinning failed: {e}")),
            },
            p => p,
        }
    } else {
        Placement::Unpinned("--no-pin".into())
    };
    if let Placement::Unpinned(why) = &placement {
        println!(
            "warning: not pinning ({why}): Envoy shares the CPUs with the load generator and \
             workload, so the throughput phase measures the machine rather than Envoy alone"
        );
    }
    // Started after pinning: the workload's threads and the controller inherit the driver CPUs.
    let workload = WorkloadServer::start(WorkloadConfig {
        capacity: 4096,
        service_time: ServiceTime::Constant(Duration::ZERO),
        fail_every_n: None,
    })?;
    let controller = Controller::start(ControllerConfig::new(&paths.meshtune_bin))?;
    let mut configs: Vec<(String, EnvoyConfig)> = Vec::new();
    let mut base = EnvoyConfig::new(workload.addr());
    base.concurrency = 1;
    base.log_level = "warn".into();
    let affinity = match &placement {
        Placement::Pinned { envoy, .. } => Some(envoy.clone()),
        Placement::Unpinned(_) => None,
    };
    base.cpu_affinity = affinity.clone();
    configs.push(("no filter".into(), base.clone()));
    let mut noop = base.clone();
    noop.filter = Some(WasmFilter::noop(&paths.noop_wasm));
    configs.push(("no-op wasm".into(), noop));
    let mut mt = base.clone();
    mt.controller = Some(controller.grpc());
    mt.filter = Some(WasmFilter::meshtune(
        &paths.filter_wasm,
        &PluginConfig::default(),
    ));
    if let Some(b) = &cfg.compare_wasm {
        let mut mb = mt.clone();
        let plugin = PluginConfig {
            pod: "client-b".into(),
            ..Default::default()
        };
        mb.filter = Some(WasmFilter::meshtune(b, &plugin));
        configs.push(("meshtune".into(), mt));
        configs.push(("meshtune B".into(), mb));
    } else {
        configs.push(("meshtune".into(), mt));
    }
    for spec in &cfg.probes {
        let mut p = base.clone();
        p.filter = Some(WasmFilter::probe(&paths.noop_wasm, spec));
        configs.push((format!("probe {spec}"), p));
    }
    let mut envoys: Vec<(String, EnvoyProcess, usize)> = configs
        .into_iter()
        .map(|(n, c)| {
            c.start(&paths.envoy)
                .with_context(|| n.clone())
                .map(|e| (n, e, 0))
        })
        .collect::<Result<_>>()?;
    let _istio_dir = if cfg.istio_concurrency > 0 {
        let dir = crate::istio_bench::BenchDir::new()?;
        let base_index = envoys.len();
        for (name, e) in crate::istio_bench::start_variants(
            paths,
            &dir,
            workload.addr(),
            controller.grpc(),
            cfg.istio_concurrency,
            affinity.clone(),
        )? {
            envoys.push((format!("{ISTIO_PREFIX}{name}"), e, base_index));
        }
        Some(dir)
    } else {
        None
    };
    let clock = procstat::CpuClock::detect(envoys[0].1.pid());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Warm-up (connections, wasm VMs, and a short saturation burst).
    for (_, e, _) in &envoys {
        let _ = rt.block_on(loadgen::run(
            &LoadConfig::constant(e.listener(), 200.0, Duration::from_secs(1)),
            None,
        ));
        if cfg.saturation_secs > 0 {
            let _ = rt.block_on(loadgen::closed_loop(
                e.listener(),
                "/",
                cfg.saturation_concurrency,
                Duration::from_millis(500),
            ));
        }
    }
    let n = envoys.len();
    let idle_round = if cfg.idle_secs > 0 {
        cfg.idle_secs + IDLE_SETTLE.as_secs()
    } else {
        0
    };
    let per_round = (cfg.secs + cfg.saturation_secs) * n as u64 + idle_round;
    let pb = bar(per_round * cfg.rounds as u64, "measurements");
    pb.set_message("filter-overhead");
    let rounds = cfg.rounds as usize;
    // [variant][round]
    let mut cpu = vec![vec![f64::NAN; rounds]; n];
    let mut thr = vec![vec![f64::NAN; rounds]; n];
    let mut cores = vec![vec![f64::NAN; rounds]; n];
    let mut waits = vec![vec![f64::NAN; rounds]; n];
    let mut per_core = vec![vec![f64::NAN; rounds]; n];
    let mut p99 = vec![vec![f64::NAN; rounds]; n];
    let mut open_rps = vec![vec![f64::NAN; rounds]; n];
    let mut idle = vec![vec![f64::NAN; rounds]; n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (k + round) % n; // rotate the order each round
            let (name, e, _) = &envoys[i];
            pb.set_message(format!("round {} {name}", round + 1));
            let c0 = clock.read_ns(e.pid())?;
            let r = rt.block_on(loadgen::run(
                &LoadConfig::constant(e.listener(), cfg.rate, Duration::from_secs(cfg.secs)),
                None,
            ));
            let c1 = clock.read_ns(e.pid())?;
            if r.failed() > 0 || r.class_count(2) != r.completed {
                say(&pb, format!("warning: {name}: {}", r.summary()));
            }
            cpu[i][round] = c1.saturating_sub(c0) as f64 / 1000.0 / r.completed.max(1) as f64;
            p99[i][round] = r.quantile_ms(0.99);
            open_rps[i][round] = r.class_count(2) as f64 / r.elapsed.as_secs_f64().max(1e-9);
            pb.inc(cfg.secs);
            if cfg.saturation_secs > 0 {
                // Unmeasured lead-in: the filter picks its sampling interval at window
                // boundaries from the last window's rate, so the first window at the new rate
                // is measured in full; the phase measures the steady state.
                let _ = rt.block_on(loadgen::closed_loop(
                    e.listener(),
                    "/",
                    cfg.saturation_concurrency,
                    SATURATION_LEAD_IN,
                ));
                let c0 = clock.read_ns(e.pid())?;
                let w0 = procstat::sched_ns(e.pid()).map(|x| x.1).unwrap_or(0);
                let s = rt.block_on(loadgen::closed_loop(
                    e.listener(),
                    "/",
                    cfg.saturation_concurrency,
                    Duration::from_secs(cfg.saturation_secs),
                ));
                let c1 = clock.read_ns(e.pid())?;
                let w1 = procstat::sched_ns(e.pid()).map(|x| x.1).unwrap_or(0);
                if s.errors > 0 {
                    say(
                        &pb,
                        format!("warning: {name}: {} saturation errors", s.errors),
                    );
                }
                thr[i][round] = s.throughput();
                let secs = s.elapsed.as_secs_f64().max(1e-9);
                let busy = c1.saturating_sub(c0) as f64 / 1e9;
                cores[i][round] = busy / secs;
                waits[i][round] = w1.saturating_sub(w0) as f64 / 1e9 / secs;
                per_core[i][round] = s.completed as f64 / busy.max(1e-9);
                pb.inc(cfg.saturation_secs);
            }
        }
        if cfg.idle_secs > 0 {
            // Every Envoy idle at once: CPU over the same seconds for all of them.
            pb.set_message(format!("round {} idle", round + 1));
            std::thread::sleep(IDLE_SETTLE);
            let t0 = std::time::Instant::now();
            let c0: Vec<u64> = envoys
                .iter()
                .map(|(_, e, _)| clock.read_ns(e.pid()))
                .collect::<Result<_, _>>()?;
            std::thread::sleep(Duration::from_secs(cfg.idle_secs));
            let secs = t0.elapsed().as_secs_f64();
            for (i, (_, e, _)) in envoys.iter().enumerate() {
                let c1 = clock.read_ns(e.pid())?;
                idle[i][round] = c1.saturating_sub(c0[i]) as f64 / 1e6 / secs;
            }
            pb.inc(idle_round);
        }
    }
    pb.finish_and_clear();
    let results: Vec<VariantResult> = (0..n)
        .map(|i| {
            let b = envoys[i].2;
            VariantResult {
                name: envoys[i].0.clone(),
                cpu_us_per_req: median(&cpu[i]),
                open_loop_rps: median(&open_rps[i]),
                throughput: median(&thr[i]),
                saturation_cores: median(&cores[i]),
                saturation_wait: median(&waits[i]),
                per_core: median(&per_core[i]),
                round_per_core_ratios: (0..rounds)
                    .map(|r| per_core[i][r] / per_core[b][r])
                    .collect(),
                p99_ms: median(&p99[i]),
                round_ratios: (0..rounds)
                    .map(|r| (cpu[i][r] / cpu[b][r], thr[i][r] / thr[b][r]))
                    .collect(),
                idle_ms_per_s: median(&idle[i]),
                round_idle_ratios: (0..rounds).map(|r| idle[i][r] / idle[b][r]).collect(),
                base: b,
            }
        })
        .collect();
    print_report(cfg, &placement, clock, &results);
    let d = controller.destinations().ok();
    if let Some(d) = d {
        println!(
            "controller: reports accepted {} rejected {}",
            d.reports_accepted, d.reports_rejected
        );
    }
    Ok(results)
}

/// Paired per-round ratios of `a` to `z` (median [min–max]) for CPU/request, rps/core and
/// idle CPU.
fn paired(a: &VariantResult, z: &VariantResult) -> [(f64, f64, f64); 3] {
    let per_round = |x: &[f64], y: &[f64]| -> (f64, f64, f64) {
        let v: Vec<f64> = x.iter().zip(y).map(|(p, q)| p / q).collect();
        let (lo, hi) = spread(v.iter().copied());
        (median(&v), lo, hi)
    };
    let cpu = |r: &VariantResult| r.round_ratios.iter().map(|x| x.0).collect::<Vec<_>>();
    [
        per_round(&cpu(a), &cpu(z)),
        per_round(&a.round_per_core_ratios, &z.round_per_core_ratios),
        per_round(&a.round_idle_ratios, &z.round_idle_ratios),
    ]
}

fn print_report(
    cfg: &BenchConfig,
    placement: &Placement,
    clock: procstat::CpuClock,
    results: &[VariantResult],
) {
    println!(
        "filter-overhead: {} rounds (variants alternate, order rotated); plain bootstrap with \
         Envoy --concurrency 1{}",
        cfg.rounds,
        if cfg.istio_concurrency > 0 {
            format!(
                ", and the Istio-shaped sidecar (`{ISTIO_PREFIX}*`: WasmPlugin via ECDS as istiod \
                 renders manifests/base/wasmplugin.yaml) with --concurrency {}",
                cfg.istio_concurrency
            )
        } else {
            String::new()
        }
    );
    println!(
        "  CPU/request: open loop {:.0} rps × {} s per variant; Envoy CPU from {}",
        cfg.rate,
        cfg.secs,
        clock.describe()
    );
    match placement {
        Placement::Pinned { envoy, driver } => println!(
            "  throughput: closed loop {} connections × {} s; Envoy pinned to CPU {envoy}, load generator + workload + controller to CPU {driver}",
            cfg.saturation_concurrency, cfg.saturation_secs
        ),
        Placement::Unpinned(why) => println!(
            "  throughput: closed loop {} connections × {} s; UNPINNED ({why}): shares CPUs with the load generator",
            cfg.saturation_concurrency, cfg.saturation_secs
        ),
    }
    if cfg.idle_secs > 0 {
        println!(
            "  idle: every Envoy without traffic for {} s per round (from {} s after the last request), Envoy CPU ms per second",
            cfg.idle_secs,
            IDLE_SETTLE.as_secs()
        );
    }
    println!("  ratios are to no filter of the same configuration: median of the variant / median of no filter [per-round min–max]");
    println!("  sat. rps = achieved closed-loop throughput; rps/core = the same requests per Envoy CPU-second");
    println!("  (capacity of a dedicated core: insensitive to CPU time other processes take from Envoy's core);");
    println!("  Envoy cores = on-CPU (+ runnable-waiting) during saturation: on+wait ≈ 1 means Envoy was the bottleneck");
    let name_w = results
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(11);
    println!(
        "{:<name_w$} {:>9} {:>20} {:>8} {:>20} {:>8} {:>20} {:>12} {:>7} {:>8} {:>7}",
        "variant",
        "CPU µs/rq",
        "ratio [spread]",
        "sat. rps",
        "ratio [spread]",
        "rps/core",
        "ratio [spread]",
        "Envoy cores",
        "p99 ms",
        "idle ms/s",
        "ratio"
    );
    for r in results {
        let b = &results[r.base];
        let (clo, chi) = spread(r.round_ratios.iter().map(|x| x.0));
        let (tlo, thi) = spread(r.round_ratios.iter().map(|x| x.1));
        let (plo, phi) = spread(r.round_per_core_ratios.iter().copied());
        println!(
            "{:<name_w$} {:>9.1} {:>6.2}x [{:.2}–{:.2}] {:>8.0} {:>6.2}x [{:.2}–{:.2}] {:>8.0} {:>6.2}x [{:.2}–{:.2}] {:>5.2}+{:<6.2} {:>7.2} {:>9.2} {:>6.2}x",
            r.name,
            r.cpu_us_per_req,
            r.cpu_us_per_req / b.cpu_us_per_req,
            clo,
            chi,
            r.throughput,
            r.throughput / b.throughput,
            tlo,
            thi,
            r.per_core,
            r.per_core / b.per_core,
            plo,
            phi,
            r.saturation_cores,
            r.saturation_wait,
            r.p99_ms,
            r.idle_ms_per_s,
            r.idle_ms_per_s / b.idle_ms_per_s,
        );
    }
    println!("paired per-round ratios (median [min–max]), robust to drift between rounds:");
    let fmt = |p: [(f64, f64, f64); 3]| {
        let [c, k, i] = p;
        format!(
            "CPU/request {:.2}x [{:.2}–{:.2}], rps/core {:.2}x [{:.2}–{:.2}], idle CPU {:.2}x [{:.2}–{:.2}]",
            c.0, c.1, c.2, k.0, k.1, k.2, i.0, i.1, i.2
        )
    };
    let find = |name: &str| results.iter().find(|r| r.name == name);
    for r in results.iter().filter(|r| results[r.base].name != r.name) {
        let b = &results[r.base];
        println!(
            "  {:<36} {}",
            format!("{} / {}:", r.name, b.name),
            fmt(paired(r, b))
        );
    }
    for prefix in ["", ISTIO_PREFIX] {
        let noop = find(&format!("{prefix}no-op wasm"));
        let (Some(noop), Some(mt)) = (noop, find(&format!("{prefix}meshtune"))) else {
            continue;
        };
        println!(
            "  {:<36} {}",
            format!("{} / {}:", mt.name, noop.name),
            fmt(paired(mt, noop))
        );
        if let Some(mb) = find(&format!("{prefix}meshtune B")) {
            println!(
                "  {:<36} {}",
                format!("{} / {}:", mb.name, mt.name),
                fmt(paired(mb, mt))
            );
        }
        for p in results
            .iter()
            .filter(|r| r.name.starts_with(&format!("{prefix}probe ")))
        {
            println!(
                "  {:<36} {}",
                format!("{} / {}:", p.name, noop.name),
                fmt(paired(p, noop))
            );
        }
    }
    if cfg.saturation_secs > 0 {
        if let Some(low) = results
            .iter()
            .find(|r| r.saturation_cores + r.saturation_wait < 0.9)
        {
            println!(
                "warning: Envoy ({}) was on or waiting for a CPU only {:.2} cores' worth during saturation: \
                 the load generator, not Envoy, limited the closed loop",
                low.name,
                low.saturation_cores + low.saturation_wait
            );
        }
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for prefix in ["", ISTIO_PREFIX] {
        let (Some(noop), Some(m)) = (
            find(&format!("{prefix}no-op wasm")),
            find(&format!("{prefix}meshtune")),
        ) else {
            continue;
        };
        let b = &results[m.base];
        let [c, k, i] = paired(m, noop);
        println!(
            "{} vs {} (targets: CPU/request ≤ {TARGET_CPU_RATIO_NOOP}x, rps/core ≥ {TARGET_PER_CORE_RATIO_NOOP}x, idle CPU ≤ {TARGET_IDLE_RATIO_NOOP}x; paired medians):",
            m.name, noop.name
        );
        println!(
            "  CPU/request at {:.0} rps: {:.2}x ({}); vs no filter {:.2}x",
            cfg.rate,
            c.0,
            verdict(c.0 <= TARGET_CPU_RATIO_NOOP),
            m.cpu_us_per_req / b.cpu_us_per_req
        );
        println!(
            "  throughput under the open-loop load: {:.0} vs {:.0} 2xx/s (no filter {:.0})",
            m.open_loop_rps, noop.open_loop_rps, b.open_loop_rps
        );
        if cfg.saturation_secs == 0 {
            println!("  saturation throughput: not measured");
        } else {
            println!(
                "  saturation: {:.2}x per Envoy core ({}); vs no filter {:.2}x (no-op alone {:.2}x)",
                k.0,
                verdict(k.0 >= TARGET_PER_CORE_RATIO_NOOP),
                m.per_core / b.per_core,
                noop.per_core / b.per_core
            );
        }
        if cfg.idle_secs == 0 {
            println!("  idle CPU: not measured");
        } else {
            println!(
                "  idle CPU: {:.2} vs {:.2} ms/s, {:.2}x ({}); no filter {:.2} ms/s",
                m.idle_ms_per_s,
                noop.idle_ms_per_s,
                i.0,
                verdict(i.0 <= TARGET_IDLE_RATIO_NOOP),
                b.idle_ms_per_s
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_needs_two_cpus_and_taskset() {
        assert_eq!(
            plan_placement(Some(&[0, 1]), true),
            Placement::Pinned {
                envoy: "0".into(),
                driver: "1".into()
            }
        );
        assert_eq!(
            plan_placement(Some(&[2, 3, 5]), true),
            Placement::Pinned {
                envoy: "2".into(),
                driver: "3,5".into()
            }
        );
        assert!(matches!(
            plan_placement(Some(&[0]), true),
            Placement::Unpinned(_)
        ));
        assert!(matches!(plan_placement(None, true), Placement::Unpinned(_)));
        assert!(matches!(
            plan_placement(Some(&[0, 1]), false),
            Placement::Unpinned(_)
        ));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(spread([1.2, 0.9, 1.1].into_iter()), (0.9, 1.2));
    }
}
