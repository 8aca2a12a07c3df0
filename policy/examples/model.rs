//! `cargo run -p meshtune-policy --example model -- inspect|validate|push …`: the `meshtune model`
//! subcommands before they are wired into the controller binary.

use clap::Parser;
use meshtune_policy::cli::{run, ModelCommand};

#[derive(Parser)]
#[command(about = "Inspect, validate or push meshtune ONNX policy models")]
struct Cli {
    #[command(subcommand)]
    cmd: ModelCommand,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    run(cli.cmd, &mut std::io::stdout(), None).await?;
    Ok(())
}
