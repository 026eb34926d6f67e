//! `blindfold-api`: the Blindfold HTTP API server. Every setting is a flag with an environment
//! variable; see `blindfold-api --help`.

use anyhow::Context as _;
use clap::Parser;

/// The Blindfold HTTP API: tenants, tokens, key sets, jobs, presigned transfers, the model
/// catalogue, health, metrics and the OpenAPI document. Logs are JSON lines on stderr
/// (RUST_LOG filters them, default info).
#[derive(Debug, Parser)]
#[command(name = "blindfold-api", version)]
struct Cli {
    #[command(flatten)]
    config: blindfold_api::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    blindfold_api::json_logs(std::io::stderr).context("installing the log format")?;
    let cli = Cli::parse();
    let serving = blindfold_api::Application::build(cli.config).await.context("starting the API")?;
    serving.server.await
}
