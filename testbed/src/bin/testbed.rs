//! `testbed`: run the demo, the filter-overhead benchmark, or a workload / load generator on
//! its own. Paths come from the environment (see `meshtune_testbed::paths`).

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use meshtune_testbed::{loadgen, paths::Paths, realrun, scenarios, workload};

#[derive(Parser)]
#[command(name = "testbed", about = "meshtune real-process testbed")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Closed loop: the same step load against Istio defaults and against meshtune (filter +
    /// controller enforcing via CDS/RDS files), live table, before/after summary (~1.5 min).
    Demo {
        /// Step length in seconds (after a warm-up).
        #[arg(long, default_value_t = meshtune_testbed::demo::DEFAULT_STEP.as_secs())]
        secs: u64,
        /// Step arrival rate (rps).
        #[arg(long, default_value_t = meshtune_testbed::demo::DEFAULT_STEP_RATE)]
        rate: f64,
        /// Arrival rate before the step (rps).
        #[arg(long, default_value_t = meshtune_testbed::demo::DEFAULT_BASE_RATE)]
        base_rate: f64,
        /// Latency SLO (ms) for goodput.
        #[arg(long, default_value_t = meshtune_testbed::demo::DEFAULT_SLO_MS)]
        slo_ms: u64,
    },
    /// Envoy CPU/request, throughput and idle CPU: no filter vs no-op wasm vs meshtune, plain
    /// and Istio-shaped.
    FilterOverhead {
        /// Open-loop (CPU/request) rounds, variants in alternating order.
        #[arg(long, default_value_t = scenarios::DEFAULT_ROUNDS)]
        rounds: u32,
        /// Open-loop phase per variant and round, seconds.
        #[arg(long, default_value_t = scenarios::DEFAULT_OPEN_LOOP_SECS)]
        secs: u64,
        /// Open-loop arrival rate (rps).
        #[arg(long, default_value_t = scenarios::DEFAULT_RATE)]
        rate: f64,
        /// Saturation phase per variant and round (0 = skip).
        #[arg(long, default_value_t = scenarios::DEFAULT_SATURATION_SECS)]
        saturation_secs: u64,
        /// Saturation rounds (variants in alternating order; the paired per-round ratio's
        /// median, quartiles and range are printed).
        #[arg(long, default_value_t = scenarios::DEFAULT_SATURATION_ROUNDS)]
        saturation_rounds: u32,
        /// Closed-loop connections in the saturation phase.
        #[arg(long, default_value_t = 32)]
        saturation_concurrency: usize,
        /// Do not pin Envoy and the load generator to separate CPUs.
        #[arg(long)]
        no_pin: bool,
        /// Also measure this meshtune filter build (`meshtune B`, and `istio meshtune B` with
        /// the manifest's configuration), for A/B comparisons.
        #[arg(long)]
        compare_wasm: Option<std::path::PathBuf>,
        /// Plugin configuration fields of `meshtune B` over the defaults (JSON object, e.g.
        /// '{"sample_above_rps":1}'); without --compare-wasm, B is the same filter build.
        #[arg(long)]
        compare_config: Option<String>,
        /// Also measure the no-op filter making these host calls per request (repeatable;
        /// comma list of clock, cluster, status, status-header, attempts; `none` = a second
        /// no-op filter), to price them; in both configurations (`probe LIST`, `istio probe
        /// LIST`).
        #[arg(long = "probe")]
        probes: Vec<String>,
        /// Workers of the Istio-shaped variants (`istio *`: the sidecar built from
        /// manifests/, filter via the WasmPlugin); 0 = plain configuration only.
        #[arg(long, default_value_t = scenarios::DEFAULT_ISTIO_CONCURRENCY)]
        istio_concurrency: u32,
        /// Idle window (Envoy CPU per second without traffic, every Envoy at once); 0 = skip.
        #[arg(long, default_value_t = scenarios::DEFAULT_IDLE_SECS)]
        idle_secs: u64,
        /// Idle windows, back to back after the open-loop rounds (each a paired round).
        #[arg(long, default_value_t = scenarios::DEFAULT_IDLE_ROUNDS)]
        idle_rounds: u32,
        /// Fresh Envoys every this many rounds (a round: one open-loop and one saturation phase
        /// per variant), so two processes' fixed offset is per-round noise, not a bias of the
        /// run; 0 = the same Envoys throughout.
        #[arg(long, default_value_t = scenarios::DEFAULT_RESTART_EVERY)]
        restart_every: u32,
    },
    /// Run one simulator scenario file on real Envoy with one arm; prints every window.
    Scenario {
        /// Scenario TOML (the simulator's format).
        file: std::path::PathBuf,
        /// istio-defaults | hand-tuned | adaptive | meshtune | sim-oracle
        #[arg(long, default_value = "meshtune")]
        arm: String,
        /// Model for the meshtune arm (default: the embedded default model).
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// Write the controller's log (its decisions and pushes) here (meshtune arm).
        #[arg(long)]
        controller_log: Option<std::path::PathBuf>,
    },
    /// The simulator against real Envoy: scenarios x 3 static settings, side by side.
    Calibrate {
        /// Scenario file or directory (default: the simulator's calibration scenarios).
        #[arg(long)]
        scenarios: Option<std::path::PathBuf>,
        /// Also write the markdown table here.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// The live controller's features next to the simulator's, window by window: each
    /// scenario on real Envoy with a static setting observed by the filter and the controller
    /// (observe mode, --record), and in the simulator; table per decision time, median and
    /// p90 relative error per feature; written to target/runs/compare-windows.
    CompareWindows {
        /// Scenario file or directory (default: the simulator's calibration scenarios).
        scenario: Option<std::path::PathBuf>,
        /// istio-defaults | hand-tuned | sim-oracle (repeatable; default: istio-defaults and
        /// sim-oracle).
        #[arg(long = "setting")]
        settings: Vec<String>,
        /// The controller's sliding window (--window-secs), merged the same way in the
        /// simulator.
        #[arg(long, default_value_t = meshtune_testbed::compare_windows::DEFAULT_WINDOW_SECS)]
        window_secs: u32,
        /// Output directory (default: target/runs/compare-windows).
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
    /// Five arms on real Envoy per scenario: Istio defaults, hand-tuned, adaptive concurrency,
    /// the oracle (best of a grid on real Envoy) and meshtune; table and plots.
    Tuning {
        /// Scenario file or directory (default: the simulator's calibration scenarios).
        #[arg(long)]
        scenarios: Option<std::path::PathBuf>,
        /// Simulator-ranked grid configurations run on real Envoy for the oracle.
        #[arg(long, default_value_t = meshtune_testbed::tuning::DEFAULT_ORACLE_CANDIDATES)]
        oracle_candidates: usize,
        /// Also run meshtune with this model (repeatable).
        #[arg(long = "model")]
        models: Vec<std::path::PathBuf>,
        /// Output directory (default: target/runs/tuning).
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
    /// BookInfo's call graph (productpage -> details, reviews -> ratings), each caller behind
    /// its own sidecar; ratings turns slow, then failing; Istio defaults vs meshtune.
    Bookinfo {
        #[arg(long, default_value_t = meshtune_testbed::bookinfo::BookinfoConfig::default().rate)]
        rate: f64,
        #[arg(long, default_value_t = meshtune_testbed::bookinfo::BookinfoConfig::default().secs)]
        secs: u64,
        #[arg(long, default_value_t = meshtune_testbed::bookinfo::BookinfoConfig::default().slo_ms)]
        slo_ms: u64,
        /// Model the controller serves (default: the embedded default model).
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// Which ratings fault to run (default: both, slow then failing).
        #[arg(long, value_parser = ["slow", "failing", "both"], default_value = "both")]
        fault: String,
    },
    /// The real controller under hostile ingest (largest reports, 1,000,000 distinct names,
    /// 10× the report rate) next to one good reporter: peak RSS and whether the good
    /// destination kept being decided.
    IngestAbuse {
        #[arg(long, default_value_t = 1_000_000)]
        names: u64,
        #[arg(long, default_value_t = 4)]
        hostile_reporters: usize,
        /// Reports per second per hostile reporter (a filter sends 1).
        #[arg(long, default_value_t = 10.0)]
        hostile_rate: f64,
        #[arg(long, default_value_t = 240)]
        max_secs: u64,
    },
    /// Serve the workload on an address until Ctrl-C.
    Workload {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = workload::DEFAULT_CAPACITY)]
        capacity: usize,
        /// const:5ms | exp:5ms | lognormal:5ms:0.5
        #[arg(long, default_value = "const:1ms")]
        service_time: String,
        #[arg(long)]
        fail_every_n: Option<u64>,
    },
    /// Open-loop load against an address.
    Load {
        #[arg(long)]
        target: std::net::SocketAddr,
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long)]
        fail_every_n: Option<u64>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let paths = Paths::from_env();
    match cli.cmd {
        Cmd::Demo {
            secs,
            rate,
            base_rate,
            slo_ms,
        } => meshtune_testbed::demo::run(
            &paths,
            &meshtune_testbed::demo::DemoConfig {
                step: Duration::from_secs(secs),
                step_rate: rate,
                base_rate,
                slo_ms,
                ..Default::default()
            },
        ),
        Cmd::FilterOverhead {
            rounds,
            secs,
            rate,
            saturation_secs,
            saturation_rounds,
            saturation_concurrency,
            no_pin,
            compare_wasm,
            compare_config,
            probes,
            istio_concurrency,
            idle_secs,
            idle_rounds,
            restart_every,
        } => scenarios::filter_overhead(
            &paths,
            &scenarios::BenchConfig {
                rounds,
                secs,
                rate,
                saturation_secs,
                saturation_rounds,
                saturation_concurrency,
                pin: !no_pin,
                compare_wasm,
                compare_config,
                probes,
                istio_concurrency,
                idle_secs,
                idle_rounds,
                restart_every,
            },
        )
        .map(|_| ()),
        Cmd::Scenario {
            file,
            arm,
            model,
            controller_log,
        } => {
            let sc = realrun::load(&file)?;
            let arm = if arm == "sim-oracle" {
                let (name, knobs) = meshtune_testbed::calibrate::settings(&sc).remove(2);
                println!("{name}: {knobs:?}");
                realrun::Arm::Static { name, knobs }
            } else {
                realrun::parse_arm(&arm, model)?
            };
            let r = realrun::run(&paths, &sc, &arm, sc.seed, |w| {
                eprint!("\rwindow {}/{}", w + 1, sc.windows.0)
            })?;
            eprintln!();
            if let Some(path) = controller_log {
                std::fs::write(&path, &r.controller_log)
                    .with_context(|| format!("writing the controller log to {}", path.display()))?;
            }
            for (i, w) in r.windows.iter().enumerate() {
                println!(
                    "t={i:>3}s sent {:>5} 2xx {:>5} good {:>5} errors {:>5} shed {:>4} p99 {:>8.1} ms attempts {:.3} ejected {}",
                    w.sent, w.ok, w.good, w.errors, w.shed, w.p99_ms, r.attempts.get(i).copied().unwrap_or(1.0),
                    r.ejected.get(i).copied().unwrap_or(0)
                );
            }
            println!(
                "{}: SLO goodput {:.1}% of offered ({:.1}/s), p50 {:.1} ms, p99 {:.1} ms, errors {:.2}%, shed {}, overflow {:.2}%, max attempts/request {:.3}, pushes {}",
                r.arm,
                100.0 * r.slo_goodput_fraction(),
                r.total.goodput(),
                r.p50_ms,
                r.total.p99_ms,
                100.0 * r.total.error_rate(),
                r.total.shed,
                100.0 * r.overflow_fraction(),
                r.max_attempts(),
                r.pushes
            );
            Ok(())
        }
        Cmd::Calibrate { scenarios, out } => meshtune_testbed::calibrate::run(
            &paths,
            &meshtune_testbed::calibrate::CalibrateConfig {
                scenarios: scenarios.unwrap_or_else(meshtune_sim::calibration_dir),
                out,
            },
        )
        .map(|_| ()),
        Cmd::CompareWindows {
            scenario,
            settings,
            window_secs,
            out_dir,
        } => {
            use meshtune_testbed::compare_windows as cw;
            let settings = if settings.is_empty() {
                cw::DEFAULT_SETTINGS.iter().map(|s| s.to_string()).collect()
            } else {
                settings
            };
            cw::run(
                &paths,
                &cw::CompareConfig {
                    scenarios: scenario.unwrap_or_else(meshtune_sim::calibration_dir),
                    settings,
                    window_secs,
                    out_dir: out_dir.unwrap_or_else(|| cw::default_out_dir(&paths)),
                },
            )
            .map(|_| ())
        }
        Cmd::Tuning {
            scenarios,
            oracle_candidates,
            models,
            out_dir,
        } => {
            use meshtune_testbed::tuning;
            let out_dir = out_dir.unwrap_or_else(|| tuning::default_out_dir(&paths));
            tuning::run(
                &paths,
                &tuning::TuningConfig {
                    scenarios: scenarios.unwrap_or_else(meshtune_sim::calibration_dir),
                    oracle_candidates,
                    models,
                    out_dir,
                },
            )
            .map(|_| ())
        }
        Cmd::Bookinfo {
            rate,
            secs,
            slo_ms,
            model,
            fault,
        } => {
            use meshtune_testbed::bookinfo::{self, RatingsFault};
            let mut faults = bookinfo::BookinfoConfig::default().faults;
            match fault.as_str() {
                "slow" => faults.retain(|f| matches!(f, RatingsFault::Slow(_))),
                "failing" => faults.retain(|f| matches!(f, RatingsFault::Failing(_))),
                _ => {}
            }
            bookinfo::compare(
                &paths,
                &bookinfo::BookinfoConfig {
                    rate,
                    secs,
                    slo_ms,
                    model,
                    faults,
                    ..Default::default()
                },
            )
            .map(|_| ())
        }
        Cmd::IngestAbuse {
            names,
            hostile_reporters,
            hostile_rate,
            max_secs,
        } => {
            let r = meshtune_testbed::abuse::run(
                &paths,
                &meshtune_testbed::abuse::AbuseConfig {
                    names,
                    hostile_reporters,
                    hostile_rate,
                    max_secs,
                    ..Default::default()
                },
            )?;
            anyhow::ensure!(!r.starved(), "the good destination was starved");
            Ok(())
        }
        Cmd::Workload {
            listen,
            capacity,
            service_time,
            fail_every_n,
        } => {
            let cfg = workload::WorkloadConfig {
                capacity,
                service_time: workload::ServiceTime::parse(&service_time)?,
                fail_every_n,
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind(listen).await?;
                println!("workload listening on {}", l.local_addr()?);
                workload::run(l, cfg, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
                Ok(())
            })
        }
        Cmd::Load {
            target,
            rate,
            secs,
            path,
            fail_every_n,
        } => {
            let mut cfg = loadgen::LoadConfig::constant(target, rate, Duration::from_secs(secs));
            cfg.path = path;
            cfg.fail_every_n = fail_every_n;
            println!("{}", loadgen::run_blocking(&cfg, None).summary());
            Ok(())
        }
    }
}
