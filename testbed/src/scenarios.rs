//! The filter-overhead benchmark (driven by `cargo xtask bench filter-overhead`; the demo is
//! [`crate::demo`]).
//!
//! [`filter_overhead`]: three Envoys (no filter, no-op wasm filter, meshtune filter) in front
//! of the same workload, measured in alternating rounds: Envoy CPU per request under the same
//! open-loop load, and saturation throughput with Envoy pinned to its own CPU; reported as
//! ratios to no filter.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::controller::{Controller, ControllerConfig};
use crate::envoy::{EnvoyConfig, EnvoyProcess, PluginConfig, WasmFilter};
use crate::loadgen::{self, LoadConfig};
use crate::paths::Paths;
use crate::procstat;
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
    if let Placement::Pinned { envoy, .. } = &placement {
        base.cpu_affinity = Some(envoy.clone());
    }
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
    let envoys: Vec<(String, EnvoyProcess)> = configs
        .into_iter()
        .map(|(n, c)| {
            c.start(&paths.envoy)
                .with_context(|| n.clone())
                .map(|e| (n, e))
        })
        .collect::<Result<_>>()?;
    let clock = procstat::CpuClock::detect(envoys[0].1.pid());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Warm-up (connections, wasm VMs, and a short saturation burst).
    for (_, e) in &envoys {
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
    let per_round = (cfg.secs + cfg.saturation_secs) * n as u64;
    let pb = bar(per_round * cfg.rounds as u64, "filter-overhead");
    let rounds = cfg.rounds as usize;
    // [variant][round]
    let mut cpu = vec![vec![f64::NAN; rounds]; n];
    let mut thr = vec![vec![f64::NAN; rounds]; n];
    let mut cores = vec![vec![f64::NAN; rounds]; n];
    let mut waits = vec![vec![f64::NAN; rounds]; n];
    let mut per_core = vec![vec![f64::NAN; rounds]; n];
    let mut p99 = vec![vec![f64::NAN; rounds]; n];
    let mut open_rps = vec![vec![f64::NAN; rounds]; n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (k + round) % n; // rotate the order each round
            let (name, e) = &envoys[i];
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
    }
    pb.finish_and_clear();
    let results: Vec<VariantResult> = (0..n)
        .map(|i| VariantResult {
            name: envoys[i].0.clone(),
            cpu_us_per_req: median(&cpu[i]),
            open_loop_rps: median(&open_rps[i]),
            throughput: median(&thr[i]),
            saturation_cores: median(&cores[i]),
            saturation_wait: median(&waits[i]),
            per_core: median(&per_core[i]),
            round_per_core_ratios: (0..rounds)
                .map(|r| per_core[i][r] / per_core[0][r])
                .collect(),
            p99_ms: median(&p99[i]),
            round_ratios: (0..rounds)
                .map(|r| (cpu[i][r] / cpu[0][r], thr[i][r] / thr[0][r]))
                .collect(),
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

fn print_report(
    cfg: &BenchConfig,
    placement: &Placement,
    clock: procstat::CpuClock,
    results: &[VariantResult],
) {
    println!(
        "filter-overhead: {} rounds (variants alternate, order rotated), Envoy --concurrency 1",
        cfg.rounds
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
    println!("  ratios are to no filter: median of the variant / median of no filter [per-round min–max]");
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
        "{:<name_w$} {:>9} {:>20} {:>8} {:>20} {:>8} {:>20} {:>12} {:>7}",
        "variant",
        "CPU µs/rq",
        "ratio [spread]",
        "sat. rps",
        "ratio [spread]",
        "rps/core",
        "ratio [spread]",
        "Envoy cores",
        "p99 ms"
    );
    let b = &results[0];
    for r in results {
        let (clo, chi) = spread(r.round_ratios.iter().map(|x| x.0));
        let (tlo, thi) = spread(r.round_ratios.iter().map(|x| x.1));
        let (plo, phi) = spread(r.round_per_core_ratios.iter().copied());
        println!(
            "{:<name_w$} {:>9.1} {:>6.2}x [{:.2}–{:.2}] {:>8.0} {:>6.2}x [{:.2}–{:.2}] {:>8.0} {:>6.2}x [{:.2}–{:.2}] {:>5.2}+{:<6.2} {:>7.2}",
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
            r.p99_ms
        );
    }
    println!("paired per-round ratios (median [min–max]), robust to drift between rounds:");
    let pairs = |a: &VariantResult, z: &VariantResult| {
        let cpu: Vec<f64> = (0..a.round_ratios.len())
            .map(|k| a.round_ratios[k].0 / z.round_ratios[k].0)
            .collect();
        let core: Vec<f64> = (0..a.round_per_core_ratios.len())
            .map(|k| a.round_per_core_ratios[k] / z.round_per_core_ratios[k])
            .collect();
        let (c0, c1) = spread(cpu.iter().copied());
        let (p0, p1) = spread(core.iter().copied());
        format!(
            "CPU/request {:.2}x [{c0:.2}–{c1:.2}], rps/core {:.2}x [{p0:.2}–{p1:.2}]",
            median(&cpu),
            median(&core)
        )
    };
    for r in &results[1..] {
        println!(
            "  {:<24} {}",
            format!("{} / no filter:", r.name),
            pairs(r, b)
        );
    }
    let noop = results.iter().find(|r| r.name == "no-op wasm");
    if let (Some(noop), Some(mt)) = (noop, results.iter().find(|r| r.name == "meshtune")) {
        println!("  {:<24} {}", "meshtune / no-op wasm:", pairs(mt, noop));
        if let Some(mb) = results.iter().find(|r| r.name == "meshtune B") {
            println!("  {:<24} {}", "meshtune B / meshtune:", pairs(mb, mt));
        }
    }
    if let Some(noop) = noop {
        for p in results.iter().filter(|r| r.name.starts_with("probe ")) {
            println!(
                "  {:<24} {}",
                format!("{} / no-op wasm:", p.name),
                pairs(p, noop)
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
    let Some(m) = results.iter().find(|r| r.name == "meshtune") else {
        return;
    };
    let cpu_ratio = m.cpu_us_per_req / b.cpu_us_per_req;
    let open_ratio = m.open_loop_rps / b.open_loop_rps;
    let thr_ratio = m.throughput / b.throughput;
    let core_ratio = m.per_core / b.per_core;
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "meshtune vs no filter (targets: CPU/request ≤ {TARGET_CPU_RATIO}x, throughput ≥ {TARGET_THROUGHPUT_RATIO}x):"
    );
    println!(
        "  CPU/request at {:.0} rps: {cpu_ratio:.2}x ({})",
        cfg.rate,
        verdict(cpu_ratio <= TARGET_CPU_RATIO)
    );
    println!(
        "  throughput under the open-loop load: {open_ratio:.2}x, {:.0} vs {:.0} 2xx/s ({})",
        m.open_loop_rps,
        b.open_loop_rps,
        verdict(open_ratio >= TARGET_THROUGHPUT_RATIO)
    );
    if cfg.saturation_secs == 0 {
        println!("  saturation throughput: not measured");
    } else {
        println!(
            "  saturation throughput: {thr_ratio:.2}x achieved, {core_ratio:.2}x per Envoy core ({} / {}; no-op wasm alone: {:.2}x per core)",
            verdict(thr_ratio >= TARGET_THROUGHPUT_RATIO),
            verdict(core_ratio >= TARGET_THROUGHPUT_RATIO),
            noop.map_or(f64::NAN, |r| r.per_core / b.per_core),
        );
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
