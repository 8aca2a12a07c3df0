//! The `meshtune` binary: `meshtune controller` runs the controller, `meshtune top` shows it.

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshtune_controller::config::{self, Config};
use meshtune_controller::top;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Run the controller (gRPC ingest + admin HTTP). Log level via RUST_LOG (default info).
    Controller {
        /// gRPC listen address (meshtune.v1.FeatureService).
        #[arg(long, default_value = config::DEFAULT_GRPC_LISTEN)]
        grpc_listen: String,
        /// Admin HTTP listen address (/healthz, /readyz, /metrics, /api/destinations).
        #[arg(long, default_value = config::DEFAULT_ADMIN_LISTEN)]
        admin_listen: String,
        /// JSON hints file, reloaded when it changes.
        #[arg(long)]
        hints_file: Option<PathBuf>,
        /// Sliding window length in seconds.
        #[arg(long, default_value_t = config::DEFAULT_WINDOW_SECS)]
        window_secs: u64,
        /// Largest accepted encoded report, bytes.
        #[arg(long, default_value_t = config::DEFAULT_MAX_REPORT_BYTES)]
        max_report_bytes: usize,
        /// Largest number of tracked destinations.
        #[arg(long, default_value_t = config::DEFAULT_MAX_DESTINATIONS)]
        max_destinations: usize,
    },
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Controller {
            grpc_listen,
            admin_listen,
            hints_file,
            window_secs,
            max_report_bytes,
            max_destinations,
        } => {
            init_logging();
            let cfg = Config {
                window_secs: window_secs.max(1),
                max_report_bytes,
                max_destinations,
                hints_file,
                ..Config::default()
            };
            rt.block_on(run_controller(cfg, &grpc_listen, &admin_listen))
        }
        Command::Top {
            admin,
            interval_ms,
            once,
        } => rt.block_on(run_top(&admin, interval_ms, once)),
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

async fn run_controller(cfg: Config, grpc: &str, admin: &str) -> anyhow::Result<()> {
    let grpc_l = tokio::net::TcpListener::bind(grpc)
        .await
        .with_context(|| format!("binding --grpc-listen {grpc}"))?;
    let admin_l = tokio::net::TcpListener::bind(admin)
        .await
        .with_context(|| format!("binding --admin-listen {admin}"))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "grpc listening on {}", grpc_l.local_addr()?)?;
        writeln!(out, "admin listening on {}", admin_l.local_addr()?)?;
        out.flush()?;
    }
    meshtune_controller::serve(cfg, grpc_l, admin_l, shutdown_signal()).await?;
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
