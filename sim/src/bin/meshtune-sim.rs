//! Stand-alone `meshtune-sim` binary: the same subcommands as `meshtune sim`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "meshtune-sim", about = "meshtune mesh simulator")]
struct Cli {
    #[command(subcommand)]
    cmd: meshtune_sim::cli::SimCommand,
}

fn main() -> anyhow::Result<()> {
    meshtune_sim::cli::run(Cli::parse().cmd)?;
    Ok(())
}
