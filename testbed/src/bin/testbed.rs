//! `testbed`: run the demo, the filter-overhead benchmark, or a workload / load generator on
//! its own. Paths come from the environment (see `meshtune_testbed::paths`).

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use meshtune_testbed::{loadgen, paths::Paths, scenarios, workload};

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
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[arg(long, default_value_t = 6)]
        secs: u64,
        #[arg(long, default_value_t = 800.0)]
        rate: f64,
        #[arg(long, default_value_t = 4)]
        saturation_secs: u64,
        /// Closed-loop connections in the saturation phase.
        #[arg(long, default_value_t = 32)]
        saturation_concurrency: usize,
        /// Do not pin Envoy and the load generator to separate CPUs.
        #[arg(long)]
        no_pin: bool,
        /// Also measure this meshtune filter build (`meshtune B`), for A/B comparisons.
        #[arg(long)]
        compare_wasm: Option<std::path::PathBuf>,
        /// Also measure the no-op filter making these host calls per request (repeatable;
        /// comma list of clock, cluster, status, status-header, attempts), to price them.
        #[arg(long = "probe")]
        probes: Vec<String>,
        /// Workers of the Istio-shaped variants (`istio *`: the sidecar built from
        /// manifests/, filter via the WasmPlugin); 0 = plain configuration only.
        #[arg(long, default_value_t = scenarios::DEFAULT_ISTIO_CONCURRENCY)]
        istio_concurrency: u32,
        /// Idle phase per round (Envoy CPU per second without traffic); 0 = skip.
        #[arg(long, default_value_t = scenarios::DEFAULT_IDLE_SECS)]
        idle_secs: u64,
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
            saturation_concurrency,
            no_pin,
            compare_wasm,
            probes,
            istio_concurrency,
            idle_secs,
        } => scenarios::filter_overhead(
            &paths,
            &scenarios::BenchConfig {
                rounds,
                secs,
                rate,
                saturation_secs,
                saturation_concurrency,
                pin: !no_pin,
                compare_wasm,
                probes,
                istio_concurrency,
                idle_secs,
            },
        )
        .map(|_| ()),
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
