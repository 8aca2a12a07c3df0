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
//! configuration. The saturation phase is driven by [`meshtune_blast`] (an optimised
//! closed-loop client and fixed-response upstream) from the CPU Envoy is not pinned to.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::controller::{Controller, ControllerConfig};
use crate::envoy::{EnvoyConfig, EnvoyProcess, PluginConfig, WasmFilter};
use crate::loadgen::{self, LoadConfig};
use crate::paths::Paths;
use crate::procstat;
use crate::progress::{bar, say};

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
/// Default saturation phase per variant and round, seconds.
pub const DEFAULT_SATURATION_SECS: u64 = 3;
/// Default saturation rounds: with ~±5 % per-round noise on a shared 2-core machine, 15
/// paired ratios put the median's own uncertainty near ±1.5 %.
pub const DEFAULT_SATURATION_ROUNDS: u32 = 15;
/// Driver (load generator + upstream) on-CPU cores during saturation above which the run
/// warns that the driver may have limited the closed loop.
const DRIVER_BUSY_WARN: f64 = 0.8;
/// Default open-loop (CPU/request) rounds: like saturation, enough paired per-round ratios
/// that their interquartile range sits well inside the targets' ±10 % margin.
pub const DEFAULT_ROUNDS: u32 = 15;
/// Default open-loop phase per variant and round, seconds (2,400 requests at 800 rps).
pub const DEFAULT_OPEN_LOOP_SECS: u64 = 3;
/// Default open-loop arrival rate (rps) of the CPU/request phase.
pub const DEFAULT_RATE: f64 = 800.0;
/// Default idle window (all Envoys idle at once), seconds: the idle filter's period (its
/// heartbeat interval, 10 s by default), so every window holds one tick of each VM.
pub const DEFAULT_IDLE_SECS: u64 = 10;
/// Default Envoy restarts: fresh Envoys (every variant) before every round. Two Envoys of the
/// same kind differ by a per-process offset (in one run a second no-op filter used 31 µs more
/// CPU per request than the first in the plain configuration and 0.25 ms/s less idle CPU in
/// the Istio-shaped one, in most rounds), as large as the targets' margins; with fresh
/// processes per round that offset is per-round noise, which the median over the rounds
/// absorbs, instead of a bias of the whole run.
pub const DEFAULT_RESTART_EVERY: u32 = 1;
/// Default idle windows, measured back to back once the rounds are done; each is one paired
/// round.
pub const DEFAULT_IDLE_ROUNDS: u32 = 12;
/// Closed loop run (unmeasured) before each saturation phase: one flush interval and a bit,
/// so the meshtune filter's sampling interval follows the saturation rate.
const SATURATION_LEAD_IN: Duration = Duration::from_millis(1500);
/// Wait after the last traffic before the idle windows: the meshtune filter's VMs tick slowly
/// after 3 quiet flushes (~4 s); its first slow tick comes ~10 s after that, inside the first
/// window.
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
    /// Open-loop rounds (each measures every variant once, in alternating order).
    pub rounds: u32,
    /// Open-loop phase length per variant and round.
    pub secs: u64,
    /// Open-loop arrival rate.
    pub rate: f64,
    /// Closed-loop saturation phase length per variant and saturation round (0 = skip).
    pub saturation_secs: u64,
    /// Saturation rounds (each measures every variant once, in alternating order); more
    /// rounds than the open-loop ones because the per-round ratio is the noisier figure.
    pub saturation_rounds: u32,
    /// Closed-loop connections.
    pub saturation_concurrency: usize,
    /// Pin Envoy to one CPU and this process (load generator, workload, controller) to the
    /// others, so the saturation phase measures Envoy's capacity on one core.
    pub pin: bool,
    /// A second meshtune filter build measured as a fourth variant (`meshtune B`), for A/B
    /// comparisons of filter changes; the target verdict stays on `meshtune`.
    pub compare_wasm: Option<std::path::PathBuf>,
    /// Plugin configuration fields (a JSON object) of `meshtune B` over the defaults, e.g.
    /// `{"sample_above_rps": 1}`; alone, `meshtune B` is the committed filter with them. Also
    /// adds `istio meshtune B` (the manifest's configuration with these fields).
    pub compare_config: Option<String>,
    /// Probe variants: the no-op filter configured to make these host calls per request
    /// (e.g. `status`, `cluster,status`; see `testbed/noop-filter`), to price them.
    pub probes: Vec<String>,
    /// Also run the Istio-shaped configuration (no filter, no-op, meshtune) with this many
    /// workers; 0 = plain configuration only.
    pub istio_concurrency: u32,
    /// Idle window (Envoy CPU per second with no traffic, every Envoy at once); 0 = skip.
    pub idle_secs: u64,
    /// Idle windows, back to back after the rounds (each one paired round).
    pub idle_rounds: u32,
    /// Start fresh Envoys (all variants) every this many rounds (a round: one open-loop and
    /// one saturation phase per variant); 0 = the same Envoys for the whole run.
    pub restart_every: u32,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            rounds: DEFAULT_ROUNDS,
            secs: DEFAULT_OPEN_LOOP_SECS,
            rate: DEFAULT_RATE,
            saturation_secs: DEFAULT_SATURATION_SECS,
            saturation_rounds: DEFAULT_SATURATION_ROUNDS,
            saturation_concurrency: 32,
            pin: true,
            compare_wasm: None,
            compare_config: None,
            probes: Vec::new(),
            istio_concurrency: DEFAULT_ISTIO_CONCURRENCY,
            idle_secs: DEFAULT_IDLE_SECS,
            idle_rounds: DEFAULT_IDLE_ROUNDS,
            restart_every: DEFAULT_RESTART_EVERY,
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
    /// The driver's (load generator + upstream, this process) CPU use during saturation, in
    /// cores: well below 1 means it had headroom and Envoy set the rate.
    pub driver_cores: f64,
    /// Saturation requests per Envoy CPU-second (capacity of one dedicated core).
    pub per_core: f64,
    /// Open-loop p99 (ms).
    pub p99_ms: f64,
    /// Per open-loop round: Envoy CPU µs per request.
    pub round_cpu_us: Vec<f64>,
    /// Per open-loop round: CPU/request ratio to the no-filter variant of the same round.
    pub round_cpu_ratios: Vec<f64>,
    /// Per saturation round: throughput ratio to no filter.
    pub round_throughput_ratios: Vec<f64>,
    /// Per saturation round: requests per Envoy CPU-second.
    pub round_per_core: Vec<f64>,
    /// Per saturation round: ratio of `per_core` to no filter.
    pub round_per_core_ratios: Vec<f64>,
    /// Envoy CPU while idle, ms per second (NaN when not measured).
    pub idle_ms_per_s: f64,
    /// Per idle window: Envoy CPU ms per second.
    pub round_idle_ms: Vec<f64>,
    /// Per idle window: ratio of the idle CPU to no filter.
    pub round_idle_ratios: Vec<f64>,
    /// Index (in the results) of the no-filter variant of the same configuration.
    pub base: usize,
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// Linear-interpolated quantile `q` of `v` (NaN values ignored; NaN when none is left).
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn spread(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.filter(|x| !x.is_nan())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        })
}

/// Median, quartiles and range of per-round ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(v: &[f64]) -> Self {
        let (min, max) = spread(v.iter().copied());
        Self {
            median: median(v),
            q1: quantile(v, 0.25),
            q3: quantile(v, 0.75),
            min,
            max,
            n: v.iter().filter(|x| !x.is_nan()).count(),
        }
    }
}

impl Summary {
    /// An absolute figure with its unit: `+8.1 µs [IQR +6.0–+9.9, min–max …, n=15]`.
    pub fn abs(&self, unit: &str, decimals: usize) -> String {
        if self.n == 0 {
            return "not measured".into();
        }
        let d = decimals;
        format!(
            "{:+.d$} {unit} [IQR {:+.d$}–{:+.d$}, min–max {:+.d$}–{:+.d$}, n={}]",
            self.median, self.q1, self.q3, self.min, self.max, self.n
        )
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.n == 0 {
            return write!(f, "not measured");
        }
        write!(
            f,
            "{:.2}x [IQR {:.2}–{:.2}, min–max {:.2}–{:.2}, n={}]",
            self.median, self.q1, self.q3, self.min, self.max, self.n
        )
    }
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

/// Order of the variants in saturation round `round`: forward in even rounds, backward in odd
/// ones (no-op, meshtune, meshtune, no-op, …), so no variant always follows the same one.
pub fn saturation_order(n: usize, round: usize) -> Vec<usize> {
    if round.is_multiple_of(2) {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

/// The plugin configuration of the `meshtune B` variant: the default one with `overrides`
/// (a JSON object, e.g. `{"sample_above_rps": 1}`) merged in.
pub fn compare_configuration(base: &PluginConfig, overrides: Option<&str>) -> Result<String> {
    let mut v = serde_json::to_value(base)?;
    if let Some(o) = overrides {
        let o: serde_json::Value =
            serde_json::from_str(o).with_context(|| format!("--compare-config {o:?}"))?;
        let (Some(dst), Some(src)) = (v.as_object_mut(), o.as_object()) else {
            bail!("--compare-config must be a JSON object, got {o}");
        };
        for (k, x) in src {
            dst.insert(k.clone(), x.clone());
        }
    }
    Ok(v.to_string())
}

/// The Envoys of one stretch of rounds: (name, process, index of the no-filter variant of
/// its configuration), and the Istio-shaped sidecars' files (removed after the Envoys exit:
/// fields drop in order).
struct Fleet {
    envoys: Vec<(String, EnvoyProcess, usize)>,
    _istio_dir: Option<crate::istio_bench::BenchDir>,
}

/// Progress-bar allowance per Envoy restart (start, wasm load, warm-up), seconds.
const RESTART_SECS_PER_ENVOY: u64 = 2;

/// The rounds (0-based, of `rounds`) before which every Envoy is started afresh: every
/// `every`-th round after the first (its Envoys are the initial ones); none when `every` is 0.
pub fn restart_rounds(rounds: usize, every: u32) -> Vec<usize> {
    if every == 0 {
        return Vec::new();
    }
    (1..rounds).filter(|r| r % every as usize == 0).collect()
}

/// Runs the filter-overhead benchmark and prints ratios; Ok(results).
///
/// Method: Envoys (plain `--concurrency 1`, and the Istio-shaped sidecar with
/// `istio_concurrency` workers; each with no filter, the no-op wasm filter and the meshtune
/// filter) run side by side in front of one fixed-response upstream ([`meshtune_blast`]).
/// - CPU per request: the same open-loop load (fixed arrival rate, so every variant serves the
///   same requests) is sent to each Envoy in `rounds` rounds (order rotated); Envoy's CPU time
///   over the phase (ns, summed over its threads from schedstat) divided by completed
///   requests.
/// - Saturation: `saturation_rounds` rounds, each a closed loop (`saturation_concurrency`
///   keep-alive connections, each sending the next request when the previous one completed)
///   per variant, the order alternating forward and backward. Every Envoy (all its workers)
///   is pinned to one CPU and this process — the optimised closed-loop client and upstream of
///   [`meshtune_blast`], one thread each — and the controller to the other(s), so Envoy's
///   core is the bottleneck; Envoy's and the driver's CPU use are printed to show it. The
///   figure is requests per Envoy CPU-second; the statistic the paired per-round ratio.
/// - Fresh Envoys every `restart_every` rounds (a round: one open-loop and one saturation
///   phase per variant), so the fixed offset between two processes of the same kind is
///   per-round noise rather than a bias of the whole run.
/// - Idle: after the rounds, every Envoy (the last ones started) idle at once, in windows
///   back to back.
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
             upstream, so the throughput phase measures the machine rather than Envoy alone"
        );
    }
    // Started after pinning: the upstream's thread and the controller inherit the driver CPUs.
    let upstream = meshtune_blast::Upstream::start()?;
    let controller = Controller::start(ControllerConfig::new(&paths.meshtune_bin))?;
    let mut configs: Vec<(String, EnvoyConfig)> = Vec::new();
    let mut base = EnvoyConfig::new(upstream.addr());
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
    configs.push(("meshtune".into(), mt.clone()));
    if cfg.compare_wasm.is_some() || cfg.compare_config.is_some() {
        let mut mb = mt;
        let plugin = PluginConfig {
            pod: "client-b".into(),
            ..Default::default()
        };
        let wasm = cfg.compare_wasm.as_ref().unwrap_or(&paths.filter_wasm);
        mb.filter = Some(WasmFilter::meshtune_raw(
            wasm,
            compare_configuration(&plugin, cfg.compare_config.as_deref())?,
        ));
        configs.push(("meshtune B".into(), mb));
    }
    for spec in &cfg.probes {
        let mut p = base.clone();
        p.filter = Some(WasmFilter::probe(&paths.noop_wasm, spec));
        configs.push((format!("probe {spec}"), p));
    }
    let istio_extra = crate::istio_bench::Extra {
        compare_config: cfg.compare_config.as_deref(),
        compare_wasm: cfg.compare_wasm.as_deref(),
        probes: &cfg.probes,
    };
    // Every variant, started afresh: the plain ones, then the Istio-shaped ones.
    let start_all = || -> Result<Fleet> {
        let mut envoys: Vec<(String, EnvoyProcess, usize)> = configs
            .iter()
            .map(|(n, c)| {
                c.start(&paths.envoy)
                    .with_context(|| n.clone())
                    .map(|e| (n.clone(), e, 0))
            })
            .collect::<Result<_>>()?;
        let istio_dir = if cfg.istio_concurrency > 0 {
            let dir = crate::istio_bench::BenchDir::new()?;
            let base_index = envoys.len();
            for (name, e) in crate::istio_bench::start_variants(
                paths,
                &dir,
                upstream.addr(),
                controller.grpc(),
                cfg.istio_concurrency,
                affinity.clone(),
                &istio_extra,
            )? {
                envoys.push((format!("{ISTIO_PREFIX}{name}"), e, base_index));
            }
            Some(dir)
        } else {
            None
        };
        Ok(Fleet {
            envoys,
            _istio_dir: istio_dir,
        })
    };
    let mut fleet = start_all()?;
    let clock = procstat::CpuClock::detect(fleet.envoys[0].1.pid());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let saturate = |e: &EnvoyProcess, d: Duration| {
        let a = e.listener();
        meshtune_blast::closed_loop(a, &a.to_string(), "/", cfg.saturation_concurrency, d)
    };
    // Warm-up (connections, wasm VMs, and a short saturation burst).
    let warm_up = |fleet: &Fleet| -> Result<()> {
        for (_, e, _) in &fleet.envoys {
            let _ = rt.block_on(loadgen::run(
                &LoadConfig::constant(e.listener(), 200.0, Duration::from_secs(1)),
                None,
            ));
            if cfg.saturation_secs > 0 {
                saturate(e, Duration::from_millis(500))?;
            }
        }
        Ok(())
    };
    warm_up(&fleet)?;
    let n = fleet.envoys.len();
    let idle_rounds = if cfg.idle_secs > 0 {
        cfg.idle_rounds as usize
    } else {
        0
    };
    let sat_rounds = if cfg.saturation_secs > 0 {
        cfg.saturation_rounds as usize
    } else {
        0
    };
    let rounds = cfg.rounds as usize;
    let all_rounds = rounds.max(sat_rounds);
    let per_sat = cfg.saturation_secs + SATURATION_LEAD_IN.as_secs_f64().ceil() as u64;
    let idle_total = if idle_rounds > 0 {
        IDLE_SETTLE.as_secs() + cfg.idle_secs * idle_rounds as u64
    } else {
        0
    };
    let restart_at = restart_rounds(all_rounds, cfg.restart_every);
    let total = cfg.secs * n as u64 * cfg.rounds as u64
        + idle_total
        + per_sat * n as u64 * sat_rounds as u64
        + restart_at.len() as u64 * n as u64 * RESTART_SECS_PER_ENVOY;
    let pb = bar(total, "measurements");
    pb.set_message("filter-overhead");
    // [variant][round]
    let mut cpu = vec![vec![f64::NAN; rounds]; n];
    let mut p99 = vec![vec![f64::NAN; rounds]; n];
    let mut open_rps = vec![vec![f64::NAN; rounds]; n];
    let mut thr = vec![vec![f64::NAN; sat_rounds]; n];
    let mut cores = vec![vec![f64::NAN; sat_rounds]; n];
    let mut waits = vec![vec![f64::NAN; sat_rounds]; n];
    let mut driver = vec![vec![f64::NAN; sat_rounds]; n];
    let mut per_core = vec![vec![f64::NAN; sat_rounds]; n];
    for round in 0..all_rounds {
        if restart_at.contains(&round) {
            pb.set_message(format!("round {}: fresh Envoys", round + 1));
            // The old Envoys exit (and their directories go) before the new ones start.
            drop(fleet);
            fleet = start_all()?;
            warm_up(&fleet)?;
            pb.inc(n as u64 * RESTART_SECS_PER_ENVOY);
        }
        // Forward, backward, …: no-op and meshtune follow each other both ways.
        if round < rounds {
            for i in saturation_order(n, round) {
                let (name, e, _) = &fleet.envoys[i];
                pb.set_message(format!("open-loop round {} {name}", round + 1));
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
            }
        }
        if round < sat_rounds {
            for i in saturation_order(n, round) {
                let (name, e, _) = &fleet.envoys[i];
                pb.set_message(format!("saturation round {} {name}", round + 1));
                // Unmeasured lead-in: the filter picks its sampling interval at window
                // boundaries from the last window's rate, so the first window at the new rate
                // is measured in full; the phase measures the steady state.
                saturate(e, SATURATION_LEAD_IN)?;
                let c0 = clock.read_ns(e.pid())?;
                let w0 = procstat::sched_ns(e.pid()).map(|x| x.1).unwrap_or(0);
                let d0 = clock.read_ns(me)?;
                let s = saturate(e, Duration::from_secs(cfg.saturation_secs))?;
                let c1 = clock.read_ns(e.pid())?;
                let w1 = procstat::sched_ns(e.pid()).map(|x| x.1).unwrap_or(0);
                let d1 = clock.read_ns(me)?;
                if s.errors > 0 || s.non_2xx > 0 {
                    say(
                        &pb,
                        format!(
                            "warning: {name}: saturation {} errors, {} non-2xx",
                            s.errors, s.non_2xx
                        ),
                    );
                }
                thr[i][round] = s.throughput();
                let secs = s.elapsed.as_secs_f64().max(1e-9);
                let busy = c1.saturating_sub(c0) as f64 / 1e9;
                cores[i][round] = busy / secs;
                waits[i][round] = w1.saturating_sub(w0) as f64 / 1e9 / secs;
                driver[i][round] = d1.saturating_sub(d0) as f64 / 1e9 / secs;
                per_core[i][round] = s.ok as f64 / busy.max(1e-9);
                pb.inc(per_sat);
            }
        }
    }
    // [variant][idle window]: every Envoy idle at once, windows back to back, so each
    // window's figures are paired (the same seconds of the same machine for all of them).
    let mut idle = vec![vec![f64::NAN; idle_rounds]; n];
    if idle_rounds > 0 {
        pb.set_message("idle: settling");
        std::thread::sleep(IDLE_SETTLE);
        pb.inc(IDLE_SETTLE.as_secs());
        let read_all = || -> Result<Vec<u64>> {
            fleet
                .envoys
                .iter()
                .map(|(_, e, _)| clock.read_ns(e.pid()).map_err(Into::into))
                .collect()
        };
        let start = std::time::Instant::now();
        let mut t0 = start;
        let mut c0 = read_all()?;
        for round in 0..idle_rounds {
            pb.set_message(format!("idle window {}", round + 1));
            // Windows end on a fixed grid from `start` (no drift from the reads).
            let end = start + Duration::from_secs(cfg.idle_secs * (round as u64 + 1));
            std::thread::sleep(end.saturating_duration_since(std::time::Instant::now()));
            let t1 = std::time::Instant::now();
            let c1 = read_all()?;
            let secs = (t1 - t0).as_secs_f64().max(1e-9);
            for ((v, a), b) in idle.iter_mut().zip(&c0).zip(&c1) {
                v[round] = b.saturating_sub(*a) as f64 / 1e6 / secs;
            }
            t0 = t1;
            c0 = c1;
            pb.inc(cfg.idle_secs);
        }
    }
    let envoys = &fleet.envoys;
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
                driver_cores: median(&driver[i]),
                per_core: median(&per_core[i]),
                round_per_core: per_core[i].clone(),
                round_per_core_ratios: paired_ratios(&per_core[i], &per_core[b]),
                round_throughput_ratios: paired_ratios(&thr[i], &thr[b]),
                p99_ms: median(&p99[i]),
                round_cpu_us: cpu[i].clone(),
                round_cpu_ratios: paired_ratios(&cpu[i], &cpu[b]),
                idle_ms_per_s: median(&idle[i]),
                round_idle_ms: idle[i].clone(),
                round_idle_ratios: paired_ratios(&idle[i], &idle[b]),
                base: b,
            }
        })
        .collect();
    let max_driver = driver.iter().flatten().copied().fold(f64::NAN, f64::max);
    print_report(cfg, &placement, clock, &results, max_driver);
    let d = controller.destinations().ok();
    if let Some(d) = d {
        println!(
            "controller: reports accepted {} rejected {}",
            d.reports_accepted, d.reports_rejected
        );
    }
    Ok(results)
}

/// Per-round ratios `x[r] / y[r]` of two variants measured in the same rounds.
pub fn paired_ratios(x: &[f64], y: &[f64]) -> Vec<f64> {
    x.iter().zip(y).map(|(p, q)| p / q).collect()
}

/// Per-round differences `x[r] − y[r]` of two variants measured in the same rounds.
pub fn paired_diffs(x: &[f64], y: &[f64]) -> Vec<f64> {
    x.iter().zip(y).map(|(p, q)| p - q).collect()
}

/// Variant `a` against variant `z` round by round (the same rounds, the same seconds for
/// idle): ratios, and the absolute differences where a ratio of two small figures could hide
/// how small the cost is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    /// CPU/request ratio per open-loop round.
    pub cpu: Summary,
    /// CPU/request difference per open-loop round, µs per request.
    pub cpu_diff_us: Summary,
    /// Requests per Envoy core ratio per saturation round.
    pub per_core: Summary,
    /// Idle CPU ratio per idle window.
    pub idle: Summary,
    /// Idle CPU difference per idle window, ms of CPU per second.
    pub idle_diff_ms: Summary,
}

/// The paired comparison of `a` with `z`.
pub fn paired(a: &VariantResult, z: &VariantResult) -> Paired {
    Paired {
        cpu: Summary::of(&paired_ratios(&a.round_cpu_us, &z.round_cpu_us)),
        cpu_diff_us: Summary::of(&paired_diffs(&a.round_cpu_us, &z.round_cpu_us)),
        per_core: Summary::of(&paired_ratios(&a.round_per_core, &z.round_per_core)),
        idle: Summary::of(&paired_ratios(&a.round_idle_ms, &z.round_idle_ms)),
        idle_diff_ms: Summary::of(&paired_diffs(&a.round_idle_ms, &z.round_idle_ms)),
    }
}

fn print_report(
    cfg: &BenchConfig,
    placement: &Placement,
    clock: procstat::CpuClock,
    results: &[VariantResult],
    max_driver: f64,
) {
    println!(
        "filter-overhead: plain bootstrap with Envoy --concurrency 1{}; upstream: fixed 200 response (meshtune-blast)",
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
        "  CPU/request: {} rounds (order forward, backward, …), open loop {:.0} rps × {} s per variant; Envoy CPU from {}",
        cfg.rounds,
        cfg.rate,
        cfg.secs,
        clock.describe()
    );
    let how = format!(
        "{} rounds (order forward, backward, …), closed loop {} keep-alive connections × {} s per variant after a {:.1} s lead-in (meshtune-blast: one optimised client thread)",
        cfg.saturation_rounds,
        cfg.saturation_concurrency,
        cfg.saturation_secs,
        SATURATION_LEAD_IN.as_secs_f64()
    );
    match placement {
        Placement::Pinned { envoy, driver } => println!(
            "  saturation: {how}; every Envoy (all its workers) pinned to CPU {envoy}, load generator + upstream + controller to CPU {driver}"
        ),
        Placement::Unpinned(why) => println!(
            "  saturation: {how}; UNPINNED ({why}): shares CPUs with the load generator"
        ),
    }
    if cfg.idle_secs > 0 && cfg.idle_rounds > 0 {
        println!(
            "  idle: every Envoy without traffic at once, {} windows of {} s back to back (from {} s after the open loop's last request), Envoy CPU ms per second, same clock",
            cfg.idle_rounds,
            cfg.idle_secs,
            IDLE_SETTLE.as_secs()
        );
    }
    println!("  ratios are to no filter of the same configuration: median of the variant / median of no filter [per-round min–max]");
    println!("  sat. rps = achieved closed-loop throughput; rps/core = the same requests per Envoy CPU-second");
    println!("  (capacity of a dedicated core: insensitive to CPU time other processes take from Envoy's core);");
    println!("  Envoy cores = on-CPU + runnable-waiting during saturation (≈ 1: Envoy was the bottleneck); driver = load generator + upstream on-CPU cores (< 1: headroom)");
    let name_w = results
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(11);
    println!(
        "{:<name_w$} {:>9} {:>20} {:>8} {:>20} {:>8} {:>20} {:>12} {:>6} {:>7} {:>8} {:>7}",
        "variant",
        "CPU µs/rq",
        "ratio [spread]",
        "sat. rps",
        "ratio [spread]",
        "rps/core",
        "ratio [spread]",
        "Envoy cores",
        "driver",
        "p99 ms",
        "idle ms/s",
        "ratio"
    );
    for r in results {
        let b = &results[r.base];
        let (clo, chi) = spread(r.round_cpu_ratios.iter().copied());
        let (tlo, thi) = spread(r.round_throughput_ratios.iter().copied());
        let (plo, phi) = spread(r.round_per_core_ratios.iter().copied());
        println!(
            "{:<name_w$} {:>9.1} {:>6.2}x [{:.2}–{:.2}] {:>8.0} {:>6.2}x [{:.2}–{:.2}] {:>8.0} {:>6.2}x [{:.2}–{:.2}] {:>5.2}+{:<6.2} {:>6.2} {:>7.2} {:>9.3} {:>6.2}x",
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
            r.driver_cores,
            r.p99_ms,
            r.idle_ms_per_s,
            r.idle_ms_per_s / b.idle_ms_per_s,
        );
    }
    println!(
        "paired per-round ratios (median [IQR, min–max, rounds]), robust to drift between rounds:"
    );
    let fmt = |p: Paired| {
        format!(
            "CPU/request {}\n  {:<36}   difference {}\n  {:<36} rps/core {}\n  {:<36} idle CPU {}\n  {:<36}   difference {}",
            p.cpu,
            "",
            p.cpu_diff_us.abs("µs/request", 1),
            "",
            p.per_core,
            "",
            p.idle,
            "",
            p.idle_diff_ms.abs("ms CPU/s", 3),
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
            println!(
                "  {:<36} {}",
                format!("{} / {}:", mb.name, noop.name),
                fmt(paired(mb, noop))
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
                 something other than Envoy's core limited the closed loop",
                low.name,
                low.saturation_cores + low.saturation_wait
            );
        }
        if max_driver > DRIVER_BUSY_WARN {
            println!(
                "warning: the driver (load generator + upstream) was on-CPU {max_driver:.2} cores in some phase: \
                 it may have limited the closed loop"
            );
        } else {
            println!(
                "driver headroom: load generator + upstream on-CPU at most {max_driver:.2} cores in any saturation phase"
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
        let p = paired(m, noop);
        let (c, k, i) = (p.cpu, p.per_core, p.idle);
        println!(
            "{} vs {} (targets: CPU/request ≤ {TARGET_CPU_RATIO_NOOP}x, rps/core ≥ {TARGET_PER_CORE_RATIO_NOOP}x, idle CPU ≤ {TARGET_IDLE_RATIO_NOOP}x; paired medians):",
            m.name, noop.name
        );
        println!(
            "  CPU/request at {:.0} rps: {c} ({}); {} − {}: {}; vs no filter {:.2}x",
            cfg.rate,
            verdict(c.median <= TARGET_CPU_RATIO_NOOP),
            m.name,
            noop.name,
            p.cpu_diff_us.abs("µs/request", 1),
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
                "  saturation: {k} per Envoy core ({}); vs no filter {:.2}x (no-op alone {:.2}x)",
                verdict(k.median >= TARGET_PER_CORE_RATIO_NOOP),
                m.per_core / b.per_core,
                noop.per_core / b.per_core
            );
        }
        if cfg.idle_secs == 0 || cfg.idle_rounds == 0 {
            println!("  idle CPU: not measured");
        } else {
            println!(
                "  idle CPU: {:.3} vs {:.3} ms/s, {i} ({}); {} − {}: {}; no filter {:.3} ms/s",
                m.idle_ms_per_s,
                noop.idle_ms_per_s,
                verdict(i.median <= TARGET_IDLE_RATIO_NOOP),
                m.name,
                noop.name,
                p.idle_diff_ms.abs("ms CPU/s", 3),
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
        assert_eq!(median(&[f64::NAN, 1.0]), 1.0);
        assert_eq!(spread([1.2, 0.9, 1.1].into_iter()), (0.9, 1.2));
        let s = Summary::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(
            (s.median, s.q1, s.q3, s.min, s.max, s.n),
            (3.0, 2.0, 4.0, 1.0, 5.0, 5)
        );
        assert_eq!(quantile(&[1.0, 2.0], 0.25), 1.25);
    }

    #[test]
    fn paired_rounds_give_ratios_and_differences() {
        let a = [110.0, 220.0, 99.0, f64::NAN];
        let z = [100.0, 200.0, 100.0, 50.0];
        let r = paired_ratios(&a, &z);
        assert_eq!(&r[..3], &[1.1, 1.1, 0.99]);
        assert!(r[3].is_nan(), "a missing round stays missing");
        assert_eq!(&paired_diffs(&a, &z)[..3], &[10.0, 20.0, -1.0]);
        let d = Summary::of(&paired_diffs(&a, &z));
        assert_eq!((d.median, d.min, d.max, d.n), (10.0, -1.0, 20.0, 3));
        assert_eq!(
            d.abs("µs/request", 1),
            "+10.0 µs/request [IQR +4.5–+15.0, min–max -1.0–+20.0, n=3]"
        );
        assert_eq!(Summary::of(&[]).abs("ms", 2), "not measured");
        assert_eq!(
            Summary::of(&[1.0, 1.2]).to_string(),
            "1.10x [IQR 1.05–1.15, min–max 1.00–1.20, n=2]"
        );
    }

    #[test]
    fn saturation_order_alternates() {
        assert_eq!(saturation_order(3, 0), vec![0, 1, 2]);
        assert_eq!(saturation_order(3, 1), vec![2, 1, 0]);
        assert_eq!(saturation_order(3, 2), vec![0, 1, 2]);
    }

    #[test]
    fn restarts_every_nth_round_after_the_first() {
        assert_eq!(restart_rounds(4, 1), vec![1, 2, 3]);
        assert_eq!(restart_rounds(7, 3), vec![3, 6]);
        assert_eq!(restart_rounds(4, 0), Vec::<usize>::new());
        assert_eq!(restart_rounds(1, 1), Vec::<usize>::new());
        assert_eq!(restart_rounds(3, 5), Vec::<usize>::new());
    }

    #[test]
    fn compare_configuration_merges_overrides() {
        let base = PluginConfig::default();
        let v: serde_json::Value = serde_json::from_str(
            &compare_configuration(&base, Some(r#"{"sample_above_rps": 1}"#)).unwrap(),
        )
        .unwrap();
        assert_eq!(v["sample_above_rps"], 1);
        assert_eq!(v["pod"], "client-0");
        assert!(compare_configuration(&base, Some("[1]")).is_err());
        let e = compare_configuration(&base, Some("{")).unwrap_err();
        assert!(format!("{e:#}").contains("--compare-config"), "{e:#}");
    }
}
