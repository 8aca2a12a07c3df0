//! The `meshtune` binary: `controller` (the closed loop), `top`, `sim`, `train`, `eval`, `model`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshtune_controller::cli::{self, ControllerArgs};
use meshtune_controller::top;
use std::io::Write;
use std::time::Duration;

/// mimalloc: the decision cycle allocates per destination, and glibc malloc's consolidation
/// showed up as ~15% of it (`cargo xtask bench controller` uses the same allocator).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "meshtune",
    version,
    about = "meshtune: automatic Istio/Envoy mesh tuning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: gRPC ingest, decision loop (policy → guardrails → sinks, hints),
    /// admin HTTP. Log level via RUST_LOG (default info).
    Controller(Box<ControllerArgs>),
    /// Live table of destinations from a controller's admin API.
    Top {
        /// Admin base URL.
        #[arg(long, default_value = top::DEFAULT_ADMIN_URL)]
        admin: String,
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = top::DEFAULT_INTERVAL_MS)]
        interval_ms: u64,
        /// Print one table and exit.
        #[arg(long)]
        once: bool,
    },
    /// Mesh simulator: sweeps, episodes, baselines.
    Sim {
        #[command(subcommand)]
        cmd: meshtune_sim::cli::SimCommand,
    },
    /// Train policies (supervised, PPO), evaluate, export.
    Train {
        #[command(subcommand)]
        cmd: meshtune_trainer::cli::TrainCommand,
    },
    /// Same as `meshtune train eval ...`.
    Eval {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Policy models: inspect, validate, push to a ConfigMap.
    Model {
        #[command(subcommand)]
        cmd: meshtune_policy::cli::ModelCommand,
    },
}

/// `meshtune eval ARGS` parsed as `meshtune train eval ARGS`.
#[derive(Parser)]
#[command(name = "meshtune eval")]
struct EvalCli {
    #[command(subcommand)]
    cmd: meshtune_trainer::cli::TrainCommand,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Controller(args) => {
            init_logging();
            rt.block_on(run_controller(*args))
        }
        Command::Top {
            admin,
            interval_ms,
            once,
        } => rt.block_on(run_top(&admin, interval_ms, once)),
        Command::Sim { cmd } => Ok(meshtune_sim::cli::run(cmd)?),
        Command::Train { cmd } => Ok(meshtune_trainer::cli::run(cmd)?),
        Command::Eval { args } => {
            let argv = ["meshtune eval".to_string(), "eval".to_string()]
                .into_iter()
                .chain(args);
            Ok(meshtune_trainer::cli::run(EvalCli::parse_from(argv).cmd)?)
        }
        Command::Model { cmd } => {
            init_logging();
            rt.block_on(async {
                let mut out = std::io::stdout();
                meshtune_policy::cli::run(cmd, &mut out, None).await
            })?;
            Ok(())
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let grpc = args.grpc_listen.clone();
    let admin = args.admin_listen.clone();
    let prepared = cli::prepare(args).await?;
    let grpc_l = tokio::net::TcpListener::bind(&grpc)
        .await
        .with_context(|| format!("binding --grpc-listen {grpc}"))?;
    let admin_l = tokio::net::TcpListener::bind(&admin)
        .await
        .with_context(|| format!("binding --admin-listen {admin}"))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "grpc listening on {}", grpc_l.local_addr()?)?;
        writeln!(out, "admin listening on {}", admin_l.local_addr()?)?;
        out.flush()?;
    }
    prepared.serve(grpc_l, admin_l, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

async fn run_top(admin: &str, interval_ms: u64, once: bool) -> anyhow::Result<()> {
    loop {
        let table = match top::fetch_destinations(admin).await {
            Ok(r) => top::render(&r),
            Err(e) if once => return Err(e.into()),
            Err(e) => format!("{e}\n"),
        };
        let mut out = std::io::stdout().lock();
        if !once {
            // Clear the screen and home the cursor.
            write!(out, "\x1b[2J\x1b[H")?;
        }
        write!(out, "{table}")?;
        out.flush()?;
        drop(out);
        if once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(interval_ms.max(50))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
