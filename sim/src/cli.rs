//! `meshtune sim sweep|run|bench`: clap types and their implementation.

use crate::baselines::{
    hand_tuned, oracle_grid_search, GradientController, IstioDefaults, KnobGrid,
};
use crate::engine::Engine;
use crate::episode::{run_episode, Objective, Summary};
use crate::scenario::{load_path, Scenario};
use crate::sweep::sweep_with_progress;
use crate::SimError;
use meshtune_core::env::Policy;
use meshtune_core::{Knobs, KNOB_COUNT};
use std::io::Write;
use std::path::PathBuf;

/// Which knob grid to sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GridChoice {
    /// 24 configurations.
    Small,
    /// 288 configurations (the oracle's grid).
    Full,
    /// 576 configurations, also varying per-try timeout and outlier detection.
    Wide,
}

impl GridChoice {
    pub fn grid(self) -> KnobGrid {
        match self {
            GridChoice::Small => KnobGrid::small(),
            GridChoice::Full => KnobGrid::oracle_default(),
            GridChoice::Wide => KnobGrid::wide(),
        }
    }
}

/// Which baseline policy to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyChoice {
    IstioDefaults,
    HandTuned,
    Gradient,
    /// Grid-search the best static config for this scenario and seed first.
    Oracle,
    /// All of the above, one summary line each.
    All,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SimCommand {
    /// Sweep static knob settings over scenarios and write dataset CSV rows (one per window).
    Sweep {
        /// Scenario file or folder (default: the crate's scenarios/train).
        #[arg(long)]
        scenarios: Option<PathBuf>,
        /// Output CSV file.
        #[arg(long)]
        out: PathBuf,
        /// Number of seeds per (scenario, setting): 1..=n.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        #[arg(long, value_enum, default_value = "small")]
        grid: GridChoice,
    },
    /// Run a baseline policy through a scenario and print the summary.
    Run {
        /// Scenario file.
        scenario: PathBuf,
        #[arg(long, value_enum, default_value = "all")]
        policy: PolicyChoice,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Print every window, not only the summary.
        #[arg(long)]
        windows: bool,
    },
    /// Measure simulator throughput (simulated requests per wall-clock second, one core).
    Bench {
        /// Client requests to simulate per configuration.
        #[arg(long, default_value_t = 2_000_000)]
        requests: u64,
        /// Scenario file (default: the built-in benchmark scenario).
        #[arg(long)]
        scenario: Option<PathBuf>,
    },
}

/// Runs a command, printing to stdout.
pub fn run(cmd: SimCommand) -> Result<(), SimError> {
    let stdout = std::io::stdout();
    run_to(cmd, &mut stdout.lock())
}

fn io(e: std::io::Error) -> SimError {
    SimError::Io {
        path: "stdout".into(),
        source: e,
    }
}

/// Runs a command, printing to `out`.
pub fn run_to(cmd: SimCommand, out: &mut dyn Write) -> Result<(), SimError> {
    let objective = Objective::default();
    match cmd {
        SimCommand::Sweep {
            scenarios,
            out: path,
            seeds,
            grid,
        } => {
            let dir = scenarios.unwrap_or_else(crate::train_dir);
            let scs = load_path(&dir)?;
            let grid = grid.grid();
            let seeds: Vec<u64> = (1..=seeds.max(1)).collect();
            let file = std::fs::File::create(&path).map_err(|source| SimError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let pb = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} episodes ({eta})",
                )
                .expect("valid template"),
            );
            let stats = sweep_with_progress(
                &scs,
                &grid,
                &seeds,
                &objective,
                std::io::BufWriter::new(file),
                &pb,
            )?;
            writeln!(
                out,
                "wrote {} rows ({} episodes, {} scenarios x {} settings x {} seeds) to {} in {:.1}s; {:.0} simulated requests/s",
                stats.rows,
                stats.episodes,
                scs.len(),
                grid.len(),
                seeds.len(),
                path.display(),
                stats.elapsed_s,
                stats.requests as f64 / stats.elapsed_s.max(1e-9)
            )
            .map_err(io)?;
        }
        SimCommand::Run {
            scenario,
            policy,
            seed,
            windows,
        } => {
            let sc = Scenario::from_file(&scenario)?;
            let seed = seed.unwrap_or(sc.seed);
            let choices = match policy {
                PolicyChoice::All => vec![
                    PolicyChoice::IstioDefaults,
                    PolicyChoice::HandTuned,
                    PolicyChoice::Gradient,
                    PolicyChoice::Oracle,
                ],
                p => vec![p],
            };
            writeln!(
                out,
                "scenario {} ({}), seed {seed}, {} windows of {}s, SLO {} ms, capacity ≈ {:.0} rps",
                sc.name,
                sc.origin,
                sc.windows.0,
                sc.window_s.0,
                sc.slo_ms.0,
                sc.capacity_rps()
            )
            .map_err(io)?;
            writeln!(out, "{}", summary_header()).map_err(io)?;
            for c in choices {
                let mut p: Box<dyn Policy> = match c {
                    PolicyChoice::IstioDefaults => Box::new(IstioDefaults),
                    PolicyChoice::HandTuned => Box::new(hand_tuned()),
                    PolicyChoice::Gradient => Box::new(GradientController::default()),
                    PolicyChoice::Oracle | PolicyChoice::All => {
                        let (k, _) =
                            oracle_grid_search(&sc, seed, &objective, &KnobGrid::oracle_default());
                        writeln!(out, "oracle knobs: {}", knobs_line(&k)).map_err(io)?;
                        Box::new(crate::StaticPolicy {
                            name: "oracle".into(),
                            knobs: k,
                        })
                    }
                };
                let ep = run_episode(&sc, p.as_mut(), seed, &objective);
                if windows {
                    for (i, s) in ep.steps.iter().enumerate() {
                        let o = &s.outcomes;
                        writeln!(
                            out,
                            "  w{i:<3} offered {:>8.0} good {:>8.0} p50 {:>8.1} p99 {:>8.1} err {:.3} shed {:.3} ut {:.3} reward {:+.3}",
                            o.offered_rps, o.slo_goodput_rps, o.p50_ms, o.p99_ms, o.error_rate, o.shed_rate, o.timeout_rate, o.reward
                        )
                        .map_err(io)?;
                    }
                }
                writeln!(out, "{}", summary_line(p.name(), &ep.summary)).map_err(io)?;
            }
        }
        SimCommand::Bench { requests, scenario } => {
            let sc = match scenario {
                Some(p) => Scenario::from_file(&p)?,
                None => bench_scenario(),
            };
            for (name, knobs) in [
                ("istio-defaults", Knobs::istio_defaults()),
                ("hand-tuned", hand_tuned().knobs),
            ] {
                let r = measure_throughput(&sc, &knobs, requests);
                let cpu = r.cpu_s.unwrap_or(r.elapsed_s);
                writeln!(
                    out,
                    "bench {} [{name}]: {} requests, {} events; {:.3}s CPU ({:.3}s wall): {:.2} M simulated requests/CPU-s ({:.2} M/wall-s), {:.2} M events/CPU-s",
                    sc.name,
                    r.requests,
                    r.events,
                    cpu,
                    r.elapsed_s,
                    r.requests_per_cpu_s() / 1e6,
                    r.requests as f64 / r.elapsed_s / 1e6,
                    r.events as f64 / cpu / 1e6
                )
                .map_err(io)?;
            }
        }
    }
    Ok(())
}

/// Column titles of [`summary_line`].
pub fn summary_header() -> String {
    format!(
        "{:<16} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>9} {:>10}",
        "policy", "goodput", "p50_ms", "p99_ms", "err", "shed", "ut", "reward", "requests"
    )
}

/// One summary as a table row.
pub fn summary_line(name: &str, s: &Summary) -> String {
    format!(
        "{:<16} {:>9.4} {:>9.1} {:>9.1} {:>7.4} {:>7.4} {:>7.4} {:>9.2} {:>10}",
        name,
        s.slo_goodput_fraction,
        s.p50_ms,
        s.p99_ms,
        s.error_rate,
        s.shed_rate,
        s.timeout_rate,
        s.total_reward,
        s.requests
    )
}

fn knobs_line(k: &Knobs) -> String {
    (0..KNOB_COUNT)
        .map(|i| format!("{}={}", meshtune_core::knobs::KNOB_NAMES[i], k.0[i]))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The built-in benchmark scenario: 4 clients, 8 hosts x 16 workers, lognormal 5 ms service
/// (capacity ≈ 25.6k rps), Poisson load at 20k rps (≈ 78 % utilisation), 1 s windows.
pub const BENCH_SCENARIO: &str = r#"
name = "bench"
window_s = 1.0
windows = 1000000
slo_ms = 50.0
clients = 4
[hosts]
count = 8
concurrency = 16
service = { dist = "lognormal", mean_ms = 5.0, sigma = 0.5 }
error_rate = 0.01
[load]
profile = "constant"
rps = 20000.0
"#;

pub fn bench_scenario() -> Scenario {
    Scenario::from_toml_str(BENCH_SCENARIO, "built-in bench scenario").expect("valid")
}

/// Result of [`measure_throughput`].
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub requests: u64,
    pub events: u64,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
    /// On-CPU seconds of the calling thread (Linux `/proc/thread-self/schedstat`), which is
    /// what to quote on a shared machine; `None` elsewhere.
    pub cpu_s: Option<f64>,
}

impl Throughput {
    /// Simulated requests per second of CPU time (wall time if CPU time is unknown).
    pub fn requests_per_cpu_s(&self) -> f64 {
        self.requests as f64 / self.cpu_s.unwrap_or(self.elapsed_s).max(1e-9)
    }
}

/// On-CPU time of the calling thread in seconds (Linux only).
pub fn thread_cpu_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// Simulates windows of `sc` with fixed knobs until `requests` client requests arrived;
/// wall-clock time on the calling thread.
pub fn measure_throughput(sc: &Scenario, knobs: &Knobs, requests: u64) -> Throughput {
    let started = std::time::Instant::now();
    let cpu0 = thread_cpu_s();
    let mut e = Engine::new(sc, sc.seed, knobs);
    while e.totals().arrivals < requests {
        let r = e.run_window();
        std::hint::black_box(&r);
        if r.arrivals == 0 && e.now_us() > 1_000_000_000_000 {
            break;
        }
    }
    Throughput {
        requests: e.totals().arrivals,
        events: e.totals().events,
        elapsed_s: started.elapsed().as_secs_f64(),
        cpu_s: match (cpu0, thread_cpu_s()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
    }
}
