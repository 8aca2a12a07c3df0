//! The `meshtune` binary: parses the command line and hands each subcommand to its library
//! (`controller`, `record`, `top` and `uninstall` to meshtune-controller, `model` to meshtune-policy,
//! `crd`, `status` and `approve` to meshtune-crd; with the `dev`
//! feature `sim` to meshtune-sim and `train`/`eval` to meshtune-trainer).

use clap::{Parser, Subcommand};
use meshtune_controller::cli::ControllerArgs;
use meshtune_controller::top;

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
    /// Write dataset rows (the trainer's format) from history: `--from prometheus` range
    /// queries of Istio/Envoy metrics.
    Record(meshtune_controller::prometheus::RecordArgs),
    /// Live table of destinations from a controller's admin API.
    Top(top::TopArgs),
    /// Remove what meshtune wrote to the mesh: delete the DestinationRules/VirtualServices it
    /// created, restore the fields of objects it co-managed (`--dry-run` prints the plan).
    Uninstall(meshtune_controller::lifecycle::UninstallArgs),
    /// Print the MeshtunePolicy CustomResourceDefinition (YAML), as committed in
    /// manifests/base/meshtunepolicy-crd.yaml.
    Crd,
    /// A namespace's MeshtunePolicy: mode, SLO, each destination's recommendation (knobs,
    /// expected effect, model version, approved/applied) and the conditions.
    Status(meshtune_crd::cli::StatusArgs),
    /// Approve a destination's current recommendation (recommend mode): sets its entry of the
    /// policy's spec.approvals.
    Approve(meshtune_crd::cli::ApproveArgs),
    /// Policy models: inspect, validate, push to a ConfigMap.
    Model {
        #[command(subcommand)]
        cmd: meshtune_policy::cli::ModelCommand,
    },
    /// Mesh simulator: sweeps, episodes, baselines (developer builds).
    #[cfg(feature = "dev")]
    Sim {
        #[command(subcommand)]
        cmd: meshtune_sim::cli::SimCommand,
    },
    /// Train policies (supervised, PPO), evaluate, export (developer builds).
    #[cfg(feature = "dev")]
    Train {
        #[command(subcommand)]
        cmd: meshtune_trainer::cli::TrainCommand,
    },
    /// Same as `meshtune train eval ...` (developer builds).
    #[cfg(feature = "dev")]
    Eval {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `meshtune eval ARGS` parsed as `meshtune train eval ARGS`.
#[cfg(feature = "dev")]
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
            let mut out = std::io::stdout();
            rt.block_on(meshtune_controller::cli::bind_and_serve(
                *args,
                &mut out,
                meshtune_controller::shutdown_signal(),
            ))?;
        }
        Command::Record(args) => {
            init_logging();
            let s = rt.block_on(meshtune_controller::prometheus::record(&args))?;
            println!(
                "wrote {} rows ({} destinations, {} windows) to {}; {} undecidable windows skipped; features from fallbacks: {}",
                s.rows,
                s.destinations,
                s.windows,
                args.out.display(),
                s.undecidable,
                if s.missing_features.is_empty() { "none".to_string() } else { s.missing_features.join(", ") }
            );
        }
        Command::Top(args) => rt.block_on(top::run(&args, &mut std::io::stdout()))?,
        Command::Uninstall(args) => {
            init_logging();
            rt.block_on(meshtune_controller::lifecycle::uninstall(
                &args,
                &mut std::io::stdout(),
            ))?;
        }
        Command::Crd => print!("{}", meshtune_crd::crd_yaml()),
        Command::Status(args) => {
            rt.block_on(meshtune_crd::cli::status(&args, &mut std::io::stdout()))?
        }
        Command::Approve(args) => {
            rt.block_on(meshtune_crd::cli::approve(&args, &mut std::io::stdout()))?
        }
        Command::Model { cmd } => {
            init_logging();
            rt.block_on(meshtune_policy::cli::run(cmd, &mut std::io::stdout(), None))?;
        }
        #[cfg(feature = "dev")]
        Command::Sim { cmd } => meshtune_sim::cli::run(cmd)?,
        #[cfg(feature = "dev")]
        Command::Train { cmd } => meshtune_trainer::cli::run(cmd)?,
        #[cfg(feature = "dev")]
        Command::Eval { args } => {
            let argv = ["meshtune eval".to_string(), "eval".to_string()]
                .into_iter()
                .chain(args);
            meshtune_trainer::cli::run(EvalCli::parse_from(argv).cmd)?
        }
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
