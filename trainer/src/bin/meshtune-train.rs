//! `meshtune-train`: the trainer's commands as a standalone binary (thin wrapper over `cli`).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "meshtune-train",
    about = "Train, evaluate and export meshtune policies"
)]
struct Args {
    #[command(subcommand)]
    cmd: meshtune_trainer::cli::TrainCommand,
}

fn main() -> anyhow::Result<()> {
    meshtune_trainer::cli::run(Args::parse().cmd)?;
    Ok(())
}
